//! Property tests of the shared-store protocol: a fleet of cores sharing one
//! store, driven through random timelines.
//!
//! The harness plays the token endpoint, the store (an in-memory one with
//! entries and leases that expire on the fleet's shared time line; unit
//! tests may use a fake store, the fleet tests in `tests/` use Redis) and
//! every process's driver. Each process has its own monotonic clock offset
//! (wall clocks are never compared). A timeline mixes: callers asking for a
//! header; token requests answered (a token of a random lifetime, an error)
//! or left hanging; store operations answered on time, answered late (after
//! the core's deadline), failed, or lost; the store going down and coming
//! back; leases lapsing; stuck leases; time moving forwards in small and
//! large steps; a process suspended that comes back with its wall clock a
//! day behind.
//!
//! After every step:
//! 1. **Never past its usable life**: every header attached names a token
//!    the endpoint issued, and the fleet's time is before that token's
//!    expiry counted from the request that fetched it.
//! 2. **The lease decides**: a token request a process starts on its own
//!    (not forced, not a nonce retry), while it does not consider the store
//!    down, is covered by its live lease in the store. With a healthy store,
//!    at most one process of the fleet fetches a key at a time.
//! 3. **The store is never a dependency**: with a token endpoint that always
//!    answers, no caller is ever refused (`Unavailable`), whatever the store does.
//! 4. **No wait without a way out**: a caller told to wait has a token
//!    request, a store operation or a timer of its process pending (a weak
//!    check on its own; 6 is the strong one).
//! 5. **Replies to unknown operations are refused**, and nothing panics.
//! 6. **Every caller gets a token in the end** (checked once the timeline is
//!    over): with the token endpoint answering and every operation carried
//!    out, every process attaches a token within 300 s, whatever
//!    the timeline left (stuck leases that never lapse, a store down,
//!    lost operations, backoffs).
//!
//! Run with `PROPTEST_CASES=5000` as CI does.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use token_keeper::{
    Authorization, ClientAuth, ClientConfig, ClientSecret, Event, Instant, KeyId, ManagerConfig,
    Now, OwnerId, RefreshPolicy, RequestId, RequestReason, StoreError, StoreErrorKind, StoreKey,
    StoreOp, StoreOpId, StoreReply, StoreRequest, StoreSettings, StoredToken, TokenManager,
    TokenRequest, TokenType, UnknownRequest,
};

const PROCESSES: usize = 3;
const ENDPOINT: &str = "https://idp.example/connect/token";

type TestResult = Result<(), TestCaseError>;

#[derive(Clone, Debug)]
enum Op {
    /// The fleet's time moves on.
    Advance(Duration),
    /// A caller of process `p` asks for the header.
    Ask(usize),
    /// The oldest unanswered token request of process `p` is answered.
    AnswerToken {
        p: usize,
        lifetime_secs: u32,
        ok: bool,
    },
    /// Process `p`'s oldest store operation is carried out now (or lost).
    Store { p: usize, fate: Fate },
    /// Every process's timer fires if due.
    Timers,
    /// The store goes down or comes back.
    StoreUp(bool),
    /// A reply for an operation no process asked for.
    Foreign(usize),
    /// Process `p`'s machine is suspended for `by` (the fleet's time goes on;
    /// `p` acts on nothing meanwhile, as with any stretch without its ops)
    /// and comes back with its wall clock stepped `wall_back` backwards
    /// (wall clocks are never compared across machines, so no rule may
    /// depend on them). Monotonic clocks run at one rate: a process's may
    /// start anywhere but never runs faster than the fleet's.
    Jump {
        p: usize,
        by: Duration,
        wall_back: Duration,
    },
}

#[derive(Clone, Copy, Debug)]
enum Fate {
    /// Carried out against the store (which may be down).
    Run,
    /// The reply is lost; the core's deadline must end the wait.
    Lost,
    /// The store holds garbage for this key: a read returns Invalid.
    Garbage,
    /// A hostile or broken store: a lease is found taken, by nobody, and
    /// never lapses (no time to live).
    StuckLease,
}

