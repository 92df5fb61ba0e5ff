//! Health: where a key stands, as plain owned values for a status page.
//!
//! [`TokenManager::health`](crate::TokenManager::health) computes a
//! [`KeyHealth`] from the core's own state at the instant it is given: the
//! key's [`HealthState`], how long its token may still be attached, when the
//! next token request may start, the last failure (its `Display`, which
//! never holds a secret, and how long ago it happened) and how many token
//! requests were made. It holds no token, secret or proof, so it may be
//! served as it is (for example as JSON at `/healthz`).

use std::fmt;
use std::time::Duration;

/// Where a key stands, as a health check reports it.
///
/// When several hold at once, the first that applies in this order wins:
/// [`BackingOff`](HealthState::BackingOff), then
/// [`Fresh`](HealthState::Fresh) / [`Stale`](HealthState::Stale) (a
/// refresh may be in flight), then [`Fetching`](HealthState::Fetching),
/// then [`Expired`](HealthState::Expired), then [`Empty`](HealthState::Empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HealthState {
    /// No token, and none requested yet (or the last one was invalidated,
    /// by hand or by a 401): the next call fetches one.
    Empty,
    /// No usable token, and a token request is in flight: callers wait for it.
    Fetching,
    /// A token before its refresh point: attached, no refresh needed.
    Fresh,
    /// A token past its refresh point but still usable: attached while it
    /// is refreshed.
    Stale,
    /// The last token reached the end of its usable life and nothing has
    /// replaced it yet (no request in flight, no backoff): the next call
    /// fetches one.
    Expired,
    /// A token request failed and no new one starts before the backoff
    /// ends. Calls get the still-usable token, if any
    /// ([`KeyHealth::usable_for`]), or fail at once with the last error.
    BackingOff,
}

impl HealthState {
    /// A short lowercase name: `empty`, `fetching`, `fresh`, `stale`,
    /// `expired` or `backing_off` (for JSON, metrics labels, logs).
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Empty => "empty",
            HealthState::Fetching => "fetching",
            HealthState::Fresh => "fresh",
            HealthState::Stale => "stale",
            HealthState::Expired => "expired",
            HealthState::BackingOff => "backing_off",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last failed token request of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthError {
    /// The error's `Display` ([`TokenError`](crate::TokenError)): the
    /// OAuth error code and description, the status and a scrubbed excerpt,
    /// or the transport failure. Never a secret or a token.
    pub message: String,
    /// How long before the health view was taken it happened (by the
    /// injected clock).
    pub ago: Duration,
}

/// One key's health at an instant, from
/// [`TokenManager::health`](crate::TokenManager::health). Owned and
/// secret-free: it holds no token, secret or proof.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyHealth {
    /// Where the key stands.
    pub state: HealthState,
    /// How long the cached token may still be attached; `None` when none
    /// may be (no token, or it has expired).
    pub usable_for: Option<Duration>,
    /// How long until the next token request for the key may start on its
    /// own: zero while one is in flight (or one is due now), the rest of a
    /// backoff, or the time to a cached token's refresh point. `None` when
    /// nothing is scheduled: with no usable token, the next call fetches one.
    pub refresh_in: Option<Duration>,
    /// The last failed token request, kept after later successes (compare
    /// its [`HealthError::ago`] with the token's age to tell).
    pub last_error: Option<HealthError>,
    /// Token requests started for the key so far: every request to the
    /// token endpoint, the one retry after a DPoP `use_dpop_nonce` answer
    /// included, as counted by the driver's `ClientStats::token_requests`.
    pub token_requests: u64,
}
