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
