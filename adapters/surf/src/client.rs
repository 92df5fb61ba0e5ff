//! [`AsyncTokenClient`]: the runtime-agnostic async client, a [`Client`] given a [`TokenTransport`].

use std::sync::Arc;

use token_keeper::ConfigError;
use token_keeper_driver::tls::TlsSettings;
use token_keeper_driver::{Async, Client, ClientOptions, Error};

use crate::transport::{EngineTransport, TokenTransport};
use crate::DirectHttp;

/// A cheaply cloneable async token client that runs on any executor.
///
/// A [`Client`] whose callers await an `event-listener` event: no executor
/// thread is ever blocked, no lock is held across an `.await`, and the same
/// client works under async-std, smol and tokio. Every method is
/// [`Client`]'s (through `Deref`). Every token and discovery request (the
/// first fetch as much as a refresh ahead of expiry) runs on a thread of the
/// client's own, which drives it to completion with `async_io::block_on`: it
/// never occupies the caller's executor, and a caller whose future is dropped
/// while it waits (a timeout, `select!`) leaves the request running and every
/// other waiter to be woken by its outcome. The timer thread stops when the
/// last clone is dropped. One exception to "never blocks": the `DPoP` proof
/// of an API request is signed on the calling task, after the client's lock
/// is released; a [`Signer`](token_keeper::jose::Signer) that blocks (an HSM)
/// holds that executor thread while it signs (token requests are signed on
/// the client's own threads).
///
/// Every token and discovery request (the middleware's too) goes through the
/// [`TokenTransport`] given here: [`DirectHttp`](crate::DirectHttp)
/// (recommended: bounded reads, rustls) or a surf backend of your choice (see
/// [`AsyncTokenClient::new`]).
///
/// ```no_run
/// use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
/// use token_keeper_surf::{AsyncTokenClient, DirectHttp};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tokens = AsyncTokenClient::new(DirectHttp::new());
/// tokens.add_client(
///     "m2m",
///     ClientConfig::new("https://auth.example.com/connect/token", "m2m",
///                       ClientAuth::Basic(ClientSecret::new(std::env::var("CLIENT_SECRET")?)))?
///         .scope("api"),
/// )?;
/// let header = tokens.header("m2m").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AsyncTokenClient {
    client: Client<Async>,
    /// Behind an `Arc`: the client stays three pointers wide.
    http: Arc<TokenTransport>,
}

impl std::ops::Deref for AsyncTokenClient {
    type Target = Client<Async>;

    fn deref(&self) -> &Client<Async> {
        &self.client
    }
}

impl AsyncTokenClient {
    /// A client sending token requests through `http`, with default options.
    ///
    /// The recommended transport is [`DirectHttp`](crate::DirectHttp): a
    /// connection of its own per token request, TLS through rustls, and hard
    /// bounds on what it reads, whatever the server sends:
    ///
    /// ```
    /// let tokens = token_keeper_surf::AsyncTokenClient::new(token_keeper_surf::DirectHttp::new());
    /// ```
    ///
    /// To keep token requests on a surf backend instead (its TLS settings),
    /// build the transport from a surf configuration with
    /// [`TokenTransport::surf`]: this crate builds a surf client of its own
    /// from it, with no middleware (token requests never pass through surf's
    /// `Redirect` or a logger) and keep-alive off:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_keeper_surf::{AsyncTokenClient, TokenTransport};
    /// let tokens = AsyncTokenClient::new(TokenTransport::surf(surf::Config::new())?);
    /// # Ok(()) }
    /// ```
    ///
    /// surf's HTTP/1 pool (http-client 6) returns a connection to the pool
    /// even when an exchange on it was cancelled by a timeout or abandoned at
    /// the body size cap; the next request on that connection would read the
    /// previous one's late answer, and a token issued for one key could be
    /// cached for another. Token requests are rare, so a fresh connection
    /// each costs nothing that matters. The backend's own limits then apply:
    /// async-h1 (surf's `h1-client`) buffers an endless header line until the
    /// timeout, reads a body without `Content-Length` or chunking as empty and
    /// takes a `100 Continue` for the answer ([`DirectHttp`](crate::DirectHttp)
    /// does none of these).
    pub fn new(http: impl Into<TokenTransport>) -> AsyncTokenClient {
        AsyncTokenClient::with_options(http, ClientOptions::default())
            .expect("the default options are valid with every transport")
    }

    /// A client with these options. Refuses TLS settings the transport
    /// cannot apply (see [`ClientOptions::tls`]).
    pub fn with_options(
        http: impl Into<TokenTransport>,
        options: ClientOptions,
    ) -> Result<AsyncTokenClient, Error> {
        let mut http = http.into();
        if options.tls != TlsSettings::default() {
            http =
                match http {
                    TokenTransport::Direct(direct) if !direct.has_own_roots() => {
                        TokenTransport::Direct(DirectHttp::with_tls(&options.tls)?)
                    }
                    TokenTransport::Direct(_) => return Err(Error::Config(ConfigError::new(
                        "ClientOptions::tls and DirectHttp::with_root_certificates both set the \
                         roots of token requests: choose one",
                    ))),
                    _ => {
                        return Err(Error::Config(ConfigError::new(
                            "ClientOptions::tls applies to DirectHttp only: a surf backend's TLS \
                         is its own",
                        )))
                    }
                };
        }
        // Log lines under this crate's name, the one its users filter on.
        let settings = options.engine_settings(env!("CARGO_CRATE_NAME"));
        // Token and discovery requests run on the engine's own threads, driven by async-io.
        let sender = EngineTransport {
            http: http.clone(),
            timeout: options.timeout,
            connect_timeout: options.connect_timeout,
        };
        Ok(AsyncTokenClient {
            client: Client::start(settings, Box::new(sender)),
            http: Arc::new(http),
        })
    }

    /// How token and discovery requests are sent.
    pub fn transport(&self) -> &TokenTransport {
        &self.http
    }
}
