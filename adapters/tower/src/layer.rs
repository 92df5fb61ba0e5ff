//! [`TokenLayer`] and the [`TokenService`] it wraps around a tower service.
//!
//! The same rules as the other adapters' middlewares, every decision the
//! core's [`ApiCallPolicy`]'s:
//!
//! 1. Only requests to a configured origin (scheme, host, port) get a token,
//!    and none whose `Host` header names another origin. A request whose URI
//!    is a bare path (tonic's generated clients send `/package.Service/Method`
//!    to a channel, which adds its endpoint later) is taken to be for the
//!    origin given to [`TokenLayer::relative_to`], and untouched without it;
//!    with `relative_to` set, an absolute URI of any other origin gets no
//!    token (the channel would send it to its own endpoint). An
//!    authority-form URI (`CONNECT host:port`) never gets one.
//! 2. A request that already has an `Authorization` header is left alone.
//! 3. Otherwise the client's header is attached (cached, or fetched once for
//!    all tasks), with a fresh `DPoP` proof for this method and URI when the
//!    token is DPoP-bound.
//! 4. Every `401`, gRPC `UNAUTHENTICATED` (`grpc-status: 16`) and every
//!    answer to a DPoP-bound request goes to the core: the cached token is
//!    invalidated only if it is the one this request carried, and one retry
//!    is allowed, sent only if the body can be sent again (see
//!    [`ReplayBody`]). `UNAUTHENTICATED` in the trailers, after the answer
//!    was handed over, invalidates the token for the next request
//!    ([`WatchedBody`]).
//!
//! **Redirects.** hyper-util's client and tonic follow none: a `3xx` is
//! handed back. Do not put a redirect-following layer *under* this one (a
//! token or proof would follow the redirect); above it, each hop goes
//! through this layer again and gets a token only for a configured origin.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::uri::{Parts, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use token_keeper::api_call::{effective_status, may_end_with_status};
use token_keeper::{ApiCallPolicy, ConfigError, KeyId, ResourceOutcome};
use token_keeper_driver::{Async, Authorized, Client, Error};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{prepare, ReplayBody};
use crate::response::{Sent, WatchedBody};
use crate::{BoxError, NoToken};

/// A `tower::Layer` that attaches managed tokens to the requests of the
/// service it wraps. See the [module docs](self).
///
/// ```no_run
/// use token_keeper_tower::{ReqwestTokenClient, TokenLayer};
///
/// # fn run(tokens: ReqwestTokenClient) -> Result<(), Box<dyn std::error::Error>> {
/// let layer = TokenLayer::new(&tokens).route("https://api.example.com", "m2m")?;
/// // `tower::ServiceBuilder::new().layer(layer).service(hyper_util_client)`
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TokenLayer {
    /// Shared by every service and call: one reference count per call.
    shared: Arc<Shared>,
}

/// What a [`TokenLayer`] knows.
#[derive(Clone, Debug)]
struct Shared {
    client: Client<Async>,
    /// Routes, replay limit, what to report and retry: the core's rules.
    policy: ApiCallPolicy,
    /// The origin of requests whose URI has none.
    relative_to: Option<Uri>,
    /// Whether a body of unknown length may be read into memory for a replay.
    read_unsized: bool,
}

impl TokenLayer {
    /// A layer with no routes yet, taking its tokens from `client` (a
    /// [`ReqwestTokenClient`](crate::ReqwestTokenClient) or any async
    /// [`Client`]).
    pub fn new(client: &Client<Async>) -> TokenLayer {
        TokenLayer {
            shared: Arc::new(Shared {
                client: client.clone(),
                policy: ApiCallPolicy::new(),
                relative_to: None,
                read_unsized: false,
            }),
        }
    }

    /// Attaches the named client's tokens to requests for `origin`
    /// (`https://host[:port]`, or `http://` on a loopback host).
    pub fn route(mut self, origin: &str, client_name: &str) -> Result<TokenLayer, Error> {
        let shared = Arc::make_mut(&mut self.shared);
        let key = shared.client.key(client_name)?;
        shared.policy.routes_mut().add(origin, key)?;
        Ok(self)
    }

