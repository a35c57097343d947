//! Slowing down repeated failures for one key: at the token endpoint a client id at one client
//! address, on the device API a device key at one client address, for the admin token a client
//! address (`crate::http::client_addr`). Below, "client id" is whatever the key names.
//!
//! The first [`FREE_FAILURES`] failures cost nothing (a device with a stale secret retries a few
//! times). After that each failure closes the client id for an exponentially growing time (1 s,
//! 2 s, 4 s … at most [`MAX_BLOCK`]); while closed, requests for it are answered 429 without the
//! secret being checked, so guessing gets no faster with more requests. A success resets it; a
//! quiet quarter of an hour forgets it. State is per process and bounded ([`CAPACITY`] client
//! ids; the stalest one still within its free failures is forgotten first, one that was ever
//! closed never early), so requests for made-up client ids cannot grow it, reopen a closed one or
//! reset one's back-off. Callers record well-formed client ids only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FREE_FAILURES: u32 = 5;
pub const MAX_BLOCK: Duration = Duration::from_secs(60);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
const CAPACITY: usize = 10_000;
/// Where failures of keys that find the map full of closed entries are counted, together: an
/// attacker who closed [`CAPACITY`] keys must not get unthrottled guesses for every new one.
const OVERFLOW: &str = "\0overflow";

struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last_failure: Instant,
}

#[derive(Default)]
pub struct FailureThrottle {
    entries: Mutex<HashMap<String, Entry>>,
}

impl FailureThrottle {
    /// `Err(retry_after)` while `client_id` is closed.
    pub fn check(&self, client_id: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = match entries.get(client_id) {
            Some(entry) => Some(entry),
            // Not recorded: perhaps because the map is full, then the shared count stands for it.
            None if entries.len() >= CAPACITY => entries.get(OVERFLOW),
            None => None,
        };
        match entry.and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    pub fn failed(&self, client_id: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if !entries.contains_key(client_id) && entries.len() >= CAPACITY {
            entries.retain(|_, e| now.duration_since(e.last_failure) < FORGET_AFTER);
            if entries.len() >= CAPACITY {
                // The stalest entry still within its free failures: evicting a closed one
                // would reopen it to whoever sends failures for enough other ids, and evicting
                // one whose block has ended would reset its back-off (the next block 1 s again,
                // not the 60 s it had grown to).
                let stalest = entries
                    .iter()
                    .filter(|(k, e)| k.as_str() != OVERFLOW && e.failures <= FREE_FAILURES)
                    .min_by_key(|(_, e)| e.last_failure)
                    .map(|(k, _)| k.clone());
                match stalest {
                    Some(stalest) => {
                        entries.remove(&stalest);
                    }
                    // Every entry has been closed: counted with the others that found it so.
                    None => {
                        record(&mut entries, OVERFLOW, now);
                        return;
                    }
                }
            }
        }
        record(&mut entries, client_id, now);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }

    pub fn succeeded(&self, client_id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(client_id);
    }
}

/// One more failure of `key`, closing it past [`FREE_FAILURES`].
fn record(entries: &mut HashMap<String, Entry>, key: &str, now: Instant) {
    let entry = entries.entry(key.to_string()).or_insert(Entry {
        failures: 0,
        blocked_until: None,
        last_failure: now,
    });
    if now.duration_since(entry.last_failure) >= FORGET_AFTER {
        entry.failures = 0;
    }
    entry.failures += 1;
    entry.last_failure = now;
    if entry.failures > FREE_FAILURES {
        let exponent = (entry.failures - FREE_FAILURES - 1).min(16);
        let block = Duration::from_secs(1u64 << exponent).min(MAX_BLOCK);
        entry.blocked_until = Some(now + block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_failures_are_free_then_the_client_id_closes() {
        let t = FailureThrottle::default();
        for _ in 0..FREE_FAILURES {
            assert!(t.check("a").is_ok());
            t.failed("a");
        }
        assert!(t.check("a").is_ok());
        t.failed("a");
        let wait = t.check("a").unwrap_err();
        assert!(wait <= Duration::from_secs(1) && wait > Duration::ZERO);
        assert!(t.check("b").is_ok(), "other client ids are not affected");
        t.succeeded("a");
        assert!(t.check("a").is_ok());
    }

    #[test]
    fn a_full_map_keeps_the_back_off_of_a_key_whose_block_has_ended() {
        let t = FailureThrottle::default();
        let now = Instant::now();
        {
            let mut entries = t.entries.lock().unwrap();
            // Escalated to long blocks; the last one has ended, and it is the stalest entry.
            entries.insert(
                "attacker".into(),
                Entry {
                    failures: FREE_FAILURES + 10,
                    blocked_until: Some(now - Duration::from_secs(1)),
                    last_failure: now - Duration::from_secs(120),
                },
            );
            for i in 1..CAPACITY {
                entries.insert(
                    format!("id{i}"),
                    Entry {
                        failures: 1,
                        blocked_until: None,
                        last_failure: now,
                    },
                );
            }
        }
        t.failed("newcomer");
        assert_eq!(t.len(), CAPACITY);
        let entries = t.entries.lock().unwrap();
        assert_eq!(entries["attacker"].failures, FREE_FAILURES + 10);
        assert!(entries.contains_key("newcomer"));
    }

    #[test]
    fn the_block_grows_and_is_capped() {
        let t = FailureThrottle::default();
        for _ in 0..(FREE_FAILURES + 20) {
            t.failed("a");
        }
        let wait = t.check("a").unwrap_err();
        assert!(
            wait > Duration::from_secs(59) && wait <= MAX_BLOCK,
            "{wait:?}"
        );
    }

    #[test]
    fn made_up_client_ids_cannot_grow_it_without_bound() {
        let t = FailureThrottle::default();
        for i in 0..(CAPACITY + 50) {
            t.failed(&format!("c{i}"));
        }
        assert!(t.entries.lock().unwrap().len() <= CAPACITY);
    }

    #[test]
    fn a_flood_of_other_ids_does_not_reopen_a_closed_one() {
        let t = FailureThrottle::default();
        for _ in 0..=FREE_FAILURES {
            t.failed("target");
        }
        assert!(t.check("target").is_err());
        // "target" is the stalest entry once these arrive; it is closed, so it stays.
        for i in 0..(CAPACITY + 50) {
            t.failed(&format!("c{i}"));
        }
        assert!(t.check("target").is_err(), "the closed id was forgotten");
        assert!(t.entries.lock().unwrap().len() <= CAPACITY);
    }

    #[test]
    fn once_every_entry_is_closed_new_keys_are_counted_together() {
        let t = FailureThrottle::default();
        for i in 0..CAPACITY {
            for _ in 0..=FREE_FAILURES {
                t.failed(&format!("c{i}"));
            }
        }
        assert!(t.check("fresh-0").is_ok());
        // Failures of keys that find no room close them all together, not none of them.
        for i in 0..=FREE_FAILURES {
            t.failed(&format!("fresh-{i}"));
        }
        assert!(t.check("fresh-99").is_err(), "guessing went on unthrottled");
        assert!(t.len() <= CAPACITY + 1);
    }
}
