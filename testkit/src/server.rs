//! The local authorization server and protected API.
//!
//! Besides client secrets, the server speaks `private_key_jwt` (RFC 7523)
//! and DPoP (RFC 9449). Every part of that is off until configured:
//!
//! - **private_key_jwt**: clients listed in [`ServerConfig::jwt_clients`]
//!   authenticate with a `client_assertion`. The server checks its shape:
//!   three base64url parts, an asymmetric `alg` that fits the registered key,
//!   `iss` = `sub` = the client id, `aud` naming the token endpoint (or the
//!   issuer), `exp` not passed and `iat` not in the future (both within
//!   [`ServerConfig::clock_skew`] of the server clock), and a `jti` never seen
//!   before: a replayed assertion is `400 invalid_client`.
//! - **DPoP**: a token request with a `DPoP` proof gets a `token_type: "DPoP"`
//!   token bound to the proof key's RFC 7638 thumbprint (`cnf.jkt`). The API
//!   then accepts that token only as `Authorization: DPoP <token>` with a proof
//!   by the same key whose `htm`/`htu` match the request and whose `ath` is the
//!   token's hash; presented as `Bearer` it is refused. Proofs must have `typ:
//!   dpop+jwt`, a public `jwk` only, a fresh `jti` and a recent `iat`.
//!   [`ServerConfig::dpop_nonce_required_at_token_endpoint`] and
//!   [`ServerConfig::dpop_nonce_required_at_api`] make the server demand its
//!   current nonce (`use_dpop_nonce` with a `DPoP-Nonce` header) and send it on
//!   successes; [`LocalAuthServer::rotate_dpop_nonce`] makes the current one
//!   stale. A server is one origin and has one nonce, shared by its token
//!   endpoint and its API; [`LocalAuthServer::start_resource_server`] starts a
//!   second origin that accepts the first one's tokens.
//!
//! The testkit has no JOSE library (the `tokenctl` binary embeds it), so the
//! server checks signatures only through a [`JwsVerifier`] a test supplies.
//! Every token and API request is recorded ([`LocalAuthServer::calls`]) with
//! its method, URL, `Authorization`, `DPoP` proof and client assertion, so
//! tests can verify the signatures with an independent implementation.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{json, Value};
use token_keeper::jose::{sha256_base64url, PublicJwk};
use token_keeper::request::JWT_BEARER_ASSERTION;
use token_keeper::time::{Clock, ManualClock};

/// How the server is set up.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Registered clients: id and secret. Both basic and post authentication are accepted.
    pub clients: Vec<(String, String)>,
    /// Clients that authenticate with `private_key_jwt` (RFC 7523): id and public key.
    pub jwt_clients: Vec<(String, PublicJwk)>,
    /// `expires_in` of issued tokens, in seconds.
    pub ttl_secs: u64,
    /// Scope echoed back in token responses (`None`: no `scope` field).
    pub scope: Option<String>,
    /// How long a connection may sit idle before the server closes it.
    pub idle_timeout: Duration,
    /// Checks the signatures of client assertions and DPoP proofs. `None`:
    /// only their shape is checked (verify the recorded ones afterwards).
    pub jws_verifier: Option<JwsVerifier>,
    /// A DPoP proof to the token endpoint must carry the current nonce, or the
    /// answer is `400 {"error":"use_dpop_nonce"}` with a `DPoP-Nonce` header.
    pub dpop_nonce_required_at_token_endpoint: bool,
    /// A DPoP proof to the API must carry the current nonce, or the answer is
    /// `401` with `WWW-Authenticate: DPoP error="use_dpop_nonce"` and a `DPoP-Nonce` header.
    pub dpop_nonce_required_at_api: bool,
    /// Every success that requires a nonce carries a new one, which replaces
    /// the current one at once (RFC 9449 §8.2). Otherwise successes repeat the current nonce.
    pub dpop_nonce_rotates_on_success: bool,
    /// The clock `iat` and `exp` are checked against (`None`: the system clock).
    /// Give it the adapter's [`ManualClock`] so that JWTs dated by that clock are current.
    pub clock: Option<ManualClock>,
    /// How far `iat`/`exp` may be off the server clock (default 60 s).
    pub clock_skew: Duration,
    /// Where to listen. `None` (the default): `127.0.0.1` on an ephemeral
    /// port, so that tests running in parallel never clash. `Some(addr)`:
    /// that address (port 0 still picks a free port), for a server other
    /// programs are pointed at (`tokenctl serve`). Loopback addresses only:
    /// the server is a fixture whose secrets are known and whose DPoP and
    /// assertion signatures go unchecked without a [`JwsVerifier`], so
    /// [`LocalAuthServer::start`] refuses any other address (`InvalidInput`)
    /// rather than expose it to the network.
    pub listen: Option<SocketAddr>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            clients: vec![("m2m".to_owned(), "s3cret".to_owned())],
            jwt_clients: Vec::new(),
            ttl_secs: 3600,
            scope: None,
            idle_timeout: Duration::from_secs(10),
            jws_verifier: None,
            dpop_nonce_required_at_token_endpoint: false,
            dpop_nonce_required_at_api: false,
            dpop_nonce_rotates_on_success: false,
            clock: None,
            clock_skew: Duration::from_secs(60),
            listen: None,
        }
    }
}

/// The signature check behind [`JwsVerifier`].
type VerifyFn = dyn Fn(&str, &str) -> Result<(), String> + Send + Sync;

/// Checks the signature of a compact JWS against a public key, for the
/// server to refuse forged assertions and proofs. Supplied by tests, with a
/// JOSE library the testkit does not depend on.
#[derive(Clone)]
pub struct JwsVerifier(Arc<VerifyFn>);

impl JwsVerifier {
    /// `verify(jws, jwk)`: `jwk` is the public key as a JSON object (the
    /// members RFC 7638 hashes: `kty` and `crv`/`x`/`y` or `n`/`e`). Answer
    /// `Ok(())` if the signature verifies, otherwise why not.
    pub fn new(
        verify: impl Fn(&str, &str) -> Result<(), String> + Send + Sync + 'static,
    ) -> JwsVerifier {
        JwsVerifier(Arc::new(verify))
    }

    fn verify(&self, jws: &str, jwk: &str) -> Result<(), String> {
        (self.0)(jws, jwk)
    }
}

impl fmt::Debug for JwsVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwsVerifier(..)")
    }
}

/// A misbehaviour for the next token request (each fault is used once, in order).
#[derive(Clone, Debug)]
pub enum TokenFault {
    /// Answer with this status and body, and a `Retry-After` header if given.
    Status {
        /// The status code.
        status: u16,
        /// The body.
        body: String,
        /// The `Retry-After` value.
        retry_after: Option<String>,
    },
    /// Answer 200 with this raw body (malformed JSON, HTML, wrong types…).
    Body(String),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Close the connection without answering.
    Close,
    /// Hold the request until the gate opens (at most 30 s), then answer as
    /// the next queued fault says (normally when there is none).
    Hold(Gate),
}

/// A gate that holds a token request until the test opens it.
#[derive(Clone, Debug, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate: held requests proceed.
    pub fn open(&self) {
        let (open, changed) = &*self.0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }

    fn wait(&self) {
        let (open, changed) = &*self.0;
        let guard = open.lock().unwrap();
        let _ = changed.wait_timeout_while(guard, Duration::from_secs(30), |open| !*open);
    }
}

/// A misbehaviour of the protected API.
#[derive(Clone, Debug)]
pub enum ApiFault {
    /// Answer the next API request with 401 and `WWW-Authenticate: Bearer error="invalid_token"`,
    /// and revoke the token it carried.
    UnauthorizedOnce,
}

/// A token request as the server received it.
#[derive(Clone, Debug, Default)]
pub struct RecordedRequest {
    /// Header names (lowercase) and values.
    pub headers: Vec<(String, String)>,
    /// The decoded form body.
    pub form: Vec<(String, String)>,
}

