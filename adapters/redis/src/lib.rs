//! A token store shared by a fleet of processes, on Redis, for
//! [token-keeper](token_keeper): [`RedisStore`] implements the driver's
//! [`Store`](token_keeper_driver::Store).
//!
//! The store is an optimisation, never a dependency: [`RedisStore::new`]
//! checks its options and connects lazily, so it succeeds while Redis is
//! down; every command is bounded by a timeout, and after a failure the store
//! answers [`Unavailable`](token_keeper::StoreErrorKind::Unavailable) at once,
//! without touching the network, until its reconnection backoff has passed
//! (100 ms, doubling up to 5 s by default). The core then falls back to the
//! token endpoint.
//!
//! What Redis sees:
//! - names `tk:{H}:e` (the entry) and `tk:{H}:l` (the lease), where `H` is a
//!   keyed hash of the namespace and the store key ([`naming`]): no client
//!   id, scope or token in clear;
//! - entries sealed with AES-256-GCM under a key of [`StoreKeys`], bound to
//!   their store key ([`entry`] describes the format), kept with the
//!   token's remaining lifetime as their TTL;
//! - leases holding the 16-byte [`OwnerId`](token_keeper::OwnerId) of the
//!   process that refreshes the token.
//!
//! Only plain `redis://` is supported (no TLS, no Unix socket, no Cluster
//! client; the hash tags keep a key's two names in one Cluster slot).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use token_keeper_redis::{RedisStore, RedisStoreOptions, StoreKeys};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // 32 random bytes in standard base64 (`openssl rand -base64 32`), the same
//!     // for every process of the fleet; rotate with `.with_old_base64(1, …)`.
//!     let keys = StoreKeys::from_base64(1, &std::env::var("TOKEN_STORE_KEY")?)?;
//!     let store = RedisStore::new(
//!         RedisStoreOptions::new("redis://:password@127.0.0.1:6379/0", keys)
//!             .namespace("orders-service")
//!             .command_timeout(Duration::from_millis(200)),
//!     )?; // does not connect yet: Redis may be down
//!     println!("{store:?}"); // host, port, db and namespace only
//!     // Hand it to the engine as its `token_keeper_driver::Store`.
//!     let _store: Box<dyn token_keeper_driver::Store> = Box::new(store);
//!     Ok(())
//! }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod entry;
mod error;
mod keys;
pub mod naming;
mod store;

pub use error::{RedisStoreError, RedisStoreErrorKind};
pub use keys::{StoreKeys, KEY_LEN};
pub use store::{RedisStore, RedisStoreOptions, DEFAULT_NAMESPACE, MAX_TTL};
