//! What devices run and when they were last heard from (SPEC §15): `devices.running_firmware_version`
//! and `devices.last_seen_at`, the denominator of crash rates per firmware version.
//!
//! Devices report their version with the `firmware_version` of core-dump uploads and, on any
//! device request, an optional `X-Firmware-Version` header (validated like stored firmware
//! versions; an invalid value is ignored, never a failed request). Devices poll often, so a
//! request only notes what it saw in a small in-process map ([`Presence::observe`]: a mutex and a
//! hash map, no I/O, nothing on the request's path that waits) and a background task
//! ([`run_worker`]) writes what was noted every `min(WORKER_POLL_SECONDS, 5 s)`.
//!
//! A device is written again only when it reports another version or when its last write is
//! [`WRITE_INTERVAL`] (60 s) old. So, per process: a version change is in the database within
//! the flush interval; `last_seen_at` lags the device's latest request by at most 60 s plus the
//! flush interval. A process that stops abruptly loses at most one flush interval of
//! observations (the next request notes them again). Processes sharing the database each write
//! their own observations; the database keeps the newest by time (`record_presence`), so an
//! older observation flushed late never moves `last_seen_at` back or replaces a newer version.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::db::{self, Db};

/// How long a device's unchanged report is not written again.
pub const WRITE_INTERVAL: Duration = Duration::from_secs(60);
/// Devices remembered per process (about 90 bytes each). It must hold every device that polls
/// within [`WRITE_INTERVAL`]: a device forgotten before its next poll is written at every poll.
/// Past it, writes older than the interval are forgotten first (they are due again anyway),
/// and if that frees less than a 64th, all of them (which costs one extra write per device).
const CAPACITY: usize = 262_144;
/// The longest time between flushes.
const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// One observation of a device, waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub at: DateTime<Utc>,
    /// The version it reported, if it reported one.
    pub version: Option<String>,
}

struct Written {
    at: Instant,
    version: Option<String>,
}

#[derive(Default)]
struct State {
    pending: HashMap<i64, Observation>,
    written: HashMap<i64, Written>,
}

/// The per-process record of device observations not yet written.
#[derive(Default)]
pub struct Presence {
    state: Mutex<State>,
}

impl Presence {
    /// Notes that device `device_id` was heard from now, running `version` if it said so (already
    /// validated). Cheap: no I/O.
    pub fn observe(&self, device_id: i64, version: Option<&str>) {
        self.observe_at(device_id, version, Instant::now());
    }

    fn observe_at(&self, device_id: i64, version: Option<&str>, now: Instant) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let known = state.written.get(&device_id).map(|w| w.version.clone());
        if let Some(w) = state.written.get(&device_id) {
            let same_version = version.is_none() || w.version.as_deref() == version;
            if same_version && now.duration_since(w.at) < WRITE_INTERVAL {
                return;
            }
        }
        if state.pending.len() >= CAPACITY && !state.pending.contains_key(&device_id) {
            // Writes are failing for long: drop this one (the device will be seen again).
            return;
        }
        if state.written.len() >= CAPACITY && known.is_none() {
            state
                .written
                .retain(|_, w| now.saturating_duration_since(w.at) < WRITE_INTERVAL);
            // Too little freed (a fleet a bit larger than the map, every device polling within
            // the interval) would walk the whole map again for almost every new device, under
            // the lock every device request takes: start over instead. With at least a 64th
            // freed, a walk costs at most 64 entries per device noted until the next one.
            if state.written.len() > CAPACITY - CAPACITY / 64 {
                state.written.clear();
            }
        }
        let version = version.map(str::to_string);
        let earlier = state
            .pending
            .get(&device_id)
            .and_then(|o| o.version.clone());
        state.written.insert(
            device_id,
            Written {
                at: now,
                version: version.clone().or(known.flatten()),
            },
        );
        state.pending.insert(
            device_id,
            Observation {
                at: db::now(),
                version: version.or(earlier),
            },
        );
    }

    /// Takes the observations waiting to be written.
    pub fn take(&self) -> Vec<(i64, Observation)> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut state.pending).into_iter().collect()
    }

    /// Puts back observations whose write failed, unless a newer one was noted meanwhile.
    fn put_back(&self, failed: Vec<(i64, Observation)>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for (id, observation) in failed {
            state.pending.entry(id).or_insert(observation);
        }
    }

    /// Writes the waiting observations; returns how many were written.
    pub async fn flush(&self, db: &Db) -> usize {
        let observations = self.take();
        let mut written = 0;
        let mut failed = Vec::new();
        let mut error = None;
        for (id, observation) in observations {
            if error.is_some() {
                failed.push((id, observation));
                continue;
            }
            match db::devices::record_presence(
                db,
                id,
                observation.at,
                observation.version.as_deref(),
            )
            .await
            {
                Ok(()) => written += 1,
                Err(e) => {
                    error = Some(e);
                    failed.push((id, observation));
                }
            }
        }
        if let Some(e) = error {
            tracing::warn!(error = %e, unwritten = failed.len(), "device_presence_flush_failed");
            self.put_back(failed);
        }
        written
    }
}

