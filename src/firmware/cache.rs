//! A bounded in-memory cache of firmware images, keyed by their SHA-256.
//!
//! Devices of one model all fetch the same `firmware.bin`, often in hundreds of small ranges
//! (ESP-IDF's OTA client). Serving those from memory saves one S3 request per range, which is most
//! of the cost of a ranged download.
//!
//! Why it cannot serve stale content: an entry is keyed by the SHA-256 the `firmware_versions` row
//! records for the artifact, and the bytes are checked against that hash when the entry is filled.
//! A version deleted and uploaded again with different content has a different hash, so it can
//! only ever match its own bytes. Rows without a stored SHA-256 (legacy data) are never cached.
//!
//! How it fills: one whole GET per image (never two at once for the same hash) reads the image in
//! a background task, verifies its size and hash, and stores it. A *ranged* request that misses is
//! answered from the store exactly as without the cache (a ranged GET, never more) and only starts
//! the fill; it never waits for it. A request for the *whole* image that misses waits for that one
//! read instead of making its own, so a fleet starting to download a new image at once causes one
//! read of it; if the image cannot be cached or the read fails, it is streamed from the store. It
//! waits at most [`WHOLE_FILL_WAIT`]: a device gets no byte until the whole image has been read
//! and checked, and an OTA client gives up on a silent server after a few seconds (ESP-IDF's
//! default is 5 s), so from a store that slow it is streamed while the fill goes on.
//!
//! Memory: stored entries plus fills in flight never exceed the byte budget
//! (`FIRMWARE_CACHE_BYTES`): space is reserved before a fill starts, evicting the least recently
//! used entries; an image larger than the budget is never cached (it is always streamed). An
//! entry that a response is still sending is never evicted (its memory would stay allocated
//! outside the budget until the response ends, minutes for a slow device): a fill that can only
//! fit by evicting one is refused and its request streams from the store. Budget 0 turns the cache
//! off.
//!
//! More images in use than the budget holds (many models updating at once): a ranged request's
//! fill never evicts an image used within [`RANGED_FILL_SPARES`], so the cache does not cycle
//! with every ranged miss reading a whole image from the store to evict another one still in
//! use; those requests are served by ranged reads, as without the cache, until an image goes
//! quiet. A whole-image request's fill evicts by recency alone (its read is needed anyway).
//!
//! Metrics: [`FIRMWARE_CACHE_HITS`], [`FIRMWARE_CACHE_MISSES`] (by reason), [`FIRMWARE_CACHE_FILLS`]
//! (by outcome), [`FIRMWARE_CACHE_EVICTIONS`], and the gauges [`FIRMWARE_CACHE_BYTES`] and
//! [`FIRMWARE_CACHE_ENTRIES`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::storage::{ObjectKey, Storage, StorageError};
use crate::telemetry::{
    FIRMWARE_CACHE_BYTES, FIRMWARE_CACHE_ENTRIES, FIRMWARE_CACHE_EVICTIONS, FIRMWARE_CACHE_FILLS,
    FIRMWARE_CACHE_HITS, FIRMWARE_CACHE_MISSES,
};

/// The default byte budget (see the constant in `crate::config`).
pub use crate::config::DEFAULT_FIRMWARE_CACHE_BYTES as DEFAULT_BUDGET_BYTES;

pub struct FirmwareCache {
    budget: u64,
    /// How long after a failed fill of an image no other is started (see [`FILL_RETRY_AFTER`]).
    retry_after: std::time::Duration,
    /// [`RANGED_FILL_SPARES`], shorter in tests.
    ranged_spares: std::time::Duration,
    /// [`WHOLE_FILL_WAIT`], shorter in tests.
    whole_wait: std::time::Duration,
    inner: Mutex<Inner>,
}

/// How long a whole-image request that missed waits for the image's fill before it streams the
/// image from the store itself (see the module docs).
pub const WHOLE_FILL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A ranged request's fill does not evict an image used more recently than this (see the module
/// docs): an OTA client fetching an image in ranges asks again within a second or so.
pub const RANGED_FILL_SPARES: std::time::Duration = std::time::Duration::from_secs(60);

