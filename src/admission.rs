//! Per-key admission: at most N requests in progress per key (a device), so one client cannot take
//! every slot of a shared limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
}
