//! Test kit for token-keeper: a small but real local authorization server,
//! and the other real parts the tests run against (a recording proxy, a TLS
//! front with a test CA, a keep-alive API server, and [`fixtures`] that put
//! them together), the adapter scenario table, and the launcher of the
//! oidc-provider fixture ([`oidc_provider`]).
//!
//! [`LocalAuthServer`] listens on `127.0.0.1` on an ephemeral port (or the
//! loopback address [`ServerConfig::listen`] names, for `tokenctl serve`) and serves
//! an OpenID discovery document (`GET /.well-known/openid-configuration`), a
//! token endpoint (`POST /token`, client credentials grant, `client_secret_basic`,
//! `client_secret_post` and `private_key_jwt`, DPoP-bound tokens with optional
//! nonces) and a protected API (`GET|POST /api/...`) that accepts only the
//! tokens it issued, until they expire or are revoked, checking DPoP proofs
//! (`ath`, key binding, its own nonces). It counts and records requests (DPoP
//! proofs and client assertions included, so tests verify their signatures
//! with an independent JOSE library) and can be told to misbehave: error
//! statuses with `Retry-After`, delays, malformed bodies, dropped connections,
//! a 401 from the API. One implementation serves the integration tests, the
//! benchmarks, `tokenctl demo` and `tokenctl serve`.
//!
//! Only `std` (and the core, for thumbprints and hashes) is used: the server is a thread per connection with HTTP/1.1
//! keep-alive, bounded header and body sizes, and read timeouts, and it stops
//! (joining its threads' listener) when dropped.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ab;
pub mod api_server;
pub mod fixtures;
pub mod oidc_provider;
pub mod recording_proxy;
pub mod redis;
mod relay;
pub mod scenarios;
pub mod server;
pub mod tls_front;

pub use redis::{redis_server_available, RedisServer};
pub use server::{
    ApiFault, Endpoint, Gate, JwsVerifier, LocalAuthServer, RecordedCall, RecordedRequest,
    ServerConfig, TokenFault,
};
