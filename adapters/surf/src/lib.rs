//! # token-keeper-surf: managed OAuth 2.0 client-credentials tokens, async
//!
//! This crate drives the sans-IO [`token_keeper`] core from async code, with
//! no protocol logic of its own:
//!
//! - [`AsyncTokenClient`]: a cloneable client that runs on any executor
//!   (async-std, smol, tokio). Waiting uses `event-listener`, timeouts use
//!   `async-io` timers, no lock is held across an `.await`, and refreshes ahead
//!   of expiry run on a background thread of the client's own, off every
//!   executor. A cached Fresh token is read lock-free.
//! - [`TokenMiddleware`]: a surf `Middleware` with the same rules as the
//!   blocking adapter's: configured origins only, the caller's
//!   `Authorization` kept, and on 401 the core's compare-and-invalidate with
//!   one retry of replayable requests (bodies buffered up to a limit); DPoP
//!   proofs and nonces for DPoP-bound tokens.
//! - [`DirectHttp`]: the recommended [`TokenTransport`] for token and
//!   discovery requests: a connection of its own per request, rustls, and a
//!   bounded HTTP/1.1 reader (64 KiB of head, interim `1xx` answers skipped,
//!   bodies until close read, the core's body cap), where surf's async-h1
//!   backend has no such bounds. Your API requests still go through surf.
//! - [`Error`]: the same error type as the blocking adapter, classified with
//!   one call each (`is_oauth()`, `oauth_code()`, `is_transport()`,
//!   `is_unavailable()`, `retry_in()` …); [`token_failure`] finds it in the
//!   `surf::Error` of a call through the middleware (whose status,
//!   [`TOKEN_FAILURE_STATUS`], is not the API's).
//!
//! ## A word on async-std and surf
//!
//! async-std is discontinued upstream (deprecated in favour of smol) and surf
//! has had no release since 2021. This crate supports them because
//! applications run on them, and keeps them at arm's length: the client itself
//! needs no particular runtime, and surf is used only to send requests.
//!
//! - **smol or tokio**: the client works unchanged; surf's `h1-client` backend
//!   does its I/O through `async-io`, which runs alongside any executor. The
//!   test suite runs a 1 000-task herd on async-std, smol and tokio.
//! - **TLS**: token requests sent by [`DirectHttp`] use rustls (ring, the
//!   webpki roots, or roots of your own). For your API requests this crate
//!   depends on surf with `default-features = false`, so the backend is your
//!   choice. For HTTPS use `h1-client` (native TLS through the platform
//!   library) or `curl-client`. Never use `h1-client-rustls`: it
//!   pulls rustls 0.18, ring 0.16 and webpki 0.21, which have open security
//!   advisories. `h1-client-no-tls` is for loopback tests only.
//! - **Logging**: async-h1 (behind surf's `h1-client`) logs entire requests,
//!   `Authorization` headers included, at `TRACE`. Keep the `async_h1` target
//!   below `TRACE` wherever logs are kept. This crate's own logs (through
//!   `log`, under the target `token_keeper_surf`, each line naming the
//!   client) never contain tokens or secrets.
//! - **Health**: [`Client::health`](Client::health) (through `AsyncTokenClient`) lists every named client and key
//!   with its state, usable life left, next refresh, last error and token
//!   requests so far (what a `/healthz` endpoint serves).
//!
//! ## Example
//!
//! ```no_run
//! use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
//! use token_keeper_surf::{AsyncTokenClient, DirectHttp, TokenMiddleware};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = AsyncTokenClient::new(DirectHttp::new());
//! tokens.add_client(
//!     "m2m",
//!     ClientConfig::new("https://auth.example.com/connect/token", "m2m",
//!                       ClientAuth::Basic(ClientSecret::new(std::env::var("CLIENT_SECRET")?)))?
//!         .scope("orders.read"),
//! )?;
//! let api = surf::Client::new()
//!     .with(TokenMiddleware::new(tokens.clone()).route("https://api.example.com", "m2m")?);
//! let orders = api.get("https://api.example.com/orders").await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod direct;
pub mod http1;
pub mod middleware;
mod transport;

pub use client::AsyncTokenClient;
pub use direct::{CertificateError, DirectHttp};
pub use middleware::{token_failure, TokenMiddleware, TOKEN_FAILURE_STATUS};
pub use token_keeper::{HealthError, HealthState, KeyHealth, StoreSettings};
pub use token_keeper_driver::tls::{TlsError, TlsRoots, TlsSettings};
pub use token_keeper_driver::{
    Async, Authorized, Client, ClientHealth, ClientOptions, ClientStats, Clock, Error, FleetStore,
    ManualClock, Store, SystemClock, TokenInfo,
};
/// Private keys on ring: the default signer for DPoP proofs and
/// `private_key_jwt` (the `keys` feature, on by default).
#[cfg(feature = "keys")]
pub use token_keeper_keys::{self as keys, PrivateKey};
pub use transport::{SurfBackend, SurfBackendError, TokenTransport};
