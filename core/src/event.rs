//! Events: what happened, for adapters to log or count.
//!
//! The core never logs. After every input, adapters drain
//! [`TokenManager::poll_event`](crate::TokenManager::poll_event) and forward
//! the events to `log`, `tracing` or metrics. Events carry no secrets.

use std::time::Duration;

use crate::error::TokenError;
use crate::key::KeyId;
use crate::request::RequestId;
use crate::response::TokenType;
use crate::store::StoreError;
use crate::time::Instant;

/// Why a token request was started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestReason {
    /// No token was cached (first use, or after an invalidation).
    Missing,
    /// The cached token had expired.
    Expired,
    /// The cached token became Stale: refresh-ahead, while it is still attached.
    RefreshAhead,
    /// [`TokenManager::force_refresh`](crate::TokenManager::force_refresh) was called.
    Forced,
    /// The token endpoint asked for a DPoP nonce (`use_dpop_nonce`): the one
    /// retry, with a fresh proof and a fresh client assertion.
    DPoPNonce,
}

/// Why a cached token was dropped before its time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InvalidationReason {
    /// [`TokenManager::invalidate`](crate::TokenManager::invalidate) was called.
    Manual,
    /// A protected resource answered 401 to a request that carried this token.
    RejectedByResource,
}

/// Something the core did or observed.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// A token request was queued (see [`TokenManager::poll_request`](crate::TokenManager::poll_request)).
    RequestStarted {
        /// The key the token is for.
        key: KeyId,
        /// The request.
        id: RequestId,
        /// Why it was started.
        reason: RequestReason,
    },
    /// A token was received and cached.
    TokenAcquired {
        /// The key.
        key: KeyId,
        /// The lifetime believed, after defaulting and clamping.
        lifetime: Duration,
        /// The token type.
        token_type: TokenType,
        /// The scope granted, when the server said.
        scope: Option<String>,
    },
    /// A token request failed.
    RequestFailed {
        /// The key.
        key: KeyId,
        /// The request.
        id: RequestId,
        /// Why.
        error: TokenError,
    },
    /// The key backs off: no token request before `until`.
    BackoffEntered {
        /// The key.
        key: KeyId,
        /// End of the backoff.
        until: Instant,
        /// Length of the backoff.
        delay: Duration,
        /// Consecutive failures so far.
        failures: u32,
        /// Whether a still-valid token keeps being served meanwhile.
        serving_cached: bool,
    },
    /// A cached token was dropped before its expiry.
    TokenInvalidated {
        /// The key.
        key: KeyId,
        /// Why.
        reason: InvalidationReason,
    },
    /// A cached token reached the end of its usable life and was dropped.
    TokenExpired {
        /// The key.
        key: KeyId,
    },
    /// The client asked for a DPoP-bound token but the server issued a Bearer
    /// token (RFC 9449 §7.1 allows it): it is used as a Bearer token. (With
    /// [`ClientConfig::require_dpop_bound`](crate::ClientConfig::require_dpop_bound)
    /// the answer is refused instead, and `RequestFailed` says so.)
    TokenNotBound {
        /// The key.
        key: KeyId,
    },
    /// The server granted a scope other than the one requested (RFC 6749
    /// §5.1 lets it, and obliges it to say so). The token is cached and used
    /// all the same; worth a warning, since a scope dropped quietly shows up
    /// later as a 403 from the API. Only when a scope was requested and the
    /// answer names one: the two are compared as sets, so order and
    /// repetition do not count. Scopes are not secrets.
    ScopeDiffers {
        /// The key.
        key: KeyId,
        /// The scope requested, space-separated and sorted.
        requested: String,
        /// The scope granted, as the server wrote it.
        granted: String,
    },
    /// A protected resource answered 401 to the key's current token, which was
    /// fetched after an earlier 401 had thrown the previous one away, within
    /// [`ManagerConfig::resource_rejection_damping`](crate::ManagerConfig::resource_rejection_damping):
    /// the token was kept and the 401 handed to the caller without a retry.
    /// The API rejects fresh tokens too (a wrong audience, scope or clock, say);
    /// worth a warning, since a new token would not have helped.
    RejectionDamped {
        /// The key.
        key: KeyId,
    },
    /// A token was taken from the shared store (another process of the
    /// fleet fetched it) and cached: no token request was made.
    TokenFromStore {
        /// The key.
        key: KeyId,
        /// The lifetime the server granted.
        lifetime: Duration,
        /// How much of it the store said was left.
        remaining: Duration,
    },
    /// The shared store failed (unreachable, too slow, or an answer that
    /// makes no sense): the process goes on without it (its own cache, its
    /// own single flight) and tries it again after `retry_in`. Once per
    /// outage, not once per operation.
    StoreUnavailable {
        /// The failure that started the outage.
        error: StoreError,
        /// When the store is tried again.
        retry_in: Duration,
    },
    /// The shared store answered again after [`Event::StoreUnavailable`].
    StoreRecovered,
    /// The store held an entry for the key that this process cannot use (not
    /// decryptable with its keys, bound to another key, malformed, or the
    /// token a resource just refused): treated as no entry, and overwritten
    /// by the next token fetched.
    StoreEntryRefused {
        /// The key.
        key: KeyId,
        /// Why.
        error: StoreError,
    },
}