fn op_strategy(endpoint_fails: bool) -> impl Strategy<Value = Op> {
    let p = 0..PROCESSES;
    prop_oneof![
        3 => prop_oneof![
            Just(Duration::from_millis(50)),
            Just(Duration::from_millis(200)),
            Just(Duration::from_secs(2)),
            Just(Duration::from_secs(20)),
            (1u64..400).prop_map(Duration::from_secs),
        ]
        .prop_map(Op::Advance),
        4 => p.clone().prop_map(Op::Ask),
        3 => (p.clone(), prop_oneof![Just(3u32), Just(60), Just(300), Just(3600)], any::<bool>())
            .prop_map(move |(p, lifetime_secs, ok)| Op::AnswerToken {
                p,
                lifetime_secs,
                ok: ok || !endpoint_fails,
            }),
        6 => (p.clone(), prop_oneof![8 => Just(Fate::Run), 1 => Just(Fate::Lost), 1 => Just(Fate::Garbage), 1 => Just(Fate::StuckLease)])
            .prop_map(|(p, fate)| Op::Store { p, fate }),
        3 => Just(Op::Timers),
        1 => any::<bool>().prop_map(Op::StoreUp),
        1 => p.clone().prop_map(Op::Foreign),
        1 => (
            p,
            prop_oneof![Just(Duration::from_secs(1)), Just(Duration::from_secs(3600))],
            prop_oneof![Just(Duration::ZERO), Just(Duration::from_secs(86_400))],
        )
            .prop_map(|(p, by, wall_back)| Op::Jump { p, by, wall_back }),
    ]
}

/// A token the endpoint issued: when its request started (fleet time) and
/// its lifetime.
#[derive(Clone, Copy, Debug)]
struct Issued {
    requested_at: Duration,
    lifetime: Duration,
}

/// The in-memory store: entries and leases expire on the fleet's time line.
#[derive(Default)]
struct FakeStore {
    up: bool,
    entries: HashMap<Vec<u8>, (StoredToken, Duration)>,
    leases: HashMap<Vec<u8>, (OwnerId, Duration)>,
}

impl FakeStore {
    fn execute(
        &mut self,
        key: &StoreKey,
        op: &StoreOp,
        now: Duration,
    ) -> Result<StoreReply, StoreError> {
        if !self.up {
            return Err(StoreError::new(StoreErrorKind::Unavailable, "down"));
        }
        let name = key.as_bytes().to_vec();
        self.entries.retain(|_, (_, until)| *until > now);
        self.leases.retain(|_, (_, until)| *until > now);
        Ok(match op {
            StoreOp::Read => StoreReply::Entry(
                self.entries
                    .get(&name)
                    .map(|(token, until)| (token.clone(), *until - now)),
            ),
            StoreOp::Lease { owner, ttl } => match self.leases.entry(name) {
                std::collections::hash_map::Entry::Occupied(_) => StoreReply::Lease(false),
                std::collections::hash_map::Entry::Vacant(vacant) => {
                    vacant.insert((*owner, now + *ttl));
                    StoreReply::Lease(true)
                }
            },
            StoreOp::Write { owner, token, ttl } => {
                self.entries
                    .insert(name.clone(), (token.clone(), now + *ttl));
                if self.leases.get(&name).is_some_and(|(o, _)| o == owner) {
                    self.leases.remove(&name);
                }
                StoreReply::Done
            }
            StoreOp::Release { owner } => {
                if self.leases.get(&name).is_some_and(|(o, _)| o == owner) {
                    self.leases.remove(&name);
                }
                StoreReply::Done
            }
        })
    }

    fn holds_lease(&self, key: &StoreKey, owner: OwnerId, now: Duration) -> bool {
        self.leases
            .get(key.as_bytes())
            .is_some_and(|(o, until)| *o == owner && *until > now)
    }
}

