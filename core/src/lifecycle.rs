//! The arithmetic of a token's life and of backoff, kept apart from the state
//! machine so it can be read (and tested) on its own.
//!
//! ```text
//!  requested_at            refresh_at             attach_until    server expiry
//!       |------- Fresh --------|------- Stale ---------|-- buffer ---|
//!       |<------------------------- lifetime L ------------------------>|
//! ```
//! See [`RefreshPolicy`] for the rule.
//!
//! A cached token's [`TokenTimes`] decide its [`Phase`] at any instant `t`,
//! and each transition is decided by exactly one predicate:
//!
//! | phase at `t` | holds while | leaves it when | decided by |
//! |---|---|---|---|
//! | Fresh | `t < refresh_at` | `t >= refresh_at`: Stale | [`TokenTimes::refresh_due`] |
//! | Stale | `refresh_at <= t < attach_until` | `t >= attach_until`: Expired | [`TokenTimes::attachable`] |
//! | Expired | `t >= attach_until` | never (a new token replaces it) | [`TokenTimes::attachable`] |
//!
//! Fresh is attached as is; Stale is attached while one refresh runs; Expired
//! is never attached. `refresh_at <= attach_until` always, so a token whose
//! two instants coincide (a zero lifetime) goes from Fresh straight to
//! Expired, never Stale.
//!
//! Every other deadline in the core (the end of a backoff, a request's
//! deadline, the end of a 401 damping window, a snapshot's `fresh_until`)
//! follows the same convention, stated once in [`reached`]: a deadline is
//! reached *at* its instant, not after it.

use std::time::Duration;

use crate::config::{BackoffPolicy, RefreshPolicy};
use crate::time::Instant;

/// Whether `deadline` has been reached at `t`: `t >= deadline`.
///
/// The one boundary convention of the core, so that no two places can
/// disagree about the instant itself: at `attach_until` a token is no longer
/// attached, at `refresh_at` a refresh is due, at a backoff's end a request
/// may be made, at a request's deadline it is given up, at the end of a
/// damping window a 401 invalidates again, and at a snapshot's `fresh_until`
/// the reader asks the core. A timer that fires at `poll_timeout`'s instant
/// therefore always finds its deadline reached.
#[inline]
pub(crate) fn reached(deadline: Instant, t: Instant) -> bool {
    t >= deadline
}

/// Where a cached token stands at some instant. The public
/// [`TokenState`](crate::TokenState) names the two attachable phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before the refresh point: attached, no refresh needed.
    Fresh,
    /// From the refresh point to the end of the usable life: attached while
    /// one refresh runs.
    Stale,
    /// From the end of the usable life on: never attached again.
    Expired,
}

/// When a token stops being Fresh, and when it stops being attachable: the
/// instants every lifecycle decision about a cached token is made from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TokenTimes {
    /// The lifetime believed (after defaulting and clamping).
    pub(crate) lifetime: Duration,
    /// End of Fresh: a refresh is due from here on.
    pub(crate) refresh_at: Instant,
    /// End of Stale: never attached from here on.
    pub(crate) attach_until: Instant,
}

impl TokenTimes {
    /// The times of a token requested at `requested_at` with `expires_in`;
    /// `random` in `[0, 1)` moves the refresh point earlier by up to the
    /// policy's jitter. Measured from the request, not the response, so that
    /// the token endpoint's latency is never counted as lifetime.
    pub(crate) fn new(
        policy: &RefreshPolicy,
        requested_at: Instant,
        expires_in: Option<i64>,
        random: f64,
    ) -> TokenTimes {
        let lifetime = lifetime(policy, expires_in);
        let buffer = policy.expiry_buffer.min(lifetime / 4);
        let usable = lifetime - buffer;
        let refresh_fraction =
            fraction(policy.refresh_at) - fraction(policy.refresh_jitter) * fraction(random);
        TokenTimes {
            lifetime,
            refresh_at: requested_at.saturating_add(scale(usable, refresh_fraction)),
            attach_until: requested_at.saturating_add(usable),
        }
    }

    /// The phase at `t`. Built from [`TokenTimes::attachable`] and
    /// [`TokenTimes::refresh_due`] so it cannot disagree with them; two
    /// compares, as cheap as the hit path needs.
    #[inline]
    pub(crate) fn phase(&self, t: Instant) -> Phase {
        if !self.attachable(t) {
            Phase::Expired
        } else if self.refresh_due(t) {
            Phase::Stale
        } else {
            Phase::Fresh
        }
    }

    /// Whether the token may be attached at `t` (Fresh or Stale): up to, not
    /// including, `attach_until`.
    #[inline]
    pub(crate) fn attachable(&self, t: Instant) -> bool {
        !reached(self.attach_until, t)
    }

    /// Whether the refresh point has been reached at `t` (from `refresh_at`
    /// itself on). True for Stale, and also once the token has expired: ask
    /// [`TokenTimes::attachable`] first.
    #[inline]
    pub(crate) fn refresh_due(&self, t: Instant) -> bool {
        reached(self.refresh_at, t)
    }

