//! Per-key admission: at most N requests in progress per key (a device), so one client cannot take
//! every slot of a shared limit. And [`SingleFlight`]: one run of a check at a time, shared by
//! everyone who asks while it runs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};

/// Counts requests in progress per key; a key's entry disappears when its count drops to zero, so
/// the map never holds more keys than requests in progress.
pub struct KeyedLimiter {
    per_key: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// A request's place; dropping it frees the place.
pub struct KeyedPermit {
    limiter: Arc<KeyedLimiter>,
    key: String,
}

impl KeyedLimiter {
    pub fn new(per_key: usize) -> Arc<Self> {
        Arc::new(KeyedLimiter {
            per_key: per_key.max(1),
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for `key`, or `None` when it already has `per_key` requests in progress.
    pub fn try_acquire(self: &Arc<Self>, key: &str) -> Option<KeyedPermit> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(key.to_string()).or_insert(0);
        if *count >= self.per_key {
            return None;
        }
        *count += 1;
        Some(KeyedPermit {
            limiter: self.clone(),
            key: key.to_string(),
        })
    }
}

impl Drop for KeyedPermit {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// One run of a computation at a time: whoever asks while a run is in progress gets that run's
/// result, and whoever asks after it ended starts the next. For checks anyone may ask for as
/// often as they like (`/health/readyz`): the work done stays one run at a time, however many ask.
pub struct SingleFlight<T: Clone> {
    running: Mutex<Option<Shared<BoxFuture<'static, T>>>>,
}

impl<T: Clone + Send + Sync + 'static> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            running: Mutex::new(None),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// The result of the run in progress, or of a new run of `start` when none is.
    pub async fn run(&self, start: impl FnOnce() -> BoxFuture<'static, T>) -> T {
        let run = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.as_ref() {
                Some(run) if run.peek().is_none() => run.clone(),
                _ => {
                    let run = start().shared();
                    *running = Some(run.clone());
                    run
                }
            }
        };
        run.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_its_own_places_and_they_come_back() {
        let limiter = KeyedLimiter::new(2);
        let a1 = limiter.try_acquire("a").unwrap();
        let _a2 = limiter.try_acquire("a").unwrap();
        assert!(limiter.try_acquire("a").is_none());
        let _b1 = limiter.try_acquire("b").unwrap();
        drop(a1);
        assert!(limiter.try_acquire("a").is_some());
    }

    #[test]
    fn idle_keys_leave_the_map() {
        let limiter = KeyedLimiter::new(1);
        drop(limiter.try_acquire("gone"));
        assert!(limiter.counts.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_single_flight_shares_the_run_in_progress_and_starts_the_next_after_it() {
        let flight = Arc::new(SingleFlight::<usize>::default());
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let released = released.shared();
        let start = |runs: Arc<std::sync::atomic::AtomicUsize>, gate: Option<_>| {
            move || -> BoxFuture<'static, usize> {
                let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Box::pin(async move {
                    if let Some(gate) = gate {
                        let _ = gate.await;
                    }
                    n
                })
            }
        };
        let first = tokio::spawn({
            let (flight, runs, gate) = (flight.clone(), runs.clone(), released.clone());
            async move { flight.run(start(runs, Some(gate))).await }
        });
        // The first run is in progress (held at its gate): others share it.
        while runs.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let (flight, runs, gate) = (flight.clone(), runs.clone(), released.clone());
            async move { flight.run(start(runs, Some(gate))).await }
        });
        // Until the second holds the run too (the stored one, the first's and its own).
        let holders = || {
            let running = flight.running.lock().unwrap();
            running.as_ref().and_then(|run| run.strong_count())
        };
        while holders() < Some(3) {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!((first.await.unwrap(), second.await.unwrap()), (1, 1));
        // After it ended, the next caller starts a run of its own.
        assert_eq!(flight.run(start(runs.clone(), None)).await, 2);
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
