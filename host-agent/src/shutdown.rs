//! One shutdown for the whole agent, the way mini-redis' server does it:
//! every long-running task holds a [`Shutdown`], watches it to stop at a
//! point of its choosing, and drops it when done; the owner of the
//! [`ShutdownSignal`] asks once and then waits until every handle is gone.
use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// A task's view of the shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requested: watch::Receiver<bool>,
    /// Never sent on: its drop is what tells the owner this task ended.
    _running: mpsc::Sender<()>,
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        *self.requested.borrow()
    }

    /// Resolves once shutdown is asked for (at once if it already was).
    /// Cancel-safe, for `select!` loops.
    pub async fn requested(&mut self) {
        // An owner gone without asking is a shutdown as well.
        let _ = self.requested.wait_for(|requested| *requested).await;
    }
}

/// The owner's side: hands out handles, asks for shutdown, waits.
#[derive(Debug)]
pub struct ShutdownSignal {
    request: watch::Sender<bool>,
    running_tx: mpsc::Sender<()>,
    running_rx: mpsc::Receiver<()>,
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        let (request, _) = watch::channel(false);
        let (running_tx, running_rx) = mpsc::channel(1);
        ShutdownSignal { request, running_tx, running_rx }
    }
}

impl ShutdownSignal {
    /// A handle for one more task.
    pub fn handle(&self) -> Shutdown {
        Shutdown { requested: self.request.subscribe(), _running: self.running_tx.clone() }
    }

    pub fn request(&self) {
        self.request.send_replace(true);
    }

    /// Asks for shutdown and waits until every handle is dropped, or
    /// `grace` passed; false if some task was still running then.
    pub async fn finish(self, grace: Duration) -> bool {
        let ShutdownSignal { request, running_tx, mut running_rx } = self;
        request.send_replace(true);
        drop(running_tx);
        tokio::time::timeout(grace, running_rx.recv()).await.is_ok()
    }
}

/// Resolves at the first SIGTERM or SIGINT, with the signal's name. If the
/// handlers cannot be installed it never resolves (the signals then end the
/// agent at once, as they would without handlers).
pub async fn signalled() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut terminate), Ok(mut interrupt)) => tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        },
        (Err(err), _) | (_, Err(err)) => {
            tracing::warn!(error = %err, "cannot handle SIGTERM and SIGINT");
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_owner_waits_for_every_handle() {
        let signal = ShutdownSignal::default();
        let mut task = signal.handle();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            task.requested().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
            drop(task);
        });
        assert!(signal.finish(Duration::from_secs(5)).await, "the task ended within the grace");
        done_rx.await.expect("the task ran to its end before finish returned");

        let signal = ShutdownSignal::default();
        let stuck = signal.handle();
        assert!(!signal.finish(Duration::from_millis(50)).await, "a task still holding its handle is reported");
        assert!(stuck.is_requested());
    }
}
