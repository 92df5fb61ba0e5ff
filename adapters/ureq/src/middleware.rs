//! [`TokenMiddleware`]: attaches tokens to a ureq agent's requests.
//!
//! Rules, in order, for every request the agent sends:
//!
//! 1. Only requests to a configured origin (scheme, host, port) get a token;
//!    an origin must be `https`, or `http` on a loopback host.
//! 2. A request that already has an `Authorization` header is left alone.
//! 3. Otherwise the client's header is attached (cached, or fetched once for
//!    all threads).
//! 4. On a 401 the core decides: the cached token is invalidated only if it
//!    is the one this request carried, and one retry is allowed. The retry is
//!    sent only when the request can be replayed: no body, or a body buffered
//!    under the replay limit (default 64 KiB). Otherwise the 401 is handed back.
//!
//! ureq's `MiddlewareNext` can be used once, so the retry re-enters through a
//! second agent built from the same configuration: build agents with
//! [`TokenMiddleware::build_agent`] to get retries. `build_agent` also turns
//! ureq's `http_status_as_error` off underneath (the middleware needs the
//! headers of a 401) and turns 4xx/5xx into `Error::StatusCode` itself when
//! your configuration asked for it. A middleware added by hand
//! with `ConfigBuilder::middleware` attaches tokens and invalidates on 401, but
//! hands the 401 back instead of retrying.
//!
//! For DPoP-bound tokens each request also gets a fresh `DPoP` proof for its
//! method and URL, every response's `DPoP-Nonce` is remembered for its origin,
//! and a `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"` is retried
//! once with a proof carrying the new nonce.
//!
//! **Redirects.** A request that carries a token (and a proof) follows no
//! redirect, whatever the agent's policy: ureq follows redirects inside the
//! chain, after this middleware, drops `Authorization` on every hop but would
//! carry `DPoP` to any host, and would charge the final server's 401 or
//! `DPoP-Nonce` to the first origin. The 3xx is handed back to you; send the
//! request to its `Location` through the same agent, and it gets a token only
//! if that origin is configured. Requests without a token keep the agent's
//! redirect policy. A `401` or `DPoP-Nonce` is charged to the origin that
//! actually answered (ureq's final URI).
//!
//! **Proxies.** Agents built with [`TokenMiddleware::build_agent`] apply the
//! token client's proxy decision ([`ClientOptions::proxy`](crate::ClientOptions::proxy),
//! by default the environment read with curl's rules) to every request they
//! send, in place of ureq's own reading of the environment (which tunnels
//! loopback destinations too). A proxy you set yourself on the configuration
//! (`ConfigBuilder::proxy`) is yours and is kept, except that a request
//! carrying a token to a loopback host never goes through any proxy. On an
//! agent you configure by hand (`ConfigBuilder::middleware`), every request
//! that carries a token gets the core's decision (ureq's default would read
//! the environment its own way, the CGI-settable `HTTP_PROXY` included); its
//! other requests keep the agent's settings. ureq decides the proxy once per
//! request, so a token-free request that is redirected keeps the first hop's
//! proxy decision for the next hops (requests with a token follow no redirect).
//!
//! **Token failures.** When no token can be had, the request is not sent and
//! the call fails with the token client's [`Error`] inside
//! `ureq::Error::Other` (which ureq prints as `other: …`). [`token_failure`]
//! gives it back, typed, from the `ureq::Error`: `None` means the failure is
//! ureq's own (the API's answer, with `http_status_as_error`, is
//! `ureq::Error::StatusCode`). Classify it with the [`Error`] predicates
//! ([`is_oauth`](Error::is_oauth), [`oauth_code`](Error::oauth_code),
//! [`is_unavailable`](Error::is_unavailable) …):
//!
//! ```no_run
//! use token_keeper_ureq::{token_failure, TokenClient, TokenMiddleware};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let tokens = TokenClient::new();
//! let agent = TokenMiddleware::new(tokens)
//!     .route("https://api.example.com", "m2m")?
//!     .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
//! match agent.get("https://api.example.com/orders").call() {
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

use std::io::{Cursor, Read};
use std::sync::Arc;

use http::header::{HeaderName, AUTHORIZATION, CONTENT_LENGTH};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use token_keeper::api_call::{may_carry_body, REDIRECTS_WITH_TOKEN};
use token_keeper::ApiCallPolicy;
use ureq::config::ConfigBuilder;
use ureq::middleware::{Middleware, MiddlewareNext};
use ureq::typestate::AgentScope;
use ureq::{Body, RequestExt, ResponseExt, SendBody};

