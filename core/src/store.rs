//! The shared-store protocol's values: what the core asks of a store shared
//! by a fleet of processes (Redis), and what comes back.
//!
//! The core decides; the driver does the I/O. A [`StoreRequest`] goes out
//! ([`TokenManager::poll_store_request`](crate::TokenManager::poll_store_request)),
//! the store carries out its [`StoreOp`], and the [`StoreReply`] or
//! [`StoreError`] comes back as an input
//! ([`TokenManager::handle_store_reply`](crate::TokenManager::handle_store_reply)).
//! See [`TokenManager::enable_store`](crate::TokenManager::enable_store) for
//! the protocol itself.
//!
//! The store sees a [`StoreKey`] (which token), never a configuration, and a
//! [`StoredToken`] it must seal (encrypt and bind to the key) before it
//! leaves the process.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::response::{AccessToken, TokenType};
use crate::time::Instant;

/// Which token an entry holds, as a store sees it: a canonical encoding of
/// everything that sets one token apart from another (token endpoint,
/// client id, scopes, resources, audience, parameters, the thumbprint of the
/// DPoP key). Equal requests in different processes get equal store keys.
///
/// Not secret, but not for the store's eyes: it holds the client id and the
/// scopes, so a store names its entries with a keyed hash of it and binds
/// each entry to it. `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreKey(Arc<[u8]>);

impl StoreKey {
    /// Version of the encoding, its first byte: a change makes other keys.
    pub const VERSION: u8 = 1;

    /// The encoding of these fields, each length-prefixed, in this order.
    pub(crate) fn encode<'a>(fields: impl IntoIterator<Item = &'a [u8]>) -> StoreKey {
        let mut bytes = vec![StoreKey::VERSION];
        for field in fields {
            bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
            bytes.extend_from_slice(field);
        }
        StoreKey(bytes.into())
    }

    /// A store key from its canonical bytes, as [`StoreKey::as_bytes`] gave
    /// them (for stores that keep keys, and for tests).
    pub fn from_bytes(bytes: &[u8]) -> StoreKey {
        StoreKey(bytes.into())
    }

    /// The canonical bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({} bytes)", self.0.len())
    }
}

/// A process's identity as a lease owner: 16 random bytes, drawn once per
/// core. Only the owner of a lease may release it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerId(pub(crate) [u8; 16]);

impl OwnerId {
    /// The bytes a store records as the lease's value.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Debug for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerId(")?;
        for byte in &self.0[..4] {
            write!(f, "{byte:02x}")?;
        }
        f.write_str("…)")
    }
}

/// What a store keeps of a token. Its `Debug` output is redacted; the store
/// must encrypt it before it leaves the process.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    access_token: AccessToken,
    token_type: TokenType,
    scope: Option<String>,
    lifetime: Duration,
}

/// The longest access token a store entry may hold (the token endpoint's
/// answers are bounded by the response size; a store's are bounded here).
pub const MAX_STORED_TOKEN: usize = 16 * 1024;
/// The longest scope a store entry may hold.
pub const MAX_STORED_SCOPE: usize = 4 * 1024;

impl StoredToken {
    /// A token read back from a store, checked as a token endpoint's answer
    /// is: a non-empty token of visible ASCII (it goes into a header) of at
    /// most [`MAX_STORED_TOKEN`] bytes, a scope of at most
    /// [`MAX_STORED_SCOPE`], and the lifetime the server granted (the store
    /// says how much of it is left).
    pub fn new(
        access_token: String,
        token_type: TokenType,
        scope: Option<String>,
        lifetime: Duration,
    ) -> Result<StoredToken, StoreError> {
        let access_token = Zeroizing::new(access_token);
        let invalid = |what: &str| StoreError::new(StoreErrorKind::Invalid, what);
        if access_token.is_empty() || access_token.len() > MAX_STORED_TOKEN {
            return Err(invalid("the stored token is empty or too long"));
        }
        if !access_token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(invalid("the stored token is not header-safe"));
        }
        if scope.as_ref().is_some_and(|s| s.len() > MAX_STORED_SCOPE) {
            return Err(invalid("the stored scope is too long"));
        }
        if lifetime.is_zero() {
            return Err(invalid("the stored token has no lifetime"));
        }
        Ok(StoredToken {
            access_token: AccessToken(Zeroizing::new(access_token.to_string())),
            token_type,
            scope,
            lifetime,
        })
    }

    pub(crate) fn from_parts(
        access_token: AccessToken,
        token_type: TokenType,
        scope: Option<String>,
        lifetime: Duration,
    ) -> StoredToken {
        StoredToken {
            access_token,
            token_type,
            scope,
            lifetime,
        }
    }

    pub(crate) fn into_parts(self) -> (AccessToken, TokenType, Option<String>) {
        (self.access_token, self.token_type, self.scope)
    }

    /// The token. Named so that every use stands out in review.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// Bearer or DPoP.
    pub fn token_type(&self) -> TokenType {
        self.token_type
    }

    /// The scope the server granted, if it said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The lifetime the server granted (`expires_in`): with the store's
    /// remaining time to live, it tells every process the same refresh point.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("access_token", &self.access_token)
            .field("token_type", &self.token_type)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// How the core uses a shared store ([`TokenManager::enable_store`](crate::TokenManager::enable_store)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    /// How long a lease lasts unless released. Default (`None`): the token
    /// request deadline ([`ManagerConfig::request_timeout`](crate::ManagerConfig::request_timeout))
    /// plus 5 s, so that a lease outlives the request it covers and a slow
    /// token endpoint never lets two processes fetch at once. Shorter values
    /// are raised to that.
    pub lease_ttl: Option<Duration>,
    /// How often a process waiting for another's token reads the store
    /// (default 100 ms).
    pub poll_interval: Duration,
    /// How long one store operation may take before the core goes on
    /// without the store (default 1 s; the store's own timeouts should be
    /// shorter).
    pub op_deadline: Duration,
    /// The pause after a first store failure before the store is tried
    /// again (default 1 s); it doubles with each failure in a row.
    pub retry_min: Duration,
    /// The longest pause (default 30 s).
    pub retry_max: Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            lease_ttl: None,
            poll_interval: Duration::from_millis(100),
            op_deadline: Duration::from_secs(1),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(30),
        }
    }
}

