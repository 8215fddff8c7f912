//! Exponential back-off with jitter, and the randomness it draws from.
//!
//! The jitter comes from an injected [`Entropy`] source, never from the operating system: the
//! simulation seeds it, so a failing seed replays with the same delays, and tests pin exact
//! delays. Delays are only computed here; the caller sleeps with `tokio::time`, whose clock the
//! simulation pauses and advances.

use std::fmt;
use std::time::Duration;

/// A source of random 64-bit words for jitter.
///
/// Production seeds one from the operating system once, at start-up, outside this crate; tests
/// and the simulation use [`SplitMix64`] with a fixed seed. Any `FnMut() -> u64` is a source.
pub trait Entropy: Send + 'static {
    /// The next random word.
    fn next_u64(&mut self) -> u64;
}

impl<F: FnMut() -> u64 + Send + 'static> Entropy for F {
    fn next_u64(&mut self) -> u64 {
        self()
    }
}

/// The project's seeded generator, for jitter in tests and in the simulation: jitter only has to
/// spread clients apart, not resist an adversary.
pub use trident_core::SplitMix64;

impl Entropy for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        SplitMix64::next_u64(self)
    }
}

/// Exponential back-off: the `n`-th delay (from 0) is `initial · 2ⁿ`, capped at `max`, of which
/// the upper half is jittered ("equal jitter"): at least half the nominal delay always passes,
/// so a flapping server is not hammered, and clients that failed together spread apart.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay's nominal length.
    pub initial: Duration,
    /// The cap on any nominal delay.
    pub max: Duration,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Backoff({:?}..{:?})", self.initial, self.max)
    }
}

impl Backoff {
    /// The nominal (unjittered) delay before retry number `attempt` (0 = the first retry).
    pub fn nominal(&self, attempt: u32) -> Duration {
        // 2^20 times any sane initial delay is past any sane cap; stopping there keeps the
        // multiplication from overflowing.
        let factor = 1u32 << attempt.min(20);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay before retry number `attempt`, jittered by `random`: uniformly in
    /// `[nominal / 2, nominal]`.
    pub fn delay(&self, attempt: u32, random: u64) -> Duration {
        let nominal = self.nominal(attempt);
        let half_ns = u64::try_from(nominal.as_nanos() / 2).unwrap_or(u64::MAX);
        let jitter_ns = if half_ns == 0 {
            0
        } else {
            random % (half_ns + 1)
        };
        let delay = Duration::from_nanos(half_ns.saturating_add(jitter_ns));
        debug_assert!(delay <= nominal + Duration::from_nanos(1));
        delay
    }
}

/// How often and how patiently an idempotent call is retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included; at least 1.
    pub attempts_max: u32,
    /// The delays between attempts.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    /// Four attempts over about 1.75 s at most: long enough to ride out a leader election (`No
    /// cluster leader`, `nomad-api.md` §10 row 17), short enough that the manager, which has its
    /// own retry timers for effects, hears of a longer outage soon.
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 4,
            backoff: Backoff {
                initial: Duration::from_millis(250),
                max: Duration::from_secs(5),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_in_the_upper_half() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        };
        assert_eq!(backoff.nominal(0), Duration::from_millis(100));
        assert_eq!(backoff.nominal(3), Duration::from_millis(800));
        assert_eq!(backoff.nominal(4), Duration::from_millis(1000));
        assert_eq!(backoff.nominal(u32::MAX), Duration::from_millis(1000));
        let mut random = SplitMix64::new(7);
        for attempt in 0..10 {
            let delay = backoff.delay(attempt, random.next_u64());
            let nominal = backoff.nominal(attempt);
            assert!(delay >= nominal / 2, "{delay:?} < half of {nominal:?}");
            assert!(delay <= nominal, "{delay:?} > {nominal:?}");
        }
        assert_eq!(backoff.delay(0, 0), Duration::from_millis(50));
        assert_eq!(backoff.delay(0, 50_000_000), Duration::from_millis(100));
    }

    #[test]
    fn the_same_seed_gives_the_same_sequence() {
        let mut a = SplitMix64::new(42);
        let mut b = SplitMix64::new(42);
        let mut c = SplitMix64::new(43);
        let first: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let second: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let third: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_eq!(first, second);
        assert_ne!(first, third);
    }

    #[test]
    fn a_closure_is_an_entropy_source() {
        let mut counter = 0u64;
        let mut source = move || {
            counter += 1;
            counter
        };
        assert_eq!(Entropy::next_u64(&mut source), 1);
        assert_eq!(Entropy::next_u64(&mut source), 2);
    }
}