struct Process {
    core: TokenManager,
    key: KeyId,
    offset: Duration,
    /// How far its wall clock is behind.
    wall_back: Duration,
    requests: VecDeque<(TokenRequest, Duration)>,
    store_ops: VecDeque<StoreRequest>,
    /// Whether the core said the store is down (between `StoreUnavailable`
    /// and `StoreRecovered`).
    store_down: bool,
    /// Token requests that failed (`RequestFailed`): only these may refuse a caller.
    token_failures: u64,
    /// Whether the core just said it gives up on a lease taken for too long:
    /// then its next token request is made without the lease, by the rule.
    lease_given_up: bool,
}

struct Fleet {
    now: Duration,
    processes: Vec<Process>,
    store: FakeStore,
    issued: HashMap<String, Issued>,
    next_token: u64,
    store_key: Option<StoreKey>,
}

fn config() -> ClientConfig {
    ClientConfig::new(ENDPOINT, "fleet", ClientAuth::Basic(ClientSecret::new("s")))
        .expect("valid")
        .scope("api")
}

impl Fleet {
    fn new(seed: u64) -> Fleet {
        let processes = (0..PROCESSES)
            .map(|p| {
                let mut core = TokenManager::new(ManagerConfig::default(), seed + p as u64);
                core.enable_store(StoreSettings::default());
                let client = core.add_client("m2m", config()).expect("client");
                let key = core.default_key(client);
                Process {
                    core,
                    key,
                    // Every process's monotonic clock starts elsewhere.
                    offset: Duration::from_secs(1_000 + 7_919 * p as u64),
                    wall_back: Duration::from_secs(p as u64 * 37),
                    requests: VecDeque::new(),
                    store_ops: VecDeque::new(),
                    store_down: false,
                    token_failures: 0,
                    lease_given_up: false,
                }
            })
            .collect();
        Fleet {
            now: Duration::ZERO,
            processes,
            store: FakeStore {
                up: true,
                ..FakeStore::default()
            },
            issued: HashMap::new(),
            next_token: 0,
            store_key: None,
        }
    }

    fn now_of(&self, p: usize) -> Now {
        let monotonic = Instant::from_duration(self.now + self.processes[p].offset);
        // Each process's wall clock is off by its own amount too.
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.now
            - self.processes[p].wall_back;
        Now::new(monotonic, wall)
    }

    fn run(seed: u64, ops: &[Op]) -> TestResult {
        let mut fleet = Fleet::new(seed);
        for op in ops {
            fleet.step(op)?;
        }
        fleet.settle()
    }

    /// Invariant 6, **every caller gets a token in the end**: whatever the timeline
    /// left behind (a store down or back, stuck leases, lost operations,
    /// backoffs), a token endpoint that answers and a driver that carries
    /// everything out promptly get every process a token within 300 s of
    /// fleet time (a stuck lease is given up after two leases' lives, 70 s,
    /// which may start only as the token left from the timeline nears its
    /// end; backoffs are at most 72 s and store rests 30 s).
    fn settle(&mut self) -> TestResult {
        for _second in 0..300 {
            for p in 0..PROCESSES {
                self.step(&Op::Ask(p))?;
                for _ in 0..8 {
                    while !self.processes[p].store_ops.is_empty() {
                        self.step(&Op::Store { p, fate: Fate::Run })?;
                    }
                    while !self.processes[p].requests.is_empty() {
                        self.step(&Op::AnswerToken {
                            p,
                            lifetime_secs: 3600,
                            ok: true,
                        })?;
                    }
                }
            }
            self.step(&Op::Advance(Duration::from_secs(1)))?;
            self.step(&Op::Timers)?;
        }
        for p in 0..PROCESSES {
            let now = self.now_of(p);
            let process = &mut self.processes[p];
            let attached = matches!(
                process.core.authorize(process.key, now),
                Authorization::Attach(_)
            );
            prop_assert!(attached, "process {p} has no token after settling");
        }
        Ok(())
    }

