//! One shutdown for a whole process (the control plane, the host agent,
//! the gateway bridge), the way mini-redis' server does it, on tokio-util's
//! cancellation token and task tracker:
//! every long-running task holds a [`Shutdown`], watches it to stop at a
//! point of its choosing, and drops it when done; the owner of the
//! [`ShutdownSignal`] asks once and then waits until every handle is gone.
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;

/// A task's view of the shutdown.
#[derive(Debug, Clone)]
pub struct Shutdown {
    requested: CancellationToken,
    /// Its drop is what tells the owner this task ended.
    _running: TaskTrackerToken,
}

impl Shutdown {
    pub fn is_requested(&self) -> bool {
        self.requested.is_cancelled()
    }

    /// Resolves once shutdown is asked for (at once if it already was).
    /// Cancel-safe, for `select!` loops.
    pub async fn requested(&mut self) {
        self.requested.cancelled().await
    }
}

/// The owner's side: hands out handles, spawns tasks it waits for, asks
/// for shutdown, waits. Clones share the one shutdown, so a component that
/// starts tasks of its own (a connection's streams, say) can hold one.
#[derive(Debug, Clone, Default)]
pub struct ShutdownSignal {
    requested: CancellationToken,
    running: TaskTracker,
}

impl ShutdownSignal {
    /// A handle for one more task.
    pub fn handle(&self) -> Shutdown {
        Shutdown { requested: self.requested.clone(), _running: self.running.token() }
    }

    /// Runs a task that [`finish`](Self::finish) waits for; it watches
    /// [`requested`](Self::requested) to stop.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.running.spawn(task)
    }

    /// Resolves once shutdown is asked for (at once if it was). Cancel-safe.
    pub async fn requested(&self) {
        self.requested.cancelled().await
    }

    pub fn is_requested(&self) -> bool {
        self.requested.is_cancelled()
    }

    pub fn request(&self) {
        self.requested.cancel();
    }

    /// Asks for shutdown and waits until every handle is dropped and every
    /// spawned task ended, or `grace` passed; false if some task was still
    /// running then.
    pub async fn finish(&self, grace: Duration) -> bool {
        self.requested.cancel();
        self.running.close();
        tokio::time::timeout(grace, self.running.wait()).await.is_ok()
    }
}

/// Resolves at the first SIGTERM or SIGINT, with the signal's name. If the
/// handlers cannot be installed it never resolves (the signals then end the
/// process at once, as they would without handlers).
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

    #[tokio::test]
    async fn the_owner_waits_for_every_spawned_task() {
        let signal = ShutdownSignal::default();
        let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
        let task = signal.clone();
        signal.spawn(async move {
            task.requested().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
        });
        assert!(signal.finish(Duration::from_secs(5)).await);
        assert!(done_rx.try_recv().is_ok(), "the task ran to its end before finish returned");

        let stuck = ShutdownSignal::default();
        stuck.spawn(std::future::pending::<()>());
        assert!(!stuck.finish(Duration::from_millis(50)).await, "a task still running is reported");
    }
}
