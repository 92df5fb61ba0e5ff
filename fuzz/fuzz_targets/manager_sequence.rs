//! A stateful target: a `TokenManager` with two clients (three cache keys)
//! driven by an arbitrary sequence of inputs, as an adapter and a hostile
//! world would feed it.
//!
//! The harness plays the adapter: after every input it drains the queued
//! token requests, the events and the snapshots, and it keeps its own model
//! of what the core may do. Checked after every operation:
//!
//! - no panic, whatever the order of inputs, responses or clock readings;
//! - at most one unanswered token request per key (single-flight), and
//!   `poll_timeout` always covers the deadline of every request in flight;
//! - `Attach` only ever hands out a header that a token response for that
//!   very key created, strictly before the end of its usable life
//!   (`requested_at + L - min(expiry_buffer, L / 4)`, `L` the lifetime
//!   believed from `expires_in`; "now" is the latest monotonic reading handed
//!   to the core, so a clock that goes backwards cannot stretch a token;
//!   `JumpToEdge` probes the exact nanosecond), never after it
//!   was replaced, invalidated, rejected by a resource or expired; a Stale
//!   token comes with a refresh in flight (or a backoff);
//! - `Fetch(id)`, `Wait(id)` and `ForcedRefresh` name a request that is in
//!   flight for that key; `Unavailable` and `BackingOff` end in the future;
//! - a valid token response is accepted with the documented lifetime, unless
//!   it had expired on arrival; a token is never dropped as expired early;
//! - backoffs honour `Retry-After` (capped) and never exceed their caps;
//! - a resource 401 invalidates the cached token only when the request carried
//!   it (compare-and-invalidate) and allows exactly one retry;
//! - published snapshots and `token()` agree with the model;
//! - no error, event or `Unavailable` reply shows a client secret.
#![no_main]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::StatusCode;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use token_keeper::{
    Authorization, BackoffPolicy, ClientAuth, ClientConfig, ClientSecret, Event, ForcedRefresh,
    Instant, InvalidationReason, KeyId, KeyOverrides, ManagerConfig, Now, RefreshPolicy, RequestId,
    ResourceOutcome, ResourceResponse, TokenManager, TokenState, TokenType, TransportError,
    TransportErrorKind,
};

