//! A short-lived, bounded cache of database lookups on the device hot path (the device credential
//! check and the model's current firmware), so a device fetching an image in hundreds of small
//! ranges does not cost three queries per range.
//!
//! Semantics, which callers and ARCHITECTURE.md rely on:
//!
//! - An entry is used for at most `ttl` after the lookup that produced it started; after that the
//!   database is asked again. A change made through *another* process sharing the database (or by
//!   the CLI) is therefore seen within `ttl`.
//! - A change made through *this* process calls [`LookupCache::invalidate`] after its commit, which
//!   removes the entry and bumps a generation counter. A lookup that began before the invalidation
//!   (and may have read the old row) does not store its answer, so it cannot put the old value back.
//! - Only answers worth repeating are stored (the callers store found rows, never "not found"), at
//!   most `capacity` entries. When full, expired entries are dropped; if it is still full, new
//!   answers are not stored until entries expire. Memory is bounded by `capacity` entries.
//! - `ttl` zero turns the cache off: nothing is stored, every call goes to the database.
//!
//! Hits and misses are counted in [`crate::telemetry::LOOKUP_CACHE_HITS`] /
//! [`crate::telemetry::LOOKUP_CACHE_MISSES`], labelled with the cache's name.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::telemetry::{LOOKUP_CACHE_HITS, LOOKUP_CACHE_MISSES};

/// What operations tell the process's lookup caches after a change they made (after its commit,
/// also when the commit failed, since it may have happened). Implemented by `crate::state::Caches`;
/// domain operations take it as `&dyn Invalidation`, so they own their cache invalidation without
/// depending on the HTTP state.
pub trait Invalidation: Send + Sync {
    /// A device's secrets changed or the device was deleted.
    fn device_changed(&self, key: &str);
    /// What a model serves may have changed: an upload (with its retention), a rollback, a version
    /// or model deletion.
    fn model_firmware_changed(&self, model_id: i64);
}

/// For callers with no caches (the CLI, tests of pure operations).
pub struct NoCaches;

impl Invalidation for NoCaches {
    fn device_changed(&self, _key: &str) {}
    fn model_firmware_changed(&self, _model_id: i64) {}
}

/// Entries per cache: a few thousand devices (SPEC: hundreds to a few thousand) fit, and the
/// memory stays small (an entry is a key, an id or two and a 64-character hash).
pub const DEFAULT_CAPACITY: usize = 16_384;

pub struct LookupCache<K, V> {
    name: &'static str,
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner<K, V>>,
    /// The hit and miss counters, registered once the recorder is installed (registering them
    /// on every lookup cost about 1 % of the service's CPU on cached OTA ranges).
    counters: std::sync::OnceLock<(metrics::Counter, metrics::Counter)>,
}

struct Inner<K, V> {
    entries: HashMap<K, Entry<V>>,
    generation: u64,
}

struct Entry<V> {
    value: V,
    /// When the lookup that produced the value started (not when it finished): the value is at
    /// most `ttl` older than the database's state at some moment after this.
    looked_up_at: Instant,
}

/// Taken before a database lookup and handed to [`LookupCache::insert`] with its answer.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
    started: Instant,
}

