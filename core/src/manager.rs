//! The state machine: [`TokenManager`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};

use crate::challenge::parse_www_authenticate;
use crate::config::{ClientAuth, ClientConfig, ManagerConfig};
use crate::dpop::{self, NonceStore};
use crate::error::{
    ConfigError, InvalidResponse, ResponseProblem, TokenError, TransportError, UnknownRequest,
};
use crate::event::{Event, InvalidationReason, RequestReason};
use crate::jose::SignError;
use crate::key::{KeyDescriptor, KeyId, KeyOverrides};
use crate::lifecycle::{backoff_delay, schedule, Jitter, Schedule};
use crate::request::{basic_credentials, build_token_request, Attempt, RequestId, TokenRequest};
use crate::response::{parse_token_response, AccessToken, TokenResponse, TokenType};
use crate::retry_after::retry_after_from_headers;
use crate::snapshot::Snapshot;
use crate::time::{Instant, Now};

/// A named client registered with [`TokenManager::add_client`]. Cheap to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientHandle(u32);

/// Where a cached token stands in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenState {
    /// Before its refresh point: attached, no refresh needed.
    Fresh,
    /// Past its refresh point but still usable: attached while one refresh runs.
    Stale,
}

/// What to do about an outgoing API call, from [`TokenManager::authorize`].
#[derive(Debug)]
pub enum Authorization<'a> {
    /// Attach this header. When the token is [`TokenState::Stale`], a refresh
    /// has been queued (or is already in flight): the caller need not wait for it.
    Attach(Attach<'a>),
    /// No valid token: a token request was queued just now for this caller.
    /// Send it (see [`TokenManager::poll_request`]), then wait for its outcome.
    Fetch(RequestId),
    /// No valid token, and a request for this key is already in flight: wait
    /// until its outcome is handed to the core, then ask again.
    Wait(RequestId),
    /// No valid token, and the key is backing off after a failure: fail the
    /// call now with the last error rather than hammering the token endpoint.
    Unavailable {
        /// The failure that started the backoff.
        error: &'a TokenError,
        /// When a new token request may be made.
        retry_at: Instant,
    },
}

/// A header to attach, with what identifies the token behind it.
#[derive(Debug)]
pub struct Attach<'a> {
    header: &'a HeaderValue,
    generation: u64,
    state: TokenState,
    proof: Option<Result<HeaderValue, SignError>>,
}

impl<'a> Attach<'a> {
    /// The `Authorization` header value (`Bearer …`), marked sensitive.
    pub fn header(&self) -> &'a HeaderValue {
        self.header
    }

    /// Identifies the token; changes whenever a new one is cached.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Fresh or Stale.
    pub fn state(&self) -> TokenState {
        self.state
    }

    /// The `DPoP` header to send with the request, for a DPoP-bound token
    /// asked for with [`TokenManager::authorize_request`]; `Ok(None)` for a
    /// Bearer token. An error means the proof could not be signed: do not send
    /// the request (a DPoP-bound token is never downgraded to Bearer).
    pub fn dpop_proof(&self) -> Result<Option<&HeaderValue>, &SignError> {
        match &self.proof {
            None => Ok(None),
            Some(Ok(proof)) => Ok(Some(proof)),
            Some(Err(error)) => Err(error),
        }
    }

    /// Whether the token is DPoP-bound (and so needs a proof on every request).
    pub fn is_dpop(&self) -> bool {
        self.header.as_bytes().starts_with(b"DPoP ")
    }
}

/// The outcome of [`TokenManager::force_refresh`].
#[derive(Debug, PartialEq, Eq)]
pub enum ForcedRefresh {
    /// A token request was queued.
    Started(RequestId),
    /// A request for this key was already in flight; its result is the refresh.
    InFlight(RequestId),
    /// The key is backing off; no request before `retry_at`.
    BackingOff {
        /// End of the backoff.
        retry_at: Instant,
    },
}

/// Why [`TokenManager::poll_timeout`] wants to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutReason {
    /// A token request has been in flight for [`ManagerConfig::request_timeout`].
    RequestDeadline,
    /// A backoff ends.
    BackoffEnds,
    /// A cached token reaches its refresh point (proactive refresh).
    RefreshDue,
    /// A cached token reaches the end of its usable life.
    TokenExpires,
}

