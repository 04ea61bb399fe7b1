//! Virtual time. The core never reads a clock: every input carries `now`, so a
//! simulator can run a cluster faster than real time and replay it exactly.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, Sub};

/// A point in time, in milliseconds since an arbitrary epoch chosen by the driver.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Time(pub u64);

/// A span of time in milliseconds (our own type: `std::time::Duration` invites
/// `Instant`, which the core must never touch).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Dur(pub u64);

impl Time {
    /// The epoch.
    pub const ZERO: Time = Time(0);

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> u64 {
        self.0
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Dur {
        Dur(self.0.saturating_sub(earlier.0))
    }
}

impl Dur {
    /// Zero length.
    pub const ZERO: Dur = Dur(0);

    /// `ms` milliseconds.
    pub const fn millis(ms: u64) -> Dur {
        Dur(ms)
    }

    /// `s` seconds.
    pub const fn secs(s: u64) -> Dur {
        Dur(s * 1000)
    }

    /// Length in milliseconds.
    pub fn as_millis(self) -> u64 {
        self.0
    }
}

impl Add<Dur> for Time {
    type Output = Time;
    fn add(self, d: Dur) -> Time {
        Time(self.0.saturating_add(d.0))
    }
}

impl Sub<Dur> for Time {
    type Output = Time;
    fn sub(self, d: Dur) -> Time {
        Time(self.0.saturating_sub(d.0))
    }
}

impl Add for Dur {
    type Output = Dur;
    fn add(self, d: Dur) -> Dur {
        Dur(self.0.saturating_add(d.0))
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(Time(5) + Dur(3), Time(8));
        assert_eq!(Time(5) - Dur(9), Time(0));
        assert_eq!(Time(5).since(Time(9)), Dur(0));
        assert_eq!(Time(u64::MAX) + Dur(1), Time(u64::MAX));
        assert_eq!(Time(1234).to_string(), "1.234s");
    }
}