    /// Takes requests whose URI is a bare path (as tonic's generated clients
    /// send them to a `Channel`) to be for `origin`: they get its route's
    /// token, and a DPoP proof for `origin` + path. Give the channel's
    /// origin (the URI its `Endpoint` was made from, or `Endpoint::origin`
    /// if set); route it first ([`route`](Self::route)), or this is an
    /// error. Requests with an absolute URI of another origin then get no
    /// token. A channel balanced over several endpoints sends each proof
    /// for `origin`: an API that checks `htu` against its own address must
    /// be reached under that one origin.
    pub fn relative_to(mut self, origin: &str) -> Result<TokenLayer, Error> {
        let uri: Uri = origin
            .parse()
            .map_err(|_| Error::Config(ConfigError::new("relative_to: not a URI")))?;
        let bare_path = uri.path_and_query().is_none_or(|p| p.as_str() == "/");
        if uri.scheme().is_none() || uri.authority().is_none() || !bare_path {
            return Err(Error::Config(ConfigError::new(
                "relative_to: an origin (scheme://host[:port]) with no path",
            )));
        }
        // Routed (which also refuses user information): a relative_to that
        // could never get a token is a mistake to report now, not a silent
        // request without one.
        if self.shared.policy.key_for(&uri, false, None).is_none() {
            return Err(Error::Config(ConfigError::new(
                "relative_to: route this origin first (TokenLayer::route)",
            )));
        }
        Arc::make_mut(&mut self.shared).relative_to = Some(uri);
        Ok(self)
    }

    /// The largest request body kept so that a request can be retried after
    /// a 401 (default 64 KiB). Larger bodies are sent once and not retried.
    pub fn max_replay_body(mut self, bytes: usize) -> TokenLayer {
        Arc::make_mut(&mut self.shared)
            .policy
            .set_max_replay_body(bytes);
        self
    }

    /// Whether a request body of unknown length whose type
    /// [rebuilds](ReplayBody::REBUILDS) (a `tonic::body::Body`) is taken
    /// into memory before it is sent, so that it can be sent again (default
    /// `false`; a body whose length is known to fit is taken anyway). Only
    /// the frames ready at once are taken, up to the replay limit: a tonic
    /// unary call's message is, so it is kept; a streaming call's body
    /// still being produced is sent as a stream from its first pending
    /// frame, never held back, and not kept.
    pub fn replay_unsized_bodies(mut self, read: bool) -> TokenLayer {
        Arc::make_mut(&mut self.shared).read_unsized = read;
        self
    }
}

impl<S> Layer<S> for TokenLayer {
    type Service = TokenService<S>;

    fn layer(&self, inner: S) -> TokenService<S> {
        TokenService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`TokenLayer`] makes: `inner`, with tokens attached. See the
/// [module docs](self).
///
/// Its errors are the inner service's, boxed, and [`NoToken`] when no token
/// could be had (the request was not sent; [`token_failure`](crate::token_failure)
/// finds it).
#[derive(Clone, Debug)]
pub struct TokenService<S> {
    inner: S,
    layer: TokenLayer,
}

/// The future of a [`TokenService`] call.
pub type ResponseFuture<B> =
    Pin<Box<dyn Future<Output = Result<Response<WatchedBody<B>>, BoxError>> + Send + 'static>>;

impl<S, B, RB> Service<Request<B>> for TokenService<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    B::Error: Into<BoxError>,
    RB: Body + Send + 'static,
{
    type Response = Response<WatchedBody<RB>>;
    type Error = BoxError;
    type Future = ResponseFuture<RB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The service that was made ready goes with this call; a clone
        // stays for the next one (tower's usual hand-over).
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.layer.shared.clone();
        Box::pin(async move { shared.send(inner, request).await })
    }
}