/// Identifies one store operation until its reply comes back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StoreOpId(pub(crate) u64);

/// One operation on the shared store.
#[derive(Clone, Debug)]
pub enum StoreOp {
    /// Read the entry: the token and how long the store still keeps it, its
    /// remaining time to live read from the store itself with the value (a
    /// process never compares its wall clock with another's). Answered with
    /// [`StoreReply::Entry`].
    Read,
    /// Take the key's lease for `ttl` as `owner`, unless someone holds it
    /// (Redis: `SET lease owner NX PX ttl`). Answered with
    /// [`StoreReply::Lease`]: whether this process holds it now.
    Lease {
        /// Who takes it.
        owner: OwnerId,
        /// How long it lasts unless released.
        ttl: Duration,
    },
    /// Write the entry to live `ttl`, then release `owner`'s lease if it still
    /// holds it. Answered with [`StoreReply::Done`].
    Write {
        /// Whose lease to release.
        owner: OwnerId,
        /// The token, to seal.
        token: StoredToken,
        /// How long the store keeps it: the token's remaining life.
        ttl: Duration,
    },
    /// Release `owner`'s lease, only if it still holds it (a compare and
    /// delete). Answered with [`StoreReply::Done`].
    Release {
        /// Whose lease.
        owner: OwnerId,
    },
}

/// A store operation the core asks the driver to carry out.
#[derive(Clone, Debug)]
pub struct StoreRequest {
    pub(crate) id: StoreOpId,
    pub(crate) key: StoreKey,
    pub(crate) op: StoreOp,
    /// For a write: when the token expires, on this process's clock.
    pub(crate) expires_at: Option<Instant>,
}

impl StoreRequest {
    /// Hand it back with the reply.
    pub fn id(&self) -> StoreOpId {
        self.id
    }

    /// Which token.
    pub fn key(&self) -> &StoreKey {
        &self.key
    }

    /// What to do, as the core asked for it. Carry out
    /// [`StoreRequest::op_at`] instead: a write's time to live must be
    /// counted when it is written, not when it was asked for.
    pub fn op(&self) -> &StoreOp {
        &self.op
    }

    /// What to do at `now` (this process's monotonic time, just before the
    /// operation is sent): a write's time to live counted from `now`, so that
    /// a write held up in a queue never outlives its token; a write whose
    /// token has expired meanwhile becomes the release of the lease it would
    /// have released.
    pub fn op_at(&self, now: Instant) -> StoreOp {
        match (&self.op, self.expires_at) {
            (StoreOp::Write { owner, token, .. }, Some(expires_at)) => {
                let ttl = expires_at.saturating_duration_since(now);
                if ttl.is_zero() {
                    StoreOp::Release { owner: *owner }
                } else {
                    StoreOp::Write {
                        owner: *owner,
                        token: token.clone(),
                        ttl,
                    }
                }
            }
            (op, _) => op.clone(),
        }
    }
}

/// What a store operation found.
#[derive(Clone, Debug)]
pub enum StoreReply {
    /// For [`StoreOp::Read`]: the token and the entry's remaining time to
    /// live, or `None` if there is no entry.
    Entry(Option<(StoredToken, Duration)>),
    /// For [`StoreOp::Lease`]: whether this process holds the lease now.
    Lease(bool),
    /// For [`StoreOp::Write`] and [`StoreOp::Release`].
    Done,
}

/// Why a store operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached or did not answer in time.
    Unavailable,
    /// The entry is not one this process may use: not decryptable with any
    /// of its keys, of an unknown key id or version, truncated, bound to
    /// another key, or holding a token that fails the checks of
    /// [`StoredToken::new`]. Treated as no entry (it is overwritten).
    Invalid,
    /// Anything else (a reply the store should not give).
    Other,
}

/// A store operation's failure: its kind and a message that names no secret
/// (no token, no key, no password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreError {
    kind: StoreErrorKind,
    message: String,
}

impl StoreError {
    /// A failure of `kind`; `message` must name no secret.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> StoreError {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// The kind.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            StoreErrorKind::Unavailable => "token store unavailable",
            StoreErrorKind::Invalid => "unusable token store entry",
            StoreErrorKind::Other => "token store error",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for StoreError {}
