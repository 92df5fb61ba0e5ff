//! The health view, the counters and the log lines, on both adapters, over
//! loopback with a clock that moves only when the test says.
//!
//! One key is walked through every state a health check reports: empty,
//! fetching (the server holds the answer on a gate), fresh, stale, backing
//! off with the last error (the server fails the refresh) and expired. Log
//! lines are captured (the testkit's logger) and must come under the
//! adapter's own target and name the client; a scope the server drops is
//! warned about; a DPoP nonce retry counts as a request, not as a token.

use std::sync::Arc;
use std::time::Duration;

use token_keeper::jose::Algorithm;
use token_keeper::{
    BackoffPolicy, ClientAuth, ClientConfig, ClientSecret, HealthState, KeyId, KeyOverrides,
    ManualClock, RefreshPolicy,
};
use token_keeper_driver::{Async, Blocking, Client, ClientHealth, ClientStats, Error};
use token_keeper_keys::PrivateKey;
use token_keeper_testkit::scenarios::captured_logs;
use token_keeper_testkit::{Gate, LocalAuthServer, ServerConfig, TokenFault};

const SECRET: &str = "health-s3cret-77aa";

/// What the tests ask of either client (the one [`Client`], blocking or
/// async: the waiting methods differ only in being `async`).
trait Tokens: Send + Sync {
    fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error>;
    fn header(&self, name: &str) -> Result<String, Error>;
    fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error>;
    fn header_for(&self, key: KeyId) -> Result<String, Error>;
    fn health(&self) -> Vec<ClientHealth>;
    fn stats(&self) -> ClientStats;
}

fn text(header: http::HeaderValue) -> String {
    header.to_str().unwrap().to_owned()
}

impl Tokens for Client<Blocking> {
    fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error> {
        self.add_client(name, config)
    }
    fn header(&self, name: &str) -> Result<String, Error> {
        self.header(name).map(text)
    }
    fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        self.key_with(name, overrides)
    }
    fn header_for(&self, key: KeyId) -> Result<String, Error> {
        self.header_for(key).map(text)
    }
    fn health(&self) -> Vec<ClientHealth> {
        self.health()
    }
    fn stats(&self) -> ClientStats {
        self.stats()
    }
}

impl Tokens for Client<Async> {
    fn add_client(&self, name: &str, config: ClientConfig) -> Result<(), Error> {
        self.add_client(name, config)
    }
    fn header(&self, name: &str) -> Result<String, Error> {
        async_std::task::block_on(self.header(name)).map(text)
    }
    fn key_with(&self, name: &str, overrides: &KeyOverrides) -> Result<KeyId, Error> {
        self.key_with(name, overrides)
    }
    fn header_for(&self, key: KeyId) -> Result<String, Error> {
        async_std::task::block_on(self.header_for(key)).map(text)
    }
    fn health(&self) -> Vec<ClientHealth> {
        self.health()
    }
    fn stats(&self) -> ClientStats {
        self.stats()
    }
}

#[derive(Clone, Copy, Debug)]
enum Adapter {
    Ureq,
    Surf,
}

impl Adapter {
    fn build(self, clock: &ManualClock) -> Arc<dyn Tokens> {
        captured_logs();
        let clock = Arc::new(clock.clone());
        match self {
            Adapter::Ureq => Arc::new(
                (*token_keeper_ureq::TokenClient::with_options(token_keeper_ureq::ClientOptions {
                    clock,
                    seed: 7,
                    ..Default::default()
                })
                .unwrap())
                .clone(),
            ),
            Adapter::Surf => Arc::new(
                (*token_keeper_surf::AsyncTokenClient::with_options(
                    token_keeper_surf::DirectHttp::new(),
                    token_keeper_surf::ClientOptions {
                        clock,
                        seed: 7,
                        ..Default::default()
                    },
                )
                .unwrap())
                .clone(),
            ),
        }
    }

