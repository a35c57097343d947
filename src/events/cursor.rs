//! Where a reader of an append-only table stands, when the table's ids are handed out as rows are
//! inserted but rows appear as their transactions commit.
//!
//! On PostgreSQL two transactions recording an event at once take ids 7 and 8; if the second
//! commits first, a reader sees 8, and "rows after 8" never returns 7 once it commits. So every id
//! a reader skips over is a *gap*, looked for again on each read until its row appears or
//! [`GAP_WAIT`] has passed: a rolled-back insert leaves its id unused for good, and a transaction
//! that records an event and stays open longer than that is not waited for. SQLite has one writer
//! at a time, so its ids become visible in order and gaps never fill; looking for them costs
//! nothing there (`events::after` ignores them).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long a skipped id is looked for. Events are recorded at the end of their transactions
/// (firmware uploads after their artifacts' PUTs, just before the commit), so gaps fill within
/// a commit's time; the margin covers a commit held up by a database under pressure.
pub const GAP_WAIT: Duration = Duration::from_secs(600);

/// The most skipped ids one reader looks for; past it, those it noticed first are given up.
pub const MAX_GAPS: usize = 1024;

#[derive(Debug, Clone)]
pub struct Cursor {
    last: i64,
    /// Skipped ids, and when they were first skipped.
    gaps: BTreeMap<i64, Instant>,
}

impl Cursor {
    /// A reader that has seen every row up to `last`.
    pub fn new(last: i64) -> Self {
        Cursor {
            last,
            gaps: BTreeMap::new(),
        }
    }

    /// A reader that has seen every row up to `last` except `missing`, which it looks for as if
    /// it had skipped them at `now` (at most the [`MAX_GAPS`] highest).
    pub fn resume(last: i64, missing: impl IntoIterator<Item = i64>, now: Instant) -> Self {
        let mut gaps: BTreeMap<i64, Instant> = missing
            .into_iter()
            .filter(|id| *id < last)
            .map(|id| (id, now))
            .collect();
        while gaps.len() > MAX_GAPS {
            gaps.pop_first();
        }
        Cursor { last, gaps }
    }

    /// The highest id seen.
    pub fn last(&self) -> i64 {
        self.last
    }

    /// The skipped ids still worth looking for, lowest first (those skipped more than
    /// [`GAP_WAIT`] before `now` are forgotten).
    pub fn gaps(&mut self, now: Instant) -> Vec<i64> {
        self.gaps
            .retain(|_, skipped| now.saturating_duration_since(*skipped) < GAP_WAIT);
        self.gaps.keys().copied().collect()
    }

    /// Takes note of the rows just read, as ids and whether each was taken recently (see
    /// `events::taken_recently`): a skipped id that appeared is no longer looked for, and the ids
    /// between the highest seen and a higher one are skipped, unless that one is old (so are
    /// they, then: a reader far behind does not look for what retention removed). `rows` may come
    /// in any order.
    pub fn saw(&mut self, rows: impl IntoIterator<Item = (i64, bool)>, now: Instant) {
        let mut rows: Vec<(i64, bool)> = rows.into_iter().collect();
        rows.sort_unstable();
        for (id, recent) in rows {
            if id <= self.last {
                self.gaps.remove(&id);
                continue;
            }
            if !recent {
                self.last = id;
                continue;
            }
            // Only the MAX_GAPS ids right below `id`: a jump of the sequence (PostgreSQL skips
            // up to 32 values after a crash) is not a reason to look for millions of rows.
            let first_skipped = (self.last + 1).max(id.saturating_sub(MAX_GAPS as i64));
            for skipped in first_skipped..id {
                self.gaps.insert(skipped, now);
            }
            self.last = id;
        }
        while self.gaps.len() > MAX_GAPS {
            self.gaps.pop_first();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of these ids, all recorded recently.
    fn recent(ids: impl IntoIterator<Item = i64>) -> Vec<(i64, bool)> {
        ids.into_iter().map(|id| (id, true)).collect()
    }

    #[test]
    fn a_jump_to_an_old_row_skips_nothing_worth_looking_for() {
        let now = Instant::now();
        let mut cursor = Cursor::new(5);
        // A reader far behind: what lies below an old row was taken earlier still.
        cursor.saw([(900, false), (1000, true)], now);
        assert_eq!(cursor.last(), 1000);
        assert_eq!(cursor.gaps(now), (901..1000).collect::<Vec<_>>());
        let mut cursor = Cursor::new(5);
        cursor.saw([(900, false)], now);
        assert!(cursor.gaps(now).is_empty());
        assert_eq!(cursor.last(), 900);
    }

    #[test]
    fn ids_skipped_over_are_looked_for_until_they_appear() {
        let now = Instant::now();
        let mut cursor = Cursor::new(6);
        cursor.saw(recent([8, 10]), now);
        assert_eq!(cursor.last(), 10);
        assert_eq!(cursor.gaps(now), vec![7, 9]);
        cursor.saw(recent([9, 11]), now);
        assert_eq!(cursor.gaps(now), vec![7]);
        cursor.saw(recent([7]), now);
        assert!(cursor.gaps(now).is_empty());
        assert_eq!(cursor.last(), 11);
    }

    #[test]
    fn rows_read_in_order_leave_no_gaps() {
        let now = Instant::now();
        let mut cursor = Cursor::new(0);
        cursor.saw(recent(1..=100), now);
        cursor.saw(recent([]), now);
        assert!(cursor.gaps(now).is_empty());
        assert_eq!(cursor.last(), 100);
    }

    #[test]
    fn a_gap_is_given_up_after_the_wait() {
        let start = Instant::now();
        let mut cursor = Cursor::new(1);
        cursor.saw(recent([3]), start);
        assert_eq!(
            cursor.gaps(start + GAP_WAIT - Duration::from_secs(1)),
            vec![2]
        );
        assert!(cursor.gaps(start + GAP_WAIT).is_empty());
        assert_eq!(cursor.last(), 3);
    }

    #[test]
    fn a_resumed_reader_looks_for_the_ids_it_was_told_are_missing() {
        let now = Instant::now();
        let mut cursor = Cursor::resume(10, [7, 4, 12], now);
        assert_eq!(cursor.last(), 10);
        assert_eq!(cursor.gaps(now), vec![4, 7], "none at or above the last id");
        cursor.saw(recent([7, 11]), now);
        assert_eq!(cursor.gaps(now), vec![4]);
        let many = Cursor::resume(5000, 0..5000, now).gaps(now);
        assert_eq!(many.len(), MAX_GAPS);
        assert_eq!(many.first(), Some(&(5000 - MAX_GAPS as i64)));
    }

    #[test]
    fn the_gaps_looked_for_are_bounded() {
        let now = Instant::now();
        let mut cursor = Cursor::new(0);
        cursor.saw(recent([10_000_000]), now);
        let gaps = cursor.gaps(now);
        assert_eq!(gaps.len(), MAX_GAPS);
        assert_eq!(gaps.first(), Some(&(10_000_000 - MAX_GAPS as i64)));
        assert_eq!(gaps.last(), Some(&9_999_999));
        // Many small jumps: the earliest gaps are given up first.
        let mut cursor = Cursor::new(0);
        cursor.saw(recent((1..=2 * MAX_GAPS as i64).map(|i| 2 * i)), now);
        let gaps = cursor.gaps(now);
        assert_eq!(gaps.len(), MAX_GAPS);
        assert_eq!(gaps.last(), Some(&(4 * MAX_GAPS as i64 - 1)));
    }
}