impl RecordedRequest {
    /// The first header of this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first form field of this name.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Which endpoint a recorded request was sent to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /token`.
    Token,
    /// The protected API (`/api...`).
    Api,
}

/// A token or API request as the server received it, and how it answered.
#[derive(Clone, Debug)]
pub struct RecordedCall {
    /// Where it went.
    pub endpoint: Endpoint,
    /// The request method.
    pub method: String,
    /// The absolute URL requested, query included (`http://127.0.0.1:PORT/path?query`).
    pub url: String,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The length of the request body.
    pub body_len: usize,
    /// The `DPoP` header: the raw proof.
    pub dpop: Option<String>,
    /// The `client_id` form field (token requests).
    pub client_id: Option<String>,
    /// The `client_assertion_type` form field (token requests).
    pub client_assertion_type: Option<String>,
    /// The `client_assertion` form field: the raw JWT (token requests).
    pub client_assertion: Option<String>,
    /// The status answered (0: the connection was closed without an answer).
    pub status: u16,
    /// The error code answered (the OAuth `error`, or the `WWW-Authenticate` `error`).
    pub error: Option<String>,
    /// Why the request was refused, in words.
    pub reason: Option<String>,
    /// The `DPoP-Nonce` header of the answer.
    pub nonce_sent: Option<String>,
    /// The `token_type` issued (token requests that succeeded).
    pub token_type: Option<String>,
    /// The access token issued (token requests that succeeded).
    pub access_token: Option<String>,
    /// The JWK thumbprint the issued token is bound to (`cnf.jkt`), for DPoP.
    pub jkt: Option<String>,
}

impl RecordedCall {
    fn new(endpoint: Endpoint, request: &Request, state: &State) -> RecordedCall {
        RecordedCall {
            endpoint,
            method: request.method.clone(),
            url: format!("http://{}{}", request.host(state), request.path),
            authorization: request.header("authorization").map(str::to_owned),
            body_len: request.body.len(),
            dpop: request.header("dpop").map(str::to_owned),
            client_id: None,
            client_assertion_type: None,
            client_assertion: None,
            status: 0,
            error: None,
            reason: None,
            nonce_sent: None,
            token_type: None,
            access_token: None,
            jkt: None,
        }
    }

    /// The `nonce` claim of the DPoP proof, if the proof decodes and has one.
    pub fn proof_nonce(&self) -> Option<String> {
        let proof = Jwt::decode(self.dpop.as_deref()?).ok()?;
        proof.claims["nonce"].as_str().map(str::to_owned)
    }
}

struct Issued {
    /// The client the token was issued to (echoed by the health-records API).
    client_id: String,
    expires: Instant,
    revoked: bool,
    /// The DPoP key thumbprint the token is bound to.
    jkt: Option<String>,
}

/// The server's DPoP nonce (one per server, that is per origin).
#[derive(Default)]
struct Nonces {
    prefix: String,
    counter: u64,
    current: Option<String>,
    issued: Vec<String>,
}

impl Nonces {
    /// A new nonce, which becomes the only one accepted.
    fn rotate(&mut self) -> String {
        self.counter += 1;
        let nonce = format!("{}-{}", self.prefix, self.counter);
        self.current = Some(nonce.clone());
        self.issued.push(nonce.clone());
        nonce
    }

    /// The current nonce (made on first use).
    fn current(&mut self) -> String {
        match &self.current {
            Some(nonce) => nonce.clone(),
            None => self.rotate(),
        }
    }

    fn accepts(&self, nonce: Option<&str>) -> bool {
        nonce.is_some() && nonce == self.current.as_deref()
    }

    /// The nonce to send with a success.
    fn for_success(&mut self, rotate: bool) -> String {
        if rotate {
            self.rotate()
        } else {
            self.current()
        }
    }
}

#[derive(Default)]
struct Shared {
    token_faults: VecDeque<TokenFault>,
    api_faults: VecDeque<ApiFault>,
    last_token_request: Option<RecordedRequest>,
    last_api_authorization: Option<Option<String>>,
    calls: VecDeque<RecordedCall>,
    calls_dropped: u64,
    nonces: Nonces,
    /// `jti`s of assertions and proofs seen, each until it could no longer be accepted anyway.
    seen_jtis: HashMap<String, i64>,
}

impl Shared {
    /// Remembers a `jti` until `until`; false if it was seen before.
    fn first_use(&mut self, jti: String, until: i64, now: i64) -> bool {
        if self.seen_jtis.len() >= MAX_SEEN_JTIS {
            self.seen_jtis.retain(|_, until| *until >= now);
        }
        if self.seen_jtis.contains_key(&jti) {
            return false;
        }
        self.seen_jtis.insert(jti, until);
        true
    }
}

/// Issued tokens, shared with resource servers started for this server.
type Tokens = Arc<Mutex<HashMap<String, Issued>>>;

struct State {
    addr: SocketAddr,
    config: Mutex<ServerConfig>,
    shared: Mutex<Shared>,
    tokens: Tokens,
    token_requests: AtomicU64,
    /// Notified when a token request arrives and when any call is answered.
    progress: Condvar,
    tokens_issued: AtomicU64,
    api_requests: AtomicU64,
    api_rejected: AtomicU64,
    stopping: AtomicBool,
    connections: Mutex<HashMap<u64, TcpStream>>,
    next_connection: AtomicU64,
}

impl State {
    /// The server clock, in seconds since the Unix epoch.
    fn now_secs(&self, config: &ServerConfig) -> i64 {
        let wall = config
            .clock
            .as_ref()
            .map_or_else(SystemTime::now, |clock| clock.wall());
        wall.duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    fn record(&self, mut call: RecordedCall, response: Option<&Response>) {
        if let Some(response) = response {
            call.status = response.status;
            call.nonce_sent = response
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("dpop-nonce"))
                .map(|(_, value)| value.clone());
        }
        let mut shared = self.shared.lock().unwrap();
        if shared.calls.len() >= MAX_RECORDED_CALLS {
            shared.calls.pop_front();
            shared.calls_dropped += 1;
        }
        shared.calls.push_back(call);
        self.progress.notify_all();
    }
}

/// A running local authorization server; stops when dropped.
pub struct LocalAuthServer {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 2048;
/// Recorded calls kept (the oldest go first; see [`LocalAuthServer::calls_dropped`]).
const MAX_RECORDED_CALLS: usize = 10_000;
/// `jti`s remembered before the expired ones are forgotten.
const MAX_SEEN_JTIS: usize = 4096;
/// The JWS algorithms accepted for assertions and proofs: asymmetric only.
const ASYMMETRIC_ALGS: [&str; 10] = [
    "ES256", "ES384", "ES512", "EdDSA", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512",
];
/// Announced in DPoP challenges (`algs`, RFC 9449 §7.1).
const DPOP_ALGS: &str = "ES256 EdDSA RS256 PS256";

/// The API path that answers a small (synthetic) health-records document
/// rather than the generic `{"ok":true,…}`: what the
/// `examples/health-records-service` example and `tokenctl serve` users call,
/// so that a service pointed at the local server gets a realistic body.
pub const HEALTH_RECORDS_PATH: &str = "/api/v1/integration/health-records";

impl LocalAuthServer {
    /// Starts a server on `127.0.0.1` with an ephemeral port, or on the
    /// loopback address [`ServerConfig::listen`] names.
    pub fn start(config: ServerConfig) -> io::Result<LocalAuthServer> {
        LocalAuthServer::start_with_tokens(config, Tokens::default())
    }

    /// Starts a second server, at an origin of its own, whose API also
    /// accepts the tokens `issuer` issues (and `issuer`'s API the ones it
    /// issues): an authorization server and a resource server at two origins,
    /// each with its own DPoP nonce.
    pub fn start_resource_server(
        config: ServerConfig,
        issuer: &LocalAuthServer,
    ) -> io::Result<LocalAuthServer> {
        LocalAuthServer::start_with_tokens(config, Arc::clone(&issuer.state.tokens))
    }