    /// The `log` target of the adapter's lines: its crate.
    fn target(self) -> &'static str {
        match self {
            Adapter::Ureq => "token_keeper_ureq",
            Adapter::Surf => "token_keeper_surf",
        }
    }

    /// A client name unique to this adapter and test (the captured logs are
    /// the whole process's).
    fn name(self, test: &str) -> String {
        format!("{test}-{self:?}").to_lowercase()
    }
}

/// A clock far from its origin, shared by the client and the server.
fn clock() -> ManualClock {
    let clock = ManualClock::new();
    clock.advance(Duration::from_secs(1_000));
    clock
}

fn server(clock: &ManualClock, tweak: impl FnOnce(&mut ServerConfig)) -> LocalAuthServer {
    let mut config = ServerConfig {
        clients: vec![("m2m".into(), SECRET.into())],
        ttl_secs: 100,
        clock: Some(clock.clone()),
        ..ServerConfig::default()
    };
    tweak(&mut config);
    LocalAuthServer::start(config).unwrap()
}

/// A client of `server` with no jitter: a 100 s token fetched at `t` is
/// Fresh until `t + 60`, usable until `t + 75`; the first backoff is 1 s.
fn config(server: &LocalAuthServer, scope: &str) -> ClientConfig {
    ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new(SECRET)),
    )
    .unwrap()
    .scope(scope)
    .refresh_policy(RefreshPolicy {
        refresh_jitter: 0.0,
        ..RefreshPolicy::default()
    })
    .backoff_policy(BackoffPolicy {
        jitter: 0.0,
        ..BackoffPolicy::default()
    })
}