use token_keeper::proxy::is_loopback_host;
use token_keeper::{ProxyDecision, TransportError, TransportErrorKind};

use crate::client::TokenClient;
use crate::error::Error;

/// The token client's [`Error`] behind a failed call through a
/// [`TokenMiddleware`]: `Some` when the call failed because no token (or no
/// DPoP proof) could be had, and the request was not sent; `None` for every
/// failure of ureq's own (a connection to the API, a status as error …).
///
/// The middleware hands its errors to ureq as `ureq::Error::Other`; this is
/// the documented way back to the typed error. The [module docs](self) have
/// an example.
pub fn token_failure(error: &ureq::Error) -> Option<&Error> {
    match error {
        ureq::Error::Other(inner) => inner.downcast_ref::<Error>(),
        _ => None,
    }
}

/// The `DPoP` request header.
const DPOP: HeaderName = HeaderName::from_static("dpop");

/// Marks the replayed request, so the second pass knows it is the retry.
#[derive(Clone, Copy, Debug)]
struct Retried;

/// A ureq middleware that attaches managed tokens. See the [module docs](self).
///
/// ```no_run
/// use token_keeper_ureq::{TokenClient, TokenMiddleware};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let tokens = TokenClient::new();
/// let agent = TokenMiddleware::new(tokens)
///     .route("https://api.example.com", "m2m")?
///     .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
/// let response = agent.get("https://api.example.com/orders").call()?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TokenMiddleware {
    client: TokenClient,
    /// Routes, replay limit, what to report and retry: the core's rules.
    policy: Arc<ApiCallPolicy>,
    retry_agent: Option<ureq::Agent>,
    /// Whether a routed client binds its tokens with DPoP (then no redirects).
    dpop: bool,
    /// Whether to turn 4xx/5xx into `Error::StatusCode`, as the agent's own
    /// setting asked: [`TokenMiddleware::build_agent`] turns ureq's off so that
    /// this middleware sees the headers of a 401 (`WWW-Authenticate`, `DPoP-Nonce`).
    status_as_error: bool,
    /// Whether to apply the client's proxy decision to every request: set by
    /// [`TokenMiddleware::build_agent`] when the configuration's proxy came
    /// from the environment (ureq's default) or was none.
    apply_proxy: bool,
    /// Whether the agent's configuration names a proxy the user set
    /// explicitly (kept for tokens, except to loopback hosts).
    user_proxy: bool,
}

impl std::fmt::Debug for TokenMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenMiddleware")
            .field("policy", &self.policy)
            .field("retries", &self.retry_agent.is_some())
            .finish()
    }
}

impl TokenMiddleware {
    /// A middleware with no routes yet.
    pub fn new(client: TokenClient) -> TokenMiddleware {
        TokenMiddleware {
            client,
            policy: Arc::new(ApiCallPolicy::new()),
            retry_agent: None,
            dpop: false,
            status_as_error: false,
            apply_proxy: false,
            user_proxy: false,
        }
    }

    /// Attaches the named client's tokens to requests for `origin`
    /// (`https://host[:port]`, or `http://` on a loopback host).
    pub fn route(mut self, origin: &str, client_name: &str) -> Result<TokenMiddleware, Error> {
        let key = self.client.key(client_name)?;
        self.dpop |= self.client.uses_dpop(client_name)?;
        Arc::make_mut(&mut self.policy)
            .routes_mut()
            .add(origin, key)?;
        Ok(self)
    }

    /// The largest request body buffered so that a request can be retried
    /// after a 401 (default 64 KiB). Larger bodies are streamed and not retried.
    pub fn max_replay_body(mut self, bytes: usize) -> TokenMiddleware {
        Arc::make_mut(&mut self.policy).set_max_replay_body(bytes);
        self
    }