#[derive(Arbitrary, Debug)]
enum Op {
    /// An API call for key `key % 3` asks for a header.
    Authorize {
        key: u8,
    },
    /// The token endpoint answers one of the requests in flight (or, for a
    /// large `pick`, a request that was already answered or given up).
    Respond {
        pick: u8,
        reply: Reply,
    },
    /// A request in flight fails in transport.
    TransportError {
        pick: u8,
    },
    /// The clock moves forward by `ms` milliseconds.
    AdvanceTime {
        ms: u32,
    },
    /// The clock jumps far forward.
    BigJump {
        jump: Jump,
    },
    /// The clock reading goes backwards by `ms` milliseconds.
    TimeBackwards {
        ms: u32,
    },
    /// The clock is set to an edge of key `key % 3`'s state, to probe
    /// off-by-one mistakes at the exact nanosecond.
    JumpToEdge {
        key: u8,
        edge: Edge,
    },
    /// The background task wakes up now.
    HandleTimeout,
    /// The background task sleeps until `poll_timeout` and wakes up.
    SleepUntilTimeout,
    ForceRefresh {
        key: u8,
    },
    Invalidate {
        key: u8,
    },
    /// A protected resource answers a request sent for key `key % 3`.
    Resource401 {
        key: u8,
        status: ResourceStatus,
        carrying: Carrying,
        challenge: Challenge,
        retry: bool,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Jump {
    Minute,
    Hour,
    Day,
    Month,
    Century,
    EndOfTime,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Edge {
    /// The end of the cached token's usable life.
    UsableEnd,
    /// One nanosecond before it.
    JustBeforeUsableEnd,
    /// The end of the published snapshot's fresh period.
    FreshUntil,
    /// The end of the current backoff.
    BackoffEnd,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Reply {
    Ok {
        expires_in: ExpiresIn,
        token_type: TokenTypeText,
        with_scope: bool,
    },
    OAuthError {
        code: OAuthCode,
    },
    /// A 500 with an HTML page.
    ServerError,
    /// An unusable body from a table, with a status from a table.
    Garbage {
        body: u8,
        status: u8,
    },
    /// A body one byte over the limit.
    Huge,
    TooManyRequests {
        retry_after: RetryAfter,
    },
    /// A server that echoes the request (body and Authorization) in its error.
    Echo {
        json: bool,
    },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ExpiresIn {
    Absent,
    Null,
    Secs(u16),
    Zero,
    Negative(u16),
    Text(u16),
    Fraction(u16),
    Max,
    Exponent,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum TokenTypeText {
    Bearer,
    LowerBearer,
    DPoP,
    Mac,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum OAuthCode {
    InvalidClient,
    InvalidScope,
    InvalidTarget,
    UseDpopNonce,
    UnauthorizedClient,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum RetryAfter {
    Absent,
    Secs(u16),
    ImfDate(u16),
    Rfc850Date(u16),
    AsctimeDate(u16),
    PastDate(u16),
    Garbage,
    Enormous,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum ResourceStatus {
    Unauthorized,
    Forbidden,
    Ok,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Carrying {
    /// The header last attached for this key.
    Current,
    /// One of the headers this key had before.
    Old(u8),
    /// A header of another key.
    Foreign,
    /// The request went out without a token.
    Nothing,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Challenge {
    Absent,
    InvalidToken,
    InsufficientScope,
    DPoPNonce,
    Malformed,
}

const KEYS: usize = 3;
const SECRETS: [&str; 2] = ["hunter2", "s3cr3t"];
const MAX_BODY: usize = 4096;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const SEC: u64 = 1_000_000_000;
/// 2026-01-01T00:00:00Z, the wall clock at monotonic zero.
const WALL_ORIGIN: u64 = 1_767_225_600;

fuzz_target!(|ops: Vec<Op>| {
    let mut h = Harness::new();
    for op in ops.into_iter().take(256) {
        h.step(op);
    }
});

struct Pending {
    id: RequestId,
    key: usize,
    requested_at: u64,
    body: String,
    authorization: Option<String>,
}

struct Issued {
    key: usize,
    lifetime: Duration,
    usable_end: u64,
}

/// An `Authorization` answer, copied out of the borrow.
enum Answer {
    Attach {
        header: HeaderValue,
        state: TokenState,
    },
    Fetch(RequestId),
    Wait(RequestId),
    Unavailable {
        text: String,
        retry_at: Instant,
    },
}

/// What the harness expects from the events of the current operation.
#[derive(Default)]
struct Expect {
    /// A token response was delivered for this key: (key, header, lifetime, usable end).
    token: Option<(usize, Vec<u8>, Duration, u64)>,
    /// A 429 asked for at least this delay (before the cap), for this key.
    retry_after: Option<(usize, Duration)>,
    /// A resource 401 for this key carried this header (and no insufficient_scope),
    /// and whether it was the cached token then.
    rejected: Option<(usize, Vec<u8>, bool)>,
    /// The core answered Deliver where, undamped, it would have allowed a
    /// retry: only a `RejectionDamped` event for this key explains that.
    damped: Option<usize>,
}

struct Harness {
    manager: TokenManager,
    keys: [KeyId; KEYS],
    client_of: [usize; KEYS],
    refresh: [RefreshPolicy; 2],
    backoff: [BackoffPolicy; 2],
    /// The clock reading handed to the core (may go backwards), in nanoseconds.
    clock: u64,
    /// The latest reading handed to the core: the core's notion of now
    /// (readings that go backwards do not move it).
    latest: u64,
    pending: Vec<Pending>,
    /// Requests answered or given up, to answer again (at most 8 kept).
    finished: Vec<RequestId>,
    seen_ids: HashSet<RequestId>,
    tokens: HashMap<Vec<u8>, Issued>,
    /// Headers each key had, oldest first.
    history: [Vec<HeaderValue>; KEYS],
    /// The header the core caches for each key, as its events tell.
    cached: [Option<Vec<u8>>; KEYS],
    last_attached: [Option<HeaderValue>; KEYS],
    /// Headers that must never be attached again.
    retired: HashSet<Vec<u8>>,
    backoff_until: [u64; KEYS],
    secrets: Vec<String>,
    next_token: u64,
}

impl Harness {
    fn new() -> Harness {
        let mut manager = TokenManager::new(
            ManagerConfig {
                max_response_body: MAX_BODY,
                request_timeout: REQUEST_TIMEOUT,
                max_keys: 16,
                ..ManagerConfig::default()
            },
            0x5eed,
        );
        let refresh = [
            RefreshPolicy::default(),
            RefreshPolicy {
                expiry_buffer: Duration::from_secs(5),
                refresh_at: 0.5,
                refresh_jitter: 0.3,
                default_lifetime: Duration::from_secs(60),
                max_lifetime: Duration::from_secs(3600),
                proactive: false,
            },
        ];
        let backoff = [
            BackoffPolicy::default(),
            BackoffPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(10),
                jitter: 0.5,
                max_retry_after: Duration::from_secs(120),
            },
        ];
        let a = manager
            .add_client(
                "a",
                ClientConfig::new(
                    "https://auth.example.com/connect/token",
                    "m2m-a",
                    ClientAuth::Basic(ClientSecret::new(SECRETS[0])),
                )
                .unwrap()
                .scope("api")
                .refresh_policy(refresh[0].clone())
                .backoff_policy(backoff[0].clone()),
            )
            .unwrap();
        let b = manager
            .add_client(
                "b",
                ClientConfig::new(
                    "http://127.0.0.1:3000/token",
                    "m2m b",
                    ClientAuth::Post(ClientSecret::new(SECRETS[1])),
                )
                .unwrap()
                .resource("https://api.example.com/")
                .unwrap()
                .refresh_policy(refresh[1].clone())
                .backoff_policy(backoff[1].clone()),
            )
            .unwrap();
        let keys = [
            manager.default_key(a),
            manager.default_key(b),
            manager
                .key(a, &KeyOverrides::new().scope("api admin"))
                .unwrap(),
        ];
        let distinct: HashSet<KeyId> = keys.iter().copied().collect();
        assert_eq!(distinct.len(), KEYS, "distinct requests share a key");
        Harness {
            manager,
            keys,
            client_of: [0, 1, 0],
            refresh,
            backoff,
            clock: 0,
            latest: 0,
            pending: Vec::new(),
            finished: Vec::new(),
            seen_ids: HashSet::new(),
            tokens: HashMap::new(),
            history: Default::default(),
            cached: Default::default(),
            last_attached: Default::default(),
            retired: HashSet::new(),
            backoff_until: [0; KEYS],
            secrets: SECRETS.iter().map(|s| s.to_string()).collect(),
            next_token: 0,
        }
    }

    /// The clock reading, to hand to the core right away: the core's notion
    /// of now becomes the latest reading it was handed.
    fn now(&mut self) -> Now {
        self.latest = self.latest.max(self.clock);
        Now::new(Instant::from_nanos(self.clock), wall(self.clock))
    }

    fn key_index(&self, key: KeyId) -> usize {
        self.keys
            .iter()
            .position(|&k| k == key)
            .expect("the core used a key it never handed out")
    }

    fn step(&mut self, op: Op) {
        let mut expect = Expect::default();
        let mut answer = None;
        let mut forced = None;
        match op {
            Op::Authorize { key } => {
                let k = key as usize % KEYS;
                let now = self.now();
                answer = Some((k, self.authorize(k, now)));
            }
            Op::Respond { pick, reply } => self.respond(pick, reply, &mut expect),
            Op::TransportError { pick } => match self.pick(pick) {
                Some(Ok(index)) => {
                    let now = self.now();
                    let p = self.pending.remove(index);
                    self.remember_finished(p.id);
                    let error =
                        TransportError::new(TransportErrorKind::Io, "connection reset by peer");
                    assert!(
                        self.manager
                            .handle_transport_error(p.id, error, now)
                            .is_ok(),
                        "a request in flight is unknown to the core"
                    );
                }
                Some(Err(id)) => {
                    let now = self.now();
                    let error = TransportError::new(TransportErrorKind::Timeout, "timed out");
                    assert!(
                        self.manager.handle_transport_error(id, error, now).is_err(),
                        "a finished request was accepted again"
                    );
                }
                None => {}
            },
            Op::AdvanceTime { ms } => {
                self.clock = self.clock.saturating_add(u64::from(ms) * 1_000_000);
            }
            Op::BigJump { jump } => {
                let by = match jump {
                    Jump::Minute => 60 * SEC,
                    Jump::Hour => 3600 * SEC,
                    Jump::Day => 86_400 * SEC,
                    Jump::Month => 30 * 86_400 * SEC,
                    Jump::Century => 100 * 365 * 86_400 * SEC,
                    Jump::EndOfTime => u64::MAX,
                };
                self.clock = self.clock.saturating_add(by);
            }
            Op::TimeBackwards { ms } => {
                self.clock = self.clock.saturating_sub(u64::from(ms) * 1_000_000);
            }
            Op::JumpToEdge { key, edge } => {
                let k = key as usize % KEYS;
                let usable_end = self.cached[k].as_ref().map(|h| self.tokens[h].usable_end);
                let at = match edge {
                    Edge::UsableEnd => usable_end,
                    Edge::JustBeforeUsableEnd => usable_end.map(|t| t.saturating_sub(1)),
                    Edge::FreshUntil => self
                        .manager
                        .snapshot(self.keys[k])
                        .map(|s| s.fresh_until().as_nanos()),
                    Edge::BackoffEnd => Some(self.backoff_until[k]).filter(|&t| t > 0),
                };
                if let Some(at) = at {
                    self.clock = at;
                }
            }
            Op::HandleTimeout => {
                let now = self.now();
                self.manager.handle_timeout(now);
            }
            Op::SleepUntilTimeout => {
                if let Some((at, _)) = self.manager.poll_timeout() {
                    self.clock = self.clock.max(at.as_nanos());
                }
                let now = self.now();
                self.manager.handle_timeout(now);
            }
            Op::ForceRefresh { key } => {
                let k = key as usize % KEYS;
                let now = self.now();
                let result = self.manager.force_refresh(self.keys[k], now);
                forced = Some((k, result));
            }
            Op::Invalidate { key } => {
                let k = key as usize % KEYS;
                let now = self.now();
                self.manager.invalidate(self.keys[k], now);
            }
            Op::Resource401 {
                key,
                status,
                carrying,
                challenge,
                retry,
            } => self.resource(
                key as usize % KEYS,
                status,
                carrying,
                challenge,
                retry,
                &mut expect,
            ),
        }

        self.drain_requests();
        self.drain_events(&mut expect);
        self.drain_snapshots();

        if let Some((k, answer)) = answer {
            self.check_answer(k, answer);
        }
        if let Some((k, result)) = forced {
            match result {
                ForcedRefresh::Started(id) | ForcedRefresh::InFlight(id) => assert!(
                    self.pending.iter().any(|p| p.id == id && p.key == k),
                    "force_refresh named a request that is not in flight for the key"
                ),
                ForcedRefresh::BackingOff { retry_at } => assert!(
                    retry_at.as_nanos() > self.latest,
                    "force_refresh reports a backoff that has already ended"
                ),
            }
        }
        self.check_state();
    }

    fn authorize(&mut self, k: usize, now: Now) -> Answer {
        match self.manager.authorize(self.keys[k], now) {
            Authorization::Attach(attach) => Answer::Attach {
                header: attach.header().clone(),
                state: attach.state(),
            },
            Authorization::Fetch(id) => Answer::Fetch(id),
            Authorization::Wait(id) => Answer::Wait(id),
            Authorization::Unavailable { error, retry_at } => Answer::Unavailable {
                text: format!("{error} {error:?}"),
                retry_at,
            },
        }
    }

    fn check_answer(&mut self, k: usize, answer: Answer) {
        match answer {
            Answer::Attach { header, state } => {
                let bytes = header.as_bytes().to_vec();
                let issued = self
                    .tokens
                    .get(&bytes)
                    .expect("attached a header that no token response created");
                assert_eq!(issued.key, k, "attached another key's token");
                assert!(
                    self.latest < issued.usable_end,
                    "attached a token at {} ns, at or after its usable end {} ns",
                    self.latest,
                    issued.usable_end
                );
                assert!(
                    !self.retired.contains(&bytes),
                    "attached a token that was replaced, invalidated, rejected or expired"
                );
                assert!(header.is_sensitive(), "the header is not marked sensitive");
                if state == TokenState::Stale {
                    assert!(
                        self.pending.iter().any(|p| p.key == k)
                            || self.latest < self.backoff_until[k],
                        "a Stale token was attached with no refresh in flight and no backoff"
                    );
                }
                self.last_attached[k] = Some(header);
            }
            Answer::Fetch(id) | Answer::Wait(id) => assert!(
                self.pending.iter().any(|p| p.id == id && p.key == k),
                "Fetch/Wait named a request that is not in flight for the key"
            ),
            Answer::Unavailable { text, retry_at } => {
                assert!(
                    retry_at.as_nanos() > self.latest,
                    "Unavailable with a backoff that has already ended"
                );
                assert!(
                    !self.pending.iter().any(|p| p.key == k),
                    "Unavailable although a request is in flight"
                );
                self.assert_no_secret(&text, "an Unavailable error");
            }
        }
    }

    /// `Ok(index into pending)`, or `Err(id)` of a finished request.
    fn pick(&self, pick: u8) -> Option<Result<usize, RequestId>> {
        if !self.pending.is_empty() && (pick < 224 || self.finished.is_empty()) {
            Some(Ok(pick as usize % self.pending.len()))
        } else if !self.finished.is_empty() {
            Some(Err(self.finished[pick as usize % self.finished.len()]))
        } else {
            None
        }
    }

    fn remember_finished(&mut self, id: RequestId) {
        if self.finished.len() == 8 {
            self.finished.remove(0);
        }
        self.finished.push(id);
    }

    fn respond(&mut self, pick: u8, reply: Reply, expect: &mut Expect) {
        let Some(choice) = self.pick(pick) else {
            return;
        };
        let now = self.now();
        let target = match choice {
            Err(id) => {
                let response = http::Response::builder()
                    .status(200)
                    .body(br#"{"access_token":"late","token_type":"Bearer"}"#.to_vec())
                    .unwrap();
                assert!(
                    self.manager.handle_response(id, response, now).is_err(),
                    "a finished request was answered again"
                );
                return;
            }
            Ok(index) => self.pending.remove(index),
        };
        self.remember_finished(target.id);
        let client = self.client_of[target.key];
        let mut headers = HeaderMap::new();
        let (status, body): (u16, Vec<u8>) = match reply {
            Reply::Ok {
                expires_in,
                token_type,
                with_scope,
            } => {
                self.next_token += 1;
                // Unique per response, so a header names the response that made it.
                let token = format!(
                    "eyJhbGciOiJSUzI1NiJ9.eyJqdGkiOiI{:x}In0.c2ln-{}",
                    self.next_token, self.next_token
                );
                let (json, model) = match expires_in {
                    ExpiresIn::Absent => (String::new(), None),
                    ExpiresIn::Null => (r#","expires_in":null"#.into(), None),
                    ExpiresIn::Secs(s) => (format!(r#","expires_in":{s}"#), Some(i64::from(s))),
                    ExpiresIn::Zero => (r#","expires_in":0"#.into(), Some(0)),
                    ExpiresIn::Negative(s) => (
                        format!(r#","expires_in":-{}"#, u32::from(s) + 1),
                        Some(-(i64::from(s) + 1)),
                    ),
                    ExpiresIn::Text(s) => {
                        (format!(r#","expires_in":"{s}""#), Some(i64::from(s)))
                    }
                    ExpiresIn::Fraction(s) => {
                        (format!(r#","expires_in":{s}.5"#), Some(i64::from(s)))
                    }
                    ExpiresIn::Max => (
                        r#","expires_in":18446744073709551615"#.into(),
                        Some(i64::MAX),
                    ),
                    ExpiresIn::Exponent => (r#","expires_in":1e300"#.into(), Some(i64::MAX)),
                };
                let (type_text, bearer) = match token_type {
                    TokenTypeText::Bearer => ("Bearer", true),
                    TokenTypeText::LowerBearer => ("bearer", true),
                    TokenTypeText::DPoP => ("DPoP", false),
                    TokenTypeText::Mac => ("mac", false),
                };
                let scope = if with_scope { r#","scope":"api""# } else { "" };
                let body = format!(
                    r#"{{"access_token":"{token}","token_type":"{type_text}"{json}{scope}}}"#
                );
                if bearer {
                    let lifetime = model_lifetime(&self.refresh[client], model);
                    let buffer = self.refresh[client].expiry_buffer.min(lifetime / 4);
                    let usable_end = target
                        .requested_at
                        .saturating_add(nanos(lifetime - buffer));
                    let header = format!("Bearer {token}").into_bytes();
                    self.tokens.insert(
                        header.clone(),
                        Issued {
                            key: target.key,
                            lifetime,
                            usable_end,
                        },
                    );
                    expect.token = Some((target.key, header, lifetime, usable_end));
                }
                (200, body.into_bytes())
            }
            Reply::OAuthError { code } => {
                let (status, body) = match code {
                    OAuthCode::InvalidClient => (
                        401,
                        r#"{"error":"invalid_client","error_description":"client authentication failed"}"#,
                    ),
                    OAuthCode::InvalidScope => (
                        400,
                        r#"{"error":"invalid_scope","error_description":"requested scope is invalid, unknown, or malformed"}"#,
                    ),
                    OAuthCode::InvalidTarget => (
                        400,
                        r#"{"error":"invalid_target","error_uri":"https://auth.example.com/docs/errors#invalid_target"}"#,
                    ),
                    OAuthCode::UseDpopNonce => {
                        headers.insert("dpop-nonce", HeaderValue::from_static("eyJ7S_zG.eyJH0-Z.HX4w-7v"));
                        (
                            400,
                            r#"{"error":"use_dpop_nonce","error_description":"Authorization server requires nonce in DPoP proof"}"#,
                        )
                    }
                    OAuthCode::UnauthorizedClient => (
                        400,
                        r#"{"error":"unauthorized_client","error_description":"client_credentials grant not allowed"}"#,
                    ),
                };
                (status, body.as_bytes().to_vec())
            }
            Reply::ServerError => (
                500,
                b"<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head><body><h1>Internal Server Error</h1></body></html>".to_vec(),
            ),
            Reply::Garbage { body, status } => {
                const BODIES: [&str; 10] = [
                    "",
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                    "{",
                    "[]",
                    "null",
                    r#"{"access_token":5,"token_type":"Bearer"}"#,
                    r#"{"access_token":"a b","token_type":"Bearer"}"#,
                    r#"{"access_token":"","token_type":"Bearer"}"#,
                    r#"{"token_type":"Bearer","expires_in":3600}"#,
                    "\u{feff}{\"access_token\":\"x\",\"token_type\":\"Bearer\"}",
                ];
                const STATUSES: [u16; 9] = [200, 201, 400, 401, 403, 404, 502, 503, 302];
                (
                    STATUSES[status as usize % STATUSES.len()],
                    BODIES[body as usize % BODIES.len()].as_bytes().to_vec(),
                )
            }
            Reply::Huge => {
                let mut body = br#"{"access_token":"x","token_type":"Bearer","pad":""#.to_vec();
                body.resize(MAX_BODY - 1, b'p');
                body.extend_from_slice(br#""}"#);
                (200, body)
            }
            Reply::TooManyRequests { retry_after } => {
                let wall_secs = WALL_ORIGIN.saturating_add(self.clock / SEC);
                let (value, asked) = match retry_after {
                    RetryAfter::Absent => (None, None),
                    RetryAfter::Secs(s) => {
                        (Some(s.to_string()), Some(Duration::from_secs(s.into())))
                    }
                    RetryAfter::ImfDate(s) => date_value(wall_secs, s, DateForm::Imf),
                    RetryAfter::Rfc850Date(s) => date_value(wall_secs, s, DateForm::Rfc850),
                    RetryAfter::AsctimeDate(s) => date_value(wall_secs, s, DateForm::Asctime),
                    RetryAfter::PastDate(s) => (
                        Some(format_date(
                            wall_secs.saturating_sub(u64::from(s) + 1),
                            DateForm::Imf,
                        )),
                        None,
                    ),
                    RetryAfter::Garbage => (Some("in a minute".to_string()), None),
                    RetryAfter::Enormous => (
                        Some("99999999999999999999999".to_string()),
                        Some(Duration::MAX),
                    ),
                };
                if let Some(value) = value {
                    headers.insert(RETRY_AFTER, HeaderValue::from_str(&value).unwrap());
                }
                if let Some(asked) = asked {
                    expect.retry_after = Some((target.key, asked));
                }
                (429, br#"{"error":"slow_down"}"#.to_vec())
            }
            Reply::Echo { json } => {
                let mut echo = target.body.clone();
                if let Some(authorization) = &target.authorization {
                    echo.push_str(" authorization=");
                    echo.push_str(authorization);
                }
                if json {
                    (
                        400,
                        format!(
                            r#"{{"error":"invalid_request","error_description":"unexpected request: {echo}"}}"#
                        )
                        .into_bytes(),
                    )
                } else {
                    (500, format!("echo: {echo}").into_bytes())
                }
            }
        };
        let mut response = http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(body)
            .unwrap();
        response.headers_mut().extend(headers);
        assert!(
            self.manager
                .handle_response(target.id, response, now)
                .is_ok(),
            "a request in flight is unknown to the core"
        );
    }

    fn resource(
        &mut self,
        k: usize,
        status: ResourceStatus,
        carrying: Carrying,
        challenge: Challenge,
        retry: bool,
        expect: &mut Expect,
    ) {
        let sent = match carrying {
            Carrying::Current => self.last_attached[k].clone(),
            Carrying::Old(i) => {
                let history = &self.history[k];
                (!history.is_empty()).then(|| history[i as usize % history.len()].clone())
            }
            Carrying::Foreign => self.last_attached[(k + 1) % KEYS].clone(),
            Carrying::Nothing => None,
        };
        let status = match status {
            ResourceStatus::Unauthorized => StatusCode::UNAUTHORIZED,
            ResourceStatus::Forbidden => StatusCode::FORBIDDEN,
            ResourceStatus::Ok => StatusCode::OK,
        };
        let mut headers = HeaderMap::new();
        let www = match challenge {
            Challenge::Absent => None,
            Challenge::InvalidToken => Some(
                r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
            ),
            Challenge::InsufficientScope => {
                Some(r#"Bearer realm="example", error="insufficient_scope", scope="api admin""#)
            }
            Challenge::DPoPNonce => Some(
                r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#,
            ),
            Challenge::Malformed => Some(r#"Bearer error="insufficient_scope"#),
        };
        if let Some(www) = www {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(www));
        }
        let insufficient_scope = matches!(challenge, Challenge::InsufficientScope);
        // A DPoP `use_dpop_nonce` asks for a nonce, not a new token: with no
        // `DPoP-Nonce` to retry with (none is sent here), nothing changes.
        let wants_nonce = matches!(challenge, Challenge::DPoPNonce);
        let attempt = u32::from(retry);
        let now = self.now();
        let outcome = self.manager.handle_resource_response(
            self.keys[k],
            &ResourceResponse {
                status,
                headers: &headers,
                sent_authorization: sent.as_ref(),
                uri: None,
                attempt,
            },
            now,
        );
        let should_retry = status == StatusCode::UNAUTHORIZED
            && sent.is_some()
            && !insufficient_scope
            && !wants_nonce
            && !retry;
        let expected = if should_retry {
            ResourceOutcome::Retry
        } else {
            ResourceOutcome::Deliver
        };
        // 401 damping: a 401 for a token fetched after the key's last
        // rejection, within the window, is delivered without a retry; the
        // event check below insists on the `RejectionDamped` event then.
        if expected == ResourceOutcome::Retry && outcome == ResourceOutcome::Deliver {
            expect.damped = Some(k);
        } else {
            assert_eq!(outcome, expected, "wrong outcome for a resource response");
        }
        if status == StatusCode::UNAUTHORIZED && !insufficient_scope && !wants_nonce {
            if let Some(sent) = sent {
                let bytes = sent.as_bytes().to_vec();
                let was_cached = self.cached[k].as_ref() == Some(&bytes);
                expect.rejected = Some((k, bytes, was_cached));
            }
        }
    }

    fn drain_requests(&mut self) {
        while let Some(request) = self.manager.poll_request() {
            let id = request.id();
            assert!(self.seen_ids.insert(id), "a request id was reused");
            let k = self.key_index(request.key());
            assert!(
                !self.pending.iter().any(|p| p.key == k),
                "two token requests in flight for one key"
            );
            let http = request.request();
            assert_eq!(http.method(), http::Method::POST);
            let body = String::from_utf8(http.body().clone()).expect("form bodies are ASCII");
            assert!(body.starts_with("grant_type=client_credentials"), "{body}");
            let authorization = http
                .headers()
                .get(AUTHORIZATION)
                .map(|v| v.to_str().unwrap().to_owned());
            if let Some(basic) = authorization
                .as_deref()
                .and_then(|a| a.strip_prefix("Basic "))
            {
                if !self.secrets.iter().any(|s| s == basic) {
                    self.secrets.push(basic.to_owned());
                }
            }
            self.pending.push(Pending {
                id,
                key: k,
                requested_at: self.latest,
                body,
                authorization,
            });
        }
    }

    fn drain_events(&mut self, expect: &mut Expect) {
        let mut acquired = None;
        let mut backoff_delay = None;
        let mut invalidated_by_resource = None;
        let mut damped = None;
        while let Some(event) = self.manager.poll_event() {
            let text = format!("{event:?}");
            self.assert_no_secret(&text, "an event");
            match event {
                Event::RequestStarted { key, id, .. } => {
                    let k = self.key_index(key);
                    assert!(
                        self.pending.iter().any(|p| p.id == id && p.key == k),
                        "RequestStarted for a request that was not queued"
                    );
                }
                Event::RequestFailed { key, id, error } => {
                    self.assert_no_secret(&error.to_string(), "a request error");
                    let k = self.key_index(key);
                    if let Some(index) = self.pending.iter().position(|p| p.id == id) {
                        // Given up by the core (request deadline).
                        assert_eq!(self.pending[index].key, k);
                        assert!(error.is_transport(), "a request in flight failed: {error}");
                        let p = self.pending.remove(index);
                        self.remember_finished(p.id);
                    }
                }
                Event::BackoffEntered {
                    key, until, delay, ..
                } => {
                    let k = self.key_index(key);
                    let client = self.client_of[k];
                    let cap = self.backoff[client]
                        .max
                        .max(self.backoff[client].max_retry_after);
                    assert!(delay <= cap, "backoff of {delay:?} exceeds its caps");
                    assert_eq!(
                        until.as_nanos(),
                        self.latest.saturating_add(nanos(delay)),
                        "backoff does not start now"
                    );
                    self.backoff_until[k] = until.as_nanos();
                    backoff_delay = Some((k, delay));
                }
                Event::TokenAcquired {
                    key,
                    lifetime,
                    token_type,
                    ..
                } => {
                    let k = self.key_index(key);
                    assert_eq!(token_type, TokenType::Bearer);
                    let (ek, header, model_lifetime, usable_end) = expect
                        .token
                        .take()
                        .expect("a token was acquired without a valid token response");
                    assert_eq!(k, ek, "a token was cached under the wrong key");
                    assert_eq!(
                        lifetime, model_lifetime,
                        "lifetime differs from the documented rule"
                    );
                    assert!(
                        self.latest < usable_end,
                        "a token that expired on arrival was cached"
                    );
                    if let Some(old) = self.cached[k].replace(header.clone()) {
                        self.retired.insert(old);
                    }
                    self.history[k].push(HeaderValue::from_bytes(&header).unwrap());
                    self.backoff_until[k] = 0;
                    acquired = Some(k);
                }
                Event::TokenInvalidated { key, reason } => {
                    let k = self.key_index(key);
                    let old = self.cached[k]
                        .take()
                        .expect("invalidated a token the harness does not know is cached");
                    if reason == InvalidationReason::RejectedByResource {
                        invalidated_by_resource = Some((k, old.clone()));
                    }
                    self.retired.insert(old);
                }
                Event::TokenExpired { key } => {
                    let k = self.key_index(key);
                    let old = self.cached[k]
                        .take()
                        .expect("expired a token the harness does not know is cached");
                    let usable_end = self.tokens[&old].usable_end;
                    assert!(
                        self.latest >= usable_end,
                        "a token was dropped as expired {} ns before its usable end",
                        usable_end - self.latest
                    );
                    self.retired.insert(old);
                }
                Event::ScopeDiffers {
                    key,
                    requested,
                    granted,
                } => {
                    // Reported only when the two differ as sets of scopes.
                    let _ = self.key_index(key);
                    fn set(s: &str) -> HashSet<&str> {
                        s.split(' ').filter(|t| !t.is_empty()).collect()
                    }
                    assert_ne!(set(&requested), set(&granted), "scopes reported as differing are equal");
                }
                Event::RejectionDamped { key } => {
                    assert!(damped.is_none(), "two damped rejections for one response");
                    damped = Some(self.key_index(key));
                }
                other => panic!("unknown event {other:?}"),
            }
        }
        if let Some((k, _, _, usable_end)) = expect.token.take() {
            assert!(
                acquired.is_none() && self.latest >= usable_end,
                "a valid Bearer token response for {k} was refused (now {} ns, usable end {} ns)",
                self.latest,
                usable_end
            );
        }
        if let Some((k, asked)) = expect.retry_after.take() {
            let (bk, delay) = backoff_delay.expect("a 429 did not start a backoff");
            assert_eq!(bk, k);
            let client = self.client_of[k];
            let floor = asked
                .min(self.backoff[client].max_retry_after)
                .saturating_sub(Duration::from_secs(1));
            assert!(
                delay >= floor,
                "Retry-After asked for {asked:?}, the backoff is only {delay:?}"
            );
        }
        if let Some(k) = expect.damped.take() {
            assert_eq!(damped, Some(k), "a 401 was neither retried nor damped");
        }
        if let Some(k) = damped {
            // Damped: only the cached token of that key, and nothing invalidated.
            let (rk, _, was_cached) = expect
                .rejected
                .take()
                .expect("a damped rejection without a 401");
            assert_eq!(rk, k, "the damped key is not the rejected one");
            assert!(was_cached, "a 401 for an old token was damped");
            assert!(
                invalidated_by_resource.is_none(),
                "a damped 401 invalidated the token"
            );
        } else if let Some((k, sent, was_cached)) = expect.rejected.take() {
            // Compare-and-invalidate: exactly when the request carried the cached token.
            if was_cached {
                assert_eq!(
                    invalidated_by_resource,
                    Some((k, sent)),
                    "a 401 for the cached token did not invalidate it"
                );
            } else {
                assert!(
                    invalidated_by_resource.is_none(),
                    "a 401 invalidated a token the request did not carry"
                );
            }
        } else {
            assert!(
                invalidated_by_resource.is_none(),
                "a token was invalidated by a response that does not reject it"
            );
        }
    }

    fn drain_snapshots(&mut self) {
        while let Some((key, snapshot)) = self.manager.poll_snapshot() {
            let k = self.key_index(key);
            let Some(snapshot) = snapshot else {
                continue;
            };
            assert_eq!(snapshot.key(), key);
            let bytes = snapshot.header().as_bytes().to_vec();
            assert_eq!(
                self.cached[k].as_ref(),
                Some(&bytes),
                "the snapshot shows a token that is not cached"
            );
            let issued = &self.tokens[&bytes];
            assert_eq!(
                snapshot.attach_until().as_nanos(),
                issued.usable_end,
                "the snapshot's usable end differs from the documented rule"
            );
            assert!(snapshot.fresh_until() <= snapshot.attach_until());
        }
    }

    fn check_state(&mut self) {
        if let Some(deadline) = self
            .pending
            .iter()
            .map(|p| p.requested_at.saturating_add(nanos(REQUEST_TIMEOUT)))
            .min()
        {
            let (at, _) = self
                .manager
                .poll_timeout()
                .expect("no timeout although a request is in flight");
            assert!(
                at.as_nanos() <= deadline,
                "poll_timeout is later than a request deadline"
            );
        }
        // `token()` reads the time without keeping it.
        let t = self.latest.max(self.clock);
        let now = Now::new(Instant::from_nanos(self.clock), wall(self.clock));
        for k in 0..KEYS {
            if let Some(view) = self.manager.token(self.keys[k], now) {
                let bytes = view.header().as_bytes().to_vec();
                assert_eq!(
                    self.cached[k].as_ref(),
                    Some(&bytes),
                    "token() shows an uncached token"
                );
                let issued = &self.tokens[&bytes];
                assert_eq!(view.lifetime(), issued.lifetime);
                assert!(t < issued.usable_end, "token() shows an unusable token");
                assert_eq!(
                    t.saturating_add(nanos(view.remaining())),
                    issued.usable_end,
                    "token().remaining() is off"
                );
            }
        }
    }

    fn assert_no_secret(&self, text: &str, what: &str) {
        for secret in &self.secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{what} shows a client secret: {text}"
            );
        }
    }
}

/// The lifetime the documented rule believes for `expires_in`.
fn model_lifetime(policy: &RefreshPolicy, expires_in: Option<i64>) -> Duration {
    match expires_in {
        None => policy.default_lifetime.min(policy.max_lifetime),
        Some(s) if s <= 0 => Duration::ZERO,
        Some(s) => Duration::from_secs(s as u64).min(policy.max_lifetime),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn wall(clock: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_secs(WALL_ORIGIN))
        .and_then(|t| t.checked_add(Duration::from_nanos(clock)))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[derive(Clone, Copy)]
enum DateForm {
    Imf,
    Rfc850,
    Asctime,
}

/// A `Retry-After` date `ahead` seconds after the wall clock, and the delay
/// it asks for (one second less at worst, since the wall clock has a fraction).
/// Dates the forms cannot express (past 2069 for RFC 850) ask for nothing.
fn date_value(wall_secs: u64, ahead: u16, form: DateForm) -> (Option<String>, Option<Duration>) {
    let at = wall_secs.saturating_add(u64::from(ahead));
    let year_ok = at < 3_155_760_000; // 2070-01-01
    (
        Some(format_date(at, form)),
        year_ok.then(|| Duration::from_secs(ahead.into())),
    )
}

/// Formats Unix seconds as an HTTP-date in one of the three RFC 9110 forms.
fn format_date(secs: u64, form: DateForm) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const LONG_DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (hh, mm, ss) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = (days % 7) as usize;
    let mon = MONTHS[(month - 1) as usize];
    match form {
        DateForm::Imf => format!(
            "{}, {day:02} {mon} {year:04} {hh:02}:{mm:02}:{ss:02} GMT",
            DAYS[weekday]
        ),
        DateForm::Rfc850 => format!(
            "{}, {day:02}-{mon}-{:02} {hh:02}:{mm:02}:{ss:02} GMT",
            LONG_DAYS[weekday],
            year % 100
        ),
        DateForm::Asctime => format!(
            "{} {mon} {day:>2} {hh:02}:{mm:02}:{ss:02} {year:04}",
            DAYS[weekday]
        ),
    }
}
