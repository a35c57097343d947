//! The dumps this process has just stored, handed to their parse without a read from the object
//! store (issue 18: upload to `PARSED` at the ingest rate). The upload offers its bytes once its
//! row is committed; the parse of that dump takes them and reads the object only when they are
//! not here (another process stored the dump, they were pushed out, or the process restarted).
//!
//! The bytes are exactly those of the object: a dump's key carries its id, which no other dump
//! ever gets, and a stored dump is never rewritten. The handoff is bounded by bytes
//! ([`BUDGET_BYTES`], each entry charged its bookkeeping too, so that tiny dumps cannot make it
//! hold millions of entries); the oldest offers go first, so a backlog that outgrows it falls
//! back to the object store, as every parse did before. So does a parse that claims its job
//! before the upload has offered the bytes, and the next attempt of a parse that took them and
//! then failed for a passing reason (the ELF's read, the sidecar): the bytes are taken once.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::Bytes;

use crate::storage::ObjectKey;

/// What the handoff holds at most: about 32 dumps of 64 KiB, 200 of 9 KiB, the parses a
/// keeping-up process has queued (it claims them in batches of a quarter of `JOB_CONCURRENCY`).
/// In `bench/ingest.sh` (64 KiB dumps arriving faster than they are parsed, which fills any
/// budget) the service's peak RSS was 41–43 MiB without the handoff, 53–56 MiB with 8 MiB and
/// 47 MiB with 2 MiB.
pub const BUDGET_BYTES: usize = 2 * 1024 * 1024;

/// What an entry is charged besides its bytes: its key twice (map and order), the map's and the
/// order's slots, the bytes' header. An overestimate, so that the budget bounds memory whatever
/// the dumps' sizes.
const ENTRY_OVERHEAD: usize = 256;

#[derive(Debug)]
pub struct Handoff {
    budget: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    dumps: HashMap<ObjectKey, Bytes>,
    /// Offer order, oldest first; a key taken since is skipped when its turn to go comes.
    order: VecDeque<ObjectKey>,
    bytes: usize,
}

impl Default for Handoff {
    fn default() -> Self {
        Handoff::with_budget(BUDGET_BYTES)
    }
}

impl Handoff {
    pub fn with_budget(budget: usize) -> Self {
        Handoff {
            budget,
            held: Mutex::default(),
        }
    }

    /// Keeps a just-committed dump's bytes for its parse, pushing out the oldest offers beyond the
    /// budget. An empty dump, or one larger than the whole budget, is not kept. The bytes are
    /// copied: a body read in pieces may sit in a buffer up to twice its length, which the
    /// budget would not see.
    pub fn offer(&self, key: ObjectKey, dump: &[u8]) {
        let charge = dump.len() + ENTRY_OVERHEAD;
        if dump.is_empty() || charge > self.budget {
            return;
        }
        let dump = Bytes::copy_from_slice(dump);
        let mut held = self.lock();
        while held.bytes + charge > self.budget {
            let Some(oldest) = held.order.pop_front() else {
                break;
            };
            if let Some(gone) = held.dumps.remove(&oldest) {
                held.bytes -= gone.len() + ENTRY_OVERHEAD;
            }
        }
        held.bytes += charge;
        if let Some(replaced) = held.dumps.insert(key.clone(), dump) {
            held.bytes -= replaced.len() + ENTRY_OVERHEAD;
        }
        held.order.push_back(key);
        // Keys taken leave their place in the order behind: drop those at its front, and all of
        // them when they outnumber the dumps held (so the order stays within twice the dumps).
        while held
            .order
            .front()
            .is_some_and(|front| !held.dumps.contains_key(front))
        {
            held.order.pop_front();
        }
        if held.order.len() > 2 * held.dumps.len() + 16 {
            let Held { dumps, order, .. } = &mut *held;
            order.retain(|k| dumps.contains_key(k));
        }
    }

    /// The bytes of the dump at `key`, if this process stored it lately; they are given up.
    pub fn take(&self, key: &ObjectKey) -> Option<Bytes> {
        let mut held = self.lock();
        let dump = held.dumps.remove(key)?;
        held.bytes -= dump.len() + ENTRY_OVERHEAD;
        Some(dump)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // A panic while holding the lock leaves consistent maps (no step in between can panic).
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: i64) -> ObjectKey {
        crate::layout::coredump_key("dev", id).unwrap()
    }

    /// A budget for `n` entries of `len` bytes.
    fn room_for(n: usize, len: usize) -> usize {
        n * (len + ENTRY_OVERHEAD)
    }

    #[test]
    fn a_dump_is_taken_once() {
        let handoff = Handoff::with_budget(room_for(1, 8));
        handoff.offer(key(1), b"dump one");
        assert_eq!(handoff.take(&key(1)).as_deref(), Some(&b"dump one"[..]));
        assert_eq!(handoff.take(&key(1)), None);
        assert_eq!(handoff.take(&key(2)), None);
        assert_eq!(handoff.held_bytes(), 0);
    }

    #[test]
    fn the_oldest_offers_go_first_and_the_budget_holds() {
        let handoff = Handoff::with_budget(room_for(3, 10));
        for id in 1..=3 {
            handoff.offer(key(id), &[id as u8; 10]);
        }
        assert_eq!(handoff.held_bytes(), room_for(3, 10));
        handoff.offer(key(4), &[4; 15]);
        // 1 and 2 made room; 3 and 4 stay.
        assert_eq!(handoff.take(&key(1)), None);
        assert_eq!(handoff.take(&key(2)), None);
        assert_eq!(handoff.take(&key(3)).map(|b| b.len()), Some(10));
        assert_eq!(handoff.take(&key(4)).map(|b| b.len()), Some(15));
        assert_eq!(handoff.held_bytes(), 0);
    }

    #[test]
    fn a_taken_dump_leaves_no_room_taken_and_empty_or_too_large_dumps_are_not_kept() {
        let handoff = Handoff::with_budget(room_for(2, 10));
        handoff.offer(key(1), &[1; 10]);
        handoff.offer(key(2), &[2; 10]);
        assert!(handoff.take(&key(2)).is_some());
        // Room for 3 without pushing 1 out.
        handoff.offer(key(3), &[3; 10]);
        assert!(handoff.take(&key(1)).is_some());
        handoff.offer(key(4), &vec![4; room_for(2, 10)]);
        assert_eq!(handoff.take(&key(4)), None);
        handoff.offer(key(5), b"");
        assert_eq!(handoff.take(&key(5)), None);
        assert!(handoff.take(&key(3)).is_some());
    }

    #[test]
    fn tiny_dumps_nobody_takes_are_bounded_in_number() {
        let handoff = Handoff::with_budget(room_for(100, 1));
        for id in 0..10_000 {
            handoff.offer(key(id), b"x");
        }
        let held = handoff.lock();
        assert_eq!(held.dumps.len(), 100);
        assert!(held.order.len() <= 2 * held.dumps.len() + 17);
    }

    #[test]
    fn the_order_does_not_grow_with_dumps_taken_out_of_turn() {
        let handoff = Handoff::with_budget(room_for(100, 4));
        handoff.offer(key(0), b"kept");
        for id in 1..10_000 {
            handoff.offer(key(id), b"x");
            handoff.take(&key(id));
        }
        let held = handoff.lock();
        assert!(
            held.order.len() <= 2 * held.dumps.len() + 17,
            "{}",
            held.order.len()
        );
        assert!(held.dumps.contains_key(&key(0)));
    }
}