/// How long after a fill of an image failed (the store failed, or its object does not match its
/// row) no other fill of it starts. Without it, every ranged request of a fleet updating from a
/// failing store started another read of the whole image.
pub const FILL_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Hashes being filled.
    filling: HashMap<String, Fill>,
    /// Bytes held by `entries`.
    stored: u64,
    /// Bytes reserved by `filling`.
    reserved: u64,
    /// A logical clock for least-recently-used eviction.
    clock: u64,
    /// How each image's last fill failed, for those that failed within `retry_after`.
    failed: HashMap<String, Failure>,
}

/// A fill that failed: when, and whether the object did not match its row (size or SHA-256; then
/// whole-image requests are refused without a read until `retry_after` has passed).
#[derive(Clone, Copy)]
struct Failure {
    at: std::time::Instant,
    mismatch: bool,
}

struct Entry {
    bytes: Bytes,
    last_used: u64,
    /// When it was last used, for [`RANGED_FILL_SPARES`].
    used_at: std::time::Instant,
}

/// A fill in flight: the bytes it reserved, and a channel whose sender is dropped when it ends.
struct Fill {
    reserved: u64,
    done: watch::Receiver<()>,
}

/// Who asks for a fill. A ranged request's background fill waits out [`FILL_RETRY_AFTER`] after a
/// failed one (each of a fleet's ranged requests would start another whole read) and evicts no
/// image used within [`RANGED_FILL_SPARES`]; a whole-image request's does neither (its devices
/// share the one read it starts, which streaming would make anyway).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Asker {
    Ranged,
    Whole,
}

enum Begin {
    Ready(Bytes),
    Filling(watch::Receiver<()>),
    Refused,
}

/// What a whole-image request that missed gets from [`FirmwareCache::fill_and_wait`].
#[derive(Debug, PartialEq, Eq)]
pub enum WholeImage {
    /// Read, checked and cached.
    Ready(Bytes),
    /// Not cached (too large, the budget taken by other fills, the store failed, or the read
    /// takes longer than [`WHOLE_FILL_WAIT`]): stream it from the store.
    Stream,
    /// The stored object does not match its row (its size or SHA-256): it must not be sent under
    /// the row's ETag as if it were the image.
    Mismatch,
}

/// What a download should do with an image, decided by [`FirmwareCache::lookup`].
pub enum Lookup {
    /// The image is in memory.
    Hit(Bytes),
    /// Not in memory: stream it from the store. For a GET, call [`FirmwareCache::start_fill`] too.
    Miss,
    /// Never cached (too large for the budget, no SHA-256, or the cache is off): stream it.
    Bypass,
}

/// The hash of an image as the cache keys it: lowercase hex.
fn cache_key(sha256: &str) -> String {
    sha256.to_ascii_lowercase()
}

impl FirmwareCache {
    pub fn new(budget: u64) -> Arc<Self> {
        Self::with_retry_after(budget, FILL_RETRY_AFTER)
    }

    fn with_retry_after(budget: u64, retry_after: std::time::Duration) -> Arc<Self> {
        Self::with_timings(budget, retry_after, RANGED_FILL_SPARES)
    }

