//! The database's clock: every timestamp this process writes or compares with stored ones.
//!
//! Leases, due times, rotation timeouts, session expiry and the like are written by one process
//! and read by another, so they must come from one clock. A process's own clock can be far off
//! the others' (a board without a real-time clock before NTP has synchronised it, a VM resumed
//! from a snapshot); with PostgreSQL and several processes, a clock an hour ahead took every
//! running job over as stale and timed every pending rotation out early, one behind claimed
//! nothing its peers had queued.
//!
//! So [`now`] is this process's clock corrected by its offset from the database's clock, which
//! [`sync`] measures: a few `clock_timestamp()` reads (SQLite: `'now'` in milliseconds), each
//! taken as read halfway between sending the query and its answer, the one with the shortest
//! round trip kept (its error is at most half that trip). The server measures at start and every
//! [`SYNC_EVERY`] after (`run_worker`); the commands that write, once when they connect. An
//! offset within [`IGNORED_BELOW`] is treated as none, so a process on the database's host (or
//! kept by NTP) reads exactly its own clock, and its timestamps never step back and forth by the
//! measurement's noise.
//!
//! A step of this process's clock between two measurements (NTP setting it at last, a resumed
//! VM) would otherwise be applied on top of the old offset until the next one, up to a minute
//! of timestamps far off: a `last_seen_at` two days ahead that newer observations never
//! replace, a rotation attempt that cannot time out. So each measurement also notes the
//! process's clock against its monotonic clock; a [`now`] that finds the two apart by more than
//! [`STEP_TOLERANCE`] reads the database's clock as last measured, moved on by the monotonic
//! clock, and has the server measure again at once.
//!
//! Testing seam: `IOTSUPPORT_TEST_CLOCK_SKEW_SECONDS` (read once) moves this process's own clock by
//! that many seconds, as a wrong system clock would, before the correction.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio_util::sync::CancellationToken;

use super::{Db, DbError};

/// Offsets smaller than this are not applied (see the module documentation).
pub const IGNORED_BELOW: Duration = Duration::from_millis(10);

/// How often the server measures the offset again.
pub const SYNC_EVERY: Duration = Duration::from_secs(60);

/// An offset this large is logged as a warning: the host's clock needs fixing.
const WARN_ABOVE: Duration = Duration::from_secs(1);

/// Reads of the database's clock per measurement.
const SAMPLES: usize = 3;

/// How far this process's clock may move from its monotonic clock between two measurements
/// before it counts as stepped (NTP slews by at most 0.5 ms a second: 30 ms a minute).
pub const STEP_TOLERANCE: Duration = Duration::from_secs(1);

/// The applied offset (database clock minus this process's clock), in microseconds.
static OFFSET_MICROS: AtomicI64 = AtomicI64::new(0);

/// This process's clock minus its monotonic clock (microseconds since [`monotonic_base`]), as
/// of the last measurement; [`NO_ANCHOR`] before the first.
static ANCHOR_MICROS: AtomicI64 = AtomicI64::new(NO_ANCHOR);
const NO_ANCHOR: i64 = i64::MIN;

/// Set when [`now`] has seen a step and told the worker; cleared by the next measurement.
static STEP_SEEN: AtomicBool = AtomicBool::new(false);

fn step_signal() -> &'static tokio::sync::Notify {
    static SIGNAL: OnceLock<tokio::sync::Notify> = OnceLock::new();
    SIGNAL.get_or_init(tokio::sync::Notify::new)
}

fn monotonic_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn monotonic_micros() -> i64 {
    i64::try_from(monotonic_base().elapsed().as_micros()).unwrap_or(i64::MAX)
}

/// The current time on the database's clock, at the precision both databases store
/// (microseconds), so a value written and read back compares equal.
pub fn now() -> DateTime<Utc> {
    let (now, stepped) = reading(
        own_clock(),
        monotonic_micros(),
        ANCHOR_MICROS.load(Ordering::Relaxed),
        OFFSET_MICROS.load(Ordering::Relaxed),
    );
    if stepped && !STEP_SEEN.swap(true, Ordering::Relaxed) {
        tracing::warn!("process_clock_stepped: timestamps follow the monotonic clock until the database's clock is read again");
        step_signal().notify_one();
    }
    now
}