    fn start_with_tokens(config: ServerConfig, tokens: Tokens) -> io::Result<LocalAuthServer> {
        let listen = match config.listen {
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(addr) if addr.ip().is_loopback() => addr,
            Some(addr) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{addr} is not a loopback address: the local server is a \
                         development fixture with known secrets and listens on \
                         loopback only"
                    ),
                ))
            }
        };
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            nonces: Nonces {
                prefix: format!("nonce-{}", addr.port()),
                ..Nonces::default()
            },
            ..Shared::default()
        };
        let state = Arc::new(State {
            addr,
            config: Mutex::new(config),
            shared: Mutex::new(shared),
            tokens,
            token_requests: AtomicU64::new(0),
            progress: Condvar::new(),
            tokens_issued: AtomicU64::new(0),
            api_requests: AtomicU64::new(0),
            api_rejected: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(0),
        });
        let accept_state = Arc::clone(&state);
        let acceptor = std::thread::Builder::new()
            .name("local-auth-server".into())
            .spawn(move || accept_loop(listener, accept_state))?;
        Ok(LocalAuthServer {
            addr,
            state,
            acceptor: Some(acceptor),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint URL.
    pub fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    /// The protected API's base URL.
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base_url())
    }

    /// The URL of the health-records API ([`HEALTH_RECORDS_PATH`]).
    pub fn health_records_url(&self) -> String {
        format!("{}{HEALTH_RECORDS_PATH}", self.base_url())
    }

    /// Token requests received (successful or not).
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// Waits (at most `timeout`) until at least `n` token requests have arrived.
    pub fn wait_for_token_requests(&self, n: u64, timeout: Duration) -> bool {
        let shared = self.state.shared.lock().unwrap();
        let (_shared, result) = self
            .state
            .progress
            .wait_timeout_while(shared, timeout, |_| {
                self.state.token_requests.load(Ordering::SeqCst) < n
            })
            .unwrap();
        !result.timed_out()
    }

    /// Waits (at most `timeout`) until at least `n` token and API requests
    /// have been answered (see [`calls`](Self::calls)).
    pub fn wait_for_calls(&self, n: usize, timeout: Duration) -> bool {
        let shared = self.state.shared.lock().unwrap();
        let (_shared, result) = self
            .state
            .progress
            .wait_timeout_while(shared, timeout, |shared| {
                shared.calls.len() + (shared.calls_dropped as usize) < n
            })
            .unwrap();
        !result.timed_out()
    }

    /// Waits (at most `timeout`) for calls answered after the first `seen`
    /// ones (counted as [`wait_for_calls`](Self::wait_for_calls) counts), and
    /// returns them with the new count, to pass as `seen` next time. Lets a
    /// caller follow the calls as they come (`tokenctl serve` logs them)
    /// without copying every recorded call each time. Calls no longer
    /// recorded (more than 10 000 behind) are skipped.
    pub fn calls_after(&self, seen: u64, timeout: Duration) -> (Vec<RecordedCall>, u64) {
        let shared = self.state.shared.lock().unwrap();
        let total = |shared: &Shared| shared.calls.len() as u64 + shared.calls_dropped;
        let (shared, _) = self
            .state
            .progress
            .wait_timeout_while(shared, timeout, |shared| total(shared) <= seen)
            .unwrap();
        let now = total(&shared);
        let new = usize::try_from(now.saturating_sub(seen)).unwrap_or(usize::MAX);
        let skip = shared.calls.len().saturating_sub(new);
        (shared.calls.iter().skip(skip).cloned().collect(), now)
    }

    /// Tokens issued.
    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens_issued.load(Ordering::SeqCst)
    }

    /// API requests received.
    pub fn api_requests(&self) -> u64 {
        self.state.api_requests.load(Ordering::SeqCst)
    }

    /// API requests answered 401.
    pub fn api_rejected(&self) -> u64 {
        self.state.api_rejected.load(Ordering::SeqCst)
    }

    /// Queues a misbehaviour for the next token request.
    pub fn push_token_fault(&self, fault: TokenFault) {
        self.state
            .shared
            .lock()
            .unwrap()
            .token_faults
            .push_back(fault);
    }

    /// Queues a misbehaviour for the next API request.
    pub fn push_api_fault(&self, fault: ApiFault) {
        self.state
            .shared
            .lock()
            .unwrap()
            .api_faults
            .push_back(fault);
    }

    /// Changes the lifetime of tokens issued from now on.
    pub fn set_ttl_secs(&self, ttl_secs: u64) {
        self.state.config.lock().unwrap().ttl_secs = ttl_secs;
    }

    /// Revokes every token issued so far: the API answers 401 to them.
    pub fn revoke_all(&self) {
        for issued in self.state.tokens.lock().unwrap().values_mut() {
            issued.revoked = true;
        }
    }

    /// Every access token issued so far (to check that none leaks into logs).
    pub fn issued_tokens(&self) -> Vec<String> {
        self.state.tokens.lock().unwrap().keys().cloned().collect()
    }

    /// The `Authorization` header of the most recent API request: `None` if
    /// no API request arrived yet, `Some(None)` if it carried none.
    pub fn last_api_authorization(&self) -> Option<Option<String>> {
        self.state
            .shared
            .lock()
            .unwrap()
            .last_api_authorization
            .clone()
    }

    /// The most recent token request.
    pub fn last_token_request(&self) -> Option<RecordedRequest> {
        self.state.shared.lock().unwrap().last_token_request.clone()
    }

    /// Every token and API request so far, in the order they were answered
    /// (the most recent 10 000; see [`calls_dropped`](Self::calls_dropped)).
    pub fn calls(&self) -> Vec<RecordedCall> {
        self.state
            .shared
            .lock()
            .unwrap()
            .calls
            .iter()
            .cloned()
            .collect()
    }

    /// The recorded requests to one endpoint.
    pub fn calls_to(&self, endpoint: Endpoint) -> Vec<RecordedCall> {
        let mut calls = self.calls();
        calls.retain(|call| call.endpoint == endpoint);
        calls
    }

    /// The recorded requests that carried a `DPoP` proof (token endpoint and API).
    pub fn dpop_proofs(&self) -> Vec<RecordedCall> {
        let mut calls = self.calls();
        calls.retain(|call| call.dpop.is_some());
        calls
    }

    /// The recorded token requests that carried a `client_assertion`.
    pub fn client_assertions(&self) -> Vec<RecordedCall> {
        let mut calls = self.calls();
        calls.retain(|call| call.client_assertion.is_some());
        calls
    }

    /// The `Authorization` header of every recorded API request.
    pub fn api_authorizations(&self) -> Vec<Option<String>> {
        self.calls_to(Endpoint::Api)
            .into_iter()
            .map(|call| call.authorization)
            .collect()
    }

    /// Calls no longer recorded because more than 10 000 arrived.
    pub fn calls_dropped(&self) -> u64 {
        self.state.shared.lock().unwrap().calls_dropped
    }

    /// Every DPoP nonce this server has handed out, oldest first. Each
    /// server's nonces start with `nonce-PORT-`, so they never collide.
    pub fn dpop_nonces_issued(&self) -> Vec<String> {
        self.state.shared.lock().unwrap().nonces.issued.clone()
    }

    /// Replaces the DPoP nonce: the next proof with the old one is answered
    /// `use_dpop_nonce` with the new one, which this returns.
    pub fn rotate_dpop_nonce(&self) -> String {
        self.state.shared.lock().unwrap().nonces.rotate()
    }
}