/// A response from a protected resource, as the adapter saw it.
#[derive(Debug)]
pub struct ResourceResponse<'a> {
    /// The response status.
    pub status: StatusCode,
    /// The response headers (`WWW-Authenticate`, and later `DPoP-Nonce`).
    pub headers: &'a HeaderMap,
    /// The `Authorization` header the request carried, if the adapter attached one.
    pub sent_authorization: Option<&'a HeaderValue>,
    /// The request's URI: its origin's `DPoP-Nonce` is remembered from the response.
    pub uri: Option<&'a Uri>,
    /// 0 for the first attempt, 1 for the retry.
    pub attempt: u32,
}

/// What to do with a protected resource's response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceOutcome {
    /// Hand the response to the caller.
    Deliver,
    /// Send the request once more, with a token from [`TokenManager::authorize`]
    /// (only if the request can be replayed; otherwise deliver).
    Retry,
}

/// A view of a cached token, from [`TokenManager::token`].
#[derive(Debug)]
pub struct TokenView<'a> {
    token: &'a CachedToken,
    remaining: Duration,
}

impl TokenView<'_> {
    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.token.access_token
    }

    /// The token type.
    pub fn token_type(&self) -> TokenType {
        self.token.token_type
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> &HeaderValue {
        &self.token.header
    }

    /// How long it may still be attached.
    pub fn remaining(&self) -> Duration {
        self.remaining
    }

    /// The lifetime it was issued with (after defaulting and clamping).
    pub fn lifetime(&self) -> Duration {
        self.token.schedule.lifetime
    }

    /// The scope the server granted, when it said.
    pub fn scope(&self) -> Option<&str> {
        self.token.scope.as_deref()
    }
}

struct Client {
    name: String,
    config: ClientConfig,
    default_key: KeyId,
    /// Strings that must never appear in an error excerpt.
    sensitive: Vec<String>,
}

impl std::fmt::Debug for Client {
    // `sensitive` holds the secret in several encodings: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("default_key", &self.default_key)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct CachedToken {
    access_token: AccessToken,
    header: HeaderValue,
    token_type: TokenType,
    scope: Option<String>,
    schedule: Schedule,
    generation: u64,
}

#[derive(Debug)]
struct Flight {
    id: RequestId,
    requested_at: Instant,
    deadline: Instant,
    /// Whether this flight already retried after `use_dpop_nonce` (at most once).
    nonce_retried: bool,
}

#[derive(Debug)]
struct Backoff {
    until: Instant,
    error: TokenError,
}

#[derive(Debug)]
struct Slot {
    descriptor: KeyDescriptor,
    token: Option<CachedToken>,
    flight: Option<Flight>,
    backoff: Option<Backoff>,
    failures: u32,
    snapshot: Option<Arc<Snapshot>>,
    publish_pending: bool,
}

/// The sans-IO token lifecycle engine. See the [crate docs](crate) for the run loop.
#[derive(Debug)]
pub struct TokenManager {
    config: ManagerConfig,
    clients: Vec<Client>,
    keys: HashMap<KeyDescriptor, KeyId>,
    slots: Vec<Slot>,
    in_flight: HashMap<RequestId, KeyId>,
    requests: VecDeque<TokenRequest>,
    events: VecDeque<Event>,
    published: VecDeque<KeyId>,
    next_request: u64,
    next_generation: u64,
    jitter: Jitter,
    latest: Instant,
    nonces: NonceStore,
}

impl TokenManager {
    /// A manager with no clients. `seed` feeds the jitter that spreads
    /// refreshes and retries; adapters pass a random value, tests a fixed one.
    pub fn new(config: ManagerConfig, seed: u64) -> TokenManager {
        TokenManager {
            config,
            clients: Vec::new(),
            keys: HashMap::new(),
            slots: Vec::new(),
            in_flight: HashMap::new(),
            requests: VecDeque::new(),
            events: VecDeque::new(),
            published: VecDeque::new(),
            next_request: 0,
            next_generation: 0,
            jitter: Jitter::new(seed),
            latest: Instant::ZERO,
            nonces: NonceStore::default(),
        }
    }

