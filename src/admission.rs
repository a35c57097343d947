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
///
/// A run is a task of its own, so it finishes even when everyone who asked has gone (a probe
/// that timed out and closed its connection must not leave a check parked half-way, holding what
/// it took). A run older than the `max_age` given to [`Self::run`] is not shared: its answer would
/// be stale (nobody may have collected it since it ended).
///
/// Made with [`Self::reusing`], a run that has ended also answers whoever asks within that time
/// of its start: one client asking again and again (the routes are unauthenticated) then costs
/// one run per that time, not one per request.
pub struct SingleFlight<T: Clone> {
    running: Mutex<Option<(std::time::Instant, Run<T>)>>,
    reuse_finished_for: std::time::Duration,
}

/// A run as its callers share it: its answer, `None` if it panicked.
type Run<T> = Shared<BoxFuture<'static, Option<T>>>;

impl<T: Clone + Send + Sync + 'static> Default for SingleFlight<T> {
    fn default() -> Self {
        SingleFlight {
            running: Mutex::new(None),
            reuse_finished_for: std::time::Duration::ZERO,
        }
    }
}

impl<T: Clone + Send + Sync + 'static> SingleFlight<T> {
    /// A single flight whose ended runs answer for `fresh_for` from their start.
    pub fn reusing(fresh_for: std::time::Duration) -> Self {
        SingleFlight {
            running: Mutex::new(None),
            reuse_finished_for: fresh_for,
        }
    }

    /// The result of the run in progress (started within `max_age`), or of a new run of `start`;
    /// `None` when the run panicked.
    pub async fn run(
        &self,
        max_age: std::time::Duration,
        start: impl FnOnce() -> BoxFuture<'static, T>,
    ) -> Option<T> {
        let run = {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            match running.as_ref() {
                Some((started, run))
                    if started.elapsed() < max_age
                        && (run.peek().is_none()
                            || started.elapsed() < self.reuse_finished_for) =>
                {
                    run.clone()
                }
                _ => {
                    let task = tokio::spawn(start());
                    let run = async move { task.await.ok() }.boxed().shared();
                    *running = Some((std::time::Instant::now(), run.clone()));
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
            async move { flight.run(AGE, start(runs, Some(gate))).await }
        });
        // The first run is in progress (held at its gate): others share it.
        while runs.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let second = tokio::spawn({
            let (flight, runs, gate) = (flight.clone(), runs.clone(), released.clone());
            async move { flight.run(AGE, start(runs, Some(gate))).await }
        });
        // Until the second holds the run too (the stored one, the first's and its own).
        let holders = || {
            let running = flight.running.lock().unwrap();
            running.as_ref().and_then(|(_, run)| run.strong_count())
        };
        while holders() < Some(3) {
            tokio::task::yield_now().await;
        }
        release.send(()).unwrap();
        assert_eq!(
            (first.await.unwrap(), second.await.unwrap()),
            (Some(1), Some(1))
        );
        // After it ended, the next caller starts a run of its own.
        assert_eq!(flight.run(AGE, start(runs.clone(), None)).await, Some(2));
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    const AGE: std::time::Duration = std::time::Duration::from_secs(3600);

    #[tokio::test]
    async fn an_ended_run_answers_for_its_reuse_time_then_the_next_starts() {
        let flight = SingleFlight::<usize>::reusing(std::time::Duration::from_millis(300));
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ask = || {
            let runs = runs.clone();
            flight.run(AGE, move || {
                let n = runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                Box::pin(async move { n })
            })
        };
        assert_eq!(ask().await, Some(1));
        // Asked again at once, in a loop: the ended run answers.
        for _ in 0..50 {
            assert_eq!(ask().await, Some(1));
        }
        tokio::time::sleep(std::time::Duration::from_millis(350)).await;
        assert_eq!(ask().await, Some(2));
    }

    #[tokio::test]
    async fn a_run_everyone_gave_up_on_still_finishes() {
        let flight = SingleFlight::<()>::default();
        let (finished, done) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let asked = flight.run(AGE, move || {
            Box::pin(async move {
                let _ = released.await;
                let _ = finished.send(());
            })
        });
        // The only caller goes away before the run ends.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), asked)
                .await
                .is_err()
        );
        release.send(()).unwrap();
        done.await.expect("the abandoned run finished");
    }

    #[tokio::test]
    async fn a_run_older_than_the_age_asked_for_is_not_shared() {
        let flight = SingleFlight::<usize>::default();
        let (_hold, held) = tokio::sync::oneshot::channel::<()>();
        let stuck = flight.run(AGE, move || {
            Box::pin(async move {
                let _ = held.await;
                1
            })
        });
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(10), stuck)
                .await
                .is_err()
        );
        // A run still in progress but older than asked for: a new one.
        let fresh = flight.run(std::time::Duration::ZERO, || Box::pin(async { 2 }));
        assert_eq!(fresh.await, Some(2));
        // A run that panicked answers None, and the next caller starts another.
        let panicked = flight.run(AGE, || Box::pin(async { panic!("a check failed") }));
        assert_eq!(panicked.await, None);
        assert_eq!(flight.run(AGE, || Box::pin(async { 3 })).await, Some(3));
    }
}