/// The one key's health.
fn only(tokens: &dyn Tokens) -> ClientHealth {
    let mut all = tokens.health();
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

/// Waits (at most 10 s) until the key reaches `state`: the engine's threads
/// get there on their own.
fn wait_for(tokens: &dyn Tokens, state: HealthState) -> ClientHealth {
    for _ in 0..2_000 {
        let health = only(tokens);
        if health.health.state == state {
            return health;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("never reached {state:?}: {:?}", tokens.health());
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn a_key_walks_through_every_state(adapter: Adapter) {
    let clock = clock();
    let server = server(&clock, |_| {});
    let tokens = adapter.build(&clock);
    tokens.add_client("m2m", config(&server, "api")).unwrap();

    let h = only(&*tokens);
    assert_eq!((h.name.as_str(), h.overrides.as_deref()), ("m2m", None));
    assert_eq!(h.health.state, HealthState::Empty);
    assert_eq!((h.health.usable_for, h.health.refresh_in), (None, None));
    assert_eq!(
        (h.health.last_error.clone(), h.health.token_requests),
        (None, 0)
    );

    // Fetching: the server holds the answer until the gate opens.
    let gate = Gate::new();
    server.push_token_fault(TokenFault::Hold(gate.clone()));
    let caller = {
        let tokens = Arc::clone(&tokens);
        std::thread::spawn(move || tokens.header("m2m"))
    };
    assert!(server.wait_for_token_requests(1, secs(10)));
    let h = only(&*tokens);
    assert_eq!(h.health.state, HealthState::Fetching);
    assert_eq!(h.health.usable_for, None);
    assert_eq!(h.health.refresh_in, Some(Duration::ZERO), "under way");
    assert_eq!(h.health.token_requests, 1);
    gate.open();
    let first = caller.join().unwrap().unwrap();

    // Fresh: the clock has not moved since the request.
    let h = only(&*tokens);
    assert_eq!(h.health.state, HealthState::Fresh);
    assert_eq!(h.health.usable_for, Some(secs(75)));
    assert_eq!(h.health.refresh_in, Some(secs(60)));

    // Stale: past the refresh point the timer starts a refresh, which the
    // server holds, then fails.
    let gate = Gate::new();
    server.push_token_fault(TokenFault::Hold(gate.clone()));
    server.push_token_fault(TokenFault::Status {
        status: 503,
        body: format!("down; you sent {SECRET}"),
        retry_after: None,
    });
    clock.advance(secs(61));
    assert!(server.wait_for_token_requests(2, secs(10)), "the refresh");
    let h = only(&*tokens);
    assert_eq!(h.health.state, HealthState::Stale);
    assert_eq!(h.health.usable_for, Some(secs(14)));
    assert_eq!(h.health.refresh_in, Some(Duration::ZERO));
    assert_eq!(h.health.token_requests, 2);

    // Backing off with the last error, still serving the token.
    gate.open();
    let h = wait_for(&*tokens, HealthState::BackingOff);
    assert_eq!(h.health.usable_for, Some(secs(14)));
    assert_eq!(h.health.refresh_in, Some(secs(1)));
    let error = h.health.last_error.clone().expect("the failure");
    assert!(error.message.contains("503"), "{}", error.message);
    assert_eq!(error.ago, Duration::ZERO);
    assert_eq!(tokens.header("m2m").unwrap(), first, "still served");

    // Expired: past the end of its usable life, with the server still down
    // (nothing asks for a token meanwhile: no caller, no refresh).
    clock.advance(secs(20));
    let h = only(&*tokens);
    assert_eq!(h.health.state, HealthState::Expired);
    assert_eq!((h.health.usable_for, h.health.refresh_in), (None, None));
    assert_eq!(h.health.last_error.as_ref().unwrap().ago, secs(20));
    assert_eq!(h.health.token_requests, 2);
    assert_eq!(server.token_requests(), 2);

    // A caller brings it back; the last error stays, older.
    let second = tokens.header("m2m").unwrap();
    assert_ne!(second, first);
    let h = only(&*tokens);
    assert_eq!(h.health.state, HealthState::Fresh);
    assert_eq!(h.health.token_requests, 3);
    assert_eq!(h.health.last_error.as_ref().unwrap().ago, secs(20));
    let stats = tokens.stats();
    assert_eq!(
        (stats.token_requests, stats.tokens_acquired, stats.failures),
        (3, 2, 1)
    );

    // Nothing secret in it.
    let shown = format!("{:?}", tokens.health());
    assert!(!shown.contains(SECRET), "{shown}");
    for token in server.issued_tokens() {
        assert!(!shown.contains(&token), "{shown}");
    }
}

#[test]
fn ureq_a_key_walks_through_every_state() {
    a_key_walks_through_every_state(Adapter::Ureq);
}

#[test]
fn surf_a_key_walks_through_every_state() {
    a_key_walks_through_every_state(Adapter::Surf);
}

/// The captured lines logged under `target` that start with `client: `.
fn lines_of(target: &str, client: &str) -> Vec<String> {
    let prefix = format!(" {target} {client}: ");
    captured_logs()
        .lines()
        .filter(|line| line.contains(&prefix))
        .map(str::to_owned)
        .collect()
}

fn logs_come_under_the_adapters_target_and_name_the_client(adapter: Adapter) {
    let clock = clock();
    let server = server(&clock, |_| {});
    let tokens = adapter.build(&clock);
    let name = adapter.name("named-in-logs");
    tokens.add_client(&name, config(&server, "api")).unwrap();
    tokens.header(&name).unwrap();
    let lines = lines_of(adapter.target(), &name);
    assert!(
        lines.iter().any(|l| l.starts_with(&format!(
            "INFO {} {name}: Bearer token acquired",
            adapter.target()
        ))),
        "{lines:?}\n{}",
        captured_logs()
    );
    assert!(lines.iter().all(|l| !l.contains("key#")), "{lines:?}");

    // Another key of the same client says what sets it apart.
    let reports = tokens
        .key_with(&name, &KeyOverrides::new().scope("reports.read"))
        .unwrap();
    tokens.header_for(reports).unwrap();
    let labelled = format!(r#"{name} (scope="reports.read")"#);
    assert!(
        lines_of(adapter.target(), &labelled)
            .iter()
            .any(|l| l.contains("token acquired")),
        "{}",
        captured_logs()
    );
    let all = tokens.health();
    assert_eq!(all.len(), 2);
    assert_eq!(all[1].name, name);
    assert_eq!(all[1].key, reports);
    assert_eq!(all[1].overrides.as_deref(), Some(r#"scope="reports.read""#));
    assert_eq!(all[1].health.state, HealthState::Fresh);
}

#[test]
fn ureq_logs_come_under_the_adapters_target_and_name_the_client() {
    logs_come_under_the_adapters_target_and_name_the_client(Adapter::Ureq);
}

#[test]
fn surf_logs_come_under_the_adapters_target_and_name_the_client() {
    logs_come_under_the_adapters_target_and_name_the_client(Adapter::Surf);
}

fn a_dropped_scope_is_warned_about(adapter: Adapter) {
    let clock = clock();
    let server = server(&clock, |c| c.scope = Some("read".into()));
    let tokens = adapter.build(&clock);
    let name = adapter.name("scope-dropped");
    tokens
        .add_client(&name, config(&server, "read write"))
        .unwrap();
    tokens
        .header(&name)
        .expect("the token is used all the same");
    let warned: Vec<String> = lines_of(adapter.target(), &name)
        .into_iter()
        .filter(|l| l.starts_with("WARN "))
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    for part in [
        r#"granted scope "read""#,
        r#""read write" requested"#,
        r#"need "write""#,
        "403",
    ] {
        assert!(warned[0].contains(part), "{part}: {}", warned[0]);
    }

    // The scope granted as requested: no warning.
    let name = adapter.name("scope-kept");
    tokens.add_client(&name, config(&server, "read")).unwrap();
    tokens.header(&name).unwrap();
    let lines = lines_of(adapter.target(), &name);
    assert!(
        !lines.is_empty() && lines.iter().all(|l| !l.starts_with("WARN ")),
        "{lines:?}"
    );
}

#[test]
fn ureq_a_dropped_scope_is_warned_about() {
    a_dropped_scope_is_warned_about(Adapter::Ureq);
}

#[test]
fn surf_a_dropped_scope_is_warned_about() {
    a_dropped_scope_is_warned_about(Adapter::Surf);
}

fn a_dpop_nonce_retry_is_a_request_not_a_token(adapter: Adapter) {
    let clock = clock();
    let server = server(&clock, |c| c.dpop_nonce_required_at_token_endpoint = true);
    let tokens = adapter.build(&clock);
    let key = Arc::new(PrivateKey::generate(Algorithm::ES256).unwrap());
    tokens
        .add_client("m2m", config(&server, "api").dpop(key))
        .unwrap();
    let header = tokens.header("m2m").unwrap();
    assert!(header.starts_with("DPoP "), "{header}");
    assert_eq!(
        server.token_requests(),
        2,
        "the nonce demand, then the retry"
    );
    let stats = tokens.stats();
    assert_eq!(
        (
            stats.token_requests,
            stats.tokens_acquired,
            stats.failures,
            stats.dpop_nonce_retries,
            stats.store_hits
        ),
        (2, 1, 0, 1, 0)
    );
    let h = only(&*tokens);
    assert_eq!(h.health.state, HealthState::Fresh);
    assert_eq!(h.health.token_requests, 2);
    assert_eq!(h.health.last_error, None, "a nonce demand is no failure");
}

#[test]
fn ureq_a_dpop_nonce_retry_is_a_request_not_a_token() {
    a_dpop_nonce_retry_is_a_request_not_a_token(Adapter::Ureq);
}

#[test]
fn surf_a_dpop_nonce_retry_is_a_request_not_a_token() {
    a_dpop_nonce_retry_is_a_request_not_a_token(Adapter::Surf);
}