    fn with_timings(
        budget: u64,
        retry_after: std::time::Duration,
        ranged_spares: std::time::Duration,
    ) -> Arc<Self> {
        Arc::new(FirmwareCache {
            budget,
            retry_after,
            ranged_spares,
            whole_wait: WHOLE_FILL_WAIT,
            inner: Mutex::new(Inner::default()),
        })
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No critical section can panic halfway through an update.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether an image of `size` bytes may be cached at all.
    pub fn accepts(&self, size: u64) -> bool {
        self.budget > 0 && size <= self.budget
    }

    /// Looks an image up by its SHA-256 and size (as the `firmware_versions` row records them),
    /// counting a hit or a miss.
    pub fn lookup(&self, sha256: Option<&str>, size: Option<u64>) -> Lookup {
        let (Some(sha256), Some(size)) = (sha256, size) else {
            return Lookup::Bypass;
        };
        if self.budget == 0 {
            return Lookup::Bypass;
        }
        if !self.accepts(size) {
            metrics::counter!(FIRMWARE_CACHE_MISSES, "reason" => "too_large").increment(1);
            return Lookup::Bypass;
        }
        match self.touch(&cache_key(sha256)) {
            Some(bytes) => {
                metrics::counter!(FIRMWARE_CACHE_HITS).increment(1);
                Lookup::Hit(bytes)
            }
            None => {
                metrics::counter!(FIRMWARE_CACHE_MISSES, "reason" => "absent").increment(1);
                Lookup::Miss
            }
        }
    }

    /// The image if it is in memory; counts a hit when it is, nothing when it is not (the caller
    /// will [`Self::lookup`] again with fresher facts).
    pub fn get_if_present(&self, sha256: &str) -> Option<Bytes> {
        if self.budget == 0 {
            return None;
        }
        let found = self.touch(&cache_key(sha256));
        if found.is_some() {
            metrics::counter!(FIRMWARE_CACHE_HITS).increment(1);
        }
        found
    }

    fn touch(&self, key: &str) -> Option<Bytes> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        inner.entries.get_mut(key).map(|entry| {
            entry.last_used = now;
            entry.used_at = std::time::Instant::now();
            entry.bytes.clone()
        })
    }

    /// Whether the image is in memory (no metrics, no recency update). For tests and diagnostics.
    pub fn contains(&self, sha256: &str) -> bool {
        self.lock().entries.contains_key(&cache_key(sha256))
    }

    /// Entries and bytes held (fills in flight not included).
    pub fn usage(&self) -> (usize, u64) {
        let inner = self.lock();
        (inner.entries.len(), inner.stored)
    }

    /// Starts reading the image at `key` into the cache in the background, unless it is cached,
    /// being filled, too large, or the budget is taken by fills in flight. For a ranged GET that
    /// missed: the request itself goes on with its ranged read.
    pub fn start_fill(self: &Arc<Self>, storage: Storage, key: ObjectKey, sha256: &str, size: u64) {
        let _ = self.begin_fill(storage, key, sha256, size, Asker::Ranged);
    }

    /// For a whole-image GET that missed: waits for the image's fill (starting it if none is in
    /// flight) and returns the image once stored, so any number of devices asking for a new image at
    /// once cause one read of it; see [`WholeImage`] for the other answers. A fill that waits
    /// longer than [`WHOLE_FILL_WAIT`] goes on for later requests. An object found not matching its
    /// row is not read again for `FILL_RETRY_AFTER`.
    pub async fn fill_and_wait(
        self: &Arc<Self>,
        storage: Storage,
        key: ObjectKey,
        sha256: &str,
        size: u64,
    ) -> WholeImage {
        let hash = cache_key(sha256);
        if self.mismatched_recently(&hash) {
            return WholeImage::Mismatch;
        }
        // Not held back by a recent failure of the store: the devices asking for the whole image
        // now share this one read, where streaming each from the store would be one read each.
        match self.begin_fill(storage, key, sha256, size, Asker::Whole) {
            Begin::Ready(bytes) => WholeImage::Ready(bytes),
            Begin::Refused => WholeImage::Stream,
            Begin::Filling(mut done) => {
                // The fill never sends; it drops its sender when it has finished either way.
                if tokio::time::timeout(self.whole_wait, done.changed())
                    .await
                    .is_err()
                {
                    return WholeImage::Stream;
                }
                match self.touch(&hash) {
                    Some(bytes) => WholeImage::Ready(bytes),
                    None if self.mismatched_recently(&hash) => WholeImage::Mismatch,
                    None => WholeImage::Stream,
                }
            }
        }
    }