/// The database's time for this process's clock `own` and monotonic clock `mono`, given the
/// last measurement's `anchor` and `offset`; and whether `own` stepped since that measurement
/// (then the time comes from the monotonic clock instead).
fn reading(own: DateTime<Utc>, mono: i64, anchor: i64, offset: i64) -> (DateTime<Utc>, bool) {
    if anchor != NO_ANCHOR {
        let expected_micros = anchor.saturating_add(mono);
        let own_micros = own.timestamp_micros();
        let tolerance = i64::try_from(STEP_TOLERANCE.as_micros()).unwrap_or(i64::MAX);
        if own_micros.abs_diff(expected_micros) > tolerance.unsigned_abs() {
            if let Some(expected) = DateTime::from_timestamp_micros(expected_micros) {
                return (corrected(expected, offset), true);
            }
        }
    }
    (corrected(own, offset), false)
}

fn corrected(own: DateTime<Utc>, offset_micros: i64) -> DateTime<Utc> {
    let now = own + TimeDelta::microseconds(offset_micros);
    now.duration_trunc(TimeDelta::microseconds(1))
        .unwrap_or(now)
}

/// This process's clock, moved by the testing seam's skew.
fn own_clock() -> DateTime<Utc> {
    static SKEW: OnceLock<TimeDelta> = OnceLock::new();
    let skew = SKEW.get_or_init(|| {
        std::env::var("IOTSUPPORT_TEST_CLOCK_SKEW_SECONDS")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && s.abs() < 1e9)
            .map(|s| TimeDelta::microseconds((s * 1e6) as i64))
            .unwrap_or_default()
    });
    Utc::now() + *skew
}

/// One measurement: the database's clock minus this process's, and how far off it may be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offset {
    pub offset: TimeDelta,
    /// Half the round trip of the read it comes from.
    pub uncertainty: TimeDelta,
}

impl Offset {
    /// What [`now`] adds to this process's clock for this measurement.
    fn applied_micros(&self) -> i64 {
        let micros = self.offset.num_microseconds().unwrap_or(i64::MAX);
        let ignored = i64::try_from(IGNORED_BELOW.as_micros()).unwrap_or(i64::MAX);
        if micros.abs() < ignored {
            0
        } else {
            micros
        }
    }
}

/// The offset from one read of the database's clock at `read`, sent at `sent` and answered at
/// `answered` (both on this process's clock).
fn offset_of(sent: DateTime<Utc>, read: DateTime<Utc>, answered: DateTime<Utc>) -> Offset {
    let trip = answered - sent;
    let midway = sent + trip / 2;
    Offset {
        offset: read - midway,
        uncertainty: trip / 2,
    }
}

/// Measures this process's offset from the database's clock and applies it to [`now`]; returns
/// the measurement. Logs a warning when the offset is large.
pub async fn sync(db: &Db) -> Result<Offset, DbError> {
    let measured = measure(db).await?;
    apply(&measured);
    Ok(measured)
}

/// [`sync`], for the commands: a database that cannot be read now leaves the clock as it is (the
/// command's own statements will report the failure).
pub async fn sync_or_warn(db: &Db) {
    if let Err(e) = sync(db).await {
        tracing::warn!(error = %e, "database_clock_not_read");
    }
}

fn apply(measured: &Offset) {
    let applied = measured.applied_micros();
    let before = OFFSET_MICROS.swap(applied, Ordering::Relaxed);
    // The clocks as they are now: a step from here on is seen by `now`.
    let own = own_clock().timestamp_micros();
    ANCHOR_MICROS.store(own.saturating_sub(monotonic_micros()), Ordering::Relaxed);
    STEP_SEEN.store(false, Ordering::Relaxed);
    metrics::gauge!(crate::telemetry::DATABASE_CLOCK_OFFSET).set(applied as f64 / 1e6);
    let large = measured.offset.abs().to_std().unwrap_or(Duration::MAX) > WARN_ABOVE;
    if large && before != applied {
        tracing::warn!(
            offset_seconds = measured.offset.as_seconds_f64(),
            uncertainty_seconds = measured.uncertainty.as_seconds_f64(),
            "process_clock_differs_from_the_databases: timestamps follow the database's clock; fix the host's clock (NTP)"
        );
    }
}