    /// The manager-wide limits.
    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    /// Registers a named client; its configured request becomes its default key.
    pub fn add_client(
        &mut self,
        name: impl Into<String>,
        config: ClientConfig,
    ) -> Result<ClientHandle, ConfigError> {
        let name = name.into();
        if self.clients.iter().any(|c| c.name == name) {
            return Err(ConfigError::new(
                "a client with this name is already registered",
            ));
        }
        let index =
            u32::try_from(self.clients.len()).map_err(|_| ConfigError::new("too many clients"))?;
        let default_key = self.intern(descriptor(index, &config, &KeyOverrides::new()))?;
        let sensitive = sensitive_strings(&config);
        self.clients.push(Client {
            name,
            config,
            default_key,
            sensitive,
        });
        Ok(ClientHandle(index))
    }

    /// The client registered under `name`.
    pub fn client(&self, name: &str) -> Option<ClientHandle> {
        self.clients
            .iter()
            .position(|c| c.name == name)
            .map(|i| ClientHandle(i as u32))
    }

    /// A client's configuration.
    pub fn client_config(&self, client: ClientHandle) -> &ClientConfig {
        &self.clients[client.0 as usize].config
    }

    /// The key of a client's configured request.
    pub fn default_key(&self, client: ClientHandle) -> KeyId {
        self.clients[client.0 as usize].default_key
    }

    /// The key of a client's request changed by per-call `overrides`. Equal
    /// requests get equal keys, so they share one token.
    pub fn key(
        &mut self,
        client: ClientHandle,
        overrides: &KeyOverrides,
    ) -> Result<KeyId, ConfigError> {
        let descriptor = descriptor(client.0, &self.clients[client.0 as usize].config, overrides);
        self.intern(descriptor)
    }

    fn intern(&mut self, descriptor: KeyDescriptor) -> Result<KeyId, ConfigError> {
        if let Some(&key) = self.keys.get(&descriptor) {
            return Ok(key);
        }
        if self.slots.len() >= self.config.max_keys {
            return Err(ConfigError::new(
                "too many distinct cache keys (see ManagerConfig::max_keys)",
            ));
        }
        let key = KeyId(self.slots.len() as u32);
        self.keys.insert(descriptor.clone(), key);
        self.slots.push(Slot {
            descriptor,
            token: None,
            flight: None,
            backoff: None,
            failures: 0,
            snapshot: None,
            publish_pending: false,
        });
        Ok(key)
    }

    /// The number of keys interned so far; [`KeyId::index`] is below it.
    pub fn key_count(&self) -> usize {
        self.slots.len()
    }

    /// Moves the core's clock. Time that goes backwards is ignored, so a
    /// token is never used beyond the lifetime it was issued with.
    fn advance(&mut self, now: Now) -> Instant {
        self.latest = self.latest.max(now.monotonic());
        self.latest
    }