    /// How long the token may still be attached at `t` (zero once Expired).
    pub(crate) fn remaining(&self, t: Instant) -> Duration {
        self.attach_until.saturating_duration_since(t)
    }
}

/// Clamps a user-supplied fraction to `0.0..=1.0`; NaN counts as zero.
fn fraction(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// `d * f` for `f` in `0.0..=1.0`, without the panics of `Duration::mul_f64`.
fn scale(d: Duration, f: f64) -> Duration {
    let nanos = (d.as_nanos() as f64 * fraction(f)).min(d.as_nanos() as f64);
    Duration::from_nanos(nanos as u64)
}

/// The lifetime to believe for a response's `expires_in`.
pub(crate) fn lifetime(policy: &RefreshPolicy, expires_in: Option<i64>) -> Duration {
    match expires_in {
        None => policy.default_lifetime.min(policy.max_lifetime),
        Some(secs) if secs <= 0 => Duration::ZERO,
        Some(secs) => Duration::from_secs(secs as u64).min(policy.max_lifetime),
    }
}

/// The wait after the `failures`-th consecutive failure (counting from 1).
pub(crate) fn backoff_delay(
    policy: &BackoffPolicy,
    failures: u32,
    retry_after: Option<Duration>,
    random: f64,
) -> Duration {
    let exponent = failures.saturating_sub(1).min(31);
    let computed = policy
        .initial
        .saturating_mul(1u32 << exponent)
        .min(policy.max);
    let jittered = computed - scale(computed, fraction(policy.jitter) * fraction(random));
    let asked = retry_after.map_or(Duration::ZERO, |d| d.min(policy.max_retry_after));
    jittered.max(asked)
}

/// A small deterministic generator (SplitMix64), seeded by
/// [`TokenManager::new`](crate::TokenManager::new): the default source of the
/// jitter and of `jti`s until an adapter injects a secure
/// [`RandomSource`](crate::RandomSource). Keeping it seeded makes every test
/// reproducible; it is not unpredictable (see [`crate::random`]).
#[derive(Clone, Debug)]
pub(crate) struct Jitter(u64);

impl Jitter {
    pub(crate) fn new(seed: u64) -> Jitter {
        Jitter(seed)
    }

    /// 64 random bits.
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A value in `[0, 1)`.
    pub(crate) fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A token whose refresh point is at 80 s and whose usable life ends at 100 s.
    fn times() -> TokenTimes {
        TokenTimes {
            lifetime: secs(125),
            refresh_at: Instant::from_secs(80),
            attach_until: Instant::from_secs(100),
        }
    }

    fn just_before(t: Instant) -> Instant {
        Instant::from_nanos(t.as_nanos() - 1)
    }

    #[test]
    fn a_deadline_is_reached_at_its_own_instant() {
        let d = Instant::from_secs(5);
        assert!(!reached(d, just_before(d)));
        assert!(reached(d, d));
        assert!(reached(d, Instant::from_nanos(d.as_nanos() + 1)));
        assert!(reached(Instant::ZERO, Instant::ZERO));
        assert!(reached(Instant::MAX, Instant::MAX));
    }

    #[test]
    fn attachable_up_to_but_not_at_attach_until() {
        let tt = times();
        assert!(tt.attachable(Instant::ZERO));
        assert!(tt.attachable(just_before(tt.attach_until)));
        assert!(
            !tt.attachable(tt.attach_until),
            "attach_until itself is Expired"
        );
        assert!(!tt.attachable(Instant::MAX));
    }

    #[test]
    fn refresh_due_from_refresh_at_itself() {
        let tt = times();
        assert!(!tt.refresh_due(just_before(tt.refresh_at)));
        assert!(tt.refresh_due(tt.refresh_at), "refresh_at itself is Stale");
        // Still "reached" once expired: callers ask `attachable` first.
        assert!(tt.refresh_due(tt.attach_until));
    }

    #[test]
    fn phases_change_exactly_at_the_two_instants() {
        let tt = times();
        assert_eq!(tt.phase(Instant::ZERO), Phase::Fresh);
        assert_eq!(tt.phase(just_before(tt.refresh_at)), Phase::Fresh);
        assert_eq!(tt.phase(tt.refresh_at), Phase::Stale);
        assert_eq!(tt.phase(just_before(tt.attach_until)), Phase::Stale);
        assert_eq!(tt.phase(tt.attach_until), Phase::Expired);
        assert_eq!(tt.phase(Instant::MAX), Phase::Expired);
    }

    #[test]
    fn a_token_with_no_usable_life_goes_from_fresh_to_expired() {
        let p = RefreshPolicy::default();
        let tt = TokenTimes::new(&p, Instant::from_secs(9), Some(0), 0.3);
        assert_eq!(tt.refresh_at, tt.attach_until);
        assert_eq!(tt.phase(just_before(tt.attach_until)), Phase::Fresh);
        assert_eq!(tt.phase(tt.attach_until), Phase::Expired);
        // Requested at the origin: expired from the first instant.
        let tt = TokenTimes::new(&p, Instant::ZERO, Some(0), 0.3);
        assert_eq!(tt.phase(Instant::ZERO), Phase::Expired);
    }

    #[test]
    fn remaining_counts_down_to_zero_at_attach_until() {
        let tt = times();
        assert_eq!(tt.remaining(Instant::from_secs(60)), secs(40));
        assert_eq!(
            tt.remaining(just_before(tt.attach_until)),
            Duration::from_nanos(1)
        );
        assert_eq!(tt.remaining(tt.attach_until), Duration::ZERO);
        assert_eq!(tt.remaining(Instant::MAX), Duration::ZERO);
    }

    #[test]
    fn one_hour_token_with_defaults() {
        let p = RefreshPolicy::default();
        let s = TokenTimes::new(&p, Instant::from_secs(100), Some(3600), 0.0);
        assert_eq!(s.lifetime, secs(3600));
        assert_eq!(s.attach_until, Instant::from_secs(100 + 3540));
        assert_eq!(s.refresh_at, Instant::from_secs(100 + 2832)); // 0.8 * 3540
        let early = TokenTimes::new(&p, Instant::from_secs(100), Some(3600), 0.999_999);
        assert!(early.refresh_at < s.refresh_at);
        assert!(early.refresh_at >= Instant::from_secs(100 + 2478)); // 0.7 * 3540
    }

    #[test]
    fn short_tokens_are_still_used_for_most_of_their_life() {
        let p = RefreshPolicy::default();
        let s = TokenTimes::new(&p, Instant::ZERO, Some(5), 0.5);
        assert_eq!(s.attach_until, Instant::from_nanos(3_750_000_000));
        assert!(s.refresh_at > Instant::from_secs(2));
        let s = TokenTimes::new(&p, Instant::ZERO, Some(120), 0.0);
        assert_eq!(s.attach_until, Instant::from_secs(90));
    }

    #[test]
    fn lifetimes_default_clamp_and_never_last_forever() {
        let p = RefreshPolicy::default();
        assert_eq!(lifetime(&p, None), secs(300));
        assert_eq!(lifetime(&p, Some(0)), Duration::ZERO);
        assert_eq!(lifetime(&p, Some(-7)), Duration::ZERO);
        assert_eq!(lifetime(&p, Some(i64::MIN)), Duration::ZERO);
        assert_eq!(lifetime(&p, Some(i64::MAX)), secs(86_400));
        let s = TokenTimes::new(&p, Instant::MAX, Some(i64::MAX), 0.3);
        assert_eq!(s.attach_until, Instant::MAX);
        let s = TokenTimes::new(&p, Instant::from_secs(9), Some(0), 0.3);
        assert_eq!(
            (s.refresh_at, s.attach_until),
            (Instant::from_secs(9), Instant::from_secs(9))
        );
    }

    #[test]
    fn hostile_policies_do_not_panic() {
        let p = RefreshPolicy {
            refresh_at: f64::NAN,
            refresh_jitter: f64::INFINITY,
            expiry_buffer: Duration::MAX,
            ..RefreshPolicy::default()
        };
        let s = TokenTimes::new(&p, Instant::ZERO, Some(100), f64::NAN);
        assert!(s.refresh_at <= s.attach_until);
        let b = BackoffPolicy {
            initial: Duration::MAX,
            max: Duration::MAX,
            jitter: -3.0,
            max_retry_after: Duration::MAX,
        };
        assert_eq!(
            backoff_delay(&b, u32::MAX, Some(Duration::MAX), 2.0),
            Duration::MAX
        );
    }

    #[test]
    fn backoff_doubles_to_the_cap_and_honours_retry_after() {
        let p = BackoffPolicy::default();
        let delays: Vec<_> = (1..=9).map(|n| backoff_delay(&p, n, None, 0.0)).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60].map(secs));
        let jittered = backoff_delay(&p, 1, None, 0.999);
        assert!(
            jittered >= Duration::from_millis(800) && jittered < secs(1),
            "{jittered:?}"
        );
        assert_eq!(backoff_delay(&p, 1, Some(secs(120)), 0.5), secs(120));
        assert_eq!(backoff_delay(&p, 1, Some(secs(86_400)), 0.5), secs(3600));
        assert_eq!(backoff_delay(&p, 7, Some(secs(1)), 0.0), secs(60));
    }

    #[test]
    fn jitter_is_uniform_enough_and_reproducible() {
        let mut a = Jitter::new(42);
        let mut b = Jitter::new(42);
        let xs: Vec<f64> = (0..10_000).map(|_| a.next_f64()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert_eq!(xs[0], b.next_f64());
    }
}
