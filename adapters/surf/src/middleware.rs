//! [`TokenMiddleware`]: attaches managed tokens to a surf client's requests.
//!
//! The same rules as the blocking adapter's middleware:
//!
//! 1. Only requests to a configured origin (scheme, host, port) get a token;
//!    an origin must be `https`, or `http` on a loopback host.
//! 2. A request that already has an `Authorization` header is left alone.
//! 3. Otherwise the client's header is attached (cached, or fetched once for
//!    all tasks). Token requests go through the [`AsyncTokenClient`]'s own
//!    transport ([`DirectHttp`](crate::DirectHttp), or a middleware-free,
//!    keep-alive-free surf backend), not the client the middleware is handed: an API client keeps
//!    connections alive, and surf's pool hands a connection back after a
//!    cancelled or cut-off exchange, so a later token request could read an
//!    earlier request's late answer (see [`AsyncTokenClient::new`]).
//! 4. On a 401 the core decides: the cached token is invalidated only if it is
//!    the one this request carried, and one retry is allowed. The retry is
//!    sent only when the request can be replayed: surf's `Request::clone`
//!    drops the body, so the body is buffered first, up to the replay limit
//!    (default 64 KiB). A larger body is sent once and the 401 handed back.
//!
//! **Redirects.** surf follows none unless its `Redirect` middleware is added.
//! `Redirect` re-sends the request it was handed, headers included, to any
//! `Location`, through the whole client. Add it **before** this middleware
//! (`Client::new().with(Redirect::default()).with(token_middleware)`): then
//! every hop passes through this middleware as a request of its own, and
//! gets a token (and a proof) only if its own origin is configured. Added
//! after it, `Redirect` would carry this request's `Authorization` and `DPoP`
//! to whatever host the server names: never do that.
//!
//! **Token failures.** When no token can be had, the request is not sent and
//! the call fails with a `surf::Error` that carries the token client's
//! [`Error`]; [`token_failure`] gives it back, typed (`None` means the
//! failure is not a token failure). Classify it with the [`Error`]
//! predicates ([`is_oauth`](Error::is_oauth),
//! [`oauth_code`](Error::oauth_code), [`is_unavailable`](Error::is_unavailable) …).
//! surf puts a status on every error; this one's, [`TOKEN_FAILURE_STATUS`],
//! is `500 Internal Server Error`, the status http-types gives every error
//! raised on the client's side (what `?` makes of an I/O error such as a
//! refused connection). It is not an answer from the API: surf hands the
//! API's answers, a 500 included, back as `Ok(Response)`, never as an error.
//! Any other status would pass for one the API did not send (a 401 for a
//! refused token, a 503 for a server that is up), so tell a token failure
//! by [`token_failure`], never by the status. The error's `Display` reads
//! `no token, so the request was not sent: ` followed by the [`Error`]'s
//! message, such as `authorization server refused the token request (401):
//! invalid_client …`.
//!
//! ```no_run
//! use token_keeper_surf::{token_failure, AsyncTokenClient, TokenMiddleware};
//!
//! # async fn run(tokens: AsyncTokenClient) -> Result<(), Box<dyn std::error::Error>> {
//! let api = surf::Client::new().with(TokenMiddleware::new(tokens).route("https://api.example.com", "m2m")?);
//! match api.get("https://api.example.com/orders").await {
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

use futures_lite::AsyncReadExt;
use http::{Method, StatusCode, Uri};
use surf::middleware::{Middleware, Next};
use surf::{Client, Request, Response};
use token_keeper::ApiCallPolicy;
use token_keeper_driver::{Authorized, Error};

use crate::client::AsyncTokenClient;
use crate::transport::to_http_headers;

/// A surf middleware that attaches managed tokens. See the [module docs](self).
///
/// ```no_run
/// use token_keeper_surf::{AsyncTokenClient, TokenMiddleware};
///
/// # async fn run(tokens: AsyncTokenClient) -> Result<(), Box<dyn std::error::Error>> {
/// let api = surf::Client::new().with(TokenMiddleware::new(tokens).route("https://api.example.com", "m2m")?);
/// let orders = api.get("https://api.example.com/orders").await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TokenMiddleware {
    client: AsyncTokenClient,
    /// Routes, replay limit, what to report and retry: the core's rules.
    policy: Arc<ApiCallPolicy>,
}

