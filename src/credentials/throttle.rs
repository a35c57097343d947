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
//!
//! Many addresses at once (an attacker with an IPv6 /48 has 65,536 /64s). A throttle made
//! [`FailureThrottle::grouped_by`] a wider scope (the admin token's: an IPv4 /24, an IPv6 /48)
//! counts, besides each key, its *group*, but only what the map could not keep per key:
//! - a key forgotten to make room passes its failures on to its group, so cycling through more
//!   keys than the map holds does not give each of them its free failures again and again;
//! - a key that finds the map full of closed keys is counted in its group.
//!
//! A key with no entry of its own is refused while its group is closed. So an attacker who has
//! filled the map closes their own groups, not everybody's: a client in another group (the admin,
//! a CI job) is still compared. Groups are bounded too ([`GROUP_CAPACITY`]); past that many (a
//! botnet spread over a thousand networks), the keys that find no room share one count, as every
//! key did before groups. A throttle without groups ([`FailureThrottle::without_overflow`], for
//! device secrets, which cannot be guessed) does not count what it cannot keep.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const FREE_FAILURES: u32 = 5;
pub const MAX_BLOCK: Duration = Duration::from_secs(60);
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
const CAPACITY: usize = 10_000;
/// Groups on record at most (see the module documentation).
const GROUP_CAPACITY: usize = 1_000;
/// The group of keys that find no room when [`GROUP_CAPACITY`] groups are on record.
const OVERFLOW: &str = "\0overflow";

struct Entry {
    failures: u32,
    blocked_until: Option<Instant>,
    last_failure: Instant,
}

impl Entry {
    fn closed_at(&self, now: Instant) -> Option<Duration> {
        self.blocked_until
            .filter(|until| *until > now)
            .map(|until| until - now)
    }
}

#[derive(Default)]
struct Records {
    keys: HashMap<String, Entry>,
    groups: HashMap<String, Entry>,
}

pub struct FailureThrottle {
    records: Mutex<Records>,
    /// The group of a key, or `None`: what the map cannot keep is not counted.
    group_of: Option<fn(&str) -> String>,
    /// Until when a full map is not walked again for room (see `failed`).
    no_room_until: Mutex<Option<Instant>>,
    /// How many keys and groups are on record, as of the last change.
    len: AtomicUsize,
    /// When the newest failure was recorded, in milliseconds after `base`.
    newest_failure_ms: AtomicU64,
    base: Instant,
}

/// How long a full map that had no room is taken to still have none.
const NO_ROOM_RECHECK: Duration = Duration::from_secs(1);

impl Default for FailureThrottle {
    /// Every key in one group.
    fn default() -> Self {
        Self::with_groups(Some(|_| String::new()))
    }
}

impl FailureThrottle {
    /// A throttle whose keys that find the map full of closed entries are not throttled at all,
    /// instead of being counted in a group. For device secrets: 32 random bytes cannot be guessed
    /// anyway, and with a shared count whoever closed [`CAPACITY`] made-up keys would have every
    /// device of the fleet refused (the devices that succeed are not in the map).
    pub fn without_overflow() -> Self {
        Self::with_groups(None)
    }

    /// A throttle that counts what its map cannot keep per key in the key's group (see the module
    /// documentation).
    pub fn grouped_by(group_of: fn(&str) -> String) -> Self {
        Self::with_groups(Some(group_of))
    }