impl<K: Eq + Hash + Clone, V: Clone> LookupCache<K, V> {
    pub fn new(name: &'static str, ttl: Duration, capacity: usize) -> Self {
        LookupCache {
            name,
            ttl,
            capacity,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                generation: 0,
            }),
            counters: std::sync::OnceLock::new(),
        }
    }

    /// Counts a hit or a miss.
    fn count(&self, hit: bool) {
        let register = || {
            (
                metrics::counter!(LOOKUP_CACHE_HITS, "cache" => self.name),
                metrics::counter!(LOOKUP_CACHE_MISSES, "cache" => self.name),
            )
        };
        let registered;
        let (hits, misses) = match self.counters.get() {
            Some(counters) => counters,
            None if crate::telemetry::recorder_settled() => self.counters.get_or_init(register),
            None => {
                registered = register();
                &registered
            }
        };
        if hit { hits } else { misses }.increment(1);
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // The critical sections cannot panic halfway through an update; a poisoned lock still
        // holds consistent data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached value, if one younger than the TTL exists. Counts a hit or a miss.
    pub fn get(&self, key: &K) -> Option<V> {
        if !self.enabled() {
            return None;
        }
        let found = {
            let inner = self.lock();
            inner
                .entries
                .get(key)
                .filter(|e| e.looked_up_at.elapsed() < self.ttl)
                .map(|e| e.value.clone())
        };
        self.count(found.is_some());
        found
    }

    /// Call before reading the database; pass the ticket to [`Self::insert`].
    pub fn ticket(&self) -> Ticket {
        Ticket {
            generation: self.lock().generation,
            started: Instant::now(),
        }
    }

    /// Stores what a lookup found, unless an invalidation happened since its ticket was taken.
    pub fn insert(&self, key: K, value: V, ticket: Ticket) {
        if !self.enabled() {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != ticket.generation {
            return;
        }
        // A lookup that started before the one whose answer is held has nothing newer to say.
        if inner
            .entries
            .get(&key)
            .is_some_and(|held| held.looked_up_at >= ticket.started)
        {
            return;
        }
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(&key) {
            let ttl = self.ttl;
            inner.entries.retain(|_, e| e.looked_up_at.elapsed() < ttl);
            if inner.entries.len() >= self.capacity {
                return;
            }
        }
        inner.entries.insert(
            key,
            Entry {
                value,
                looked_up_at: ticket.started,
            },
        );
    }

    /// Runs `load` (a database lookup) and remembers a found value, taking the [`Ticket`] before
    /// the lookup starts so an invalidation during it keeps its answer out.
    pub async fn load<E, Fut>(&self, key: K, load: impl FnOnce() -> Fut) -> Result<Option<V>, E>
    where
        Fut: std::future::Future<Output = Result<Option<V>, E>>,
    {
        let ticket = self.ticket();
        let found = load().await?;
        if let Some(value) = &found {
            self.insert(key, value.clone(), ticket);
        }
        Ok(found)
    }

    /// Asks the database again for `key` although an entry may be held (the caller doubts it: a
    /// secret it did not prove), and holds the answer; "not found" drops the entry. Unlike
    /// [`Self::invalidate`], lookups of other keys still in flight keep storing their answers: a
    /// stream of failed requests must not turn the cache off for everyone.
    pub async fn reload<E, Fut>(&self, key: K, load: impl FnOnce() -> Fut) -> Result<Option<V>, E>
    where
        Fut: std::future::Future<Output = Result<Option<V>, E>>,
    {
        let ticket = self.ticket();
        let found = load().await?;
        match &found {
            Some(value) => self.insert(key, value.clone(), ticket),
            None => {
                let mut inner = self.lock();
                if inner
                    .entries
                    .get(&key)
                    .is_some_and(|held| held.looked_up_at <= ticket.started)
                {
                    inner.entries.remove(&key);
                }
            }
        }
        Ok(found)
    }

    /// Forgets `key` and makes lookups still in flight not store their (possibly old) answers.
    /// Call after the change is committed (or after a commit whose outcome is unknown).
    pub fn invalidate(&self, key: &K) {
        let mut inner = self.lock();
        inner.generation = inner.generation.wrapping_add(1);
        inner.entries.remove(key);
    }

    /// Number of entries held (expired ones included until they are dropped).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(capacity: usize) -> LookupCache<u32, &'static str> {
        LookupCache::new("test", Duration::from_secs(3600), capacity)
    }

    #[test]
    fn a_stored_answer_is_returned_until_invalidated() {
        let c = cache(4);
        assert_eq!(c.get(&1), None);
        c.insert(1, "one", c.ticket());
        assert_eq!(c.get(&1), Some("one"));
        c.invalidate(&1);
        assert_eq!(c.get(&1), None);
    }

    #[test]
    fn a_lookup_that_raced_an_invalidation_is_not_stored() {
        let c = cache(4);
        let ticket = c.ticket();
        c.invalidate(&1);
        c.insert(1, "old row", ticket);
        assert_eq!(c.get(&1), None);
        c.insert(1, "new row", c.ticket());
        assert_eq!(c.get(&1), Some("new row"));
    }

    #[test]
    fn a_reload_keeps_other_lookups_in_flight_and_is_not_undone_by_an_older_one() {
        let c = cache(4);
        let other_in_flight = c.ticket();
        let older_of_same_key = c.ticket();
        let reloaded =
            futures::executor::block_on(c.reload(1, || async { Ok::<_, ()>(Some("fresh")) }));
        assert_eq!(reloaded, Ok(Some("fresh")));
        // Another key's lookup that was in flight still stores its answer.
        c.insert(2, "two", other_in_flight);
        assert_eq!(c.get(&2), Some("two"));
        // A lookup of the same key that started before the reload does not put an older answer back.
        c.insert(1, "older", older_of_same_key);
        assert_eq!(c.get(&1), Some("fresh"));
        // A reload that finds nothing drops the entry.
        let gone = futures::executor::block_on(c.reload(1, || async { Ok::<_, ()>(None) }));
        assert_eq!(gone, Ok(None));
        assert_eq!(c.get(&1), None);
    }

    #[test]
    fn entries_older_than_the_ttl_are_not_used() {
        let c: LookupCache<u32, &str> = LookupCache::new("test", Duration::from_secs(5), 4);
        let stale = Ticket {
            generation: 0,
            started: Instant::now()
                .checked_sub(Duration::from_secs(6))
                .unwrap_or_else(Instant::now),
        };
        c.insert(1, "one", stale);
        if stale.started.elapsed() >= Duration::from_secs(5) {
            assert_eq!(c.get(&1), None);
        }
    }

    #[test]
    fn the_cache_holds_at_most_its_capacity() {
        let c = cache(2);
        for k in 0..10 {
            c.insert(k, "v", c.ticket());
        }
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&0), Some("v"));
        assert_eq!(c.get(&9), None);
    }

    #[test]
    fn a_zero_ttl_stores_nothing() {
        let c: LookupCache<u32, &str> = LookupCache::new("test", Duration::ZERO, 4);
        c.insert(1, "one", c.ticket());
        assert!(c.is_empty());
        assert_eq!(c.get(&1), None);
    }
}