impl Drop for LocalAuthServer {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor with one last connection, and unblock readers.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, stream) in self.state.connections.lock().unwrap().drain() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: Arc<State>) {
    for stream in listener.incoming() {
        if state.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let id = state.next_connection.fetch_add(1, Ordering::SeqCst);
        {
            let mut connections = state.connections.lock().unwrap();
            if connections.len() >= MAX_CONNECTIONS {
                continue; // dropped: the client sees a reset
            }
            if let Ok(clone) = stream.try_clone() {
                connections.insert(id, clone);
            }
        }
        let state = Arc::clone(&state);
        let _ = std::thread::Builder::new()
            .name("local-auth-conn".into())
            .spawn(move || {
                // Forgotten even if serving it panics: a leaked entry holds
                // a descriptor and counts against MAX_CONNECTIONS.
                struct Forget<'a>(&'a State, u64);
                impl Drop for Forget<'_> {
                    fn drop(&mut self) {
                        let mut connections =
                            self.0.connections.lock().unwrap_or_else(|e| e.into_inner());
                        connections.remove(&self.1);
                    }
                }
                let _forget = Forget(&state, id);
                let _ = serve_connection(&stream, &state);
                let _ = stream.shutdown(Shutdown::Both);
            });
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    close: bool,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `host[:port]` as the client addressed the server.
    fn host(&self, state: &State) -> String {
        self.header("host")
            .map_or_else(|| state.addr.to_string(), str::to_owned)
    }

    /// The `htu` a DPoP proof for this request must carry: no query, no fragment.
    fn htu(&self, state: &State) -> String {
        let path = self.path.split(['?', '#']).next().unwrap_or_default();
        format!("http://{}{path}", self.host(state))
    }

    /// The one `DPoP` header, if any (RFC 9449 §4.3: more than one is an error).
    fn dpop_proof(&self) -> Result<Option<&str>, String> {
        let mut proofs = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("dpop"))
            .map(|(_, v)| v.as_str());
        match (proofs.next(), proofs.next()) {
            (Some(_), Some(_)) => Err("more than one DPoP header".into()),
            (proof, _) => Ok(proof),
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, body: String) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", "application/json".into()),
                ("Cache-Control", "no-store".into()),
            ],
            body: body.into_bytes(),
        }
    }
}

fn serve_connection(stream: &TcpStream, state: &State) -> io::Result<()> {
    let idle = state.config.lock().unwrap().idle_timeout;
    stream.set_read_timeout(Some(idle))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    loop {
        if state.stopping.load(Ordering::SeqCst) {
            return Ok(());
        }
        let Some(request) = read_request(&mut reader)? else {
            return Ok(());
        };
        let close = request.close;
        let response = match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/token") => match token_endpoint(&request, state) {
                Some(response) => response,
                None => return writer.shutdown(Shutdown::Both),
            },
            ("GET", "/.well-known/openid-configuration") => {
                let base = format!("http://{}", state.addr);
                Response::json(
                    200,
                    format!(
                        r#"{{"issuer":"{base}","token_endpoint":"{base}/token","token_endpoint_auth_methods_supported":["client_secret_basic","client_secret_post","private_key_jwt"],"token_endpoint_auth_signing_alg_values_supported":["ES256","EdDSA","RS256","PS256"],"dpop_signing_alg_values_supported":["ES256","EdDSA","RS256","PS256"],"grant_types_supported":["client_credentials"]}}"#
                    ),
                )
            }
            (_, path)
                if path == "/api" || path.starts_with("/api/") || path.starts_with("/api?") =>
            {
                api(&request, state)
            }
            _ => Response::json(404, r#"{"error":"not_found"}"#.into()),
        };
        write_response(&mut writer, &response, close)?;
        if close {
            return Ok(());
        }
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD - head.len()) as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(None); // connection closed
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        if line == b"\r\n" || line == b"\n" {
            if head.len() == line.len() {
                head.clear(); // tolerate empty lines between requests
                continue;
            }
            break;
        }
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.lines();
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let version = parts.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut request = Request {
        method,
        path,
        close: version == "HTTP/1.0",
        headers,
        body: Vec::new(),
    };
    if let Some(connection) = request.header("connection") {
        request.close = connection.eq_ignore_ascii_case("close");
    }
    if request
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        request.body = read_chunked(reader)?;
    } else {
        let length: usize = request
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if length > MAX_BODY {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body too large",
            ));
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        request.body = body;
    }
    Ok(Some(request))
}

fn read_chunked(reader: &mut BufReader<TcpStream>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.by_ref().take(64).read_line(&mut size_line)?;
        let size_text = size_line.trim().split(';').next().unwrap_or_default();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
        // Never `body.len() + size`: a size near `usize::MAX` would overflow.
        if size > MAX_BODY.saturating_sub(body.len()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request body too large",
            ));
        }
        if size == 0 {
            let mut trailer = String::new();
            while reader.by_ref().take(1024).read_line(&mut trailer)? > 2 {
                trailer.clear();
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        reader.read_exact(&mut body[start..])?;
        let mut crlf = [0; 2];
        reader.read_exact(&mut crlf)?;
    }
}

fn write_response(writer: &mut TcpStream, response: &Response, close: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\n",
        response.status,
        reason(response.status)
    );
    for (name, value) in &response.headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n", response.body.len()));
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&response.body);
    writer.write_all(&bytes)?;
    writer.flush()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// `None`: drop the connection without answering.
fn token_endpoint(request: &Request, state: &State) -> Option<Response> {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let form: Vec<(String, String)> = form_decode(&request.body);
    let recorded = RecordedRequest {
        headers: request.headers.clone(),
        form: form.clone(),
    };
    let mut fault = {
        let mut shared = state.shared.lock().unwrap();
        shared.last_token_request = Some(recorded);
        state.progress.notify_all();
        shared.token_faults.pop_front()
    };
    if let Some(TokenFault::Hold(gate)) = &fault {
        // A held request then gets the next fault in the queue, if any.
        gate.wait();
        fault = state.shared.lock().unwrap().token_faults.pop_front();
    }
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut call = RecordedCall::new(Endpoint::Token, request, state);
    call.client_id = field("client_id");
    call.client_assertion_type = field("client_assertion_type");
    call.client_assertion = field("client_assertion");
    let response = match fault {
        Some(TokenFault::Status {
            status,
            body,
            retry_after,
        }) => {
            let mut response = Response::json(status, body);
            if let Some(value) = retry_after {
                response.headers.push(("Retry-After", value));
            }
            Some(response)
        }
        Some(TokenFault::Body(body)) => Some(Response::json(200, body)),
        Some(TokenFault::Delay(delay)) => {
            std::thread::sleep(delay);
            Some(issue(request, &form, state, &mut call))
        }
        Some(TokenFault::Close) => None,
        Some(TokenFault::Hold(gate)) => {
            gate.wait();
            Some(issue(request, &form, state, &mut call))
        }
        None => Some(issue(request, &form, state, &mut call)),
    };
    state.record(call, response.as_ref());
    response
}

