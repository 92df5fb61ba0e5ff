//! # token-keeper-tower: managed OAuth 2.0 client-credentials tokens for tower services
//!
//! [`TokenLayer`] is a `tower::Layer` for any `Service<http::Request<B>>`:
//! hyper-util's client, a tonic `Channel`, or a stack of your own. It drives
//! the sans-IO [`token_keeper`] core through the one driver, with no protocol
//! logic of its own (see the [`layer`] module for its rules):
//!
//! - a token (and for DPoP-bound clients a proof per request) only for the
//!   origins you route, never over a caller's own `Authorization`;
//! - on `401`, or gRPC's `UNAUTHENTICATED` (`grpc-status: 16`, in headers or
//!   trailers), the core's compare-and-invalidate, and one retry when the
//!   request body can be sent again ([`ReplayBody`]: bodies in memory are
//!   copied; a boxed body whose length is known to fit, and with
//!   [`TokenLayer::replay_unsized_bodies`] a `tonic::body::Body`, is taken
//!   into memory from the frames ready at once, never waiting for one; other
//!   body types go in a [`NoReplay`] and are sent once);
//! - a token failure fails the call with [`NoToken`] (the request is not
//!   sent); [`token_failure`] finds the typed [`Error`] in any error chain,
//!   a `tonic::Status`'s included.
//!
//! **Token requests.** Tokens come from a [`ReqwestTokenClient`] (this crate
//! re-exports it): its token transport is reqwest on its own two-worker
//! tokio runtime, with rustls on ring, no redirects, bounded bodies and
//! times, and the core's proxy decision (loopback never proxied). reqwest is
//! hyper-util's client with exactly the pieces a token transport needs
//! (proxy tunnelling, timeouts, TLS configuration), already under the
//! hostile-server suite; a second transport on bare hyper-util would repeat
//! them. Any other [`Client<Async>`](Client) works too.
//!
//! **TLS and proxies of your API calls** are your service's: this layer
//! neither chooses nor changes them.
//!
//! ## Example: hyper-util's client
//!
//! ```no_run
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
//! use token_keeper_tower::{ReqwestTokenClient, TokenLayer};
//! use tower::ServiceExt;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let tokens = ReqwestTokenClient::new();
//! tokens.add_client(
//!     "m2m",
//!     ClientConfig::new("https://auth.example.com/connect/token", "m2m",
//!                       ClientAuth::Basic(ClientSecret::new(std::env::var("CLIENT_SECRET")?)))?
//!         .scope("records.read"),
//! )?;
//! let http = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
//! let api = tower::ServiceBuilder::new()
//!     .layer(TokenLayer::new(&tokens).route("http://127.0.0.1:8080", "m2m")?)
//!     .service(http);
//! let request = http::Request::get("http://127.0.0.1:8080/api/v1/integration/health-records")
//!     .body(Full::default())?;
//! let response = api.oneshot(request).await?;
//! println!("{}", response.status());
//! # Ok(()) }
//! ```
//!
//! ## Example: a tonic channel
//!
//! Needs the `tonic` feature (the layer's request body must be a
//! [`ReplayBody`], and `tonic::body::Body` is one only with it).
//!
//! ```no_run
//! # #[cfg(feature = "tonic")]
//! # async fn run(tokens: token_keeper_tower::ReqwestTokenClient) -> Result<(), Box<dyn std::error::Error>> {
//! use token_keeper_tower::TokenLayer;
//!
//! let origin = "https://grpc.example.com";
//! let channel = tonic::transport::Endpoint::from_static("https://grpc.example.com")
//!     .connect()
//!     .await?;
//! let layer = TokenLayer::new(&tokens)
//!     .route(origin, "m2m")?
//!     .relative_to(origin)?           // tonic sends only the path to a Channel
//!     .replay_unsized_bodies(true);   // unary calls: retried once after UNAUTHENTICATED
//! let channel = tower::ServiceBuilder::new().layer(layer).service(channel);
//! // let mut client = HealthClient::new(channel);
//! # Ok(()) }
//! ```
//!
//! **Logging.** The token client's log lines go to `token_keeper_reqwest`
//! and never contain tokens or secrets; this layer logs nothing.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod body;
mod error;
pub mod layer;
mod response;

pub use body::{Buffered, NoReplay, ReplayBody};
pub use error::{token_failure, NoToken};
pub use layer::{ResponseFuture, TokenLayer, TokenService};
pub use response::WatchedBody;
pub use token_keeper::{HealthError, HealthState, KeyHealth, StoreSettings};
pub use token_keeper_driver::tls::{TlsError, TlsRoots, TlsSettings};
pub use token_keeper_driver::{
    Async, Authorized, Client, ClientHealth, ClientOptions, ClientStats, Clock, Error, FleetStore,
    ManualClock, Store, SystemClock, TokenInfo,
};
/// Private keys on ring: the default signer for DPoP proofs and
/// `private_key_jwt` (the `keys` feature, on by default).
#[cfg(feature = "keys")]
pub use token_keeper_reqwest::{keys, PrivateKey};
pub use token_keeper_reqwest::{tls_config, ReqwestTokenClient};

/// The error type of a [`TokenService`]: the inner service's error, boxed,
/// or a [`NoToken`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;
