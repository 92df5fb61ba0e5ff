//! [`Store`]: how the engine reaches a store shared by a fleet of
//! processes. The core decides what to read, lease and write
//! ([`token_keeper::store`]); a store only carries it out.

use std::sync::Arc;

use token_keeper::{StoreError, StoreKey, StoreOp, StoreReply, StoreSettings};

/// A token store shared by the processes of a fleet (Redis:
/// `token-keeper-redis`).
///
/// Called only on the engine's own threads, never on a caller's and never
/// with the core's lock held, so it blocks, within its own timeouts (a slow
/// store must fail fast: the core falls back to the token endpoint). The
/// same store serves blocking and async clients alike.
///
/// An implementation must:
/// - carry out `op` for `key` as [`StoreOp`] describes, and answer with the
///   [`StoreReply`] it names;
/// - seal a written token (encrypt it, bound to `key`) and refuse, as
///   [`StoreErrorKind::Invalid`](token_keeper::StoreErrorKind::Invalid), any
///   entry it cannot open;
/// - return a bounded, secret-free [`StoreError`] for anything else.
pub trait Store: Send + Sync + 'static {
    /// Carries out `op` on `key`'s entry or lease.
    fn execute(&self, key: &StoreKey, op: &StoreOp) -> Result<StoreReply, StoreError>;
}

/// A [`Store`] and how the core uses it: what a client's options take to
/// share tokens with the rest of a fleet.
#[derive(Clone)]
pub struct FleetStore {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Lease length, polling, deadlines and rest after failures.
    pub settings: StoreSettings,
}

impl FleetStore {
    /// `store` with the default [`StoreSettings`].
    pub fn new(store: impl Store) -> FleetStore {
        FleetStore {
            store: Arc::new(store),
            settings: StoreSettings::default(),
        }
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: StoreSettings) -> FleetStore {
        self.settings = settings;
        self
    }
}

impl std::fmt::Debug for FleetStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetStore")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}
