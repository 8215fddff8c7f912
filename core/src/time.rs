//! Time as the manager sees it: a point given by the caller, never read from a clock.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time, as milliseconds since an epoch the caller chooses (the server: its start; the
/// simulation: turmoil's epoch). Only differences matter to the manager.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    millis: u64,
}

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Timestamp = Timestamp { millis: 0 };

    /// `millis` milliseconds after the epoch.
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// The time elapsed since `earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.millis.saturating_sub(earlier.millis))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Timestamp;

    /// Saturates at the end of time instead of overflowing: a deadline that far away never fires.
    fn add(self, duration: Duration) -> Timestamp {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Timestamp {
            millis: self.millis.saturating_add(millis),
        }
    }
}

impl Sub for Timestamp {
    type Output = Duration;

    fn sub(self, earlier: Timestamp) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.millis / 1000, self.millis % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_huge_duration_saturates_instead_of_wrapping() {
        let late = Timestamp::from_millis(u64::MAX - 1) + Duration::from_secs(10);
        assert_eq!(late.as_millis(), u64::MAX);
        let huge = Timestamp::from_millis(5) + Duration::MAX;
        assert_eq!(huge.as_millis(), u64::MAX);
    }

    #[test]
    fn differences_never_go_negative() {
        let early = Timestamp::from_millis(1_000);
        let late = Timestamp::from_millis(3_500);
        assert_eq!(late - early, Duration::from_millis(2_500));
        assert_eq!(early - late, Duration::ZERO);
        assert_eq!(late.to_string(), "3.500s");
    }
}
