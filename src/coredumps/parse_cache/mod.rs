//! The parse cache: loaded firmware ELFs ([`esp_coredump::Firmware`]: symbols, the DWARF
//! context, the call-frame index and the TCB layout) per ELF SHA-256, so a dump of a build seen
//! before is parsed without downloading and loading its ELF again.
//!
//! Why it cannot use the wrong build: an entry is keyed by the SHA-256 the `firmware_versions` row
//! records for the ELF, and it is only stored if the ELF's bytes hash to that key (loading hashes
//! them anyway, for the report's `firmware_elf_sha256`). An ELF that does not match its row (e.g.
//! replaced since the row was read) is used for that one parse and not kept. Rows without a
//! stored SHA-256 (legacy data) are never cached.
//!
//! Loading: one load per hash at a time (a per-entry async lock); the other parses of that build
//! wait for it instead of downloading the ELF themselves. A failed load is not remembered: the
//! next parse tries again (the job's own retry rules decide what a failure means).
//!
//! Sharing: parses of one build use one `Arc<Firmware>` at the same time. `Firmware` is
//! `Send + Sync`; its only part that is not `Sync`, addr2line's lazily filled context, sits behind
//! a mutex of its own that is held for one address lookup.
//!
//! Memory: the loaded entries never hold more than `PARSE_CACHE_BYTES` as charged by
//! [`esp_coredump::Firmware::approx_bytes`] (what a loaded firmware holds once symbolisation has
//! parsed all of its DWARF; `cargo bench -p esp-coredump` prints it next to the measured heap).
//! Room is made by evicting the least recently used entries; a firmware charged more than the
//! whole budget is used once and dropped. Loads in flight are not charged until they finish (at
//! most `JOB_CONCURRENCY` of them, one per distinct build). Loads that bypass the cache (budget 0,
//! a version row without the ELF's SHA-256, an ELF that does not hash to it) are not shared:
//! each such parse loads its own copy, up to `JOB_CONCURRENCY` copies of one build at once. An
//! evicted entry's memory is released when the last parse still using it finishes. Budget 0 turns the cache off.
//!
//! Metrics: [`PARSE_CACHE_LOOKUPS`] by outcome (`hit`; `waited` for another parse's load;
//! `loaded`; `uncached`: cache off or no SHA-256 on the row; `too_large`; `mismatch`),
//! [`PARSE_CACHE_EVICTIONS`], and the gauges [`PARSE_CACHE_BYTES`] and [`PARSE_CACHE_ENTRIES`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use esp_coredump::Firmware;
use tokio::sync::OnceCell;

use crate::telemetry::{
    PARSE_CACHE_BYTES, PARSE_CACHE_ENTRIES, PARSE_CACHE_EVICTIONS, PARSE_CACHE_LOOKUPS,
};

pub struct ParseCache {
    budget: u64,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Slot>,
    /// Bytes charged for the loaded entries.
    stored: u64,
    /// A logical clock for least-recently-used eviction.
    clock: u64,
}

/// One build: its firmware once loaded, and what it is charged (0 while loading).
struct Slot {
    cell: Arc<OnceCell<Arc<Firmware>>>,
    charged: u64,
    last_used: u64,
}

/// Why no firmware could be had.
#[derive(Debug)]
pub enum LoadError<E> {
    /// Fetching the ELF failed (the fetch's own error).
    Fetch(E),
    /// The ELF's bytes are not a usable firmware ELF.
    Firmware(String),
}

/// How a load ended inside the per-entry lock.
enum Loaded<E> {
    Failed(LoadError<E>),
    /// Loaded, but its bytes do not hash to the key: use it, never keep it.
    Mismatch(Arc<Firmware>),
}

