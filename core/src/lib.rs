//! # token-keeper: OAuth 2.0 client-credentials tokens, sans I/O
//!
//! `token-keeper` manages access tokens for machine-to-machine calls (the
//! client credentials grant, RFC 6749 §4.4): it builds token requests, parses
//! token responses, caches tokens per key, refreshes them before they expire,
//! backs off when the token endpoint fails, and says which `Authorization`
//! header to attach to each outgoing API call.
//!
//! This crate is a pure state machine. It never opens a socket, never reads a
//! clock, never spawns a thread and never awaits. Time comes in as an argument
//! ([`Now`]); HTTP comes in and goes out as [`http`] values. Adapters (the
//! `token-keeper-ureq` and `token-keeper-surf` crates) do the I/O; anything
//! else can drive it too, including a test that moves time by hand.
//!
//! ## The run loop
//!
//! An adapter owns one [`TokenManager`] (behind a lock when shared) and, after
//! **every** input, drains **all** outputs:
//!
//! ```text
//!  inputs                                   outputs (drain after every input)
//!  ───────────────────────────────────      ─────────────────────────────────────
//!  authorize(key, now)          ──┐         poll_request()  → TokenRequest to sign and send
//!  handle_response(id, resp, now) │  core   poll_snapshot() → (KeyId, Snapshot) to publish
//!  handle_transport_error(id, …)  ├──────►  poll_event()    → Event to log
//!  handle_signing_error(id, …)    │         poll_timeout()  → (Instant, reason) to sleep until
//!  handle_resource_response(…)    │
//!  handle_timeout(now)            │
//!  force_refresh / invalidate   ──┘
//! ```
//!
//! The core never calls a [`jose::Signer`]: the JWTs it needs (DPoP proofs,
//! `private_key_jwt` assertions) come out complete but unsigned
//! ([`jose::UnsignedJwt`]), for the adapter to sign after releasing its
//! lock, since a signer in an HSM or a KMS may take seconds.
//!
//! For an API call, the adapter first reads the key's published
//! [`Snapshot`] without any lock: if [`Snapshot::is_fresh`] it attaches
//! [`Snapshot::header`] and is done. Otherwise it locks the core and calls
//! [`TokenManager::authorize`], which answers one of:
//!
//! * [`Authorization::Attach`]: attach this header (if the token is Stale, a
//!   refresh has been queued; the caller does not wait for it);
//! * [`Authorization::Fetch`]: no valid token; a token request was queued;
//! * [`Authorization::Wait`]: no valid token; a request is already in flight
//!   (single-flight: never two per key), so wait for its outcome and ask again;
//! * [`Authorization::Unavailable`]: the key is backing off after a failure;
//!   fail now with the last error instead of hammering the token endpoint.
//!
//! Queued token requests come out of [`TokenManager::poll_request`]; the
//! adapter signs each ([`TokenRequest::into_request`], with no lock held),
//! sends it and reports the outcome with [`TokenManager::handle_response`]
//! or [`TokenManager::handle_transport_error`] (or, if it could not be
//! signed, [`TokenManager::handle_signing_error`]), then wakes its waiters,
//! who ask again. A background task sleeps until [`TokenManager::poll_timeout`] and
//! calls [`TokenManager::handle_timeout`], which starts refreshes ahead of
//! expiry off the callers' path, ends backoffs and gives up on lost requests.
//! When an API answers 401, [`TokenManager::handle_resource_response`]
//! invalidates the token only if it is the one that request carried, and
//! allows one retry; if a token fetched after such a 401 is rejected too,
//! within [`ManagerConfig::resource_rejection_damping`], the 401 goes to the
//! caller instead, so an API that rejects every token cannot make each call
//! cost a token request.
//!
//! The `jti`s of signed JWTs and the jitter come from a generator seeded in
//! [`TokenManager::new`]; adapters inject a secure [`RandomSource`] with
//! [`TokenManager::set_random_source`].
//!
//! ## The life of a cached token (per key)
//!
//! ```text
//!                authorize / force_refresh
//!    ┌───────┐ ─────────────────────────────► ┌──────────┐  response ok   ┌───────┐
//!    │ Empty │                                │ Fetching │ ─────────────► │ Fresh │
//!    └───────┘ ◄── invalidate / 401 ───────── └──────────┘                └───────┘
//!       ▲  ▲                                    │     ▲                       │ refresh point
//!       │  │         failure / timeout          │     │ backoff ends          ▼ (jittered)
//!       │  │    ┌────────────────────────┐ ◄────┘     │ and a call      ┌─────────┐
//!       │  └─── │ Backoff (serve a still │ ───────────┘  arrives        │  Stale  │──┐ one refresh
//!       │       │ valid token; else fail │ ◄──── refresh fails ──────── │(attach) │◄─┘ in flight
//!       │       │ fast with the error)   │                              └─────────┘
//!       │       └────────────────────────┘                                  │ end of usable life
//!       └──────────────────────── Expired (never attached) ◄────────────────┘
//! ```
//!
//! [`RefreshPolicy`] gives the exact rule for the refresh point and the
//! usable life; [`BackoffPolicy`] the rule for retries.
//!
//! ## Example: a whole exchange, with time and HTTP by hand
//!
//! ```
//! use std::time::Duration;
//! use token_keeper::{
//!     Authorization, ClientAuth, ClientConfig, ClientSecret, ManagerConfig, Now, TokenManager,
//! };
//!
//! let mut manager = TokenManager::new(ManagerConfig::default(), 7);
//! let client = manager.add_client(
//!     "m2m",
//!     ClientConfig::new(
//!         "https://auth.example.com/connect/token",
//!         "m2m",
//!         ClientAuth::Basic(ClientSecret::new("s3cret")),
//!     )?
//!     .scope("api"),
//! )?;
//! let key = manager.default_key(client);
//!
//! // First call: nothing cached, so the core queues a token request.
//! let t0 = Now::from_secs(0);
//! let Authorization::Fetch(id) = manager.authorize(key, t0) else { unreachable!() };
//! let request = manager.poll_request().expect("a request was queued");
//! assert_eq!(request.id(), id);
//! // The adapter signs it (nothing to sign with a client secret; a DPoP proof
//! // or a client assertion otherwise), with no lock held, and sends it…
//! let request = request.into_request()?;
//! assert_eq!(request.uri(), "https://auth.example.com/connect/token");
//! assert_eq!(request.body(), b"grant_type=client_credentials&scope=api");
//!
//! // …and hands the response back.
//! let response = http::Response::builder()
//!     .status(200)
//!     .body(r#"{"access_token":"abc","token_type":"Bearer","expires_in":3600}"#)?;
//! manager.handle_response(id, response, Now::from_secs(1))?;
//!
//! // Now the token is attached, without another request.
//! let Authorization::Attach(attach) = manager.authorize(key, Now::from_secs(2)) else {
//!     unreachable!()
//! };
//! assert_eq!(attach.header(), "Bearer abc");
//! assert!(manager.poll_request().is_none());
//!
//! // The published snapshot lets readers skip the core until the refresh point.
//! let (_, snapshot) = manager.poll_snapshot().expect("snapshot published");
//! let snapshot = snapshot.expect("a token is cached");
//! assert!(snapshot.is_fresh(Now::from_secs(60).monotonic()));
//!
//! // The core wants to be woken at the (jittered) refresh point.
//! let (when, _) = manager.poll_timeout().unwrap();
//! assert!(when > Now::from_secs(2400).monotonic() && when < Now::from_secs(2900).monotonic());
//! # let _ = Duration::ZERO;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Modules
//!
//! One concept each: [`config`] (clients and policies), [`key`] (cache
//! keys), [`request`] (token requests), [`response`] (token responses),
//! [`challenge`] (`WWW-Authenticate`), [`retry_after`], [`discovery`]
//! (issuer metadata), [`jose`] (signers, JWKs, thumbprints, JWS), [`dpop`]
//! (proofs and nonces), [`snapshot`] (the lock-free read path), [`event`],
//! [`error`], [`time`], [`random`] (the injected source of `jti`s and jitter)
//! and [`url`] (the one check of URLs and origins: https or loopback, ports,
//! user information).
//!
//! ## DPoP and `private_key_jwt`
//!
//! Give a [`ClientConfig`] a [`jose::Signer`] with [`ClientConfig::dpop`] and
//! its tokens are bound to that key: token requests carry a proof, and
//! [`TokenManager::authorize_request`] returns, with the `Authorization`
//! header value, a fresh proof for each API request
//! ([`Attach::dpop_proof_to_sign`]). [`ClientAuth::PrivateKeyJwt`]
//! authenticates the client with a signed assertion instead of a secret.
//! Both are signed through the [`jose::Signer`] trait, so keys can live in an
//! HSM or a KMS; `token-keeper-keys` ships a default on `ring`. The core
//! decides every claim (`jti`, `iat`, nonce, `htu`, `ath`, `aud`, `exp`) but
//! leaves the signature to the adapter ([`jose::UnsignedJwt::sign`]), which
//! makes it outside its lock.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod api_call;
pub mod challenge;
pub mod config;
pub mod discovery;
pub mod dpop;
pub mod error;
pub mod event;
pub mod health;
pub mod jose;
pub mod key;
mod lifecycle;
mod manager;
pub mod proxy;
pub mod random;
pub mod request;
pub mod response;
pub mod retry_after;
pub mod snapshot;
pub mod store;
pub mod time;
pub mod url;

