//! # token-keeper-reqwest: managed OAuth 2.0 client-credentials tokens for reqwest
//!
//! This crate drives the sans-IO [`token_keeper`] core from reqwest
//! applications, with no protocol logic of its own:
//!
//! - [`ReqwestTokenClient`]: a cloneable async client ([`Client<Async>`](Client))
//!   that runs on any executor, tokio included. Token and discovery requests
//!   run on the client's own threads with reqwest clients of its own (no
//!   redirects, the proxy the core decides, bounded bodies and time, rustls
//!   on ring), driven by a two-worker tokio runtime the client owns. A cached
//!   Fresh token is read lock-free.
//! - [`TokenMiddleware`]: a `reqwest_middleware` middleware with the same
//!   rules as the other adapters': configured origins only, the caller's
//!   `Authorization` kept, DPoP proofs per request, and on 401 the core's
//!   compare-and-invalidate with one retry of a replayable request. Build the
//!   reqwest client under it with [`TokenMiddleware::client_builder`] (no
//!   redirects: a token or a proof never follows one).
//! - [`Error`]: the same error type as the other adapters, classified with
//!   one call each (`is_oauth()`, `oauth_code()`, `is_transport()`,
//!   `is_unavailable()`, `retry_in()` …); [`token_failure`] finds it in the
//!   `reqwest_middleware::Error` of a call through the middleware.
//!
//! **TLS.** This crate depends on reqwest 0.13 with `default-features = false`
//! and `rustls-no-provider`, and hands reqwest a rustls configuration on ring
//! ([`tls_config`]): reqwest's default TLS would bring a second crypto
//! provider (aws-lc-rs, a C build). Token requests trust
//! [`ClientOptions::tls`] (the Mozilla roots by default, with CAs of your
//! own if you add them); the operating system's store is not supported by
//! this adapter yet.
//!
//! **Logging.** This crate's own logs (through `log`, under the target
//! `token_keeper_reqwest`, each line naming the client) never contain tokens
//! or secrets.
//!
//! ## Example
//!
//! ```no_run
//! use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
//! use token_keeper_reqwest::{ReqwestTokenClient, TokenMiddleware};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let tokens = ReqwestTokenClient::new();
//! tokens.add_client(
//!     "m2m",
//!     ClientConfig::new("https://auth.example.com/connect/token", "m2m",
//!                       ClientAuth::Basic(ClientSecret::new(std::env::var("CLIENT_SECRET")?)))?
//!         .scope("orders.read"),
//! )?;
//! let api = reqwest_middleware::ClientBuilder::new(TokenMiddleware::client_builder().build()?)
//!     .with(TokenMiddleware::new(tokens.clone()).route("https://api.example.com", "m2m")?)
//!     .build();
//! let orders = api.get("https://api.example.com/orders").send().await?;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
pub mod middleware;
mod transport;

pub use client::ReqwestTokenClient;
pub use middleware::{token_failure, TokenMiddleware};
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
pub use transport::tls_config;
