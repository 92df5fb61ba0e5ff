//! The system clock adapters read.
//!
//! A token's lifetime runs on the authorization server's clock, which keeps
//! going while this machine sleeps. [`SystemClock`] therefore reads
//! `CLOCK_BOOTTIME` on Linux and Android (a monotonic clock that counts time
//! spent suspended); elsewhere it falls back to `std::time::Instant`, which on
//! some platforms stops during sleep. Tests use the core's
//! [`ManualClock`] instead.

use std::time::SystemTime;

pub use token_keeper::time::{Clock, ManualClock};
use token_keeper::Instant;

/// The machine's clocks: `CLOCK_BOOTTIME` (Linux, Android) or `std::time::Instant`.
#[derive(Clone, Debug)]
pub struct SystemClock {
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    origin: std::time::Instant,
}

impl SystemClock {
    /// The system clock.
    pub fn new() -> SystemClock {
        SystemClock {
            #[cfg(not(any(target_os = "linux", target_os = "android")))]
            origin: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    #[inline]
    fn monotonic(&self) -> Instant {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
            let nanos = (ts.tv_sec as u64)
                .saturating_mul(1_000_000_000)
                .saturating_add(ts.tv_nsec as u64);
            Instant::from_nanos(nanos)
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            Instant::from_duration(self.origin.elapsed())
        }
    }

    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock::new();
        let a = clock.monotonic();
        let b = clock.monotonic();
        assert!(b >= a);
        assert!(a > Instant::ZERO);
    }
}