/// Authenticates the client, checks any DPoP proof, and issues a token.
fn issue(
    request: &Request,
    form: &[(String, String)],
    state: &State,
    call: &mut RecordedCall,
) -> Response {
    let field = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    if field("grant_type").as_deref() != Some("client_credentials") {
        call.error = Some("unsupported_grant_type".into());
        return oauth_error(400, "unsupported_grant_type");
    }
    let config = state.config.lock().unwrap().clone();
    let now = state.now_secs(&config);
    let client_id =
        if field("client_assertion_type").is_some() || field("client_assertion").is_some() {
            match check_client_assertion(request, form, state, &config, now) {
                Ok(client_id) => client_id,
                Err(reason) => return refuse(call, 400, "invalid_client", reason),
            }
        } else {
            let credentials = match request.header("authorization") {
                Some(basic) => decode_basic(basic),
                None => field("client_id").zip(field("client_secret")),
            };
            let known = credentials.filter(|(id, secret)| {
                config
                    .clients
                    .iter()
                    .any(|(cid, csecret)| cid == id && csecret == secret)
            });
            match known {
                Some((client_id, _)) => client_id,
                None => {
                    call.error = Some("invalid_client".into());
                    let mut response = oauth_error(401, "invalid_client");
                    response
                        .headers
                        .push(("WWW-Authenticate", r#"Basic realm="token""#.into()));
                    return response;
                }
            }
        };

    let mut jkt = None;
    let mut nonce_header = None;
    let proof = match request.dpop_proof() {
        Ok(proof) => proof,
        Err(reason) => return refuse(call, 400, "invalid_dpop_proof", reason),
    };
    if let Some(proof) = proof {
        let checked = match check_proof(
            proof,
            &request.method,
            &request.htu(state),
            state,
            &config,
            now,
        ) {
            Ok(checked) => checked,
            Err(reason) => return refuse(call, 400, "invalid_dpop_proof", reason),
        };
        if checked.ath.is_some() {
            let reason = "a proof for the token endpoint has an ath claim".to_owned();
            return refuse(call, 400, "invalid_dpop_proof", reason);
        }
        if config.dpop_nonce_required_at_token_endpoint {
            let mut shared = state.shared.lock().unwrap();
            if !shared.nonces.accepts(checked.nonce.as_deref()) {
                let nonce = shared.nonces.current();
                drop(shared);
                let reason = match checked.nonce {
                    None => "Authorization server requires nonce in DPoP proof",
                    Some(_) => "the DPoP proof's nonce is not the current one",
                };
                let mut response = refuse(call, 400, "use_dpop_nonce", reason.into());
                response.headers.push(("DPoP-Nonce", nonce));
                return response;
            }
            nonce_header = Some(
                shared
                    .nonces
                    .for_success(config.dpop_nonce_rotates_on_success),
            );
        }
        jkt = Some(checked.jkt);
    }

    let serial = state.tokens_issued.fetch_add(1, Ordering::SeqCst);
    let token = format!("lt-{serial}-{:016x}", random_u64());
    state.tokens.lock().unwrap().insert(
        token.clone(),
        Issued {
            client_id,
            expires: Instant::now() + Duration::from_secs(config.ttl_secs),
            revoked: false,
            jkt: jkt.clone(),
        },
    );
    let token_type = if jkt.is_some() { "DPoP" } else { "Bearer" };
    call.token_type = Some(token_type.into());
    call.access_token = Some(token.clone());
    call.jkt = jkt;
    let scope = config
        .scope
        .map(|s| format!(r#","scope":"{s}""#))
        .unwrap_or_default();
    let mut response = Response::json(
        200,
        format!(
            r#"{{"access_token":"{token}","token_type":"{token_type}","expires_in":{}{scope}}}"#,
            config.ttl_secs
        ),
    );
    if let Some(nonce) = nonce_header {
        response.headers.push(("DPoP-Nonce", nonce));
    }
    response
}

/// Checks a `private_key_jwt` client assertion (RFC 7523 §3) and returns the client id.
fn check_client_assertion(
    request: &Request,
    form: &[(String, String)],
    state: &State,
    config: &ServerConfig,
    now: i64,
) -> Result<String, String> {
    let field = |name: &str| {
        form.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    if field("client_assertion_type") != Some(JWT_BEARER_ASSERTION) {
        return Err(format!(
            "client_assertion_type is not {JWT_BEARER_ASSERTION}"
        ));
    }
    let assertion = field("client_assertion").ok_or("no client_assertion")?;
    if request.header("authorization").is_some() || field("client_secret").is_some() {
        return Err("more than one client authentication method (RFC 6749 §2.3)".into());
    }
    let jwt = Jwt::decode(assertion).map_err(|e| format!("client_assertion: {e}"))?;
    let alg = jwt.algorithm()?;
    let claims = &jwt.claims;
    let iss = claims["iss"].as_str().ok_or("no iss claim")?;
    if claims["sub"].as_str() != Some(iss) {
        return Err("sub is not iss (both must be the client id)".into());
    }
    if field("client_id").is_some_and(|id| id != iss) {
        return Err("client_id is not the assertion's iss".into());
    }
    let registered = config
        .jwt_clients
        .iter()
        .find(|(id, _)| id == iss)
        .map(|(_, jwk)| public_jwk_json(jwk))
        .ok_or("no private_key_jwt client has this id")?;
    let (_, jwk_text) = jwk_thumbprint(&registered)?;
    check_key_fits(alg, &registered, &jwt.signature)?;
    let host = request.host(state);
    let audiences = [format!("http://{host}/token"), format!("http://{host}")];
    let aud_ok = match claims.get("aud") {
        Some(Value::String(aud)) => audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|b| a == b))),
        _ => false,
    };
    if !aud_ok {
        return Err("aud names neither the token endpoint nor the issuer".into());
    }
    let skew = i64::try_from(config.clock_skew.as_secs()).unwrap_or(i64::MAX);
    let exp = int_member(claims, "exp").ok_or("no integer exp claim")?;
    if now > exp.saturating_add(skew) {
        return Err("the assertion has expired".into());
    }
    for name in ["iat", "nbf"] {
        match claims.get(name) {
            None => {}
            Some(_) => {
                let at = int_member(claims, name).ok_or(format!("{name} is not an integer"))?;
                if at > now.saturating_add(skew) {
                    return Err(format!("{name} is in the future"));
                }
            }
        }
    }
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or("no jti claim")?;
    if let Some(verifier) = &config.jws_verifier {
        verifier
            .verify(assertion, &jwk_text)
            .map_err(|e| format!("the assertion's signature does not verify: {e}"))?;
    }
    let first = state.shared.lock().unwrap().first_use(
        format!("assertion {iss} {jti}"),
        exp.saturating_add(skew),
        now,
    );
    if !first {
        return Err("the assertion's jti was used before (replay)".into());
    }
    Ok(iss.to_owned())
}

/// What a DPoP proof says, once its shape, key and signature are checked.
struct CheckedProof {
    jkt: String,
    nonce: Option<String>,
    ath: Option<String>,
}

/// Checks a DPoP proof (RFC 9449 §4.3) for a request, except its nonce and
/// `ath`, which the caller checks (they fail differently per endpoint).
fn check_proof(
    proof: &str,
    method: &str,
    htu: &str,
    state: &State,
    config: &ServerConfig,
    now: i64,
) -> Result<CheckedProof, String> {
    let jwt = Jwt::decode(proof)?;
    if jwt.header["typ"].as_str() != Some("dpop+jwt") {
        return Err("typ is not dpop+jwt".into());
    }
    let alg = jwt.algorithm()?;
    let jwk = jwt.header.get("jwk").ok_or("no jwk header")?;
    let (jkt, jwk_text) = jwk_thumbprint(jwk)?;
    check_key_fits(alg, jwk, &jwt.signature)?;
    let claims = &jwt.claims;
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or("no jti claim")?;
    if claims["htm"].as_str() != Some(method) {
        return Err(format!("htm is not {method}"));
    }
    if claims["htu"].as_str() != Some(htu) {
        return Err(format!("htu is not {htu}"));
    }
    let iat = int_member(claims, "iat").ok_or("no integer iat claim")?;
    let skew = i64::try_from(config.clock_skew.as_secs()).unwrap_or(i64::MAX);
    if iat.abs_diff(now) > skew.unsigned_abs() {
        return Err("iat is too far from the server clock".into());
    }
    if let Some(verifier) = &config.jws_verifier {
        verifier
            .verify(proof, &jwk_text)
            .map_err(|e| format!("the proof's signature does not verify: {e}"))?;
    }
    let first = state.shared.lock().unwrap().first_use(
        format!("proof {jkt} {jti}"),
        iat.saturating_add(skew),
        now,
    );
    if !first {
        return Err("the proof's jti was used before (replay)".into());
    }
    Ok(CheckedProof {
        jkt,
        nonce: claims["nonce"].as_str().map(str::to_owned),
        ath: claims["ath"].as_str().map(str::to_owned),
    })
}

fn api(request: &Request, state: &State) -> Response {
    state.api_requests.fetch_add(1, Ordering::SeqCst);
    let mut call = RecordedCall::new(Endpoint::Api, request, state);
    let response = api_answer(request, state, &mut call);
    if response.status == 401 {
        state.api_rejected.fetch_add(1, Ordering::SeqCst);
    }
    state.record(call, Some(&response));
    response
}

fn api_answer(request: &Request, state: &State, call: &mut RecordedCall) -> Response {
    let authorization = request.header("authorization");
    let (scheme, token) = authorization
        .and_then(|value| value.split_once(' '))
        .map_or(("", ""), |(scheme, token)| (scheme, token.trim()));
    let bearer = scheme.eq_ignore_ascii_case("bearer");
    let dpop = scheme.eq_ignore_ascii_case("dpop");
    let forced = {
        let mut shared = state.shared.lock().unwrap();
        shared.last_api_authorization = Some(authorization.map(str::to_owned));
        matches!(
            shared.api_faults.pop_front(),
            Some(ApiFault::UnauthorizedOnce)
        )
    };
    let binding = {
        let mut tokens = state.tokens.lock().unwrap();
        match tokens.get_mut(token).filter(|_| bearer || dpop) {
            None => Err(("unknown token", false)),
            Some(issued) if forced => {
                issued.revoked = true;
                Err(("revoked", issued.jkt.is_some()))
            }
            Some(issued) if issued.revoked => Err(("revoked", issued.jkt.is_some())),
            Some(issued) if Instant::now() >= issued.expires => {
                Err(("expired", issued.jkt.is_some()))
            }
            Some(issued) => Ok((issued.jkt.clone(), issued.client_id.clone())),
        }
    };
    let ok = |client_id: &str| {
        let path = request.path.split(['?', '#']).next().unwrap_or_default();
        if path == HEALTH_RECORDS_PATH {
            return Response::json(200, health_records(client_id));
        }
        Response::json(
            200,
            format!(r#"{{"ok":true,"bytes_received":{}}}"#, request.body.len()),
        )
    };
    let (bound, client_id) = match binding {
        Err((reason, bound)) if bound || dpop => {
            return challenge(call, "DPoP", "invalid_token", reason);
        }
        Err((reason, _)) => {
            call.error = Some("invalid_token".into());
            call.reason = Some(reason.into());
            return Response {
                status: 401,
                headers: vec![("WWW-Authenticate", r#"Bearer error="invalid_token""#.into())],
                body: Vec::new(),
            };
        }
        Ok((None, client_id)) if bearer => return ok(&client_id),
        Ok((None, _)) => {
            let reason = "a token not bound to a DPoP key, presented with the DPoP scheme";
            return challenge(call, "DPoP", "invalid_token", reason);
        }
        Ok((Some(_), _)) if bearer => {
            let reason = "a DPoP-bound token presented as Bearer";
            return challenge(call, "DPoP", "invalid_token", reason);
        }
        Ok((Some(jkt), client_id)) => (jkt, client_id),
    };
    let config = state.config.lock().unwrap().clone();
    let now = state.now_secs(&config);
    let proof = match request.dpop_proof() {
        Ok(Some(proof)) => proof,
        Ok(None) => return challenge(call, "DPoP", "invalid_dpop_proof", "no DPoP proof"),
        Err(reason) => return challenge(call, "DPoP", "invalid_dpop_proof", &reason),
    };
    let checked = match check_proof(
        proof,
        &request.method,
        &request.htu(state),
        state,
        &config,
        now,
    ) {
        Ok(checked) => checked,
        Err(reason) => return challenge(call, "DPoP", "invalid_dpop_proof", &reason),
    };
    if checked.ath.as_deref() != Some(sha256_base64url(token.as_bytes()).as_str()) {
        let reason = "ath is not the hash of the access token";
        return challenge(call, "DPoP", "invalid_dpop_proof", reason);
    }
    if checked.jkt != bound {
        let reason = "the proof's key is not the key the token is bound to";
        return challenge(call, "DPoP", "invalid_dpop_proof", reason);
    }
    let mut nonce_header = None;
    if config.dpop_nonce_required_at_api {
        let mut shared = state.shared.lock().unwrap();
        if !shared.nonces.accepts(checked.nonce.as_deref()) {
            let nonce = shared.nonces.current();
            drop(shared);
            let reason = match checked.nonce {
                None => "Resource server requires nonce in DPoP proof",
                Some(_) => "the DPoP proof's nonce is not the current one",
            };
            let mut response = challenge(call, "DPoP", "use_dpop_nonce", reason);
            response.headers.push(("DPoP-Nonce", nonce));
            return response;
        }
        nonce_header = Some(
            shared
                .nonces
                .for_success(config.dpop_nonce_rotates_on_success),
        );
    }
    let mut response = ok(&client_id);
    if let Some(nonce) = nonce_header {
        response.headers.push(("DPoP-Nonce", nonce));
    }
    response
}

/// The [`HEALTH_RECORDS_PATH`] document: a few fixed, obviously synthetic
/// records (no real data in a fixture), and the client the token was issued
/// to, so a service can check which identity its call went out under.
fn health_records(client_id: &str) -> String {
    json!({
        "client_id": client_id,
        "records": [
            {"id": "hr-0001", "patient": "synthetic-patient-1", "kind": "immunization", "status": "final", "recorded": "2024-01-15"},
            {"id": "hr-0002", "patient": "synthetic-patient-1", "kind": "allergy", "status": "active", "recorded": "2024-03-02"},
            {"id": "hr-0003", "patient": "synthetic-patient-2", "kind": "lab-result", "status": "preliminary", "recorded": "2024-05-20"},
        ],
        "synthetic": true,
    })
    .to_string()
}

/// A 401 with a `WWW-Authenticate` challenge (RFC 6750 §3, RFC 9449 §7.1).
fn challenge(call: &mut RecordedCall, scheme: &str, error: &str, reason: &str) -> Response {
    call.error = Some(error.to_owned());
    call.reason = Some(reason.to_owned());
    let description: String = reason
        .chars()
        .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
        .collect();
    let mut value = format!(r#"{scheme} error="{error}", error_description="{description}""#);
    if scheme == "DPoP" {
        value.push_str(&format!(r#", algs="{DPOP_ALGS}""#));
    }
    Response {
        status: 401,
        headers: vec![("WWW-Authenticate", value)],
        body: Vec::new(),
    }
}

/// An OAuth error response with a description, recorded on the call.
fn refuse(call: &mut RecordedCall, status: u16, code: &str, reason: String) -> Response {
    let body = json!({"error": code, "error_description": reason}).to_string();
    call.error = Some(code.to_owned());
    call.reason = Some(reason);
    Response::json(status, body)
}

fn oauth_error(status: u16, code: &str) -> Response {
    Response::json(status, format!(r#"{{"error":"{code}"}}"#))
}

// ---- JWTs, without a JOSE library --------------------------------------------

/// A compact JWS, decoded but not verified.
struct Jwt {
    header: Value,
    claims: Value,
    signature: Vec<u8>,
}

impl Jwt {
    fn decode(text: &str) -> Result<Jwt, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            return Err("not a compact JWS (three parts)".into());
        };
        let object = |part: &str, what: &str| -> Result<Value, String> {
            let bytes = base64url_decode(part).ok_or(format!("{what} is not base64url"))?;
            let text = String::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))?;
            match parse_json(&text).map_err(|e| format!("{what} is not JSON: {e}"))? {
                object @ Value::Object(_) => Ok(object),
                _ => Err(format!("{what} is not a JSON object")),
            }
        };
        let signature = base64url_decode(signature)
            .filter(|s| !s.is_empty())
            .ok_or("the signature is missing or not base64url")?;
        Ok(Jwt {
            header: object(header, "the header")?,
            claims: object(claims, "the claims")?,
            signature,
        })
    }

    /// The `alg`, if asymmetric (never `none`, never HMAC).
    fn algorithm(&self) -> Result<&str, String> {
        let alg = self.header["alg"].as_str().ok_or("no alg header")?;
        if ASYMMETRIC_ALGS.contains(&alg) {
            Ok(alg)
        } else {
            Err(format!("alg {alg:?} is not an asymmetric JWS algorithm"))
        }
    }
}

/// Whether `alg` fits the key's type and curve, and the signature its length
/// (ECDSA in JOSE is the fixed-size `r || s`, never DER; RFC 7518 §3.4).
fn check_key_fits(alg: &str, jwk: &Value, signature: &[u8]) -> Result<(), String> {
    let kty = jwk["kty"].as_str().unwrap_or_default();
    let crv = jwk["crv"].as_str().unwrap_or_default();
    let (fits, length) = match alg {
        "ES256" => (kty == "EC" && crv == "P-256", Some(64)),
        "ES384" => (kty == "EC" && crv == "P-384", Some(96)),
        "ES512" => (kty == "EC" && crv == "P-521", Some(132)),
        "EdDSA" if crv == "Ed448" => (kty == "OKP", Some(114)),
        "EdDSA" => (kty == "OKP" && crv == "Ed25519", Some(64)),
        _ => (kty == "RSA", None),
    };
    if !fits {
        return Err(format!("alg {alg} does not fit a {kty} {crv} key"));
    }
    if length.is_some_and(|n| n != signature.len()) {
        return Err(format!(
            "a {alg} signature of {} bytes (JOSE wants the fixed-size form)",
            signature.len()
        ));
    }
    Ok(())
}

/// Private JWK members, which a public key must not have.
const PRIVATE_JWK_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// The RFC 7638 thumbprint of a public JWK, and the canonical JSON it hashes
/// (also a JWK holding just the public key).
fn jwk_thumbprint(jwk: &Value) -> Result<(String, String), String> {
    if !jwk.is_object() {
        return Err("jwk is not a JSON object".into());
    }
    if let Some(name) = PRIVATE_JWK_MEMBERS.iter().find(|n| jwk.get(n).is_some()) {
        return Err(format!("jwk has the private member {name:?}"));
    }
    let required: &[&str] = match jwk["kty"].as_str() {
        Some("EC") => &["crv", "kty", "x", "y"],
        Some("OKP") => &["crv", "kty", "x"],
        Some("RSA") => &["e", "kty", "n"],
        other => return Err(format!("unsupported jwk kty {other:?}")),
    };
    let mut members = BTreeMap::new();
    for name in required {
        let value = jwk[name]
            .as_str()
            .ok_or(format!("jwk member {name} is missing or not a string"))?;
        members.insert(*name, value);
    }
    // Sorted by name, no whitespace, strings escaped by serde_json (RFC 7638 §3.3).
    let canonical = serde_json::to_string(&members).map_err(|e| e.to_string())?;
    Ok((sha256_base64url(canonical.as_bytes()), canonical))
}

/// A registered public key as JSON.
fn public_jwk_json(jwk: &PublicJwk) -> Value {
    Value::Object(jwk.members().clone())
}

/// An integer member: a JSON number without a fraction, within ±2^53.
fn int_member(object: &Value, name: &str) -> Option<i64> {
    const MAX: u64 = 1 << 53;
    let member = object.get(name)?;
    if let Some(n) = member.as_i64() {
        return (n.unsigned_abs() <= MAX).then_some(n);
    }
    let n = member.as_f64()?;
    (n.fract() == 0.0 && n.abs() <= MAX as f64).then_some(n as i64)
}

/// Parses JSON (RFC 8259) with serde_json, refusing duplicate member names at
/// any depth (RFC 7515 §4): serde_json's `Value` would silently keep the last
/// one, so a first pass checks for them ([`NoDuplicateMembers`]) and the
/// second builds the `Value`. Nesting is bounded by serde_json's recursion
/// limit (128: at most 127 nested arrays and objects).
fn parse_json(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<NoDuplicateMembers>(text)?;
    serde_json::from_str(text)
}

/// Any JSON value in which no object repeats a member name: checked, not kept.
struct NoDuplicateMembers;

impl<'de> Deserialize<'de> for NoDuplicateMembers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NoDuplicateMembers)
    }
}

impl<'de> Visitor<'de> for NoDuplicateMembers {
    type Value = NoDuplicateMembers;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Self, A::Error> {
        while items.next_element::<NoDuplicateMembers>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut members: A) -> Result<Self, A::Error> {
        let mut names = HashSet::new();
        while let Some(name) = members.next_key::<String>()? {
            if names.contains(&name) {
                return Err(de::Error::custom(format_args!("duplicate member {name:?}")));
            }
            members.next_value::<NoDuplicateMembers>()?;
            names.insert(name);
        }
        Ok(self)
    }
}

fn form_decode(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(name), percent_decode(value))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn percent_decode(text: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 6749 §2.3.1: `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn decode_basic(header: &str) -> Option<(String, String)> {
    let encoded = header.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((percent_decode(id), percent_decode(secret)))
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64URL_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Standard base64 (padding tolerated).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    decode_base64(text, BASE64_ALPHABET)
}

/// base64url as JOSE uses it (RFC 7515 §2): URL-safe alphabet, no padding.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    if text.contains('=') || text.len() % 4 == 1 {
        return None;
    }
    decode_base64(text, BASE64URL_ALPHABET)
}

fn decode_base64(text: &str, alphabet: &[u8; 64]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|&c| c != b'=') {
        let value = alphabet.iter().position(|&a| a == c)? as u32;
        buffer = (buffer << 6) | value;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(Instant::now().elapsed().as_nanos());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_size_near_usize_max_is_refused_not_an_overflow() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server_side, _) = listener.accept().unwrap();
        server_side
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(b"1\r\na\r\nffffffffffffffff\r\n").unwrap();
        let error = read_chunked(&mut BufReader::new(server_side)).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}");
    }

    #[test]
    fn form_decoding() {
        assert_eq!(percent_decode("a+b%20c%3A%zz%4"), "a b c:%zz%4");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
        assert_eq!(
            form_decode(b"grant_type=client_credentials&scope=a+b&&x"),
            vec![
                ("grant_type".into(), "client_credentials".into()),
                ("scope".into(), "a b".into()),
                ("x".into(), String::new())
            ]
        );
    }

    #[test]
    fn basic_credentials_decoding() {
        // base64("my+client:p%3Aw") per RFC 6749 §2.3.1.
        assert_eq!(
            decode_basic("Basic bXkrY2xpZW50OnAlM0F3"),
            Some(("my client".into(), "p:w".into()))
        );
        assert_eq!(decode_basic("Bearer x"), None);
        assert_eq!(decode_basic("Basic !!!"), None);
    }

    #[test]
    fn base64url_decoding() {
        assert_eq!(base64url_decode("").unwrap(), b"");
        assert_eq!(base64url_decode("Zg").unwrap(), b"f");
        assert_eq!(base64url_decode("Zm8").unwrap(), b"fo");
        assert_eq!(base64url_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64url_decode("-_8").unwrap(), [0xfb, 0xff]);
        for bad in ["Zg==", "+/8", "Z", "Zm9v!", "Zm 9v"] {
            assert!(base64url_decode(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn json_parsing() {
        let value = parse_json(
            r#"{"n": -12, "f": 1.5e3, "r": 1.25, "max": 9007199254740992,
                "over": 9007199254740993, "s": "1", "l": [{"a": 1}, {"a": 2}]}"#,
        )
        .unwrap();
        assert_eq!(int_member(&value, "n"), Some(-12));
        assert_eq!(int_member(&value, "f"), Some(1500));
        assert_eq!(int_member(&value, "max"), Some(1 << 53));
        for name in ["r", "over", "s", "l", "missing"] {
            assert_eq!(int_member(&value, name), None, "{name}");
        }
        // RFC 7515 §4: duplicate member names are refused, at any depth and
        // however the name is escaped.
        for duplicate in [
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"\u0061":2}"#,
            r#"{"x":{"a":1,"a":1}}"#,
            r#"[{"a":[{"b":0,"b":0}]}]"#,
        ] {
            let error = parse_json(duplicate).unwrap_err().to_string();
            assert!(
                error.starts_with("duplicate member "),
                "{duplicate}: {error}"
            );
        }
        let nested = |depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(parse_json(&nested(127)).is_ok());
        assert!(parse_json(&nested(128)).is_err());
        assert!(parse_json("[1] x").is_err());
    }

    #[test]
    fn rfc_7638_thumbprint() {
        // RFC 7638 §3.1, with members the thumbprint ignores.
        let jwk = parse_json(
            r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#,
        )
        .unwrap();
        let (thumbprint, canonical) = jwk_thumbprint(&jwk).unwrap();
        assert_eq!(thumbprint, "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
        assert!(canonical.starts_with(r#"{"e":"AQAB","kty":"RSA","n":"0vx7"#));
        // Escaped as serde_json does, the same way as the client's JOSE code.
        let odd = parse_json(r#"{"x":"a\"\\\u0001/","crv":"\u00e9","kty":"OKP"}"#).unwrap();
        assert_eq!(
            jwk_thumbprint(&odd).unwrap().1,
            r#"{"crv":"é","kty":"OKP","x":"a\"\\\u0001/"}"#
        );
        for bad in [
            r#"{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"secret"}"#,
            r#"{"kty":"EC","crv":"P-256","x":"a"}"#,
            r#"{"kty":"oct","k":"a"}"#,
            r#"{"kty":"OKP","crv":"Ed25519","x":1}"#,
            r#"["kty"]"#,
        ] {
            assert!(jwk_thumbprint(&parse_json(bad).unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn jwt_decoding_and_algorithms() {
        // {"alg":"ES256","typ":"dpop+jwt"} . {"jti":"j","iat":5} . 64 bytes
        let jwt = Jwt::decode(&format!(
            "eyJhbGciOiJFUzI1NiIsInR5cCI6ImRwb3Arand0In0.eyJqdGkiOiJqIiwiaWF0Ijo1fQ.{}",
            "A".repeat(86)
        ))
        .unwrap();
        assert_eq!(jwt.algorithm().unwrap(), "ES256");
        assert_eq!(jwt.header["typ"].as_str(), Some("dpop+jwt"));
        assert_eq!(int_member(&jwt.claims, "iat"), Some(5));
        assert_eq!(jwt.signature.len(), 64);
        let ec = parse_json(r#"{"kty":"EC","crv":"P-256","x":"a","y":"b"}"#).unwrap();
        let ed = parse_json(r#"{"kty":"OKP","crv":"Ed25519","x":"a"}"#).unwrap();
        assert!(check_key_fits("ES256", &ec, &[0; 64]).is_ok());
        assert!(check_key_fits("ES256", &ec, &[0; 70]).is_err(), "DER");
        assert!(check_key_fits("EdDSA", &ec, &[0; 64]).is_err());
        assert!(check_key_fits("EdDSA", &ed, &[0; 64]).is_ok());
        assert!(check_key_fits("RS256", &ed, &[0; 256]).is_err());
        // {"alg":"ES256","alg":"none"}, {"jwk":{"kty":"EC","kty":"RSA"}}
        for (header, duplicate) in [
            ("eyJhbGciOiJFUzI1NiIsImFsZyI6Im5vbmUifQ", "alg"),
            ("eyJqd2siOnsia3R5IjoiRUMiLCJrdHkiOiJSU0EifX0", "kty"),
        ] {
            let error = Jwt::decode(&format!("{header}.e30.AA")).err().unwrap();
            assert!(
                error.starts_with(&format!(
                    "the header is not JSON: duplicate member {duplicate:?}"
                )),
                "{error}"
            );
        }
        // alg none, HMAC, two parts, bad base64url, not an object.
        for bad in [
            "eyJhbGciOiJub25lIn0.e30.AA",
            "eyJhbGciOiJIUzI1NiJ9.e30.AA",
            "eyJhbGciOiJFUzI1NiJ9.e30",
            "eyJhbGciOiJFUzI1NiJ9.e30=.AA",
            "eyJhbGciOiJFUzI1NiJ9.WzFd.AA",
            "eyJhbGciOiJFUzI1NiJ9.e30.",
        ] {
            assert!(
                Jwt::decode(bad)
                    .and_then(|j| j.algorithm().map(drop))
                    .is_err(),
                "{bad}"
            );
        }
    }

    /// One HTTP/1.1 request with `Connection: close`: the status and body.
    fn exchange(addr: SocketAddr, head: &str, body: &str) -> (u16, String) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "{head}\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer[9..12].parse().unwrap();
        let body = answer.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[test]
    fn listens_where_told_on_loopback_only() {
        let config = |listen: &str| ServerConfig {
            listen: Some(listen.parse().unwrap()),
            ..ServerConfig::default()
        };
        let first = LocalAuthServer::start(config("127.0.0.1:0")).unwrap();
        assert_eq!(first.addr().ip().to_string(), "127.0.0.1");
        assert_ne!(first.addr().port(), 0);
        // The address is taken as given: the same one again is in use.
        let again = LocalAuthServer::start(config(&first.addr().to_string()));
        assert_eq!(again.err().unwrap().kind(), io::ErrorKind::AddrInUse);
        for public in ["0.0.0.0:0", "192.0.2.1:0", "[::]:0"] {
            let error = LocalAuthServer::start(config(public)).err().unwrap();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{public}");
            assert!(error.to_string().contains("loopback"), "{error}");
        }
    }

    #[test]
    fn health_records_answer_json_naming_the_client_and_calls_are_followed() {
        let server = LocalAuthServer::start(ServerConfig {
            clients: vec![("svc".into(), "pw".into())],
            ..ServerConfig::default()
        })
        .unwrap();
        let addr = server.addr();
        let (status, body) = exchange(
            addr,
            "POST /token HTTP/1.1\r\nContent-Type: application/x-www-form-urlencoded",
            "grant_type=client_credentials&client_id=svc&client_secret=pw",
        );
        assert_eq!(status, 200, "{body}");
        let token = parse_json(&body).unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        let (seen_calls, seen) = server.calls_after(0, Duration::from_secs(10));
        assert_eq!((seen_calls.len(), seen), (1, 1));
        assert_eq!(seen_calls[0].endpoint, Endpoint::Token);
        let get = |path: &str| {
            exchange(
                addr,
                &format!("GET {path} HTTP/1.1\r\nAuthorization: Bearer {token}"),
                "",
            )
        };
        let (status, body) = get(&format!("{HEALTH_RECORDS_PATH}?patient=1"));
        assert_eq!(status, 200, "{body}");
        let records = parse_json(&body).unwrap();
        assert_eq!(records["client_id"], "svc");
        assert_eq!(records["records"].as_array().map(Vec::len), Some(3));
        // Every other API path keeps its generic answer.
        assert_eq!(
            get("/api/v1/other"),
            (200, r#"{"ok":true,"bytes_received":0}"#.to_owned())
        );
        let (newer, seen) = server.calls_after(seen, Duration::from_secs(10));
        assert_eq!(seen, 3);
        assert_eq!(
            newer.iter().map(|c| c.status).collect::<Vec<_>>(),
            [200, 200]
        );
        assert!(newer[0].url.ends_with("/health-records?patient=1"));
        // Nothing newer: the wait ends at its bound, with nothing.
        let (none, still) = server.calls_after(seen, Duration::from_millis(10));
        assert!(none.is_empty());
        assert_eq!(still, 3);
    }

    #[test]
    fn nonces_rotate_and_only_the_current_one_is_accepted() {
        let mut nonces = Nonces {
            prefix: "nonce-1".into(),
            ..Nonces::default()
        };
        assert!(!nonces.accepts(None));
        assert!(!nonces.accepts(Some("nonce-1-1")));
        assert_eq!(nonces.current(), "nonce-1-1");
        assert!(nonces.accepts(Some("nonce-1-1")));
        assert_eq!(nonces.for_success(false), "nonce-1-1");
        assert_eq!(nonces.for_success(true), "nonce-1-2");
        assert!(!nonces.accepts(Some("nonce-1-1")));
        assert_eq!(nonces.issued, ["nonce-1-1", "nonce-1-2"]);
    }
}