    fn step(&mut self, op: &Op) -> TestResult {
        match *op {
            Op::Advance(by) => self.now += by,
            Op::Ask(p) => self.ask(p)?,
            Op::AnswerToken {
                p,
                lifetime_secs,
                ok,
            } => {
                if let Some((request, started)) = self.processes[p].requests.pop_front() {
                    let now = self.now_of(p);
                    let response = if ok {
                        let token = format!("tok-{}", self.next_token);
                        self.next_token += 1;
                        self.issued.insert(
                            token.clone(),
                            Issued {
                                requested_at: started,
                                lifetime: Duration::from_secs(lifetime_secs.into()),
                            },
                        );
                        http::Response::builder().status(200).body(format!(
                            r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{lifetime_secs}}}"#
                        ))
                    } else {
                        http::Response::builder()
                            .status(503)
                            .body("down".to_owned())
                    }
                    .expect("response");
                    // An answer to a request the core gave up on is refused; fine.
                    let _ = self.processes[p]
                        .core
                        .handle_response(request.id(), response, now);
                    self.drain(p)?;
                }
            }
            Op::Store { p, fate } => {
                if let Some(request) = self.processes[p].store_ops.pop_front() {
                    let now = self.now_of(p);
                    let reply = match fate {
                        Fate::Lost => None,
                        Fate::Garbage if matches!(request.op(), StoreOp::Read) && self.store.up => {
                            Some(Err(StoreError::new(StoreErrorKind::Invalid, "garbage")))
                        }
                        Fate::StuckLease if self.store.up => {
                            // Where no live lease is: a stuck one never
                            // replaces a process's own.
                            let fleet_now = self.now;
                            self.store.leases.retain(|_, (_, until)| *until > fleet_now);
                            self.store
                                .leases
                                .entry(request.key().as_bytes().to_vec())
                                .or_insert((nobody(), Duration::MAX));
                            let op = request.op_at(now.monotonic());
                            Some(self.store.execute(request.key(), &op, self.now))
                        }
                        _ => {
                            let op = request.op_at(now.monotonic());
                            Some(self.store.execute(request.key(), &op, self.now))
                        }
                    };
                    if let Some(reply) = reply {
                        // Late replies (the core gave up) are refused; fine.
                        let _ = self.processes[p]
                            .core
                            .handle_store_reply(request.id(), reply, now);
                        self.drain(p)?;
                    }
                }
            }
            Op::Timers => {
                for p in 0..PROCESSES {
                    let now = self.now_of(p);
                    let due = self.processes[p]
                        .core
                        .poll_timeout()
                        .is_some_and(|(at, _)| at <= now.monotonic());
                    if due {
                        self.processes[p].core.handle_timeout(now);
                        self.drain(p)?;
                    }
                }
            }
            Op::StoreUp(up) => self.store.up = up,
            Op::Jump { p, by, wall_back } => {
                self.now += by;
                self.processes[p].wall_back += wall_back;
            }
            Op::Foreign(p) => {
                let now = self.now_of(p);
                let reply = self.processes[p].core.handle_store_reply(
                    foreign_op(),
                    Ok(StoreReply::Done),
                    now,
                );
                prop_assert_eq!(reply, Err(UnknownRequest));
            }
        }
        Ok(())
    }

    fn ask(&mut self, p: usize) -> TestResult {
        let now = self.now_of(p);
        let fleet_now = self.now;
        let process = &mut self.processes[p];
        let decision = match process.core.authorize(process.key, now) {
            Authorization::Attach(attach) => {
                let header = attach.header().to_str().expect("ascii").to_owned();
                let token = header
                    .strip_prefix("Bearer ")
                    .expect("a Bearer header")
                    .to_owned();
                Ok(Some(token))
            }
            Authorization::Fetch(_) | Authorization::Wait(_) => Ok(None),
            Authorization::Unavailable { .. } => Err(()),
        };
        self.drain(p)?;
        match decision {
            Ok(Some(token)) => {
                let issued = self.issued.get(&token).copied();
                let Some(issued) = issued else {
                    return Err(TestCaseError::fail(format!("{token} was never issued")));
                };
                // 1. Never past its usable life (the lifetime less the
                // policy's safety buffer), counted from the request.
                let buffer = RefreshPolicy::default()
                    .expiry_buffer
                    .min(issued.lifetime / 4);
                let usable_until = issued.requested_at + issued.lifetime - buffer;
                prop_assert!(
                    fleet_now < usable_until,
                    "{token} attached at {fleet_now:?}, past its usable life ({usable_until:?})"
                );
            }
            Ok(None) => {
                // 4. No wait without a way out.
                let process = &self.processes[p];
                let pending = !process.requests.is_empty()
                    || !process.store_ops.is_empty()
                    || process.core.poll_timeout().is_some();
                prop_assert!(pending, "process {p} waits with nothing pending");
            }
            Err(()) => {
                // 3. The store is never a dependency: only a failed token
                // request (an error answer, a token expired on arrival, a
                // request past its deadline) refuses a caller.
                prop_assert!(
                    self.processes[p].token_failures > 0,
                    "process {p} refused a caller with no token request failed"
                );
            }
        }
        Ok(())
    }

    /// Empties process `p`'s outputs and checks what they say.
    fn drain(&mut self, p: usize) -> TestResult {
        let fleet_now = self.now;
        let owner = self.processes[p].core.store_owner().expect("store enabled");
        while let Some(event) = self.processes[p].core.poll_event() {
            match event {
                Event::StoreUnavailable { .. } => self.processes[p].store_down = true,
                Event::StoreRecovered => self.processes[p].store_down = false,
                Event::RequestFailed { .. } => self.processes[p].token_failures += 1,
                Event::StoreEntryRefused { error, .. } if error.message().contains("lease") => {
                    self.processes[p].lease_given_up = true;
                }
                Event::RequestStarted { reason, .. } => {
                    let on_its_own =
                        !matches!(reason, RequestReason::Forced | RequestReason::DPoPNonce);
                    let given_up = std::mem::take(&mut self.processes[p].lease_given_up);
                    if on_its_own && !self.processes[p].store_down && !given_up {
                        if let Some(key) = &self.store_key {
                            // 2. The lease decides (unless the store just
                            // failed this process, or its op was lost and the
                            // core's deadline sent it on: then it said so).
                            let covered = self.store.holds_lease(key, owner, fleet_now);
                            prop_assert!(
                                covered || !self.store.up,
                                "process {p} fetches without its lease while the store works"
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        while let Some(request) = self.processes[p].core.poll_request() {
            self.processes[p].requests.push_back((request, fleet_now));
        }
        while let Some(request) = self.processes[p].core.poll_store_request() {
            self.store_key.get_or_insert_with(|| request.key().clone());
            self.processes[p].store_ops.push_back(request);
        }
        while self.processes[p].core.poll_snapshot().is_some() {}
        Ok(())
    }
}

/// A lease owner no process is.
fn nobody() -> OwnerId {
    struct Zeros;
    impl token_keeper::RandomSource for Zeros {
        fn fill(&self, dest: &mut [u8]) {
            dest.fill(0);
        }
    }
    let mut core = TokenManager::new(ManagerConfig::default(), 0);
    core.set_random_source(Box::new(Zeros));
    core.enable_store(StoreSettings::default());
    core.store_owner().expect("enabled")
}

fn foreign_op() -> StoreOpId {
    // An id no core hands out this early: fetch one from a core that asked
    // for thousands of operations.
    static ID: std::sync::OnceLock<StoreOpId> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let mut core = TokenManager::new(ManagerConfig::default(), 9);
        core.enable_store(StoreSettings::default());
        let client = core.add_client("m2m", config()).expect("client");
        let key = core.default_key(client);
        let mut last = None;
        for i in 0..5_000u64 {
            let now = Now::from_secs(i * 10_000);
            core.invalidate(key, now);
            let _ = core.authorize(key, now);
            while let Some(request) = core.poll_store_request() {
                last = Some(request.id());
            }
            core.handle_timeout(Now::from_secs(i * 10_000 + 5_000));
        }
        last.expect("operations were asked for")
    })
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn a_fleet_shares_one_token_within_the_rules(
        seed in any::<u64>(),
        ops in prop::collection::vec(op_strategy(false), 1..160),
    ) {
        Fleet::run(seed, &ops)?;
    }

    #[test]
    fn a_failing_endpoint_and_a_flaky_store_break_no_rule(
        seed in any::<u64>(),
        ops in prop::collection::vec(op_strategy(true), 1..160),
    ) {
        Fleet::run(seed, &ops)?;
    }
}

/// With a healthy store and prompt replies, a fleet that keeps asking makes
/// one token request per token lifetime, whichever process makes it.
#[test]
fn a_healthy_fleet_fetches_once_per_lifetime() {
    let mut fleet = Fleet::new(1);
    let mut fetched = 0;
    for _round in 0..40 {
        for p in 0..PROCESSES {
            fleet.step(&Op::Ask(p)).unwrap();
        }
        // Carry everything out promptly, answering tokens with 60 s lifetimes.
        for _ in 0..10 {
            for p in 0..PROCESSES {
                while !fleet.processes[p].store_ops.is_empty() {
                    fleet.step(&Op::Store { p, fate: Fate::Run }).unwrap();
                }
                while !fleet.processes[p].requests.is_empty() {
                    fetched += 1;
                    fleet
                        .step(&Op::AnswerToken {
                            p,
                            lifetime_secs: 60,
                            ok: true,
                        })
                        .unwrap();
                }
            }
            fleet
                .step(&Op::Advance(Duration::from_millis(100)))
                .unwrap();
            fleet.step(&Op::Timers).unwrap();
        }
        fleet.step(&Op::Advance(Duration::from_secs(5))).unwrap();
        fleet.step(&Op::Timers).unwrap();
    }
    // 40 rounds of about 6 s: about 240 s, four 60 s lifetimes, so about five
    // tokens for the fleet (the first, and one per refresh), not 3 × 5.
    assert!(
        (4..=7).contains(&fetched),
        "the fleet fetched {fetched} tokens"
    );
    let hits: u64 = (0..PROCESSES)
        .map(|p| {
            u64::from(
                fleet.processes[p]
                    .core
                    .token(fleet.processes[p].key, fleet.now_of(p))
                    .is_some(),
            )
        })
        .sum();
    assert_eq!(hits, PROCESSES as u64, "every process holds a token");
}

/// What a store hands back is checked as a token endpoint's answer is.
#[test]
fn a_stored_token_is_checked_like_a_token_response() {
    let token = StoredToken::new(
        "abc".into(),
        TokenType::Bearer,
        None,
        Duration::from_secs(60),
    )
    .expect("valid");
    assert_eq!(token.lifetime(), Duration::from_secs(60));
    assert!(format!("{token:?}").contains("redacted"));
    assert!(StoredToken::new(
        "a b".into(),
        TokenType::Bearer,
        None,
        Duration::from_secs(1)
    )
    .is_err());
    assert!(StoredToken::new(
        String::new(),
        TokenType::Bearer,
        None,
        Duration::from_secs(1)
    )
    .is_err());
    assert!(StoredToken::new("x".into(), TokenType::Bearer, None, Duration::ZERO).is_err());
}

impl Fleet {
    /// Process `p` fetches the fleet's first token (`lifetime_secs`) and
    /// writes it: read (miss), lease (taken), read again (miss), the token
    /// request answered, the write.
    fn first_token(&mut self, p: usize, lifetime_secs: u32) {
        self.step(&Op::Ask(p)).unwrap();
        for _ in 0..3 {
            self.step(&Op::Store { p, fate: Fate::Run }).unwrap();
        }
        self.step(&Op::AnswerToken {
            p,
            lifetime_secs,
            ok: true,
        })
        .unwrap();
        self.step(&Op::Store { p, fate: Fate::Run }).unwrap();
        assert!(self.processes[p].store_ops.is_empty() && self.processes[p].requests.is_empty());
    }
}

/// A token read from the store is served with the remaining life the store
/// gives, not its full lifetime: a second process reading a 60 s token 20 s
/// after it was fetched attaches it only as long as the first one would.
#[test]
fn a_stored_token_is_served_with_the_stores_remaining_life() {
    let mut fleet = Fleet::new(5);
    fleet.first_token(0, 60);
    // 20 s later the store keeps it 40 s more; with the default 15 s safety
    // buffer (a quarter of 60 s) it is attachable 25 s more here, not 45.
    fleet.step(&Op::Advance(Duration::from_secs(20))).unwrap();
    fleet.step(&Op::Ask(1)).unwrap();
    fleet
        .step(&Op::Store {
            p: 1,
            fate: Fate::Run,
        })
        .unwrap(); // read: hit
    let (core, key) = (&fleet.processes[1].core, fleet.processes[1].key);
    let view = core
        .token(key, fleet.now_of(1))
        .expect("taken from the store");
    assert_eq!(view.remaining(), Duration::from_secs(25));
    assert_eq!(fleet.processes[1].requests.len(), 0, "no token request");
    let _ = RequestId::clone;
}

/// At its refresh point a process reads the store and finds its own token
/// (the usual case): it goes on to the lease, it does not read again at once.
/// (A new jitter draw once made the same token look Fresh, which put the key
/// back to idle with its refresh deadline in the past: a hot loop of reads.)
#[test]
fn finding_its_own_token_at_the_refresh_point_leads_to_the_lease() {
    for seed in 0..200 {
        let mut fleet = Fleet::new(seed);
        fleet.first_token(0, 3600);
        // Past any refresh point, well before the end of life.
        fleet.step(&Op::Advance(Duration::from_secs(3200))).unwrap();
        fleet.step(&Op::Timers).unwrap();
        let read = fleet.processes[0]
            .store_ops
            .front()
            .expect("a read at the refresh point");
        assert!(matches!(read.op(), StoreOp::Read), "seed {seed}");
        fleet
            .step(&Op::Store {
                p: 0,
                fate: Fate::Run,
            })
            .unwrap(); // read: its own token
        let next = fleet.processes[0]
            .store_ops
            .front()
            .expect("then the lease");
        assert!(
            matches!(next.op(), StoreOp::Lease { .. }),
            "seed {seed}: {next:?}"
        );
        let now = fleet.now_of(0).monotonic();
        let next_deadline = fleet.processes[0].core.poll_timeout().expect("armed").0;
        assert!(next_deadline > now, "seed {seed}: a deadline in the past");
    }
}

/// A process whose monotonic clock started a moment ago (on some platforms it
/// counts from the client's creation) reads an entry fetched long before:
/// the token is served for what is left of it, not for a whole lifetime.
#[test]
fn a_young_clock_buys_a_stored_token_no_life() {
    let mut core = TokenManager::new(ManagerConfig::default(), 1);
    core.enable_store(StoreSettings::default());
    let client = core.add_client("m2m", config()).unwrap();
    let key = core.default_key(client);
    // The clock read 2 s: the process started 2 s ago.
    let now = Now::from_secs(2);
    let _ = core.authorize(key, now);
    let read = core.poll_store_request().unwrap();
    // Fetched 3000 s ago with a 3600 s lifetime: 600 s left in the store.
    let token = StoredToken::new(
        "old".into(),
        TokenType::Bearer,
        None,
        Duration::from_secs(3600),
    )
    .unwrap();
    core.handle_store_reply(
        read.id(),
        Ok(StoreReply::Entry(Some((token, Duration::from_secs(600))))),
        now,
    )
    .unwrap();
    let view = core.token(key, now).expect("still usable");
    // 600 s left, less the 60 s safety buffer.
    assert_eq!(view.remaining(), Duration::from_secs(540));
}