    /// Decides what an outgoing API call for `key` should do at `now`.
    ///
    /// This is the hit path: with a Fresh Bearer token cached it only compares
    /// instants and returns a reference, with no allocation. For a DPoP-bound
    /// token use [`TokenManager::authorize_request`], which also signs the proof.
    pub fn authorize(&mut self, key: KeyId, now: Now) -> Authorization<'_> {
        self.decide(key, None, now)
    }

    /// [`TokenManager::authorize`] for a request about to be sent with
    /// `method` to `uri`: when the token is DPoP-bound, the [`Attach`] also
    /// carries a fresh proof for that request (with `ath` and the origin's
    /// latest nonce).
    pub fn authorize_request(
        &mut self,
        key: KeyId,
        method: &Method,
        uri: &Uri,
        now: Now,
    ) -> Authorization<'_> {
        self.decide(key, Some((method, uri)), now)
    }

    fn decide(
        &mut self,
        key: KeyId,
        request: Option<(&Method, &Uri)>,
        now: Now,
    ) -> Authorization<'_> {
        let t = self.advance(now);
        let slot = &self.slots[key.index()];
        let usable = slot
            .token
            .as_ref()
            .is_some_and(|tok| t < tok.schedule.attach_until);
        if usable {
            let refresh_due = slot
                .token
                .as_ref()
                .is_some_and(|tok| t >= tok.schedule.refresh_at)
                && slot.flight.is_none()
                && slot.backoff.as_ref().is_none_or(|b| t >= b.until);
            if refresh_due {
                self.start_request(key, RequestReason::RefreshAhead, now);
            }
            let proof = match request {
                Some((method, uri)) => self.resource_proof(key, method, uri, now),
                None => None,
            };
            let slot = &self.slots[key.index()];
            let token = slot.token.as_ref().expect("checked above");
            let state = if t < token.schedule.refresh_at {
                TokenState::Fresh
            } else {
                TokenState::Stale
            };
            return Authorization::Attach(Attach {
                header: &token.header,
                generation: token.generation,
                state,
                proof,
            });
        }
        let expired = slot.token.is_some();
        if expired {
            self.expire(key);
        }
        let slot = &self.slots[key.index()];
        if let Some(flight) = &slot.flight {
            return Authorization::Wait(flight.id);
        }
        if slot.backoff.as_ref().is_none_or(|b| t >= b.until) {
            let reason = if expired {
                RequestReason::Expired
            } else {
                RequestReason::Missing
            };
            if let Some(id) = self.start_request(key, reason, now) {
                return Authorization::Fetch(id);
            }
        }
        // Backing off (or the request could not even be signed, which backs off too).
        let backoff = self.slots[key.index()]
            .backoff
            .as_ref()
            .expect("a failure always backs off");
        Authorization::Unavailable {
            error: &backoff.error,
            retry_at: backoff.until,
        }
    }

    /// A DPoP proof for an API request with the cached DPoP-bound token of
    /// `key`; `None` when the token is a Bearer token.
    fn resource_proof(
        &mut self,
        key: KeyId,
        method: &Method,
        uri: &Uri,
        now: Now,
    ) -> Option<Result<HeaderValue, SignError>> {
        let slot = &self.slots[key.index()];
        let token = slot.token.as_ref()?;
        if token.token_type != TokenType::DPoP {
            return None;
        }
        let jti = next_jti(&mut self.jitter);
        let Some(signer) = self.clients[slot.descriptor.client as usize]
            .config
            .dpop
            .as_ref()
        else {
            return Some(Err(SignError("a DPoP-bound token but no DPoP key".into())));
        };
        let nonce = dpop::origin_of(uri).and_then(|origin| self.nonces.get(&origin, self.latest));
        Some(dpop::proof(
            signer.as_ref(),
            method,
            uri,
            now.wall(),
            &jti,
            nonce,
            Some(token.access_token.expose_secret()),
        ))
    }

    /// Starts a token request for `key` now, even if a Fresh token is cached,
    /// unless one is in flight already or the key is backing off.
    pub fn force_refresh(&mut self, key: KeyId, now: Now) -> ForcedRefresh {
        let t = self.advance(now);
        let slot = &self.slots[key.index()];
        if let Some(flight) = &slot.flight {
            return ForcedRefresh::InFlight(flight.id);
        }
        if let Some(backoff) = slot.backoff.as_ref().filter(|b| t < b.until) {
            return ForcedRefresh::BackingOff {
                retry_at: backoff.until,
            };
        }
        match self.start_request(key, RequestReason::Forced, now) {
            Some(id) => ForcedRefresh::Started(id),
            None => ForcedRefresh::BackingOff {
                retry_at: self.slots[key.index()]
                    .backoff
                    .as_ref()
                    .map_or(t, |b| b.until),
            },
        }
    }

    /// Drops the cached token for `key`; the next call fetches a new one.
    pub fn invalidate(&mut self, key: KeyId, now: Now) {
        self.advance(now);
        if self.slots[key.index()].token.take().is_some() {
            self.events.push_back(Event::TokenInvalidated {
                key,
                reason: InvalidationReason::Manual,
            });
            self.mark_changed(key);
        }
    }

    /// The token request in flight for `key`, if any.
    pub fn in_flight(&self, key: KeyId) -> Option<RequestId> {
        self.slots[key.index()].flight.as_ref().map(|f| f.id)
    }

    /// The next token request to send, if any.
    pub fn poll_request(&mut self) -> Option<TokenRequest> {
        self.requests.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next key whose [`Snapshot`] changed, with the new snapshot (`None`:
    /// nothing may be attached without asking the core). Adapters store it
    /// where their lock-free readers find it.
    pub fn poll_snapshot(&mut self) -> Option<(KeyId, Option<Arc<Snapshot>>)> {
        let key = self.published.pop_front()?;
        let slot = &mut self.slots[key.index()];
        slot.publish_pending = false;
        Some((key, slot.snapshot.clone()))
    }

    /// The current snapshot of `key`.
    pub fn snapshot(&self, key: KeyId) -> Option<Arc<Snapshot>> {
        self.slots[key.index()].snapshot.clone()
    }

    /// The cached token of `key`, if it may still be attached at `now`.
    pub fn token(&self, key: KeyId, now: Now) -> Option<TokenView<'_>> {
        let t = self.latest.max(now.monotonic());
        let token = self.slots[key.index()].token.as_ref()?;
        (t < token.schedule.attach_until).then(|| TokenView {
            token,
            remaining: token.schedule.attach_until.saturating_duration_since(t),
        })
    }

    /// Hands the core the response to token request `id`.
    ///
    /// The body should be read up to [`ManagerConfig::max_response_body`]
    /// plus one byte: a longer body is refused here as too large.
    pub fn handle_response<B: AsRef<[u8]>>(
        &mut self,
        id: RequestId,
        response: http::Response<B>,
        now: Now,
    ) -> Result<(), UnknownRequest> {
        let t = self.advance(now);
        let (key, flight) = self.finish_flight(id)?;
        let client = &self.clients[self.slots[key.index()].descriptor.client as usize];
        let has_dpop = client.config.dpop.is_some();
        // Any answer from the token endpoint may carry its next nonce.
        let nonce_stored = has_dpop
            && self.nonces.update_from(
                &client.config.token_endpoint,
                response.headers(),
                t,
                self.config.dpop_nonce_lifetime,
            );
        let sensitive: Vec<&str> = client.sensitive.iter().map(String::as_str).collect();
        let parsed = parse_token_response(
            response.status(),
            response.body().as_ref(),
            self.config.max_response_body,
            &sensitive,
        );
        // RFC 9449 §8: the server wants a nonce; retry once with a fresh proof
        // (and a fresh client assertion), never more.
        let wants_nonce =
            matches!(&parsed, Err(TokenError::OAuth(e)) if e.code() == "use_dpop_nonce");
        if wants_nonce && nonce_stored && !flight.nonce_retried {
            if self
                .start_request(key, RequestReason::DPoPNonce, now)
                .is_some()
            {
                if let Some(retry) = self.slots[key.index()].flight.as_mut() {
                    retry.nonce_retried = true;
                }
            }
            return Ok(());
        }
        let outcome =
            parsed.and_then(|token| self.accept_token(key, &flight, token, response.status(), t));
        if let Err(error) = outcome {
            let retry_after = retry_after_from_headers(response.headers(), now.wall());
            self.fail(key, id, error, retry_after, t);
        }
        Ok(())
    }

    /// Tells the core that token request `id` got no HTTP response.
    pub fn handle_transport_error(
        &mut self,
        id: RequestId,
        error: TransportError,
        now: Now,
    ) -> Result<(), UnknownRequest> {
        let t = self.advance(now);
        let (key, _) = self.finish_flight(id)?;
        self.fail(key, id, TokenError::Transport(error), None, t);
        Ok(())
    }

    /// Hands the core a protected resource's response to a request that went
    /// out with a token for `key`, and says whether to retry it.
    ///
    /// On a 401, the cached token is invalidated only if it is the one the
    /// request carried (compare-and-invalidate): a 401 for an older token must
    /// not throw away the newer one. One retry is allowed (`attempt == 0`).
    pub fn handle_resource_response(
        &mut self,
        key: KeyId,
        response: &ResourceResponse<'_>,
        now: Now,
    ) -> ResourceOutcome {
        let t = self.advance(now);
        // A DPoP-Nonce on any response replaces that origin's nonce.
        let nonce_stored = response.uri.is_some_and(|uri| {
            self.nonces
                .update_from(uri, response.headers, t, self.config.dpop_nonce_lifetime)
        });
        if response.status != StatusCode::UNAUTHORIZED {
            return ResourceOutcome::Deliver;
        }
        let Some(sent) = response.sent_authorization else {
            return ResourceOutcome::Deliver;
        };
        let challenges = parse_www_authenticate(response.headers).unwrap_or_default();
        // DPoP `use_dpop_nonce`: the token is fine; retry once with the new nonce.
        let wants_nonce = challenges
            .iter()
            .any(|c| c.is_scheme("DPoP") && c.param("error") == Some("use_dpop_nonce"));
        if wants_nonce {
            return if nonce_stored && response.attempt == 0 {
                ResourceOutcome::Retry
            } else {
                ResourceOutcome::Deliver
            };
        }
        // A Bearer `insufficient_scope` is not cured by a new token of the same scope.
        if challenges
            .iter()
            .any(|c| c.param("error") == Some("insufficient_scope"))
        {
            return ResourceOutcome::Deliver;
        }
        let slot = &mut self.slots[key.index()];
        if slot.token.as_ref().is_some_and(|t| t.header == *sent) {
            slot.token = None;
            self.events.push_back(Event::TokenInvalidated {
                key,
                reason: InvalidationReason::RejectedByResource,
            });
            self.mark_changed(key);
        }
        if response.attempt == 0 {
            ResourceOutcome::Retry
        } else {
            ResourceOutcome::Deliver
        }
    }

    /// The next instant at which the core wants [`TokenManager::handle_timeout`]
    /// to be called, and why. Changes after every input.
    pub fn poll_timeout(&self) -> Option<(Instant, TimeoutReason)> {
        let mut next: Option<(Instant, TimeoutReason)> = None;
        let mut consider = |at: Instant, reason| {
            if next.is_none_or(|(best, _)| at < best) {
                next = Some((at, reason));
            }
        };
        for slot in &self.slots {
            if let Some(flight) = &slot.flight {
                consider(flight.deadline, TimeoutReason::RequestDeadline);
            }
            if let Some(backoff) = &slot.backoff {
                consider(backoff.until, TimeoutReason::BackoffEnds);
            }
            if let Some(token) = &slot.token {
                consider(token.schedule.attach_until, TimeoutReason::TokenExpires);
                let policy = &self.clients[slot.descriptor.client as usize].config.refresh;
                if policy.proactive && slot.flight.is_none() && slot.backoff.is_none() {
                    consider(token.schedule.refresh_at, TimeoutReason::RefreshDue);
                }
            }
        }
        next
    }

    /// Acts on every deadline that has passed by `now`: gives up on requests
    /// in flight too long, ends backoffs, drops expired tokens, and starts
    /// proactive refreshes.
    pub fn handle_timeout(&mut self, now: Now) {
        let t = self.advance(now);
        for index in 0..self.slots.len() {
            let key = KeyId(index as u32);
            let overdue = self.slots[index]
                .flight
                .as_ref()
                .filter(|f| t >= f.deadline)
                .map(|f| f.id);
            if let Some(id) = overdue {
                let (_, flight) = self.finish_flight(id).expect("the flight is registered");
                let waited = t.saturating_duration_since(flight.requested_at);
                self.fail(
                    key,
                    id,
                    TokenError::Transport(TransportError::core_timeout(waited)),
                    None,
                    t,
                );
            }
            if self.slots[index]
                .backoff
                .as_ref()
                .is_some_and(|b| t >= b.until)
            {
                self.slots[index].backoff = None;
                self.mark_changed(key);
            }
            if self.slots[index]
                .token
                .as_ref()
                .is_some_and(|tok| t >= tok.schedule.attach_until)
            {
                self.expire(key);
            }
            let slot = &self.slots[index];
            let proactive = self.clients[slot.descriptor.client as usize]
                .config
                .refresh
                .proactive;
            let due = slot
                .token
                .as_ref()
                .is_some_and(|tok| t >= tok.schedule.refresh_at)
                && slot.flight.is_none()
                && slot.backoff.is_none();
            if proactive && due {
                self.start_request(key, RequestReason::RefreshAhead, now);
            }
        }
    }

    /// Queues a token request for `key`, or, when it cannot even be signed,
    /// fails at once (which backs off) and returns `None`.
    fn start_request(&mut self, key: KeyId, reason: RequestReason, now: Now) -> Option<RequestId> {
        let t = self.latest;
        let id = RequestId(self.next_request);
        self.next_request += 1;
        let assertion_jti = next_jti(&mut self.jitter);
        let proof_jti = next_jti(&mut self.jitter);
        let slot = &self.slots[key.index()];
        let client = &self.clients[slot.descriptor.client as usize];
        let nonce = match &client.config.dpop {
            Some(_) => dpop::origin_of(&client.config.token_endpoint)
                .and_then(|origin| self.nonces.get(&origin, t))
                .map(str::to_owned),
            None => None,
        };
        let attempt = Attempt {
            wall: now.wall(),
            assertion_jti,
            proof_jti,
            nonce: nonce.as_deref(),
        };
        let request = match build_token_request(&client.config, &slot.descriptor, &attempt) {
            Ok(request) => request,
            Err(error) => {
                self.fail(key, id, TokenError::Signing(error), None, t);
                return None;
            }
        };
        self.slots[key.index()].flight = Some(Flight {
            id,
            requested_at: t,
            deadline: t.saturating_add(self.config.request_timeout),
            nonce_retried: false,
        });
        self.in_flight.insert(id, key);
        self.requests.push_back(TokenRequest { id, key, request });
        self.events
            .push_back(Event::RequestStarted { key, id, reason });
        self.mark_changed(key);
        Some(id)
    }

    fn finish_flight(&mut self, id: RequestId) -> Result<(KeyId, Flight), UnknownRequest> {
        let key = self.in_flight.remove(&id).ok_or(UnknownRequest)?;
        let flight = self.slots[key.index()]
            .flight
            .take()
            .ok_or(UnknownRequest)?;
        debug_assert_eq!(flight.id, id);
        self.mark_changed(key);
        Ok((key, flight))
    }

    fn accept_token(
        &mut self,
        key: KeyId,
        flight: &Flight,
        response: TokenResponse,
        status: StatusCode,
        t: Instant,
    ) -> Result<(), TokenError> {
        let invalid = |problem| {
            TokenError::InvalidResponse(InvalidResponse {
                status,
                problem,
                excerpt: None,
            })
        };
        let has_dpop = self.clients[self.slots[key.index()].descriptor.client as usize]
            .config
            .dpop
            .is_some();
        match (response.token_type, has_dpop) {
            (TokenType::Bearer, false) | (TokenType::DPoP, true) => {}
            // RFC 9449 §7.1 allows a server to issue a Bearer token anyway: use it
            // as such, and say so.
            (TokenType::Bearer, true) => self.events.push_back(Event::TokenNotBound { key }),
            (TokenType::DPoP, false) => {
                // A DPoP-bound token needs a key to sign proofs with; none is configured.
                return Err(invalid(ResponseProblem::UnsupportedTokenType(
                    "DPoP".to_owned(),
                )));
            }
        }
        let slot = &self.slots[key.index()];
        let policy = &self.clients[slot.descriptor.client as usize].config.refresh;
        let schedule = schedule(
            policy,
            flight.requested_at,
            response.expires_in,
            self.jitter.next_f64(),
        );
        if t >= schedule.attach_until {
            return Err(invalid(ResponseProblem::ExpiredOnArrival));
        }
        let header = authorization_header(response.token_type, &response.access_token);
        let generation = self.next_generation;
        self.next_generation += 1;
        self.events.push_back(Event::TokenAcquired {
            key,
            lifetime: schedule.lifetime,
            token_type: response.token_type,
            scope: response.scope.clone(),
        });
        let slot = &mut self.slots[key.index()];
        slot.token = Some(CachedToken {
            access_token: response.access_token,
            header,
            token_type: response.token_type,
            scope: response.scope,
            schedule,
            generation,
        });
        slot.failures = 0;
        slot.backoff = None;
        self.mark_changed(key);
        Ok(())
    }

    fn fail(
        &mut self,
        key: KeyId,
        id: RequestId,
        error: TokenError,
        retry_after: Option<Duration>,
        t: Instant,
    ) {
        let slot = &mut self.slots[key.index()];
        slot.failures = slot.failures.saturating_add(1);
        let failures = slot.failures;
        let policy = &self.clients[slot.descriptor.client as usize].config.backoff;
        let delay = backoff_delay(policy, failures, retry_after, self.jitter.next_f64());
        let until = t.saturating_add(delay);
        let serving_cached = slot
            .token
            .as_ref()
            .is_some_and(|tok| t < tok.schedule.attach_until);
        slot.backoff = Some(Backoff {
            until,
            error: error.clone(),
        });
        self.events
            .push_back(Event::RequestFailed { key, id, error });
        self.events.push_back(Event::BackoffEntered {
            key,
            until,
            delay,
            failures,
            serving_cached,
        });
        self.mark_changed(key);
    }

    fn expire(&mut self, key: KeyId) {
        if self.slots[key.index()].token.take().is_some() {
            self.events.push_back(Event::TokenExpired { key });
            self.mark_changed(key);
        }
    }

    /// Recomputes `key`'s snapshot and queues it for adapters.
    fn mark_changed(&mut self, key: KeyId) {
        let slot = &mut self.slots[key.index()];
        let snapshot = slot.token.as_ref().map(|token| {
            // Readers may skip the core until the next moment it has work:
            // the refresh point (unless a refresh is already running), the end
            // of a backoff, and never past the end of the usable life.
            let mut fresh_until = token.schedule.attach_until;
            if token.token_type == TokenType::DPoP {
                // Every request with a DPoP-bound token needs a fresh proof from the core.
                fresh_until = Instant::ZERO;
            }
            match (&slot.flight, &slot.backoff) {
                (Some(_), _) => {}
                (None, Some(backoff)) => fresh_until = fresh_until.min(backoff.until),
                (None, None) => fresh_until = fresh_until.min(token.schedule.refresh_at),
            }
            Arc::new(Snapshot {
                key,
                header: token.header.clone(),
                generation: token.generation,
                fresh_until,
                attach_until: token.schedule.attach_until,
            })
        });
        let unchanged = match (&slot.snapshot, &snapshot) {
            (None, None) => true,
            (Some(a), Some(b)) => a.generation == b.generation && a.fresh_until == b.fresh_until,
            _ => false,
        };
        if unchanged {
            return;
        }
        slot.snapshot = snapshot;
        if !slot.publish_pending {
            slot.publish_pending = true;
            self.published.push_back(key);
        }
    }
}