impl Shared {
    /// The absolute URI of a request: its own, or [`relative_to`](Self::relative_to)'s
    /// origin with its path. `None` when it has no origin to take.
    fn absolute(&self, uri: &Uri) -> Option<Uri> {
        if uri.scheme().is_some() || uri.authority().is_some() {
            // Behind a tonic channel, the channel's endpoint replaces the
            // URI's origin: only that origin's requests get a token there.
            if let Some(base) = &self.relative_to {
                if uri.scheme() != base.scheme() || uri.authority() != base.authority() {
                    return None;
                }
            }
            // An authority without a scheme (`CONNECT host:port`) routes
            // nowhere: it has no origin to compare.
            return Some(uri.clone());
        }
        let base = self.relative_to.as_ref()?;
        let mut parts = Parts::default();
        parts.scheme = base.scheme().cloned();
        parts.authority = base.authority().cloned();
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).ok()
    }

    async fn send<S, B, RB>(
        &self,
        mut inner: S,
        request: Request<B>,
    ) -> Result<Response<WatchedBody<RB>>, BoxError>
    where
        S: Service<Request<B>, Response = Response<RB>> + Clone,
        S::Error: Into<BoxError>,
        B: ReplayBody,
        B::Error: Into<BoxError>,
    {
        let route = self.absolute(request.uri()).and_then(|uri| {
            let headers = request.headers();
            let has_authorization = headers.contains_key(AUTHORIZATION);
            let host = headers.get(http::header::HOST).map(|h| h.as_bytes());
            Some((self.policy.key_for(&uri, has_authorization, host)?, uri))
        });
        let Some((key, uri)) = route else {
            let response = inner.call(request).await.map_err(Into::into)?;
            return Ok(response.map(|b| WatchedBody::new(b, None)));
        };
        // The body first (never waiting for a frame), then the token and
        // proof: nothing between the proof's making and its sending.
        let (mut parts, body) = request.into_parts();
        let (body, replay) =
            prepare(body, self.policy.max_replay_body(), self.read_unsized).await?;
        let auth = self.authorize(key, &parts.method, &uri).await?;
        auth.apply_to(&mut parts.headers);
        let dpop = auth.dpop.is_some();
        // The head is kept with the body's replay so the request can be
        // rebuilt for a retry (the body is the only part that cannot simply
        // be cloned).
        let kept = replay.map(|replay| (parts.clone(), replay));
        let response = inner
            .call(Request::from_parts(parts, body))
            .await
            .map_err(Into::into)?;

        let (status, outcome) = self.report(key, &response, &auth, &uri, 0, dpop);
        let retry = kept
            .filter(|_| self.policy.must_retry(status, outcome, 0, true))
            .and_then(|(parts, replay)| Some((parts, replay.into_body()?)));
        let Some((mut parts, body)) = retry else {
            return Ok(self.watched(response, key, &auth, uri, 0));
        };
        // A new token (after an invalidation) or a new proof (after a
        // nonce). Without one, the caller gets the answer it would have had.
        let Ok(auth) = self.authorize(key, &parts.method, &uri).await else {
            return Ok(self.watched(response, key, &auth, uri, 0));
        };
        drop(response);
        auth.apply_to(&mut parts.headers);
        std::future::poll_fn(|cx| inner.poll_ready(cx))
            .await
            .map_err(Into::into)?;
        let response = inner
            .call(Request::from_parts(parts, body))
            .await
            .map_err(Into::into)?;
        self.report(key, &response, &auth, &uri, 1, dpop);
        Ok(self.watched(response, key, &auth, uri, 1))
    }

    async fn authorize(
        &self,
        key: KeyId,
        method: &http::Method,
        uri: &Uri,
    ) -> Result<Authorized, BoxError> {
        self.client
            .authorize_request(key, method, uri)
            .await
            .map_err(|e| Box::new(NoToken::new(e)) as BoxError)
    }

    /// Reports `response` to the core if the policy says it must (every
    /// 401 or `UNAUTHENTICATED`, every answer to a DPoP-bound request): the
    /// status the core was told and its verdict (`Deliver` when not told).
    fn report<RB>(
        &self,
        key: KeyId,
        response: &Response<RB>,
        auth: &Authorized,
        uri: &Uri,
        attempt: u32,
        dpop: bool,
    ) -> (StatusCode, ResourceOutcome) {
        let status = effective_status(response.status(), response.headers());
        // hyper-util's client and tonic follow no redirect: the answer is
        // from the origin the request was sent to.
        if !self.policy.must_report(status, dpop, uri, uri) {
            return (status, ResourceOutcome::Deliver);
        }
        let outcome = self.client.handle_resource_response(
            key,
            status,
            response.headers(),
            &auth.authorization,
            uri,
            attempt,
        );
        (status, outcome)
    }

    /// The response handed back, its body watched for `UNAUTHENTICATED` in
    /// the trailers.
    fn watched<RB>(
        &self,
        response: Response<RB>,
        key: KeyId,
        auth: &Authorized,
        uri: Uri,
        attempt: u32,
    ) -> Response<WatchedBody<RB>> {
        // Only gRPC answers end with a status in their trailers.
        if !may_end_with_status(response.headers()) {
            return response.map(|body| WatchedBody::new(body, None));
        }
        let sent = Box::new(Sent {
            client: self.client.clone(),
            key,
            authorization: auth.authorization.clone(),
            uri,
            attempt,
        });
        response.map(|body| WatchedBody::new(body, Some(sent)))
    }
}
