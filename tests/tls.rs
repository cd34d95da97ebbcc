//! `https://` origins over real TLS: a private CA made here with rcgen, an
//! origin served with tokio-rustls on 127.0.0.1, the proxy trusting the CA
//! through `origin_ca_file` (and refusing the origin without it).

mod support;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use support::*;
use tokio::net::TcpListener;

/// A CA (its PEM) and a TLS origin for `localhost` signed by it, answering
/// every request with a cacheable body; the counter counts requests.
async fn tls_origin() -> (String, u16, Arc<AtomicUsize>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    async {
                        let mut r = hyper::Response::new(Full::new(Bytes::from_static(b"secret")));
                        r.headers_mut()
                            .insert("cache-control", "max-age=600".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (ca.pem(), port, hits)
}

#[tokio::test]
async fn https_origin_with_a_private_ca() {
    let (ca_pem, port, hits) = tls_origin().await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let origin = format!("https://localhost:{port}");
    let toml = format!("origin_ca_file = \"{}\"\n{BASIC}", ca.display());
    let proxy = start_proxy(&toml, &origin).await;
    let first = get(&proxy.url("/a"), &[]).await;
    assert_eq!(first.status, 200);
    assert_eq!(&first.body[..], b"secret");
    assert_eq!(get(&proxy.url("/a"), &[]).await.cache(), "hit");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "fetched once over TLS, then cached"
    );

    // Without the CA the certificate is not trusted: 502, counted, never served.
    let untrusting = start_proxy(BASIC, &origin).await;
    assert_eq!(get(&untrusting.url("/a"), &[]).await.status, 502);
    assert_eq!(
        metric(
            &untrusting,
            "vaeproxy_origin_errors_total{kind=\"unreachable\"}"
        )
        .await,
        1.0
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

/// A self-signed certificate for `localhost` written as PEM files.
fn self_signed(dir: &std::path::Path, name: &str) -> (vaeproxy::tls::TlsConfig, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cfg = vaeproxy::tls::TlsConfig {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&cfg.cert, cert.pem()).unwrap();
    std::fs::write(&cfg.key, key.serialize_pem()).unwrap();
    (cfg, cert.der().to_vec())
}

/// A TLS client trusting exactly `trusted`, offering `alpn`; returns the
/// stream, the protocol the server chose and the certificate it presented.
async fn tls_connect(
    addr: std::net::SocketAddr,
    trusted: &[u8],
    alpn: &[u8],
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    Option<Vec<u8>>,
    Vec<u8>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(trusted.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    let proto = session.alpn_protocol().map(<[u8]>::to_vec);
    let presented = session.peer_certificates().unwrap()[0].to_vec();
    (tls, proto, presented)
}

type Empty = http_body_util::Empty<Bytes>;

/// The test's request, in `version`.
fn tls_get(version: hyper::Version) -> hyper::Request<Empty> {
    hyper::Request::builder()
        .uri("https://localhost/tls")
        .version(version)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap()
}

/// Status, version and whole body of a response.
async fn read(
    resp: hyper::Result<hyper::Response<hyper::body::Incoming>>,
) -> (hyper::StatusCode, hyper::Version, Bytes) {
    let (parts, body) = resp.unwrap().into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    (parts.status, parts.version, body)
}

/// The proxy at the edge: clients speak TLS to it (HTTP/1.1 and, by ALPN,
/// HTTP/2), the origin behind it is plain HTTP; a replaced certificate is
/// presented to the next connection while open ones keep working.
#[tokio::test]
async fn clients_over_tls_h1_and_h2_and_a_swapped_certificate() {
    let origin =
        start_origin(|_, n| Reply::ok(format!("v{n}"), &[("cache-control", "max-age=60")])).await;
    let dir = tempfile::tempdir().unwrap();
    let (first, first_der) = self_signed(dir.path(), "first");
    let toml = format!(
        "{BASIC}[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        first.cert.display(),
        first.key.display()
    )
    .replace("{origin}", &origin.url());
    let cfg = vaeproxy::config::Config::from_toml(&toml).unwrap();
    let limits = cfg.limits.clone();
    let acceptor = vaeproxy::tls::Acceptor::new(
        vaeproxy::tls::server_config(cfg.tls.as_ref().unwrap()).unwrap(),
    );
    let proxy = vaeproxy::server::build(cfg, codec()).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = acceptor.clone();
    tokio::spawn(async move {
        vaeproxy::server::run_tls(
            listener,
            proxy,
            &limits,
            served,
            std::future::pending::<()>(),
        )
        .await
    });

    // HTTP/1.1
    let (tls, proto, presented) = tls_connect(addr, &first_der, b"http/1.1").await;
    assert_eq!(proto.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(presented, first_der);
    let (mut h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (status, version, body) =
        read(h1.send_request(tls_get(hyper::Version::HTTP_11)).await).await;
    assert_eq!(
        (status.as_u16(), version, &body[..]),
        (200, hyper::Version::HTTP_11, &b"v1"[..])
    );

    // HTTP/2, chosen by ALPN; the cached copy
    let (tls, proto, _) = tls_connect(addr, &first_der, b"h2").await;
    assert_eq!(proto.as_deref(), Some(&b"h2"[..]));
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let (status, version, body) =
        read(h2.send_request(tls_get(hyper::Version::HTTP_2)).await).await;
    assert_eq!(
        (status.as_u16(), version, &body[..]),
        (200, hyper::Version::HTTP_2, &b"v1"[..])
    );

    // A plain-HTTP request to the TLS port gets no HTTP answer.
    let mut raw = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw.write_all(b"GET /tls HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ =
        tokio::time::timeout(std::time::Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
    assert!(
        !buf.starts_with(b"HTTP/"),
        "{}",
        String::from_utf8_lossy(&buf)
    );

    // The certificate is replaced (as a SIGHUP reload does): new connections
    // see the new one, the open HTTP/1.1 connection goes on working.
    let (second, second_der) = self_signed(dir.path(), "second");
    acceptor.replace(vaeproxy::tls::server_config(&second).unwrap());
    let (_, _, presented) = tls_connect(addr, &second_der, b"h2").await;
    assert_eq!(presented, second_der);
    let (status, _, _) = read(h1.send_request(tls_get(hyper::Version::HTTP_11)).await).await;
    assert_eq!(status.as_u16(), 200);
    assert_eq!(
        origin.count("/tls"),
        1,
        "both protocols were served from one cache"
    );
}
