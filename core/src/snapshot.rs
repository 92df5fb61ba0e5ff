//! Snapshots: what adapters may attach without asking the core.
//!
//! The core is `&mut self`, so an adapter shared between threads keeps it
//! behind a lock. Taking that lock for every API call would make the hit path
//! (a cached, Fresh token) contend across threads. Instead, for each key the
//! core publishes an immutable [`Snapshot`]: the header to attach, and until
//! when it may be attached without consulting the core. Adapters keep the
//! latest one in an atomically swappable cell (for example
//! `arc_swap::ArcSwapOption<Snapshot>`) and read it with a guard load, which
//! writes no shared memory: no reference count is touched on a hit.
//!
//! A reader compares one `u64` against its monotonic clock:
//! `now < fresh_until` means "attach, no lock"; anything else means "take the
//! lock and call [`TokenManager::authorize`](crate::TokenManager::authorize)",
//! which may start a refresh, return the still-valid stale token, ask the
//! caller to wait, or report an error.

use std::fmt;

use http::HeaderValue;

use crate::key::KeyId;
use crate::lifecycle::reached;
use crate::time::Instant;

/// An immutable view of one key's cached token, published by the core.
pub struct Snapshot {
    pub(crate) key: KeyId,
    pub(crate) header: HeaderValue,
    pub(crate) generation: u64,
    pub(crate) fresh_until: Instant,
    pub(crate) attach_until: Instant,
}

impl Snapshot {
    /// The key this snapshot belongs to.
    pub fn key(&self) -> KeyId {
        self.key
    }

    /// The `Authorization` header value to attach (marked sensitive, so
    /// `http` redacts it in `Debug`).
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }

    /// Identifies the token: it changes whenever a new token is cached.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Until when the header may be attached without calling the core. From
    /// this instant on a refresh is due, a backoff ends, or the token expires.
    pub fn fresh_until(&self) -> Instant {
        self.fresh_until
    }

    /// The end of the token's usable life; it is never attached at or after this.
    pub fn attach_until(&self) -> Instant {
        self.attach_until
    }

    /// Whether the header may be attached at `now` without calling the core:
    /// before [`Snapshot::fresh_until`], not at it (like every deadline of
    /// the core, it is reached at its own instant).
    #[inline]
    pub fn is_fresh(&self, now: Instant) -> bool {
        !reached(self.fresh_until, now)
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("key", &self.key)
            .field("header", &"[redacted]")
            .field("generation", &self.generation)
            .field("fresh_until", &self.fresh_until)
            .field("attach_until", &self.attach_until)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_up_to_but_not_at_fresh_until() {
        let snapshot = Snapshot {
            key: KeyId(0),
            header: HeaderValue::from_static("Bearer t"),
            generation: 0,
            fresh_until: Instant::from_secs(80),
            attach_until: Instant::from_secs(100),
        };
        assert!(snapshot.is_fresh(Instant::ZERO));
        assert!(snapshot.is_fresh(Instant::from_nanos(80_000_000_000 - 1)));
        assert!(!snapshot.is_fresh(Instant::from_secs(80)));
        let never = Snapshot {
            fresh_until: Instant::ZERO,
            ..snapshot
        };
        assert!(
            !never.is_fresh(Instant::ZERO),
            "a DPoP-bound token always asks the core"
        );
    }
}