impl TokenMiddleware {
    /// A middleware with no routes yet.
    pub fn new(client: AsyncTokenClient) -> TokenMiddleware {
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

    /// The largest request body buffered so that a request can be retried
    /// after a 401 (default 64 KiB). Larger bodies are sent once and not retried.
    pub fn max_replay_body(mut self, bytes: usize) -> TokenMiddleware {
        Arc::make_mut(&mut self.policy).set_max_replay_body(bytes);
        self
    }
}

/// Puts `Authorization` (and `DPoP`, for a bound token) on a request.
fn set_headers(request: &mut Request, auth: &Authorized) -> surf::Result<()> {
    // The core builds these from visible ASCII only, so `to_str` holds.
    let text = |value: &http::HeaderValue| {
        value.to_str().map(str::to_owned).map_err(|_| {
            surf_error(Error::Config(token_keeper::ConfigError::new(
                "header is not text",
            )))
        })
    };
    request.insert_header("Authorization", text(&auth.authorization)?.as_str());
    match &auth.dpop {
        Some(proof) => {
            request.insert_header("DPoP", text(proof)?.as_str());
        }
        None => {
            request.remove_header("DPoP");
        }
    }
    Ok(())
}

/// The most of a 401's body read (and thrown away) before the retry.
const MAX_DISCARDED_BODY: u64 = 256 * 1024;

/// Reads a response's body to its end (at most [`MAX_DISCARDED_BODY`]) and
/// drops it. surf's HTTP/1 pool takes a connection back when its response is
/// dropped, read or not: the retry, sent on that connection, would read the
/// 401's body as its own status line.
async fn discard_body(mut response: Response) {
    let body = response.take_body().take(MAX_DISCARDED_BODY);
    let _ = futures_lite::io::copy(body, &mut futures_lite::io::sink()).await;
}

/// The status of the `surf::Error` a token failure is handed back as: surf
/// requires one. `500 Internal Server Error`, as http-types gives every error
/// raised on the client's side; never an answer from the API (see the
/// [module docs](self)). Recognise a token failure with [`token_failure`].
pub const TOKEN_FAILURE_STATUS: surf::StatusCode = surf::StatusCode::InternalServerError;

/// What a token failure's `surf::Error` says before the [`Error`]'s message.
const TOKEN_FAILURE_PREFIX: &str = "no token, so the request was not sent";

/// The token client's [`Error`] behind a failed call through a
/// [`TokenMiddleware`]: `Some` when the call failed because no token (or no
/// DPoP proof) could be had, and the request was not sent; `None` for every
/// other failure (a connection to the API, another middleware's error).
///
/// The `surf::Error` has the status [`TOKEN_FAILURE_STATUS`] (500), which is
/// not the API's: check for a token failure with this function, not with the
/// status. The [module docs](self) have an example.
pub fn token_failure(error: &surf::Error) -> Option<&Error> {
    error.downcast_ref::<Error>()
}

/// A token failure as a `surf::Error`: [`TOKEN_FAILURE_STATUS`], a `Display`
/// that says no token was had (the API was not asked), and the typed
/// [`Error`] inside, for [`token_failure`] and `downcast_ref::<Error>()`.
fn surf_error(error: Error) -> surf::Error {
    let message = format!("{TOKEN_FAILURE_PREFIX}: {error}");
    // http-types keeps an `anyhow::Error`, whose context is what `Display`
    // shows while the error under it stays reachable by downcasting.
    let inner = surf::Error::new(TOKEN_FAILURE_STATUS, error)
        .into_inner()
        .context(message);
    surf::Error::new(TOKEN_FAILURE_STATUS, inner)
}

#[surf::utils::async_trait]
impl Middleware for TokenMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        client: Client,
        next: Next<'_>,
    ) -> surf::Result<Response> {
        // A URL `http` cannot read is never one of ours: send it untouched.
        let Ok(uri) = request.url().as_str().parse::<Uri>() else {
            return next.run(request, client).await;
        };
        let has_authorization = request.header("Authorization").is_some();
        let host = request.header("Host").map(|h| h.last().as_str().as_bytes());
        let Some(key) = self.policy.key_for(&uri, has_authorization, host) else {
            return next.run(request, client).await;
        };
        let invalid = |what: &str| {
            surf::Error::from_str(
                surf::StatusCode::InternalServerError,
                format!("request {what} unusable"),
            )
        };
        let method: Method = request
            .method()
            .to_string()
            .parse()
            .map_err(|_| invalid("method"))?;
        let auth = self
            .client
            .authorize_request(key, &method, &uri)
            .await
            .map_err(surf_error)?;
        set_headers(&mut request, &auth)?;

        // Buffer the body (up to the limit) so the request can be replayed.
        let mut replay: Option<Request> = None;
        let limit = self.policy.max_replay_body();
        let declared = request.len().map(|n| n as u64);
        if self.policy.keep_for_replay(0, declared) {
            let body = request.take_body();
            let mime = body.mime().clone();
            let mut bytes = Vec::new();
            let mut reader = body.take(limit as u64 + 1);
            reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| surf::Error::new(surf::StatusCode::InternalServerError, e))?;
            let rest = reader.into_inner();
            let with_mime = |bytes: &[u8]| {
                let mut body = surf::Body::from_bytes(bytes.to_vec());
                body.set_mime(mime.clone());
                body
            };
            if self.policy.fits(bytes.len()) {
                // `Request::clone` drops the body: give the copy its own.
                let mut copy = request.clone();
                if !bytes.is_empty() {
                    copy.set_body(with_mime(&bytes));
                    request.set_body(with_mime(&bytes));
                }
                replay = Some(copy);
            } else {
                // Too large to keep: send what was read and the rest, once.
                let combined = futures_lite::io::Cursor::new(bytes).chain(rest);
                let mut body =
                    surf::Body::from_reader(futures_lite::io::BufReader::new(combined), None);
                body.set_mime(mime);
                request.set_body(body);
            }
        }

        let response = next.run(request, client.clone()).await?;
        let dpop = auth.dpop.is_some();
        let Some((status, outcome)) = self.report(key, &response, &auth, &uri, 0, dpop) else {
            return Ok(response);
        };
        let Some(mut retry) = replay.filter(|_| self.policy.must_retry(status, outcome, 0, true))
        else {
            return Ok(response);
        };
        discard_body(response).await;
        // `Next` is `Copy`: run the rest of the chain once more, with a new
        // token (after an invalidation) or a new proof (after a nonce).
        let auth = self
            .client
            .authorize_request(key, &method, &uri)
            .await
            .map_err(surf_error)?;
        set_headers(&mut retry, &auth)?;
        let response = next.run(retry, client).await?;
        self.report(key, &response, &auth, &uri, 1, dpop);
        Ok(response)
    }
}

impl TokenMiddleware {
    /// Reports `response` to the core if the policy says it must (every 401,
    /// every answer to a DPoP-bound request): its status and the core's verdict.
    fn report(
        &self,
        key: token_keeper::KeyId,
        response: &Response,
        auth: &Authorized,
        uri: &Uri,
        attempt: u32,
        dpop: bool,
    ) -> Option<(StatusCode, token_keeper::ResourceOutcome)> {
        let status = StatusCode::from_u16(u16::from(response.status())).ok()?;
        // surf hands back the answer of the URL it was given (a `Redirect`
        // middleware, if any, runs before this one and calls it per hop).
        if !self.policy.must_report(status, dpop, uri, uri) {
            return None;
        }
        let outcome = self.client.handle_resource_response(
            key,
            status,
            &to_http_headers(response),
            &auth.authorization,
            uri,
            attempt,
        );
        Some((status, outcome))
    }
}
