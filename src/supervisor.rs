//! The background workers of `serve` (outbox, jobs, MQTT publisher and log intake, presence,
//! rotation, reconcile), watched.
//!
//! Each worker runs until the process's shutdown token fires. One that ends before it (a panic,
//! or a worker that gave up: the MQTT log intake ends once its client's event loop has died)
//! would leave a process that still answers requests and looks ready, but no longer does part of
//! its job: notifications pile up, device logs stop, deletions wait for ever. Restarting a
//! worker in place could repeat whatever killed it, and would not revive the MQTT client it
//! shares with the others. So the first worker to end early stops the whole process, gracefully,
//! with an error (exit status 1): its supervisor (systemd's `Restart=on-failure`, Docker's
//! restart policy, Kubernetes) starts a fresh one, as it would after a crash.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// A worker to run: given the shutdown token, the future that runs it until the token fires.
pub type Worker = Box<dyn FnOnce(CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub name: &'static str,
    pub panicked: bool,
}

/// The running workers of one process.
pub struct Workers {
    set: JoinSet<Ended>,
    shutdown: CancellationToken,
}

impl Workers {
    pub fn new(shutdown: CancellationToken) -> Self {
        Self {
            set: JoinSet::new(),
            shutdown,
        }
    }

    /// Runs `worker`, known as `name` in the log and the error if it ends early.
    pub fn spawn(&mut self, name: &'static str, worker: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(async move {
            let panicked = AssertUnwindSafe(worker).catch_unwind().await.is_err();
            Ended { name, panicked }
        });
    }

    /// The next worker that ends early (before shutdown fires), having stopped the process
    /// (fired shutdown) and logged why; never returns while none does. Workers that end after
    /// shutdown are taken from the set on the way and not reported.
    pub async fn ended_early(&mut self) -> Ended {
        loop {
            let Some(joined) = self.set.join_next().await else {
                return std::future::pending().await;
            };
            let ended = match joined {
                Ok(ended) => ended,
                // Not a panic (each worker catches its own), so cancelled: only by `abort_all`.
                Err(_) => continue,
            };
            if self.shutdown.is_cancelled() {
                continue;
            }
            tracing::error!(
                worker = ended.name,
                panicked = ended.panicked,
                "worker_ended_early: stopping the process, so that its supervisor starts a new one"
            );
            self.shutdown.cancel();
            return ended;
        }
    }

    /// Waits for every worker to end.
    pub async fn join_all(&mut self) {
        while self.set.join_next().await.is_some() {}
    }

    /// Cancels every worker still running and waits for them.
    pub async fn abort_all(&mut self) {
        self.set.abort_all();
        self.join_all().await;
    }
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.panicked { "panicked" } else { "stopped" };
        write!(
            f,
            "the {} worker {how} while the service was running; the process stops so that its \
             supervisor can start it again",
            self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_worker_that_ends_early_stops_the_process_and_says_which() {
        let shutdown = CancellationToken::new();
        let mut workers = Workers::new(shutdown.clone());
        let token = shutdown.clone();
        workers.spawn("steady", async move { token.cancelled().await });
        workers.spawn("quitter", async {});
        let ended = workers.ended_early().await;
        assert_eq!(
            ended,
            Ended {
                name: "quitter",
                panicked: false
            }
        );
        assert!(shutdown.is_cancelled());
        tokio::time::timeout(Duration::from_secs(5), workers.join_all())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_panicking_worker_is_reported_as_such() {
        let shutdown = CancellationToken::new();
        let mut workers = Workers::new(shutdown.clone());
        workers.spawn("broken", async { panic!("deliberate") });
        let ended = workers.ended_early().await;
        assert!(ended.panicked);
        assert!(
            ended.to_string().contains("the broken worker panicked"),
            "{ended}"
        );
        assert!(shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn workers_that_end_at_shutdown_are_not_reported() {
        let shutdown = CancellationToken::new();
        let mut workers = Workers::new(shutdown.clone());
        for _ in 0..3 {
            let token = shutdown.clone();
            workers.spawn("steady", async move { token.cancelled().await });
        }
        shutdown.cancel();
        let reported =
            tokio::time::timeout(Duration::from_millis(200), workers.ended_early()).await;
        assert!(reported.is_err(), "{reported:?}");
    }
}