    /// Whether the last fill of `hash` found its object not matching its row within
    /// `retry_after`.
    fn mismatched_recently(&self, hash: &str) -> bool {
        let mut inner = self.lock();
        self.recent_failure(&mut inner, hash)
            .is_some_and(|f| f.mismatch)
    }

    fn begin_fill(
        self: &Arc<Self>,
        storage: Storage,
        key: ObjectKey,
        sha256: &str,
        size: u64,
        asker: Asker,
    ) -> Begin {
        if !self.accepts(size) {
            return Begin::Refused;
        }
        let hash = cache_key(sha256);
        let done = {
            let mut inner = self.lock();
            if let Some(entry) = inner.entries.get(&hash) {
                return Begin::Ready(entry.bytes.clone());
            }
            if let Some(fill) = inner.filling.get(&hash) {
                return Begin::Filling(fill.done.clone());
            }
            if asker == Asker::Ranged && self.recent_failure(&mut inner, &hash).is_some() {
                return Begin::Refused;
            }
            if !self.reserve(&mut inner, size, asker) {
                return Begin::Refused;
            }
            let (finished, done) = watch::channel(());
            inner.filling.insert(
                hash.clone(),
                Fill {
                    reserved: size,
                    done: done.clone(),
                },
            );
            Self::publish(&inner);
            (finished, done)
        };
        let (finished, done) = done;
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = read_verified(&storage, &key, &hash, size).await;
            cache.finish_fill(&hash, outcome, &key);
            drop(finished);
        });
        Begin::Filling(done)
    }

    /// How the last fill of `hash` failed, if it did within `retry_after`; forgets the failures
    /// older than that (so the map holds only images that failed in the last `retry_after`).
    fn recent_failure(&self, inner: &mut Inner, hash: &str) -> Option<Failure> {
        let now = std::time::Instant::now();
        let retry_after = self.retry_after;
        inner
            .failed
            .retain(|_, f| now.duration_since(f.at) < retry_after);
        inner.failed.get(hash).copied()
    }

    /// Makes room for `size` more bytes, evicting least recently used entries that no response is
    /// sending (and, for a ranged request's fill, none used within [`RANGED_FILL_SPARES`]);
    /// `false`, evicting nothing, when that cannot make room.
    fn reserve(&self, inner: &mut Inner, size: u64, asker: Asker) -> bool {
        if inner.reserved.saturating_add(size) > self.budget {
            return false;
        }
        let needed = (inner.stored + inner.reserved + size).saturating_sub(self.budget);
        if needed > 0 {
            let now = std::time::Instant::now();
            let mut evictable: Vec<(u64, &String, u64)> = inner
                .entries
                .iter()
                .filter(|(_, e)| {
                    // Our handle is the only one: no response holds the buffer.
                    e.bytes.is_unique()
                        && (asker == Asker::Whole
                            || now.saturating_duration_since(e.used_at) >= self.ranged_spares)
                })
                .map(|(k, e)| (e.last_used, k, e.bytes.len() as u64))
                .collect();
            evictable.sort_unstable_by_key(|&(last_used, _, _)| last_used);
            let mut freed = 0;
            let mut victims = Vec::new();
            for (_, key, len) in evictable {
                if freed >= needed {
                    break;
                }
                freed += len;
                victims.push(key.clone());
            }
            if freed < needed {
                return false;
            }
            for victim in victims {
                if let Some(evicted) = inner.entries.remove(&victim) {
                    inner.stored -= evicted.bytes.len() as u64;
                    metrics::counter!(FIRMWARE_CACHE_EVICTIONS).increment(1);
                }
            }
        }
        inner.reserved += size;
        true
    }

    fn finish_fill(&self, hash: &str, outcome: Result<Bytes, FillError>, key: &ObjectKey) {
        let mut inner = self.lock();
        if let Some(fill) = inner.filling.remove(hash) {
            inner.reserved -= fill.reserved;
        }
        if let Err(e) = &outcome {
            let failure = Failure {
                at: std::time::Instant::now(),
                mismatch: matches!(e, FillError::Mismatch(_)),
            };
            inner.failed.insert(hash.to_string(), failure);
        }
        let label = match outcome {
            Ok(bytes) => {
                inner.clock += 1;
                let last_used = inner.clock;
                inner.stored += bytes.len() as u64;
                let used_at = std::time::Instant::now();
                inner.entries.insert(
                    hash.to_string(),
                    Entry {
                        bytes,
                        last_used,
                        used_at,
                    },
                );
                "stored"
            }
            Err(FillError::Store(e)) => {
                tracing::warn!(key = %key, error = %e, "firmware_cache_fill_failed");
                "failed"
            }
            Err(FillError::Mismatch(what)) => {
                // The object no longer matches its row (replaced or damaged in the bucket, or the
                // version deleted and uploaded again since the row was read): never cache it;
                // whole-image requests are refused for a while, ranged ones cannot be checked.
                tracing::warn!(key = %key, mismatch = what, "firmware_cache_fill_mismatch");
                "mismatch"
            }
        };
        Self::publish(&inner);
        drop(inner);
        metrics::counter!(FIRMWARE_CACHE_FILLS, "outcome" => label).increment(1);
    }

    fn publish(inner: &Inner) {
        metrics::gauge!(FIRMWARE_CACHE_BYTES).set(inner.stored as f64);
        metrics::gauge!(FIRMWARE_CACHE_ENTRIES).set(inner.entries.len() as f64);
    }
}

