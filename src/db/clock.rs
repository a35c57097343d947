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
//! Testing seam: `IOTSUPPORT_TEST_CLOCK_SKEW_SECONDS` (read once) moves this process's own clock by
//! that many seconds, as a wrong system clock would, before the correction.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

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

/// The applied offset (database clock minus this process's clock), in microseconds.
static OFFSET_MICROS: AtomicI64 = AtomicI64::new(0);

/// The current time on the database's clock, at the precision both databases store
/// (microseconds), so a value written and read back compares equal.
pub fn now() -> DateTime<Utc> {
    corrected(own_clock(), OFFSET_MICROS.load(Ordering::Relaxed))
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

/// Measures the offset again every [`SYNC_EVERY`] until `shutdown` (a failed read keeps the last
/// offset: the database is away, and nothing is written meanwhile).
pub async fn run_worker(db: Db, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(SYNC_EVERY) => {}
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
    fn the_corrected_clock_keeps_microseconds() {
        let own = at(0) + TimeDelta::nanoseconds(1_500);
        assert_eq!(corrected(own, -3_600_000_000), at(-3_600_000_000 + 1));
    }
}