/// A unique JWT id: 128 bits from the manager's random source, base64url.
fn next_jti(jitter: &mut Jitter) -> String {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&jitter.next_u64().to_le_bytes());
    bytes[8..].copy_from_slice(&jitter.next_u64().to_le_bytes());
    crate::jose::base64url(&bytes)
}

/// The cache key of `config`'s request changed by `overrides`: everything that
/// changes the token, including the thumbprint of the DPoP key it is bound to.
fn descriptor(client: u32, config: &ClientConfig, overrides: &KeyOverrides) -> KeyDescriptor {
    let mut descriptor = KeyDescriptor::new(
        client,
        &config.scope,
        &config.resources,
        config.audience.as_ref(),
        &config.params,
        overrides,
    );
    descriptor.dpop_jkt = config
        .dpop
        .as_ref()
        .map(|s| s.public_jwk().thumbprint().to_owned());
    descriptor
}

/// `Authorization: <scheme> <token>`, marked sensitive. The token was checked
/// to be visible ASCII, so this cannot fail.
fn authorization_header(token_type: TokenType, token: &AccessToken) -> HeaderValue {
    let text =
        zeroize::Zeroizing::new(format!("{} {}", token_type.scheme(), token.expose_secret()));
    let mut value = HeaderValue::from_str(&text).expect("token checked to be visible ASCII");
    value.set_sensitive(true);
    value
}

/// The secret and the forms it travels in, to keep out of error excerpts.
fn sensitive_strings(config: &ClientConfig) -> Vec<String> {
    let Some(secret) = config.auth.secret() else {
        return Vec::new();
    };
    let raw = secret.expose_secret().to_owned();
    let form: String = form_urlencoded::byte_serialize(raw.as_bytes()).collect();
    let mut out = vec![raw, form];
    if matches!(config.auth, ClientAuth::Basic(_) | ClientAuth::BasicRaw(_)) {
        for encode in [true, false] {
            let header = basic_credentials(&config.client_id, secret.expose_secret(), encode);
            if let Some(b64) = header.to_str().ok().and_then(|h| h.strip_prefix("Basic ")) {
                out.push(b64.to_owned());
            }
        }
    }
    out.retain(|s| !s.is_empty());
    out
}