impl ParseCache {
    pub fn new(budget: u64) -> Arc<Self> {
        Arc::new(ParseCache {
            budget,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No critical section can panic halfway through an update.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries and bytes charged (loads in flight not included). For tests and diagnostics.
    pub fn usage(&self) -> (usize, u64) {
        let inner = self.lock();
        let loaded = inner.entries.values().filter(|s| s.charged > 0).count();
        (loaded, inner.stored)
    }

    /// The loaded firmware of the ELF whose row records `sha256`: from memory, or by `fetch`ing
    /// the ELF's bytes and loading them (on a blocking thread).
    pub async fn firmware<E, F, Fut>(
        &self,
        sha256: Option<&str>,
        fetch: F,
    ) -> Result<Arc<Firmware>, LoadError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let key = match sha256 {
            Some(sha256) if self.budget > 0 => sha256.to_ascii_lowercase(),
            _ => {
                count("uncached");
                return load(fetch).await.map(Arc::new);
            }
        };
        let cell = self.slot(&key);
        if let Some(firmware) = cell.get() {
            count("hit");
            return Ok(Arc::clone(firmware));
        }
        let mut loaded_here = false;
        let result = cell
            .get_or_try_init(|| async {
                loaded_here = true;
                let firmware = load(fetch).await.map_err(Loaded::Failed)?;
                if firmware.sha256_hex() == key {
                    Ok(Arc::new(firmware))
                } else {
                    Err(Loaded::Mismatch(Arc::new(firmware)))
                }
            })
            .await;
        match result {
            Ok(firmware) if loaded_here => {
                self.charge(&key, &cell, firmware);
                Ok(Arc::clone(firmware))
            }
            Ok(firmware) => {
                count("waited");
                Ok(Arc::clone(firmware))
            }
            Err(loaded) => {
                self.forget(&key, &cell);
                match loaded {
                    Loaded::Failed(e) => Err(e),
                    Loaded::Mismatch(firmware) => {
                        tracing::warn!(
                            expected_sha256 = %key,
                            actual_sha256 = %firmware.sha256_hex(),
                            "parse_cache_elf_mismatch"
                        );
                        count("mismatch");
                        Ok(firmware)
                    }
                }
            }
        }
    }

    /// The entry of `key` (created empty if absent), marked as just used.
    fn slot(&self, key: &str) -> Arc<OnceCell<Arc<Firmware>>> {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        let slot = inner
            .entries
            .entry(key.to_string())
            .or_insert_with(|| Slot {
                cell: Arc::new(OnceCell::new()),
                charged: 0,
                last_used: now,
            });
        slot.last_used = now;
        Arc::clone(&slot.cell)
    }

    /// Charges a firmware this call loaded, evicting least recently used entries to make room;
    /// drops it again if it alone is larger than the budget.
    fn charge(&self, key: &str, cell: &Arc<OnceCell<Arc<Firmware>>>, firmware: &Firmware) {
        let size = u64::try_from(firmware.approx_bytes())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut inner = self.lock();
        let ours = inner
            .entries
            .get(key)
            .is_some_and(|s| Arc::ptr_eq(&s.cell, cell) && s.charged == 0);
        if !ours {
            drop(inner);
            count("loaded");
            return;
        }
        if size > self.budget {
            inner.entries.remove(key);
            publish(&inner);
            drop(inner);
            count("too_large");
            return;
        }
        while inner.stored + size > self.budget {
            let oldest = inner
                .entries
                .iter()
                .filter(|(_, s)| s.charged > 0)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            if let Some(evicted) = inner.entries.remove(&oldest) {
                inner.stored -= evicted.charged;
                metrics::counter!(PARSE_CACHE_EVICTIONS).increment(1);
            }
        }
        inner.stored += size;
        if let Some(slot) = inner.entries.get_mut(key) {
            slot.charged = size;
        }
        publish(&inner);
        drop(inner);
        count("loaded");
    }

    /// Removes the entry of a load that failed, unless another parse has replaced it meanwhile.
    fn forget(&self, key: &str, cell: &Arc<OnceCell<Arc<Firmware>>>) {
        let mut inner = self.lock();
        let ours = inner
            .entries
            .get(key)
            .is_some_and(|s| Arc::ptr_eq(&s.cell, cell) && s.cell.get().is_none());
        if ours {
            inner.entries.remove(key);
        }
    }
}

/// Fetches the ELF and loads it on a blocking thread (hashing, DWARF, CFI and TCB layout are CPU
/// work that must not stall the async workers).
async fn load<E, F, Fut>(fetch: F) -> Result<Firmware, LoadError<E>>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Bytes, E>>,
{
    let elf = fetch().await.map_err(LoadError::Fetch)?;
    tokio::task::spawn_blocking(move || Firmware::new(&elf))
        .await
        .map_err(|e| LoadError::Firmware(format!("loading it failed: {e}")))?
        .map_err(|e| LoadError::Firmware(e.to_string()))
}

fn count(outcome: &'static str) {
    metrics::counter!(PARSE_CACHE_LOOKUPS, "outcome" => outcome).increment(1);
}

fn publish(inner: &Inner) {
    let loaded = inner.entries.values().filter(|s| s.charged > 0).count();
    metrics::gauge!(PARSE_CACHE_BYTES).set(inner.stored as f64);
    metrics::gauge!(PARSE_CACHE_ENTRIES).set(loaded as f64);
}

#[cfg(test)]
mod tests;
