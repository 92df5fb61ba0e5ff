//! # token-keeper-ureq: managed OAuth 2.0 client-credentials tokens on ureq 3
//!
//! This crate drives the sans-IO [`token_keeper`] core with blocking I/O. It
//! holds no protocol logic of its own: it reads a clock, sends the token
//! requests the core hands out with ureq, feeds the answers back, wakes the
//! threads that wait, and publishes the core's snapshots for the lock-free hit
//! path.
//!
//! - [`TokenClient`]: a `Clone + Send + Sync` client that owns the core and the
//!   named client configurations. `header(name)` returns the `Authorization`
//!   value, fetching a token once for all threads when none is cached. A
//!   background thread refreshes ahead of expiry and stops when the last clone
//!   is dropped.
//! - [`TokenMiddleware`]: a ureq `Middleware` that attaches tokens to requests
//!   for configured origins and, on 401, follows the core's
//!   compare-and-invalidate answer with one retry of replayable requests.
//! - [`Error`]: one error type, with messages a person can act on and no
//!   secrets, classified with one call each (`is_oauth()`, `oauth_code()`,
//!   `is_transport()`, `is_unavailable()`, `retry_in()` …, the same for a
//!   failure and for the backoff after it); [`token_failure`] finds it in the
//!   `ureq::Error` of a call through the middleware.
//!
//! ## How a call finds its header
//!
//! ```text
//!  header(name) ─► snapshot cell (arc-swap guard load) ─ Fresh? ─► header, no lock
//!                       │ not Fresh / none
//!                       ▼
//!                  lock core ─► authorize ─ Attach ─► header (a Stale token also queues a refresh,
//!                                    │                          sent on its own thread)
//!                                    ├─ Fetch ─► the engine sends it on its own thread;
//!                                    │           condvar until it ends, ask again
//!                                    ├─ Wait  ─► condvar until that request ends, ask again
//!                                    └─ Unavailable ─► Error::Unavailable (backing off)
//! ```
//!
//! The timer thread sleeps until [`TokenManager::poll_timeout`](token_keeper::TokenManager::poll_timeout)
//! and calls `handle_timeout`, which starts refreshes before tokens go stale.
//!
//! ## Example
//!
//! ```no_run
//! use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
//! use token_keeper_ureq::{TokenClient, TokenMiddleware};
//!
//! let tokens = TokenClient::new();
//! tokens.add_client(
//!     "m2m",
//!     ClientConfig::new("https://auth.example.com/connect/token", "m2m",
//!                       ClientAuth::Basic(ClientSecret::new(std::env::var("CLIENT_SECRET")?)))?
//!         .scope("orders.read"),
//! )?;
//! let agent = TokenMiddleware::new(tokens.clone())
//!     .route("https://api.example.com", "m2m")?
//!     .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
//! let response = agent.get("https://api.example.com/orders").call()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Logging
//!
//! Through the [`log`](https://docs.rs/log) facade, which ureq uses too,
//! under the target `token_keeper_ureq` (so `RUST_LOG=token_keeper_ureq=info`
//! shows them), each line naming the client (`m2m: token acquired …`):
//! `info` when a token is acquired (lifetime, scope) or invalidated, `warn`
//! when a token request fails, the client backs off, the server grants
//! another scope than the one requested, or a 401 is damped; `debug` for the
//! rest. Tokens and secrets are never logged.
//!
//! ## Health
//!
//! [`Client::health`](Client::health) (through `TokenClient`) lists every named client and key with its state
//! (empty, fetching, fresh, stale, expired, backing off), usable life left,
//! next refresh, last error (its message, which never holds a secret) and
//! token requests so far: what a `/healthz` endpoint serves.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
pub mod middleware;
mod transport;

pub use client::TokenClient;
pub use middleware::{token_failure, TokenMiddleware};
pub use token_keeper::{HealthError, HealthState, KeyHealth, StoreSettings};
pub use token_keeper_driver::tls::{TlsError, TlsRoots, TlsSettings};
pub use token_keeper_driver::{
    clock, error, Authorized, Blocking, Client, ClientHealth, ClientOptions, ClientStats, Clock,
    Error, FleetStore, ManualClock, Store, SystemClock, TokenInfo,
};
/// Private keys on ring: the default signer for DPoP proofs and
/// `private_key_jwt` (the `keys` feature, on by default).
#[cfg(feature = "keys")]
pub use token_keeper_keys::{self as keys, PrivateKey};
#[cfg(any(feature = "rustls", feature = "native-tls"))]
pub use transport::tls_config;
