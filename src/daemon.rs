//! The proxy as a process: both listeners bound, the proxy built, SIGHUP
//! turned into reloads, SIGTERM/Ctrl-C into one shutdown for both
//! listeners. `vaeproxy serve` is this plus logging and loading the weights.

use crate::config::{Config, Source};
use crate::proxy::Proxy;
use crate::shutdown::{self, Reloads, Trigger};
use crate::Codec;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the process could not start serving.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{what} {addr}: {source}")]
    /// A listener could not bind.
    Bind {
        /// Which listener (`listen`, `admin.listen`).
        what: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        #[source]
        /// What the OS said.
        source: std::io::Error,
    },
    #[error(transparent)]
    /// The proxy could not be built from the configuration.
    Start(#[from] crate::error::StartError),
    #[error(transparent)]
    /// The `[tls]` certificate or key cannot be used.
    Tls(#[from] crate::tls::TlsError),
    #[error("SIGHUP handler: {0}")]
    /// The signal handlers could not be installed.
    Signal(#[source] std::io::Error),
}

/// Serves `cfg` (read from `source`, which a reload reads again) until
/// SIGTERM or Ctrl-C, then lets in-flight requests finish.
pub async fn run(cfg: Config, source: Source, codec: Arc<Codec>) -> Result<(), DaemonError> {
    let bind = |what, addr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| DaemonError::Bind { what, addr, source })
    };
    let listener = bind("listen", cfg.listen).await?;
    let admin = match cfg.admin.enabled {
        true => Some(bind("admin.listen", cfg.admin.listen).await?),
        false => None,
    };
    let limits = cfg.limits.clone();
    let routes: Vec<String> = cfg.routes.iter().map(|r| r.origin.clone()).collect();
    let tls = match &cfg.tls {
        Some(t) => Some(crate::tls::Acceptor::new(crate::tls::server_config(t)?)),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let proxy = crate::server::build(cfg, codec).await?;
    // Registered before the ready line, so a reload right after it is never lost.
    let reloads = shutdown::reloads().map_err(DaemonError::Signal)?;
    tokio::spawn(reload_on_signal(
        reloads,
        source,
        proxy.clone(),
        tls.clone(),
    ));
    let addr = |l: &TcpListener| l.local_addr().map_or("?".into(), |a| a.to_string());
    tracing::info!(
        "vaeproxy listening on {scheme}://{} (admin {}; model {}, origins: {})",
        addr(&listener),
        admin
            .as_ref()
            .map_or("off".to_string(), |a| format!("http://{}", addr(a))),
        proxy.pool().codec().id().to_hex(),
        routes.join(", ")
    );
    let stop = Trigger::new();
    let public = async {
        match tls {
            Some(t) => {
                crate::server::run_tls(listener, proxy.clone(), &limits, t, stop.wait()).await
            }
            None => crate::server::run(listener, proxy.clone(), &limits, stop.wait()).await,
        }
    };
    let ops = async {
        if let Some(a) = admin {
            crate::server::run_admin(a, proxy.clone(), &limits, stop.wait()).await;
        }
    };
    let signal = async {
        shutdown::signal().await;
        stop.fire();
    };
    tokio::join!(public, ops, signal);
    Ok(())
}

/// SIGHUP: re-read the configuration (and the TLS certificate) the way
/// startup did; on any error the running one stays and the error is logged.
async fn reload_on_signal(
    mut reloads: Reloads,
    source: Source,
    proxy: Proxy,
    tls: Option<crate::tls::Acceptor>,
) {
    let m = proxy.metrics().clone();
    while reloads.recv().await {
        let outcome = source.load().map_err(|e| e.to_string()).and_then(|cfg| {
            // the new certificate is read before anything changes, so a bad
            // file leaves both the old config and the old certificate
            let wants_tls = cfg.tls.is_some();
            let cert = match (&tls, &cfg.tls) {
                (Some(_), Some(t)) => {
                    Some(crate::tls::server_config(t).map_err(|e| e.to_string())?)
                }
                _ => None,
            };
            let mut restart = proxy.reload(cfg).map_err(|e| e.to_string())?;
            match (&tls, cert) {
                (Some(acceptor), Some(cert)) => acceptor.replace(cert),
                (Some(_), None) => restart.push("tls (off)"),
                (None, _) if wants_tls => restart.push("tls (on)"),
                (None, _) => {}
            }
            Ok(restart)
        });
        match outcome {
            Ok(restart) => {
                m.ops.reloads.with_label_values(&["ok"]).inc();
                tracing::info!("SIGHUP: configuration reloaded from {}", source.describe());
                if !restart.is_empty() {
                    tracing::warn!(
                        "SIGHUP: changes to {} take effect only after a restart",
                        restart.join(", ")
                    );
                }
            }
            Err(e) => {
                m.ops.reloads.with_label_values(&["error"]).inc();
                tracing::error!("SIGHUP: reload failed, the running configuration stays: {e}");
            }
        }
    }
}
