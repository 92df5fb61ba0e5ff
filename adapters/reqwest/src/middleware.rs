//! [`TokenMiddleware`]: attaches managed tokens to the requests of a
//! `reqwest_middleware` client.
//!
//! The same rules as the other adapters' middlewares, every decision the
//! core's [`ApiCallPolicy`]'s:
//!
//! 1. Only requests to a configured origin (scheme, host, port) get a token;
//!    an origin must be `https`, or `http` on a loopback host.
//! 2. A request that already has an `Authorization` header is left alone.
//! 3. Otherwise the client's header is attached (cached, or fetched once for
//!    all tasks), with a fresh `DPoP` proof for this method and URL when the
//!    token is DPoP-bound. Token requests go through the
//!    [`ReqwestTokenClient`]'s own reqwest clients, never through the client
//!    this middleware runs in.
//! 4. Every 401, and every answer to a DPoP-bound request (it may carry a
//!    `DPoP-Nonce`), from the origin the request was sent to, goes to the
//!    core. On a 401 the core decides: the cached token is invalidated only
//!    if it is the one this request carried, and one retry is allowed. The
//!    retry is sent only when the request can be replayed
//!    ([`reqwest::Request::try_clone`]): no body, or a body held in memory
//!    no larger than the replay limit (default 64 KiB). A streamed body, or
//!    a larger one, is sent once and the 401 handed back.
//!
//! **Redirects.** A token never crosses a redirect
//! ([`REDIRECTS_WITH_TOKEN`](token_keeper::api_call::REDIRECTS_WITH_TOKEN)
//! is 0), and a DPoP proof is bound to the URL it was made for. reqwest
//! follows redirects inside `Client::execute`, under this middleware, where
//! it cannot see them: it drops `Authorization` on a hop to another origin,
//! but carries `DPoP` (and every other header) along, and the middleware
//! cannot read the client's redirect policy. So build the client that carries
//! tokens with [`TokenMiddleware::client_builder`], which follows no
//! redirects: a 3xx is handed back to you; send the request to its
//! `Location` through the same client, and it gets a token (and a proof)
//! only if that origin is configured. A client with reqwest's default policy
//! (up to 10 redirects) would send an origin's `DPoP` proof to whatever host
//! the server names. An answer from another origin than the request's (a
//! redirect followed anyway) is never reported to the core.
//!
//! **Proxies.** The middleware does not choose the proxy of your API
//! requests: that is the reqwest client's configuration. Token requests
//! follow [`ClientOptions::proxy`](crate::ClientOptions::proxy).
//!
//! **Token failures.** When no token can be had, the request is not sent and
//! the call fails with `reqwest_middleware::Error::Middleware`, whose
//! `Display` reads `no token, so the request was not sent: ` and the
//! [`Error`]'s message. [`token_failure`] gives the typed [`Error`] back
//! (`None` means the failure is not a token failure):
//!
//! ```no_run
//! use token_keeper_reqwest::{token_failure, ReqwestTokenClient, TokenMiddleware};
//!
//! # async fn run(tokens: ReqwestTokenClient) -> Result<(), Box<dyn std::error::Error>> {
//! let middleware = TokenMiddleware::new(tokens).route("https://api.example.com", "m2m")?;
//! let api = reqwest_middleware::ClientBuilder::new(TokenMiddleware::client_builder().build()?)
//!     .with(middleware)
//!     .build();
//! match api.get("https://api.example.com/orders").send().await {
//!     Ok(response) => println!("the API answered {}", response.status()),
//!     // No token: the request was never sent.
//!     Err(error) => match token_failure(&error) {
//!         Some(no_token) if no_token.oauth_code() == Some("invalid_client") => {
//!             eprintln!("check the client's id and secret: {no_token}")
//!         }
//!         Some(no_token) => eprintln!("no token for the API: {no_token}"),
//!         None => eprintln!("calling the API: {error}"),
//!     },
//! }
//! # Ok(()) }
//! ```

use std::sync::Arc;

use http::header::AUTHORIZATION;
use http::{Extensions, StatusCode, Uri};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use token_keeper::{ApiCallPolicy, KeyId, ResourceOutcome};
use token_keeper_driver::tls::TlsSettings;
use token_keeper_driver::{Authorized, Error};

use crate::client::ReqwestTokenClient;

/// What a token failure's error says before the [`Error`]'s message.
const TOKEN_FAILURE_PREFIX: &str = "no token, so the request was not sent";

/// The token client's [`Error`] behind a failed call through a
/// [`TokenMiddleware`]: `Some` when the call failed because no token (or no
/// DPoP proof) could be had, and the request was not sent; `None` for every
/// other failure (reqwest's own, another middleware's). The
/// [module docs](self) have an example.
pub fn token_failure(error: &reqwest_middleware::Error) -> Option<&Error> {
    match error {
        reqwest_middleware::Error::Middleware(inner) => inner.downcast_ref::<Error>(),
        reqwest_middleware::Error::Reqwest(_) => None,
    }
}

/// A token failure as a `reqwest_middleware::Error`: a `Display` that says no
/// token was had, and the typed [`Error`] under it, for [`token_failure`].
fn token_error(error: Error) -> reqwest_middleware::Error {
    reqwest_middleware::Error::Middleware(anyhow::Error::new(error).context(TOKEN_FAILURE_PREFIX))
}

