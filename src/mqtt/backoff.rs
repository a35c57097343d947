//! Reconnect delays: exponential back-off with jitter, so that a fleet of `serve` processes whose
//! broker restarted does not reconnect in lockstep.

use std::time::Duration;

/// Delays between connection attempts: `min`, `2·min`, `4·min`, … capped at `max`, each drawn
/// uniformly from the upper half of that value ("equal jitter": never less than half, so a
/// broken broker is not hammered, and never exactly in step with other processes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling of the delay before attempt `failures + 1`, after `failures` failures in a row.
    pub fn ceiling(&self, failures: u32) -> Duration {
        // 2^20 · min is far above any sensible max; stopping there avoids overflow.
        let factor = 1u32 << failures.min(20);
        self.min.saturating_mul(factor).min(self.max).max(self.min)
    }

    /// The delay after `failures` failures in a row, with `unit` drawn uniformly from `[0, 1)`.
    pub fn delay_with(&self, failures: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The delay after `failures` failures in a row, jittered with the thread's random generator.
    pub fn delay(&self, failures: u32) -> Duration {
        use rand::Rng;
        self.delay_with(failures, rand::rng().random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_half_a_second_up_to_thirty_seconds() {
        let b = Backoff::default();
        let ceilings: Vec<_> = (0..10).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]
        );
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn jitter_stays_within_the_upper_half_of_the_ceiling() {
        let b = Backoff::default();
        for failures in [0, 3, 7, 50] {
            let ceiling = b.ceiling(failures);
            assert_eq!(b.delay_with(failures, 0.0), ceiling / 2);
            assert!(b.delay_with(failures, 0.999_999) <= ceiling);
            for _ in 0..100 {
                let d = b.delay(failures);
                assert!(
                    d >= ceiling / 2 && d <= ceiling,
                    "{d:?} outside {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn a_max_below_min_still_waits_min() {
        let b = Backoff {
            min: Duration::from_secs(2),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(5), Duration::from_secs(2));
    }
}