pub use api_call::{ApiCallPolicy, Routes};
pub use config::{
    AssertionAudience, BackoffPolicy, ClientAuth, ClientConfig, ClientSecret, ManagerConfig,
    PrivateKeyJwt, RefreshPolicy,
};
pub use error::{
    ConfigError, InvalidResponse, OAuthError, ResponseProblem, TokenError, TransportError,
    TransportErrorKind, UnknownRequest,
};
pub use event::{Event, InvalidationReason, RequestReason};
pub use health::{HealthError, HealthState, KeyHealth};
pub use key::{KeyId, KeyOverrides, Scope};
pub use manager::{
    Attach, Authorization, ClientHandle, ForcedRefresh, ResourceOutcome, ResourceResponse,
    TimeoutReason, TokenManager, TokenState, TokenView,
};
pub use proxy::{Proxy, ProxyDecision, ProxyError, ProxySettings};
pub use random::RandomSource;
pub use request::{RequestId, TokenRequest};
pub use response::{AccessToken, TokenResponse, TokenType};
pub use snapshot::Snapshot;
pub use store::{
    OwnerId, StoreError, StoreErrorKind, StoreKey, StoreOp, StoreOpId, StoreReply, StoreRequest,
    StoreSettings, StoredToken,
};
pub use time::{Clock, Instant, ManualClock, Now};
pub use url::{HttpUrl, Origin, Scheme, UrlError};