async fn measure(db: &Db) -> Result<Offset, DbError> {
    let mut best: Option<Offset> = None;
    for _ in 0..SAMPLES {
        let sample = match db {
            Db::Postgres(p) => {
                let mut conn = p.acquire().await?;
                let sent = own_clock();
                let read: DateTime<Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
                    .fetch_one(&mut *conn)
                    .await?;
                offset_of(sent, read, own_clock())
            }
            Db::Sqlite(p) => {
                let mut conn = p.acquire().await?;
                let sent = own_clock();
                let text: String =
                    sqlx::query_scalar("SELECT strftime('%Y-%m-%dT%H:%M:%fZ', 'now')")
                        .fetch_one(&mut *conn)
                        .await?;
                let answered = own_clock();
                let read = DateTime::parse_from_rfc3339(&text)
                    .map_err(|e| DbError::Other(sqlx::Error::Decode(Box::new(e))))?
                    .with_timezone(&Utc);
                offset_of(sent, read, answered)
            }
        };
        if best.is_none_or(|b| sample.uncertainty < b.uncertainty) {
            best = Some(sample);
        }
    }
    best.ok_or_else(|| DbError::Other(sqlx::Error::RowNotFound))
}

/// Measures the offset again every [`SYNC_EVERY`], and at once when [`now`] saw this process's
/// clock step, until `shutdown` (a failed read keeps the last offset: the database is away, and
/// nothing is written meanwhile).
pub async fn run_worker(db: Db, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SYNC_EVERY) => {}
            _ = step_signal().notified() => {}
        }
        if let Err(e) = sync(&db).await {
            tracing::debug!(error = %e, "database_clock_not_read");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(1_800_000_000_000_000 + micros).unwrap()
    }

    #[test]
    fn a_read_counts_as_taken_halfway_through_its_round_trip() {
        // Sent at 0, answered at 2 ms, the database said 1 h + 1 ms: an hour ahead.
        let o = offset_of(at(0), at(3_600_000_000 + 1_000), at(2_000));
        assert_eq!(o.offset, TimeDelta::hours(1));
        assert_eq!(o.uncertainty, TimeDelta::milliseconds(1));
        assert_eq!(o.applied_micros(), 3_600_000_000);
        // An hour behind.
        let o = offset_of(at(0), at(-3_600_000_000 + 1_000), at(2_000));
        assert_eq!(o.applied_micros(), -3_600_000_000);
    }

    #[test]
    fn an_offset_within_the_noise_is_not_applied() {
        let o = offset_of(at(0), at(9_000), at(0));
        assert_eq!(o.applied_micros(), 0);
        let o = offset_of(at(0), at(-9_999), at(0));
        assert_eq!(o.applied_micros(), 0);
        let o = offset_of(at(0), at(10_000), at(0));
        assert_eq!(o.applied_micros(), 10_000);
    }

    #[test]
    fn a_step_of_the_process_clock_after_a_measurement_is_not_applied() {
        // Measured at own clock `at(0)`, monotonic 5 s, with the database an hour ahead.
        let anchor = at(0).timestamp_micros() - 5_000_000;
        let hour = 3_600_000_000;
        // 30 s later on both clocks: the own clock, corrected.
        let (t, stepped) = reading(at(30_000_000), 35_000_000, anchor, hour);
        assert_eq!((t, stepped), (at(hour + 30_000_000), false));
        // Slewed by NTP within the tolerance: still the own clock.
        let (t, stepped) = reading(at(30_200_000), 35_000_000, anchor, hour);
        assert_eq!((t, stepped), (at(hour + 30_200_000), false));
        // The own clock stepped an hour forward (NTP fixing it) 30 s later: the database's
        // clock as measured, moved on by the monotonic clock, not two hours ahead.
        let (t, stepped) = reading(at(hour + 30_000_000), 35_000_000, anchor, hour);
        assert_eq!((t, stepped), (at(hour + 30_000_000), true));
        // Stepped back two days.
        let (t, stepped) = reading(at(-172_800_000_000), 35_000_000, anchor, hour);
        assert_eq!((t, stepped), (at(hour + 30_000_000), true));
        // Before any measurement there is nothing to compare with.
        let (t, stepped) = reading(at(7), 0, NO_ANCHOR, 0);
        assert_eq!((t, stepped), (at(7), false));
    }

    #[test]
    fn the_corrected_clock_keeps_microseconds() {
        let own = at(0) + TimeDelta::nanoseconds(1_500);
        assert_eq!(corrected(own, -3_600_000_000), at(-3_600_000_000 + 1));
    }
}
