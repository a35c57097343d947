//! Taking turns on a crash group inside one process before taking its row lock in the database.
//!
//! Every dump of a crash waits for its group's row lock in turn ([`super::groups::count_in`]); a
//! crash loop across a fleet is thousands of dumps of one group. When many workers of one process
//! wait for the same row in PostgreSQL, each holds a pool connection and a backend, and every
//! release wakes them all to contend again: the lock manager's work grows with the number of
//! waiters (a drain with 24 workers spent 5.7 ms of PostgreSQL CPU per dump against 3.5 ms with
//! 16, and ran slower). Waiting here first leaves at most one waiter per process in the database.
//!
//! PostgreSQL only: SQLite serialises its writers itself, and a transaction waiting here there
//! would hold the write lock that the holder of the turn needs.
//!
//! The gate has a fixed number of stripes (group id modulo [`STRIPES`]), so its memory never
//! grows; two groups that share a stripe only take turns within this process.
//!
//! No deadlock: a transaction takes at most one stripe, only after it has written its own rows
//! (its dump, its ledger entry, its event) and before any group row lock, and the group row locks
//! are taken in id order by every transaction; transactions that lock groups without the gate
//! (status changes, the backfill) never wait for a stripe.

use tokio::sync::{Mutex, MutexGuard};

/// Stripes of the gate.
pub const STRIPES: usize = 64;

pub struct GroupGate {
    stripes: Vec<Mutex<()>>,
}

impl Default for GroupGate {
    fn default() -> Self {
        GroupGate {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }
}

impl GroupGate {
    /// Waits for this process's turn on `group_id`; the turn lasts until the guard is dropped
    /// (after the transaction has committed or rolled back).
    pub async fn turn(&self, group_id: i64) -> MutexGuard<'_, ()> {
        let stripe = usize::try_from(group_id.rem_euclid(STRIPES as i64)).unwrap_or(0);
        self.stripes[stripe].lock().await
    }
}
