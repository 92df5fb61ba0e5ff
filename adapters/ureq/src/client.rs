//! [`TokenClient`]: the blocking client, a [`Client`] given ureq.

use token_keeper_driver::{Blocking, Client, ClientOptions};

use crate::error::Error;
use crate::transport::{self, UreqTransport};

/// The blocking token client: a [`Client`] whose callers wait on a
/// condition variable, sending token and discovery requests with ureq.
/// Cheap to clone; every method is [`Client`]'s (through `Deref`).
///
/// It owns the core and the named client configurations, and refreshes
/// tokens ahead of expiry on a background thread that stops when the last
/// clone is dropped. A cached Fresh token is handed out without taking any
/// lock.
///
/// ```no_run
/// use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
/// use token_keeper_ureq::TokenClient;
///
/// let tokens = TokenClient::new();
/// tokens.add_client(
///     "m2m",
///     ClientConfig::new("https://auth.example.com/connect/token", "m2m",
///                       ClientAuth::Basic(ClientSecret::new(std::env::var("CLIENT_SECRET")?)))?
///         .scope("api"),
/// )?;
/// let header = tokens.header("m2m")?; // "Bearer …", fetched once, then cached
///
/// // Or in one step from the issuer's metadata (discovery):
/// tokens.add_client_from_issuer("reports", "https://auth.example.com", |token_endpoint| {
///     Ok(ClientConfig::new(token_endpoint, "reports",
///                          ClientAuth::Basic(ClientSecret::new("…")))?.scope("reports.read"))
/// })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct TokenClient(Client<Blocking>);

impl std::ops::Deref for TokenClient {
    type Target = Client<Blocking>;

    fn deref(&self) -> &Client<Blocking> {
        &self.0
    }
}

impl Default for TokenClient {
    fn default() -> Self {
        TokenClient::new()
    }
}

impl TokenClient {
    /// A client with default options.
    pub fn new() -> TokenClient {
        TokenClient::with_options(ClientOptions::default()).expect("the default options are valid")
    }

    /// A client with these options; refuses TLS settings this build cannot
    /// apply (ureq cannot add CAs to the OS store; see [`ClientOptions::tls`]).
    pub fn with_options(options: ClientOptions) -> Result<TokenClient, Error> {
        let agent = transport::token_agent(options.connect_timeout, options.timeout, &options.tls)?;
        // Log lines under this crate's name, the one its users filter on.
        let settings = options.engine_settings(env!("CARGO_CRATE_NAME"));
        Ok(TokenClient(Client::start(
            settings,
            Box::new(UreqTransport(agent)),
        )))
    }
}
