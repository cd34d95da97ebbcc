//! Signals. The server stops accepting when the future returned by
//! [`signal`] (or any future a test passes instead) completes, then lets
//! in-flight requests finish (see `server::run`); a [`Trigger`] hands that
//! one event to both listeners. SIGHUP is not a shutdown: [`reloads`]
//! delivers it to the reload task.

use tokio::sync::watch;

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
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// One shutdown event for several waiters, including ones that start
/// waiting after it fired.
#[derive(Debug)]
pub struct Trigger {
    tx: watch::Sender<bool>,
}

impl Default for Trigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Trigger {
    /// A trigger not yet fired.
    pub fn new() -> Trigger {
        Trigger {
            tx: watch::channel(false).0,
        }
    }

    /// Fires it: every waiter wakes, and later waits return at once.
    pub fn fire(&self) {
        self.tx.send_replace(true);
    }

    /// Completes once [`Trigger::fire`] has been called.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + 'static {
        let mut rx = self.tx.subscribe();
        async move {
            let _ = rx.wait_for(|fired| *fired).await;
        }
    }
}

/// SIGHUPs, as a stream of reload requests. Once this exists, SIGHUP no
/// longer has its default action (ending the process).
#[derive(Debug)]
pub struct Reloads {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
}

/// Starts listening for SIGHUP (must run inside the runtime).
pub fn reloads() -> std::io::Result<Reloads> {
    Ok(Reloads {
        #[cfg(unix)]
        hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
    })
}

impl Reloads {
    /// The next reload request; `false` when no more can come.
    pub async fn recv(&mut self) -> bool {
        #[cfg(unix)]
        return self.hup.recv().await.is_some();
        #[cfg(not(unix))]
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_reaches_early_and_late_waiters() {
        let t = Trigger::new();
        let early = tokio::spawn(t.wait());
        t.fire();
        early.await.unwrap();
        t.wait().await;
    }
}
