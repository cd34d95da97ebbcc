//! Shutdown signals. The server stops accepting when the future returned by
//! [`signal`] (or any future a test passes instead) completes, then lets
//! in-flight requests finish (see `server::run`).

/// Completes on Ctrl-C or, on Unix, SIGTERM (what `docker stop` and systemd send).
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await,
            };
        // SIGHUP's default action kills the process: an operator's
        // `kill -HUP` (the usual "reload") must not take the proxy down.
        let hup = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(mut hup) => loop {
                    hup.recv().await;
                    tracing::warn!("SIGHUP: configuration reload is not supported yet; ignored");
                },
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
            _ = hup => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}