/// A `reqwest_middleware` middleware that attaches managed tokens. See the
/// [module docs](self).
///
/// ```no_run
/// use token_keeper_reqwest::{ReqwestTokenClient, TokenMiddleware};
///
/// # async fn run(tokens: ReqwestTokenClient) -> Result<(), Box<dyn std::error::Error>> {
/// let api = reqwest_middleware::ClientBuilder::new(TokenMiddleware::client_builder().build()?)
///     .with(TokenMiddleware::new(tokens).route("https://api.example.com", "m2m")?)
///     .build();
/// let orders = api.get("https://api.example.com/orders").send().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TokenMiddleware {
    client: ReqwestTokenClient,
    /// Routes, replay limit, what to report and retry: the core's rules.
    policy: Arc<ApiCallPolicy>,
}

impl TokenMiddleware {
    /// A middleware with no routes yet.
    pub fn new(client: ReqwestTokenClient) -> TokenMiddleware {
        TokenMiddleware {
            client,
            policy: Arc::new(ApiCallPolicy::new()),
        }
    }

    /// Attaches the named client's tokens to requests for `origin`
    /// (`https://host[:port]`, or `http://` on a loopback host).
    pub fn route(mut self, origin: &str, client_name: &str) -> Result<TokenMiddleware, Error> {
        let key = self.client.key(client_name)?;
        Arc::make_mut(&mut self.policy)
            .routes_mut()
            .add(origin, key)?;
        Ok(self)
    }

    /// The largest request body kept so that a request can be retried after
    /// a 401 (default 64 KiB). Larger bodies, and streamed ones, are sent
    /// once and not retried.
    pub fn max_replay_body(mut self, bytes: usize) -> TokenMiddleware {
        Arc::make_mut(&mut self.policy).set_max_replay_body(bytes);
        self
    }

    /// A `reqwest::ClientBuilder` for a client that carries tokens: it
    /// follows no redirects (see the [module docs](self)) and has TLS through
    /// rustls on ring with the Mozilla roots ([`tls_config`](crate::tls_config)),
    /// which a reqwest built without a crypto provider of its own needs.
    /// Add your own settings (timeouts, proxy, other roots with
    /// `tls_backend_preconfigured`), but keep the redirect policy.
    pub fn client_builder() -> reqwest::ClientBuilder {
        let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        match crate::tls_config(&TlsSettings::default()) {
            Ok(tls) => builder.tls_backend_preconfigured(tls),
            // The Mozilla roots always make a configuration.
            Err(_) => builder,
        }
    }
}

/// A copy of `request` to send again, if the policy keeps its body: none, or
/// one in memory within the replay limit (a stream cannot be cloned).
fn replayable(policy: &ApiCallPolicy, request: &Request) -> Option<Request> {
    let length = match request.body() {
        None => 0,
        Some(body) => body.as_bytes()?.len(),
    };
    if policy.keep_for_replay(0, Some(length as u64)) && policy.fits(length) {
        request.try_clone()
    } else {
        None
    }
}

#[async_trait::async_trait]
impl Middleware for TokenMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        // A URL `http` cannot read is never one of ours: send it untouched.
        let Ok(uri) = request.url().as_str().parse::<Uri>() else {
            return next.run(request, extensions).await;
        };
        let has_authorization = request.headers().contains_key(AUTHORIZATION);
        let host = request
            .headers()
            .get(http::header::HOST)
            .map(|h| h.as_bytes());
        let Some(key) = self.policy.key_for(&uri, has_authorization, host) else {
            return next.run(request, extensions).await;
        };
        let method = request.method().clone();
        let auth = self
            .client
            .authorize_request(key, &method, &uri)
            .await
            .map_err(token_error)?;
        auth.apply_to(request.headers_mut());
        let replay = replayable(&self.policy, &request);

        let response = next.clone().run(request, extensions).await?;
        let dpop = auth.dpop.is_some();
        let Some((status, outcome)) = self.report(key, &response, &auth, &uri, 0, dpop) else {
            return Ok(response);
        };
        let Some(mut retry) = replay.filter(|_| self.policy.must_retry(status, outcome, 0, true))
        else {
            return Ok(response);
        };
        drop(response);
        // A new token (after an invalidation) or a new proof (after a nonce).
        let auth = self
            .client
            .authorize_request(key, &method, &uri)
            .await
            .map_err(token_error)?;
        auth.apply_to(retry.headers_mut());
        let response = next.run(retry, extensions).await?;
        self.report(key, &response, &auth, &uri, 1, dpop);
        Ok(response)
    }
}

impl TokenMiddleware {
    /// Reports `response` to the core if the policy says it must (every 401,
    /// every answer to a DPoP-bound request, from the request's own origin):
    /// its status and the core's verdict.
    fn report(
        &self,
        key: KeyId,
        response: &Response,
        auth: &Authorized,
        uri: &Uri,
        attempt: u32,
        dpop: bool,
    ) -> Option<(StatusCode, ResourceOutcome)> {
        let status = response.status();
        // The URL that answered: another origin's if the client followed a redirect.
        let answered_by = response.url().as_str().parse::<Uri>().ok()?;
        if !self.policy.must_report(status, dpop, uri, &answered_by) {
            return None;
        }
        let outcome = self.client.handle_resource_response(
            key,
            status,
            response.headers(),
            &auth.authorization,
            uri,
            attempt,
        );
        Some((status, outcome))
    }
}
