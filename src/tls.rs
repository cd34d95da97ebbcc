//! TLS toward clients, so the proxy can stand at the edge: a certificate
//! chain and key from PEM files (`[tls] cert`, `key`), ALPN offering h2 and
//! http/1.1, and a certificate that a SIGHUP reload replaces without
//! dropping a connection (what an operator renewing certificates needs).
//! The handshake runs in the connection's own task under the header
//! deadline, so a client that never finishes it holds only its own slot.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The `[tls]` section: where the certificate and key are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file is unreadable or holds no usable PEM item.
    #[error("tls.{key}: {}: {reason}", path.display())]
    File {
        /// `cert` or `key`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the pair (e.g. the key does not match the certificate).
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Reads the files and builds the server side of TLS.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let file_err = |key, path: &Path, reason: String| TlsError::File {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(&cfg.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_err("cert", &cfg.cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_err("cert", &cfg.cert, "no certificate in it".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key)
        .map_err(|e| file_err("key", &cfg.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(server))
}

/// The acceptor the public listener uses; [`Acceptor::replace`] swaps the
/// certificate for connections accepted from then on. Clones share it.
#[derive(Clone)]
pub struct Acceptor(Arc<RwLock<Arc<ServerConfig>>>);

impl Acceptor {
    /// An acceptor presenting `cfg`'s certificate.
    pub fn new(cfg: Arc<ServerConfig>) -> Acceptor {
        Acceptor(Arc::new(RwLock::new(cfg)))
    }

    /// The acceptor for the next connection.
    pub fn current(&self) -> tokio_rustls::TlsAcceptor {
        // a poisoned lock still holds a complete config: the swap is one store
        let cfg = self.0.read().unwrap_or_else(|e| e.into_inner());
        tokio_rustls::TlsAcceptor::from(Arc::clone(&cfg))
    }

    /// Presents `cfg` to new connections; open ones keep theirs.
    pub fn replace(&self, cfg: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = cfg;
    }
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path) -> TlsConfig {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cfg = TlsConfig {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        };
        std::fs::write(&cfg.cert, cert.pem()).unwrap();
        std::fs::write(&cfg.key, key.serialize_pem()).unwrap();
        cfg
    }

    #[test]
    fn loads_a_pair_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_pair(dir.path());
        let server = server_config(&cfg).unwrap();
        assert_eq!(server.alpn_protocols[0], b"h2");
        // the key file given as the certificate: no certificate in it
        let swapped = TlsConfig {
            cert: cfg.key.clone(),
            key: cfg.key.clone(),
        };
        let e = server_config(&swapped).unwrap_err().to_string();
        assert!(
            e.starts_with("tls.cert: ") && e.contains("no certificate"),
            "{e}"
        );
        // a key that does not belong to the certificate
        let other_dir = dir.path().join("other");
        std::fs::create_dir_all(&other_dir).unwrap();
        let other = write_pair(&other_dir);
        let mismatched = TlsConfig {
            cert: cfg.cert.clone(),
            key: other.key,
        };
        let e = server_config(&mismatched).unwrap_err().to_string();
        assert!(e.starts_with("tls"), "{e}");
        let missing = TlsConfig {
            cert: dir.path().join("nope.pem"),
            key: cfg.key,
        };
        let e = server_config(&missing).unwrap_err().to_string();
        assert!(e.contains("tls.cert") && e.contains("nope.pem"), "{e}");
    }
}
