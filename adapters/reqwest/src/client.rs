//! [`ReqwestTokenClient`]: the async client, a [`Client`] given the reqwest transport.

use token_keeper_driver::{Async, Client, ClientOptions, Error};

use crate::transport::ReqwestTransport;

/// A cheaply cloneable async token client for reqwest applications.
///
/// A [`Client<Async>`](Client): its callers await an `event-listener`
/// event, so it runs on any executor (tokio, reqwest's own, included): no
/// executor thread is blocked while a token is fetched, and no lock is held
/// across an `.await`. Every method is [`Client`]'s (through `Deref`), as on
/// the surf adapter's `AsyncTokenClient`.
///
/// Token and discovery requests (the first fetch as much as a refresh ahead
/// of expiry) run on the client's own threads with reqwest clients of its
/// own: no redirects, no proxy but the one [`ClientOptions::proxy`] decides
/// for each request, no connection kept idle, TLS through rustls on ring
/// ([`ClientOptions::tls`]), and [`ClientOptions::connect_timeout`] and
/// [`ClientOptions::timeout`]; bodies are read up to the core's limit. Those
/// requests run as tasks on a two-worker tokio runtime the client owns, never
/// the application's, and each is bounded by a deadline the engine thread
/// keeps itself. The client's log lines go to the target
/// `token_keeper_reqwest`, and never contain a token or a secret.
///
/// The `DPoP` proof of an API request is signed on the calling task, after
/// the client's lock is released: a [`Signer`](token_keeper::jose::Signer)
/// that blocks (an HSM) holds that executor thread while it signs.
///
/// ```no_run
/// use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
/// use token_keeper_reqwest::ReqwestTokenClient;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let tokens = ReqwestTokenClient::new();
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
pub struct ReqwestTokenClient {
    client: Client<Async>,
}

impl std::ops::Deref for ReqwestTokenClient {
    type Target = Client<Async>;

    fn deref(&self) -> &Client<Async> {
        &self.client
    }
}

impl Default for ReqwestTokenClient {
    fn default() -> Self {
        ReqwestTokenClient::new()
    }
}

impl ReqwestTokenClient {
    /// A client with the default options (proxy from the environment, the
    /// Mozilla roots, 10 s timeouts).
    pub fn new() -> ReqwestTokenClient {
        ReqwestTokenClient::with_options(ClientOptions::default())
            .expect("the default options are valid for the reqwest adapter")
    }

    /// A client with these options. Refuses TLS settings this adapter cannot
    /// apply (the operating system's store).
    pub fn with_options(options: ClientOptions) -> Result<ReqwestTokenClient, Error> {
        let transport =
            ReqwestTransport::new(&options.tls, options.connect_timeout, options.timeout)?;
        // Log lines under this crate's name, the one its users filter on.
        let settings = options.engine_settings(env!("CARGO_CRATE_NAME"));
        Ok(ReqwestTokenClient {
            client: Client::start(settings, Box::new(transport)),
        })
    }
}