enum FillError {
    Store(StorageError),
    Mismatch(&'static str),
}

/// Reads the whole object, refusing it unless it has exactly `size` bytes hashing to `sha256`.
async fn read_verified(
    storage: &Storage,
    key: &ObjectKey,
    sha256: &str,
    size: u64,
) -> Result<Bytes, FillError> {
    let read = storage.get(key, None).await.map_err(FillError::Store)?;
    if read.info.size != size {
        return Err(FillError::Mismatch("size"));
    }
    let capacity = usize::try_from(size).map_err(|_| FillError::Mismatch("size"))?;
    let mut buffer = BytesMut::with_capacity(capacity);
    let mut body = read.body;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(FillError::Store)?;
        if buffer.len() + chunk.len() > capacity {
            return Err(FillError::Mismatch("size"));
        }
        buffer.extend_from_slice(&chunk);
    }
    if buffer.len() != capacity {
        return Err(FillError::Mismatch("size"));
    }
    let bytes = buffer.freeze();
    let to_hash = bytes.clone();
    let digest = tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&to_hash)))
        .await
        .map_err(|_| FillError::Mismatch("hash"))?;
    if digest != sha256 {
        return Err(FillError::Mismatch("sha256"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reserves room as a fill would; `false` when the fill would be refused.
    fn reserve(cache: &FirmwareCache, hash: &str, len: u64) -> bool {
        let mut inner = cache.lock();
        if inner.entries.contains_key(hash) || inner.filling.contains_key(hash) {
            return false;
        }
        if !cache.reserve(&mut inner, len, Asker::Whole) {
            return false;
        }
        let (_, done) = watch::channel(());
        inner.filling.insert(
            hash.to_string(),
            Fill {
                reserved: len,
                done,
            },
        );
        true
    }

    fn entry(cache: &FirmwareCache, hash: &str, len: usize) {
        assert!(reserve(cache, hash, len as u64), "reserve {hash}");
        let key = ObjectKey::parse("firmware/m/1/firmware.bin").expect("key");
        cache.finish_fill(hash, Ok(Bytes::from(vec![0u8; len])), &key);
    }

    #[test]
    fn the_budget_bounds_stored_and_reserved_bytes() {
        let cache = FirmwareCache::new(100);
        entry(&cache, "a", 40);
        entry(&cache, "b", 40);
        assert_eq!(cache.usage(), (2, 80));
        // "a" is used, so "b" is the least recently used and goes.
        assert!(matches!(cache.lookup(Some("a"), Some(40)), Lookup::Hit(_)));
        entry(&cache, "c", 40);
        assert!(cache.contains("a") && cache.contains("c") && !cache.contains("b"));
        assert_eq!(cache.usage(), (2, 80));
    }

    #[test]
    fn images_larger_than_the_budget_are_never_cached() {
        let cache = FirmwareCache::new(100);
        assert!(matches!(cache.lookup(Some("a"), Some(101)), Lookup::Bypass));
        assert!(!cache.accepts(101));
        assert!(!reserve(&cache, "a", 101));
    }

    #[test]
    fn one_fill_per_hash_and_fills_in_flight_count_against_the_budget() {
        let cache = FirmwareCache::new(100);
        assert!(reserve(&cache, "a", 60));
        assert!(!reserve(&cache, "a", 60), "second fill of the same hash");
        assert!(
            !reserve(&cache, "b", 60),
            "over budget while a is in flight"
        );
        assert!(reserve(&cache, "c", 40));
    }

    /// A store in a temporary directory, behind a fault injector, holding one small image.
    async fn stored_image() -> (
        tempfile::TempDir,
        Arc<crate::storage::faulty::FaultyStorage>,
        Storage,
        ObjectKey,
        Bytes,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let local = crate::storage::backend::ObjectStoreBackend::local(dir.path()).unwrap();
        let store = Arc::new(crate::storage::faulty::FaultyStorage::new(Arc::new(local)));
        let storage: Storage = store.clone();
        let key = ObjectKey::parse("firmware/m/1/firmware.bin").expect("key");
        let image = Bytes::from_static(b"an image");
        storage.put(&key, image.clone()).await.unwrap();
        (dir, store, storage, key, image)
    }

    #[tokio::test]
    async fn an_image_whose_fill_failed_is_not_read_again_for_a_while_by_ranged_requests() {
        use crate::storage::Operation;
        let (_dir, store, storage, key, image) = stored_image().await;
        let sha256 = hex::encode(Sha256::digest(&image));
        let size = image.len() as u64;
        let wrong = "00".repeat(32);
        // A ranged request's fill in the background, waited for.
        let ranged = async |cache: &Arc<FirmwareCache>, sha: &str| {
            cache.start_fill(storage.clone(), key.clone(), sha, size);
            let filling = cache.lock().filling.get(sha).map(|f| f.done.clone());
            if let Some(mut done) = filling {
                let _ = done.changed().await;
            }
        };

        // The object does not match its row (another hash): not cached, and not read again.
        let cache = FirmwareCache::new(100);
        ranged(&cache, &wrong).await;
        assert_eq!(store.calls(Operation::Get), 1);
        ranged(&cache, &wrong).await;
        assert_eq!(
            store.calls(Operation::Get),
            1,
            "read again right after a mismatch"
        );
        // The store failing: the same.
        store.inject(crate::storage::faulty::Fault::always(Operation::Get));
        ranged(&cache, &sha256).await;
        let failed = store.calls(Operation::Get);
        ranged(&cache, &sha256).await;
        assert_eq!(
            store.calls(Operation::Get),
            failed,
            "read again right after a failure"
        );
        assert_eq!(cache.lock().reserved, 0);
        // A whole-image request still reads it, once for all who ask at the same time.
        store.heal();
        let whole = cache.fill_and_wait(storage.clone(), key.clone(), &sha256, size);
        assert_eq!(whole.await, WholeImage::Ready(image.clone()));
        assert_eq!(store.calls(Operation::Get), failed + 1);

        // Once the wait is over, a ranged request reads it again.
        let cache = FirmwareCache::with_retry_after(100, std::time::Duration::ZERO);
        ranged(&cache, &wrong).await;
        ranged(&cache, &sha256).await;
        assert!(cache.contains(&sha256));
        assert!(cache.lock().failed.is_empty(), "old failures are forgotten");
    }

    #[test]
    fn a_fill_that_cannot_fit_beside_those_in_flight_evicts_nothing() {
        let cache = FirmwareCache::new(100);
        entry(&cache, "hot", 30);
        assert!(reserve(&cache, "a", 60));
        // 60 in flight + 50 is over the budget whatever is evicted: "hot" stays.
        assert!(!reserve(&cache, "b", 50));
        assert!(cache.contains("hot"));
        // 60 + 40 fits once "hot" goes.
        assert!(reserve(&cache, "c", 40));
        assert!(!cache.contains("hot"));
    }

    #[tokio::test]
    async fn a_whole_request_waits_for_a_slow_fill_only_so_long_and_the_fill_goes_on() {
        let (_dir, store, storage, key, image) = stored_image().await;
        let sha256 = hex::encode(Sha256::digest(&image));
        let size = image.len() as u64;
        store.slow_whole_gets(std::time::Duration::from_secs(30), 1);
        let mut cache = FirmwareCache::with_retry_after(100, FILL_RETRY_AFTER);
        Arc::get_mut(&mut cache).expect("one handle").whole_wait =
            std::time::Duration::from_millis(50);
        let waited = cache.fill_and_wait(storage.clone(), key.clone(), &sha256, size);
        assert_eq!(
            waited.await,
            WholeImage::Stream,
            "served by a fill still reading"
        );
        assert!(
            cache.lock().filling.contains_key(&sha256),
            "the fill stopped"
        );
    }

    #[test]
    fn an_image_a_response_is_still_sending_is_never_evicted() {
        let cache = FirmwareCache::new(100);
        entry(&cache, "sent", 60);
        let Lookup::Hit(sending) = cache.lookup(Some("sent"), Some(60)) else {
            panic!("not cached");
        };
        // A slice of it, as a ranged response holds, pins it as much as the whole.
        let range = sending.slice(10..20);
        drop(sending);
        assert!(!reserve(&cache, "new", 60), "evicted while being sent");
        assert!(cache.contains("sent"));
        assert_eq!(cache.lock().reserved, 0, "a refused fill reserves nothing");
        drop(range);
        assert!(reserve(&cache, "new", 60));
        assert!(!cache.contains("sent"));
    }

    #[test]
    fn a_ranged_fill_evicts_no_image_used_lately_and_a_whole_one_does() {
        let reserve_for = |cache: &FirmwareCache, hash: &str, asker| {
            let mut inner = cache.lock();
            cache.reserve(&mut inner, 60, asker)
                && inner
                    .filling
                    .insert(
                        hash.to_string(),
                        Fill {
                            reserved: 60,
                            done: watch::channel(()).1,
                        },
                    )
                    .is_none()
        };
        let cache = FirmwareCache::with_timings(100, FILL_RETRY_AFTER, RANGED_FILL_SPARES);
        entry(&cache, "in use", 60);
        assert!(!reserve_for(&cache, "ranged", Asker::Ranged));
        assert!(cache.contains("in use"));
        assert!(reserve_for(&cache, "whole", Asker::Whole));
        assert!(!cache.contains("in use"));

        // Once the image has gone quiet (here: at once), a ranged fill may evict it.
        let cache = FirmwareCache::with_timings(100, FILL_RETRY_AFTER, std::time::Duration::ZERO);
        entry(&cache, "quiet", 60);
        assert!(reserve_for(&cache, "ranged", Asker::Ranged));
        assert!(!cache.contains("quiet"));
    }

    #[test]
    fn hashes_compare_case_insensitively_and_missing_facts_bypass() {
        let cache = FirmwareCache::new(100);
        entry(&cache, "ab", 10);
        assert!(matches!(cache.lookup(Some("AB"), Some(10)), Lookup::Hit(_)));
        assert!(matches!(cache.lookup(None, Some(10)), Lookup::Bypass));
        assert!(matches!(cache.lookup(Some("ab"), None), Lookup::Bypass));
        assert!(matches!(
            FirmwareCache::new(0).lookup(Some("ab"), Some(10)),
            Lookup::Bypass
        ));
    }
}
