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
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Start(#[from] crate::error::StartError),
    #[error("SIGHUP handler: {0}")]
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
    let proxy = crate::server::build(cfg, codec).await?;
    // Registered before the ready line, so a reload right after it is never lost.
    let reloads = shutdown::reloads().map_err(DaemonError::Signal)?;
    tokio::spawn(reload_on_signal(reloads, source, proxy.clone()));
    let addr = |l: &TcpListener| l.local_addr().map_or("?".into(), |a| a.to_string());
    tracing::info!(
        "vaeproxy listening on http://{} (admin {}; model {}, origins: {})",
        addr(&listener),
        admin
            .as_ref()
            .map_or("off".to_string(), |a| format!("http://{}", addr(a))),
        proxy.pool().codec().id().to_hex(),
        routes.join(", ")
    );
    let stop = Trigger::new();
    let public = crate::server::run(listener, proxy.clone(), &limits, stop.wait());
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

/// SIGHUP: re-read the configuration the way startup did; on any error the
/// running one stays and the error is logged.
async fn reload_on_signal(mut reloads: Reloads, source: Source, proxy: Proxy) {
    let m = proxy.metrics().clone();
    while reloads.recv().await {
        let outcome = source
            .load()
            .map_err(|e| e.to_string())
            .and_then(|cfg| proxy.reload(cfg).map_err(|e| e.to_string()));
        match outcome {
            Ok(restart) => {
                m.reloads.with_label_values(&["ok"]).inc();
                tracing::info!("SIGHUP: configuration reloaded from {}", source.describe());
                if !restart.is_empty() {
                    tracing::warn!(
                        "SIGHUP: changes to {} take effect only after a restart",
                        restart.join(", ")
                    );
                }
            }
            Err(e) => {
                m.reloads.with_label_values(&["error"]).inc();
                tracing::error!("SIGHUP: reload failed, the running configuration stays: {e}");
            }
        }
    }
}