    fn with_groups(group_of: Option<fn(&str) -> String>) -> Self {
        Self {
            records: Mutex::default(),
            group_of,
            no_room_until: Mutex::default(),
            len: AtomicUsize::new(0),
            newest_failure_ms: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// `Err(retry_after)` while `client_id` is closed.
    pub fn check(&self, client_id: &str) -> Result<(), Duration> {
        self.check_known(client_id).map(|_| ())
    }

    /// [`Self::check`], and whether `client_id` has failures on record (a success need only be
    /// reported, with [`Self::succeeded`], when it has: that spares the lock on the hot path).
    pub fn check_known(&self, client_id: &str) -> Result<bool, Duration> {
        let now = Instant::now();
        let records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = records.keys.get(client_id) {
            return entry.closed_at(now).map_or(Ok(true), Err);
        }
        // Not recorded: perhaps because the map had no room, then its group stands for it.
        let group = if records.groups.is_empty() {
            None
        } else {
            self.group_name(&records, client_id)
                .and_then(|group| records.groups.get(&group))
        };
        group.and_then(|g| g.closed_at(now)).map_or(Ok(false), Err)
    }

    pub fn failed(&self, client_id: &str) {
        let now = Instant::now();
        self.newest_failure_ms.store(
            now.saturating_duration_since(self.base).as_millis() as u64,
            Ordering::Relaxed,
        );
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let records = &mut *records;
        if !records.keys.contains_key(client_id) && records.keys.len() >= CAPACITY {
            // A walk of the map found no room a moment ago: not again for every failure of a
            // flood (each walk holds the lock every request's check waits for).
            let mut no_room = self.no_room_until.lock().unwrap_or_else(|e| e.into_inner());
            if no_room.is_some_and(|until| now < until) {
                self.count_in_group(records, client_id, 1, now);
                self.len.store(records.len(), Ordering::Relaxed);
                return;
            }
            let fresh = |e: &Entry| now.duration_since(e.last_failure) < FORGET_AFTER;
            records.keys.retain(|_, e| fresh(e));
            records.groups.retain(|_, e| fresh(e));
            if records.keys.len() >= CAPACITY {
                // The stalest entry still within its free failures: evicting a closed one
                // would reopen it to whoever sends failures for enough other ids, and evicting
                // one whose block has ended would reset its back-off (the next block 1 s again,
                // not the 60 s it had grown to). Its failures go on in its group.
                let stalest = records
                    .keys
                    .iter()
                    .filter(|(_, e)| e.failures <= FREE_FAILURES)
                    .min_by_key(|(_, e)| e.last_failure)
                    .map(|(k, _)| k.clone());
                match stalest {
                    Some(stalest) => {
                        if let Some(evicted) = records.keys.remove(&stalest) {
                            self.count_in_group(records, &stalest, evicted.failures, now);
                        }
                    }
                    // Every entry has been closed: counted in its group, or (without groups)
                    // not counted.
                    None => {
                        *no_room = Some(now + NO_ROOM_RECHECK);
                        self.count_in_group(records, client_id, 1, now);
                        self.len.store(records.len(), Ordering::Relaxed);
                        return;
                    }
                }
            }
        }
        record(&mut records.keys, client_id, 1, now);
        self.len.store(records.len(), Ordering::Relaxed);
    }

    /// The group `key` counts in: its own, or, once [`GROUP_CAPACITY`] others are on record, the
    /// shared one. `None` without groups.
    fn group_name(&self, records: &Records, key: &str) -> Option<String> {
        let group = (self.group_of?)(key);
        let own = records.groups.contains_key(&group) || records.groups.len() < GROUP_CAPACITY;
        Some(if own { group } else { OVERFLOW.to_string() })
    }

    /// `failures` more of `key`'s group ([`Self::group_name`]; nothing without groups).
    fn count_in_group(&self, records: &mut Records, key: &str, failures: u32, now: Instant) {
        if let Some(group) = self.group_name(records, key) {
            record(&mut records.groups, &group, failures, now);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.records.lock().unwrap().keys.len()
    }

    pub fn succeeded(&self, client_id: &str) {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        records.keys.remove(client_id);
        self.len.store(records.len(), Ordering::Relaxed);
    }

    /// Whether any failure that still counts is on record (one in the last [`FORGET_AFTER`]: an
    /// older one is forgotten at the key's next failure anyway). Two atomic loads: the device API
    /// skips its throttle (a key to build, a lock to take) on every request while nobody has
    /// failed lately. A failure recorded at that very moment by another request may go unseen
    /// by this one.
    pub fn holds_failures(&self) -> bool {
        let newest = self.newest_failure_ms.load(Ordering::Relaxed);
        self.len.load(Ordering::Relaxed) > 0
            && (self.base.elapsed().as_millis() as u64).saturating_sub(newest)
                < FORGET_AFTER.as_millis() as u64
    }
}

impl Records {
    fn len(&self) -> usize {
        self.keys.len() + self.groups.len()
    }
}

/// `failures` more of `key`, closing it past [`FREE_FAILURES`].
fn record(entries: &mut HashMap<String, Entry>, key: &str, failures: u32, now: Instant) {
    let entry = entries.entry(key.to_string()).or_insert(Entry {
        failures: 0,
        blocked_until: None,
        last_failure: now,
    });
    if now.duration_since(entry.last_failure) >= FORGET_AFTER {
        entry.failures = 0;
    }
    entry.failures = entry.failures.saturating_add(failures);
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
            let mut records = t.records.lock().unwrap();
            let entries = &mut records.keys;
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
        let records = t.records.lock().unwrap();
        let entries = &records.keys;
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
        assert!(t.records.lock().unwrap().keys.len() <= CAPACITY);
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
        assert!(t.records.lock().unwrap().keys.len() <= CAPACITY);
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

    /// Keys `group-…` are in group `group`.
    fn by_prefix() -> FailureThrottle {
        FailureThrottle::grouped_by(|k| k.split('-').next().unwrap_or(k).to_string())
    }

    #[test]
    fn an_attacker_who_closed_the_whole_map_closes_their_own_group_only() {
        let t = by_prefix();
        for i in 0..CAPACITY {
            for _ in 0..=FREE_FAILURES {
                t.failed(&format!("att-{i}"));
            }
        }
        for i in 0..=FREE_FAILURES {
            t.failed(&format!("att-fresh{i}"));
        }
        assert!(
            t.check("att-fresh99").is_err(),
            "guessing went on unthrottled"
        );
        assert_eq!(
            t.check_known("admin-1"),
            Ok(false),
            "another network was locked out"
        );
    }

    #[test]
    fn keys_forgotten_to_make_room_pass_their_failures_on_to_their_group() {
        let t = by_prefix();
        // Each key takes its free failures and no more, so none is ever closed.
        for i in 0..CAPACITY {
            for _ in 0..FREE_FAILURES {
                t.failed(&format!("att-{i}"));
            }
        }
        assert!(t.check("att-new").is_ok());
        // Two newcomers make room by forgetting two of them: ten failures in the group.
        t.failed("att-x");
        t.failed("att-y");
        assert_eq!(t.len(), CAPACITY);
        assert!(
            t.check("att-new").is_err(),
            "cycling through keys gave free failures again"
        );
        assert!(
            t.check("att-x").is_ok(),
            "a key on record goes by its own count"
        );
        assert_eq!(t.check_known("admin-1"), Ok(false));
    }

    #[test]
    fn past_the_group_capacity_keys_that_find_no_room_share_one_count() {
        let t = by_prefix();
        for i in 0..CAPACITY {
            for _ in 0..=FREE_FAILURES {
                t.failed(&format!("att-{i}"));
            }
        }
        for g in 0..GROUP_CAPACITY {
            t.failed(&format!("g{g}-1"));
        }
        for i in 0..=FREE_FAILURES {
            t.failed(&format!("late{i}-1"));
        }
        assert!(
            t.check("later-1").is_err(),
            "a new group got a count of its own"
        );
        assert!(
            t.check("g7-2").is_ok(),
            "a group on record goes by its own count"
        );
        assert!(t.records.lock().unwrap().groups.len() <= GROUP_CAPACITY + 1);
    }

    #[test]
    fn without_overflow_keys_that_find_no_room_are_not_refused() {
        let t = FailureThrottle::without_overflow();
        for i in 0..CAPACITY {
            for _ in 0..=FREE_FAILURES {
                t.failed(&format!("c{i}"));
            }
        }
        for i in 0..=FREE_FAILURES {
            t.failed(&format!("fresh-{i}"));
        }
        // A device that never failed is not refused because others closed the whole map.
        assert_eq!(t.check_known("healthy-device"), Ok(false));
        assert!(t.check("c0").is_err(), "a closed key reopened");
        assert_eq!(t.len(), CAPACITY);
    }

    #[test]
    fn only_keys_with_failures_on_record_are_known() {
        let t = FailureThrottle::default();
        assert_eq!(t.check_known("a"), Ok(false));
        assert!(!t.holds_failures());
        t.failed("a");
        assert_eq!(t.check_known("a"), Ok(true));
        assert!(t.holds_failures());
        t.succeeded("a");
        assert_eq!(t.check_known("a"), Ok(false));
        assert!(!t.holds_failures());
    }
}