    /// Builds an agent with this middleware, and a second agent from the same
    /// configuration for the one retry after a 401. `make_config` is called twice.
    ///
    /// Requests that carry a token follow no redirects (see the [module
    /// docs](self)). When a routed client uses DPoP, the agents follow none at
    /// all. Unless the configuration names a proxy of its own, the agents
    /// apply the token client's proxy decision to every request (a loopback
    /// destination is never proxied).
    pub fn build_agent(self, make_config: impl Fn() -> ConfigBuilder<AgentScope>) -> ureq::Agent {
        let user = make_config().build();
        let status_as_error = user.http_status_as_error();
        // ureq's default configuration reads the environment its own way
        // (ALL_PROXY first, loopback tunnelled too): replace that with the
        // core's decision; a proxy set explicitly is the user's.
        let apply_proxy = user.proxy().is_none_or(|p| p.is_from_env());
        // With no proxy at all the decision applies too (it may say "none").
        let config = || {
            let mut config = make_config().http_status_as_error(false);
            if apply_proxy {
                config = config.proxy(None);
            }
            if self.dpop {
                config.max_redirects(REDIRECTS_WITH_TOKEN)
            } else {
                config
            }
        };
        let for_retries = TokenMiddleware {
            retry_agent: None,
            status_as_error,
            apply_proxy,
            user_proxy: !apply_proxy,
            ..self.clone()
        };
        let retry_agent = config().middleware(for_retries).build().new_agent();
        let first = TokenMiddleware {
            retry_agent: Some(retry_agent),
            status_as_error,
            apply_proxy,
            user_proxy: !apply_proxy,
            ..self.clone()
        };
        config().middleware(first).build().new_agent()
    }
}