/// How often [`run_worker`] flushes: the worker poll interval, at most 5 s.
pub fn flush_interval(worker_poll: Duration) -> Duration {
    worker_poll.min(MAX_FLUSH_INTERVAL)
}

/// Flushes `presence` every `interval` until `shutdown`, then once more.
pub async fn run_worker(
    presence: std::sync::Arc<Presence>,
    db: Db,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(interval) => {}
        }
        presence.flush(&db).await;
    }
    presence.flush(&db).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(p: &Presence) -> Vec<(i64, Option<String>)> {
        let mut taken: Vec<_> = p
            .take()
            .into_iter()
            .map(|(id, o)| (id, o.version))
            .collect();
        taken.sort();
        taken
    }

    #[test]
    fn a_full_memory_forgets_the_writes_that_are_due_again_first() {
        let p = Presence::default();
        let t0 = Instant::now();
        let half = (CAPACITY / 2) as i64;
        for id in 0..half {
            p.observe_at(id, None, t0);
        }
        for id in half..2 * half {
            p.observe_at(id, None, t0 + Duration::from_secs(50));
        }
        p.take();
        // A new device finds the memory full, 70 s in: the first half's writes are due anyway.
        let later = t0 + Duration::from_secs(70);
        p.observe_at(2 * half, None, later);
        assert_eq!(pending(&p), [(2 * half, None)]);
        // The second half was written 20 s ago: a poll of one of them is still not written.
        p.observe_at(half, None, later);
        p.observe_at(0, None, later);
        assert_eq!(pending(&p), [(0, None)]);
    }

    #[test]
    fn a_full_memory_that_frees_too_little_starts_over() {
        let p = Presence::default();
        let t0 = Instant::now();
        let few = (CAPACITY / 128) as i64;
        for id in 0..CAPACITY as i64 {
            let at = if id < few {
                t0
            } else {
                t0 + Duration::from_secs(50)
            };
            p.observe_at(id, None, at);
        }
        p.take();
        let later = t0 + Duration::from_secs(70);
        p.observe_at(-1, None, later);
        assert_eq!(
            p.state.lock().unwrap().written.len(),
            1,
            "walked again next time"
        );
    }

    #[test]
    fn a_device_is_written_once_a_minute_unless_its_version_changes() {
        let p = Presence::default();
        p.observe(1, Some("1.0"));
        p.observe(2, None);
        assert_eq!(pending(&p), [(1, Some("1.0".into())), (2, None)]);
        // Polls with the same version, or without saying: nothing new to write.
        p.observe(1, Some("1.0"));
        p.observe(1, None);
        p.observe(2, None);
        assert_eq!(pending(&p), []);
        // Another version is written at once.
        p.observe(1, Some("1.1"));
        p.observe(2, Some("2.0"));
        assert_eq!(
            pending(&p),
            [(1, Some("1.1".into())), (2, Some("2.0".into()))]
        );
    }

    #[test]
    fn a_report_without_a_version_does_not_forget_one_waiting_to_be_written() {
        let p = Presence::default();
        p.observe(1, Some("1.0"));
        // Noted a minute ago (simulated): the next observation is due.
        let mut state = p.state.lock().unwrap();
        let noted = state.written.get_mut(&1).unwrap();
        noted.at = noted.at.checked_sub(WRITE_INTERVAL).unwrap();
        drop(state);
        p.observe(1, None);
        assert_eq!(pending(&p), [(1, Some("1.0".into()))]);
    }
}
