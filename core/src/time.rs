//! Time as an input.
//!
//! The core never reads a clock. Every method that needs the time takes a
//! [`Now`]: a monotonic [`Instant`] for all expiry arithmetic, plus a wall-clock
//! reading for the few places that need calendar time (an HTTP-date in
//! `Retry-After`; later the `iat`/`exp` claims of JWTs).
//!
//! [`Instant`] is a plain count of nanoseconds since an origin the adapter
//! chooses (for example the boot time, read with `CLOCK_BOOTTIME`, so that a
//! token's lifetime keeps running while a laptop sleeps). Being a `u64`, it can
//! be compared against a published [`Snapshot`](crate::Snapshot) with one
//! integer compare and no shared-memory writes, and tests can put it anywhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

/// A reading of a monotonic clock, in nanoseconds since an origin chosen by
/// the adapter. All arithmetic saturates: no input overflows or panics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The origin of the clock.
    pub const ZERO: Instant = Instant(0);
    /// The latest representable instant (about 584 years after the origin).
    pub const MAX: Instant = Instant(u64::MAX);

    /// An instant `nanos` nanoseconds after the origin.
    pub const fn from_nanos(nanos: u64) -> Instant {
        Instant(nanos)
    }

    /// An instant `since_origin` after the origin, saturating at [`Instant::MAX`].
    pub fn from_duration(since_origin: Duration) -> Instant {
        Instant(u64::try_from(since_origin.as_nanos()).unwrap_or(u64::MAX))
    }

    /// An instant `secs` seconds after the origin (handy in tests and examples).
    pub const fn from_secs(secs: u64) -> Instant {
        Instant(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// The time since the origin.
    pub const fn since_origin(self) -> Duration {
        Duration::from_nanos(self.0)
    }

    /// `self + d`, saturating at [`Instant::MAX`].
    pub fn saturating_add(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_add(nanos))
    }

    /// `self - d`, saturating at [`Instant::ZERO`].
    pub fn saturating_sub(self, d: Duration) -> Instant {
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Instant(self.0.saturating_sub(nanos))
    }

    /// The time from `earlier` to `self`, or zero when `earlier` is later.
    pub fn saturating_duration_since(self, earlier: Instant) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

/// The current time as the adapter read it: a monotonic instant for expiry
/// arithmetic and a wall-clock reading for calendar dates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    monotonic: Instant,
    wall: SystemTime,
}

impl Now {
    /// Both readings, taken together.
    pub fn new(monotonic: Instant, wall: SystemTime) -> Now {
        Now { monotonic, wall }
    }

    /// A reading `secs` seconds after a fixed origin, with the wall clock
    /// starting at 2026-01-01T00:00:00Z. For tests and examples.
    pub fn from_secs(secs: u64) -> Now {
        Now::from_duration(Duration::from_secs(secs))
    }

    /// A reading `since_origin` after a fixed origin, with the wall clock
    /// starting at 2026-01-01T00:00:00Z and moving with it. For tests.
    pub fn from_duration(since_origin: Duration) -> Now {
        const WALL_ORIGIN: Duration = Duration::from_secs(1_767_225_600);
        let wall = SystemTime::UNIX_EPOCH
            .checked_add(WALL_ORIGIN)
            .and_then(|t| t.checked_add(since_origin))
            .unwrap_or(SystemTime::UNIX_EPOCH);
        Now {
            monotonic: Instant::from_duration(since_origin),
            wall,
        }
    }

    /// The monotonic reading.
    pub fn monotonic(self) -> Instant {
        self.monotonic
    }

    /// The wall-clock reading.
    pub fn wall(self) -> SystemTime {
        self.wall
    }
}

/// A source of time, for adapters. The core itself never reads one: adapters
/// read a [`Clock`] and pass the reading in. Defined here so that every adapter
/// and every test shares one [`ManualClock`].
pub trait Clock: Send + Sync + 'static {
    /// The monotonic reading (the hit path reads only this).
    fn monotonic(&self) -> Instant;

    /// The wall-clock reading, for calendar dates (`Retry-After` dates).
    fn wall(&self) -> SystemTime;

    /// Both readings.
    fn now(&self) -> Now {
        Now::new(self.monotonic(), self.wall())
    }

    /// Registers a callback to run when this clock jumps (only manual clocks
    /// do), so the client's timer thread can re-check its deadlines.
    fn subscribe(&self, _on_jump: Weak<dyn Fn() + Send + Sync>) {}
}

/// A callback run when a [`ManualClock`] jumps.
type JumpCallback = Weak<dyn Fn() + Send + Sync>;

/// A clock that moves only when told to. Share it (it is cheap to clone)
/// between a test and the client under test.
#[derive(Clone, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
    subscribers: Arc<Mutex<Vec<JumpCallback>>>,
}

impl std::fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManualClock")
            .field("nanos", &self.nanos.load(Ordering::SeqCst))
            .finish()
    }
}

impl ManualClock {
    /// A clock at its origin (the wall clock starts at 2026-01-01T00:00:00Z).
    pub fn new() -> ManualClock {
        ManualClock::default()
    }

    /// Moves the clock forwards and wakes whoever subscribed.
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
        let callbacks: Vec<_> = {
            let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            subscribers.retain(|w| w.strong_count() > 0);
            subscribers.iter().filter_map(Weak::upgrade).collect()
        };
        for callback in callbacks {
            callback();
        }
    }

    /// The time since the origin.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

impl Clock for ManualClock {
    fn monotonic(&self) -> Instant {
        Instant::from_nanos(self.nanos.load(Ordering::SeqCst))
    }

    fn wall(&self) -> SystemTime {
        Now::from_duration(self.elapsed()).wall()
    }

    fn subscribe(&self, on_jump: Weak<dyn Fn() + Send + Sync>) {
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(on_jump);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_overflowing() {
        assert_eq!(Instant::MAX.saturating_add(Duration::MAX), Instant::MAX);
        assert_eq!(
            Instant::ZERO.saturating_sub(Duration::from_secs(1)),
            Instant::ZERO
        );
        assert_eq!(Instant::from_duration(Duration::MAX), Instant::MAX);
        assert_eq!(Instant::from_secs(u64::MAX), Instant::MAX);
        assert_eq!(
            Instant::from_secs(1).saturating_duration_since(Instant::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_secs(5).saturating_duration_since(Instant::from_secs(1)),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn test_clock_moves_both_readings_together() {
        let a = Now::from_secs(10);
        let b = Now::from_secs(70);
        assert_eq!(
            b.monotonic().saturating_duration_since(a.monotonic()),
            Duration::from_secs(60)
        );
        assert_eq!(
            b.wall().duration_since(a.wall()).unwrap(),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn manual_clock_moves_when_told_and_wakes_subscribers() {
        let clock = ManualClock::new();
        let woken = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&woken);
        let callback: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        clock.subscribe(Arc::downgrade(&callback));
        assert_eq!(clock.monotonic(), Instant::ZERO);
        clock.advance(Duration::from_secs(5));
        assert_eq!(clock.monotonic(), Instant::from_secs(5));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        drop(callback);
        clock.advance(Duration::from_secs(1));
        assert_eq!(woken.load(Ordering::SeqCst), 1);
        assert_eq!(clock.now().wall(), Now::from_secs(6).wall());
    }
}