/// The parts of a request needed to send it again.
struct Replay {
    method: Method,
    uri: Uri,
    version: http::Version,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Middleware for TokenMiddleware {
    fn handle(
        &self,
        request: Request<SendBody>,
        next: MiddlewareNext,
    ) -> Result<Response<Body>, ureq::Error> {
        let response = self.exchange(request, next)?;
        let status = response.status();
        if self.status_as_error && (status.is_client_error() || status.is_server_error()) {
            return Err(ureq::Error::StatusCode(status.as_u16()));
        }
        Ok(response)
    }
}

impl TokenMiddleware {
    /// The request with tokens attached, and the one retry the core allows.
    fn exchange(
        &self,
        request: Request<SendBody>,
        next: MiddlewareNext,
    ) -> Result<Response<Body>, ureq::Error> {
        let has_authorization = request.headers().contains_key(AUTHORIZATION);
        let host = request
            .headers()
            .get(http::header::HOST)
            .map(|h| h.as_bytes());
        let Some(key) = self.policy.key_for(request.uri(), has_authorization, host) else {
            return next.handle(self.configure(request, false)?);
        };
        let attempt = u32::from(request.extensions().get::<Retried>().is_some());
        let auth = self
            .client
            .authorize_request(key, request.method(), request.uri())
            .map_err(|e| ureq::Error::Other(Box::new(e)))?;
        let request = self.configure(request, true)?;
        let (mut parts, body) = request.into_parts();
        auth.apply_to(&mut parts.headers);
        let uri = parts.uri.clone();

        let retry_agent = self.retry_agent.as_ref().filter(|_| attempt == 0);
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let buffer = retry_agent.is_some() && self.policy.keep_for_replay(attempt, declared);
        let limit = self.policy.max_replay_body();

        let mut replay = None;
        let result = if !buffer {
            next.handle(Request::from_parts(parts, body))
        } else {
            let mut reader = body.into_reader();
            let mut bytes = Vec::new();
            (&mut reader)
                .take(limit as u64 + 1)
                .read_to_end(&mut bytes)
                .map_err(ureq::Error::Io)?;
            if !self.policy.fits(bytes.len()) {
                // Too large to keep: send what was read, then the rest, once.
                let mut stream = Cursor::new(bytes).chain(reader);
                next.handle(Request::from_parts(
                    parts,
                    SendBody::from_reader(&mut stream),
                ))
            } else {
                let send = if bytes.is_empty() && !may_carry_body(&parts.method) {
                    SendBody::none()
                } else {
                    parts
                        .headers
                        .insert(CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
                    SendBody::from_owned_reader(Cursor::new(bytes.clone()))
                };
                replay = Some(Replay {
                    method: parts.method.clone(),
                    uri: parts.uri.clone(),
                    version: parts.version,
                    headers: parts.headers.clone(),
                    body: bytes,
                });
                next.handle(Request::from_parts(parts, send))
            }
        };

        // Bearer: only a 401 matters. DPoP: every response may carry the
        // origin's next nonce. With http_status_as_error(true), a 401 arrives
        // as an error without headers.
        let dpop = auth.dpop.is_some();
        // Charged to the origin that answered (no redirect is followed with a
        // token, so it is the one asked; the final URI says so either way).
        // An answer ureq turned into an error keeps none of its headers.
        let no_headers = HeaderMap::new();
        let answer = match &result {
            Ok(response) => Some((response.status(), response.headers(), response.get_uri())),
            Err(ureq::Error::StatusCode(401)) => {
                Some((StatusCode::UNAUTHORIZED, &no_headers, &uri))
            }
            _ => None,
        };
        let Some((status, headers, answered)) = answer
            .filter(|(status, _, answered)| self.policy.must_report(*status, dpop, &uri, answered))
            .map(|(status, headers, answered)| (status, headers.clone(), answered.clone()))
        else {
            return result;
        };
        let outcome = self.client.handle_resource_response(
            key,
            status,
            &headers,
            &auth.authorization,
            &answered,
            attempt,
        );
        let retry = self
            .policy
            .must_retry(status, outcome, attempt, replay.is_some());
        match (retry, retry_agent, replay) {
            (true, Some(agent), Some(replay)) => {
                drop(result);
                let mut builder = Request::builder()
                    .method(replay.method.clone())
                    .uri(replay.uri)
                    .version(replay.version)
                    .extension(Retried);
                // The second pass attaches a new token (or a proof with the new nonce).
                let mut headers = replay.headers;
                headers.remove(AUTHORIZATION);
                headers.remove(DPOP);
                if let Some(h) = builder.headers_mut() {
                    *h = headers;
                }
                if replay.body.is_empty() && !may_carry_body(&replay.method) {
                    agent.run(builder.body(()).map_err(ureq::Error::Http)?)
                } else {
                    agent.run(builder.body(replay.body).map_err(ureq::Error::Http)?)
                }
            }
            _ => result,
        }
    }
}

impl TokenMiddleware {
    /// `request` with its per-request settings: the client's proxy decision
    /// (on agents from [`TokenMiddleware::build_agent`]), no proxy for a
    /// token going to a loopback host, and no redirects for a request that
    /// carries a token.
    fn configure<'a>(
        &self,
        request: Request<SendBody<'a>>,
        carries_token: bool,
    ) -> Result<Request<SendBody<'a>>, ureq::Error> {
        // `Some(p)`: set the request's proxy to `p`; `None`: leave it.
        let proxy = if carries_token && self.user_proxy {
            // The proxy the user set on the agent is theirs, except that a
            // token never goes through a proxy to a loopback host.
            request
                .uri()
                .host()
                .is_some_and(is_loopback_host)
                .then_some(None)
        } else if carries_token || self.apply_proxy {
            // The core's decision, set on the request itself: it replaces
            // ureq's own reading of the environment (a hand-added middleware's
            // agent has it) and any per-request proxy, for a token; an agent
            // from build_agent has no proxy of its own, so `Direct` needs
            // setting only for a token.
            match self.client.proxy().decide(request.uri()) {
                ProxyDecision::Direct => carries_token.then_some(None),
                ProxyDecision::Tunnel(via) => Some(Some(crate::transport::ureq_proxy(via)?)),
                ProxyDecision::Unsupported(reason) => {
                    let error = TransportError::new(TransportErrorKind::Connect, reason.to_owned());
                    return Err(api_request_error(error));
                }
            }
        } else {
            None
        };
        if proxy.is_none() && !carries_token {
            return Ok(request);
        }
        let Some(mut config) = request.middleware_config() else {
            // Only a request outside a ureq agent has no agent to configure.
            let error = TransportError::new(
                TransportErrorKind::Other,
                "the request is not being sent by a ureq agent",
            );
            return Err(api_request_error(error));
        };
        if let Some(proxy) = proxy {
            config = config.proxy(proxy);
        }
        if carries_token {
            config = config.max_redirects(REDIRECTS_WITH_TOKEN);
        }
        Ok(config.build())
    }
}

/// A failure of the API request itself (its proxy cannot be used, it is not
/// sent by an agent), not of its token: an I/O error, so that
/// [`token_failure`] does not report it as a token failure.
fn api_request_error(error: TransportError) -> ureq::Error {
    ureq::Error::Io(std::io::Error::other(error.message().to_owned()))
}
