//! The fleet store end to end: real `tokenctl` processes sharing tokens
//! through a real `redis-server` (the testkit's [`RedisServer`], skipped
//! unless installed, required with `TOKEN_KEEPER_REDIS=required`), against
//! the testkit's local token server, which counts the token requests.
//!
//! Every child process is killed and reaped on every path ([`Fleet`]'s
//! `Drop`); every wait is bounded. Assertions are on counts: the token
//! requests the server saw, the calls the processes made and failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use token_keeper_testkit::{Gate, LocalAuthServer, RedisServer, ServerConfig, TokenFault};

const SECRET: &str = "fleet-secret-5c2a";
const SECRET_VAR: &str = "TK_FLEET_TEST_SECRET";
const KEY_VAR: &str = "TK_FLEET_TEST_KEY";
/// The Redis password of these tests: it must appear in no output.
const PASSWORD: &str = "redis-pw-3e9f71";

fn store_key() -> String {
    STANDARD.encode([0x5a; 32])
}

fn token_server(ttl_secs: u64) -> LocalAuthServer {
    LocalAuthServer::start(ServerConfig {
        clients: vec![("m2m".into(), SECRET.into())],
        ttl_secs,
        scope: Some("api".into()),
        ..ServerConfig::default()
    })
    .unwrap()
}

/// A scratch directory for one test's child outputs.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokenctl-fleet-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How a process ended: its exit code, its stdout and stderr.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// The JSON summary `call --json` prints last.
    fn summary(&self) -> serde_json::Value {
        let last = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last)
            .unwrap_or_else(|e| panic!("{e}: stdout {:?}, stderr {:?}", self.stdout, self.stderr))
    }

    fn count(&self, field: &str) -> u64 {
        self.summary()[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {}", self.stdout))
    }
}

/// Child processes, each writing to files of its own (no pipe to fill):
/// killed (SIGKILL) and reaped when dropped, whatever happened.
struct Fleet {
    dir: PathBuf,
    children: Vec<(Child, PathBuf, PathBuf)>,
}

impl Fleet {
    /// A fleet whose outputs go to a new directory under `dir`.
    fn new(dir: &Path) -> Fleet {
        static FLEETS: AtomicUsize = AtomicUsize::new(0);
        let dir = dir.join(FLEETS.fetch_add(1, Ordering::Relaxed).to_string());
        std::fs::create_dir_all(&dir).unwrap();
        Fleet {
            dir,
            children: Vec::new(),
        }
    }

    /// Starts `tokenctl ARGS`; returns its index.
    fn spawn(&mut self, args: &[String]) -> usize {
        let index = self.children.len();
        let out = self.dir.join(format!("{index}.out"));
        let err = self.dir.join(format!("{index}.err"));
        let child = Command::new(env!("CARGO_BIN_EXE_tokenctl"))
            .args(args)
            .env(SECRET_VAR, SECRET)
            .env(KEY_VAR, store_key())
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        self.children.push((child, out, err));
        index
    }

    /// Kills child `index` at once (SIGKILL).
    fn kill(&mut self, index: usize) {
        let child = &mut self.children[index].0;
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Waits until every child has exited (at most `bound`, then they are
    /// killed and the test fails), and returns their outcomes in order.
    fn finish(mut self, bound: Duration) -> Vec<Outcome> {
        let deadline = Instant::now() + bound;
        let mut codes: Vec<Option<Option<i32>>> = vec![None; self.children.len()];
        while codes.iter().any(Option::is_none) {
            assert!(
                Instant::now() < deadline,
                "the processes did not end within {bound:?}"
            );
            for ((child, _, _), code) in self.children.iter_mut().zip(codes.iter_mut()) {
                if code.is_none() {
                    if let Some(status) = child.try_wait().unwrap() {
                        *code = Some(status.code());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let outcomes = self
            .children
            .iter()
            .zip(codes)
            .map(|((_, out, err), code)| Outcome {
                code: code.flatten(),
                stdout: std::fs::read_to_string(out).unwrap(),
                stderr: std::fs::read_to_string(err).unwrap(),
            })
            .collect();
        // `self` drops here: nothing is left running.
        outcomes
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.children {
            let _ = child.kill();
        }
        for (child, _, _) in &mut self.children {
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `tokenctl call` against `server`'s API, with the store at `redis` in
/// `namespace` if given.
fn call_args(
    server: &LocalAuthServer,
    store: Option<(&RedisServer, &str)>,
    adapter: &str,
    amount: &[&str],
    rate: u32,
) -> Vec<String> {
    let mut args: Vec<String> = [
        "call",
        &format!("{}/fleet", server.api_url()),
        "--token-url",
        &server.token_url(),
        "--client-id",
        "m2m",
        "--client-secret-env",
        SECRET_VAR,
        "--scope",
        "api",
        "--adapter",
        adapter,
        "--rate",
        &rate.to_string(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(amount.iter().map(|s| s.to_string()));
    if let Some((redis, namespace)) = store {
        args.extend(
            [
                "--store",
                &redis.url(),
                "--store-key-env",
                KEY_VAR,
                "--store-namespace",
                namespace,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
    }
    args
}

/// Every process exited 0, made calls and failed none; the password shows
/// nowhere. Returns the calls made.
fn assert_all_succeeded(outcomes: &[Outcome], what: &str) -> u64 {
    let mut calls = 0;
    for (index, outcome) in outcomes.iter().enumerate() {
        assert_eq!(
            outcome.code,
            Some(0),
            "{what}, process {index}: stdout {:?}, stderr {:?}",
            outcome.stdout,
            outcome.stderr
        );
        assert_eq!(outcome.count("failed"), 0, "{what}, process {index}");
        assert!(outcome.count("requests") > 0, "{what}, process {index}");
        calls += outcome.count("requests");
        for text in [&outcome.stdout, &outcome.stderr] {
            assert!(!text.contains(PASSWORD), "{what}: {text}");
            assert!(!text.contains(SECRET), "{what}: {text}");
            assert!(!text.contains(&store_key()), "{what}: {text}");
        }
    }
    calls
}

/// 8 processes (half on ureq, half on surf) sharing a store make about as
/// many token requests as one process alone; 8 without a store about 8
/// times as many. The three groups run at once, each against a token
/// server of its own (3 s tokens, 12 s of calls): about 14 s in all.
#[test]
fn a_fleet_with_the_store_fetches_about_as_often_as_one_process() {
    let test = "a_fleet_with_the_store_fetches_about_as_often_as_one_process";
    let Some(redis) = RedisServer::start_with_password_for_test(test, PASSWORD) else {
        return;
    };
    let dir = scratch("shared");
    let (alone, shared, apart) = (token_server(3), token_server(3), token_server(3));
    let mut fleet = Fleet::new(&dir);
    let duration = ["--duration", "12"];
    fleet.spawn(&call_args(
        &alone,
        Some((&redis, "alone")),
        "ureq",
        &duration,
        20,
    ));
    for i in 0..8 {
        let adapter = if i % 2 == 0 { "ureq" } else { "surf" };
        fleet.spawn(&call_args(
            &shared,
            Some((&redis, "shared")),
            adapter,
            &duration,
            20,
        ));
    }
    for i in 0..8 {
        let adapter = if i % 2 == 0 { "ureq" } else { "surf" };
        fleet.spawn(&call_args(&apart, None, adapter, &duration, 20));
    }
    let outcomes = fleet.finish(Duration::from_secs(60));
    assert_all_succeeded(&outcomes, "the three groups");
    let (one, with_store, without_store) = (
        alone.token_requests(),
        shared.token_requests(),
        apart.token_requests(),
    );
    eprintln!(
        "token requests in 12 s of 3 s tokens: one process {one}, 8 with the store {with_store}, \
         8 without {without_store}"
    );
    assert!(one >= 1);
    assert!(
        with_store as f64 <= 1.5 * one as f64 + 2.0,
        "8 processes with the store made {with_store} token requests, one alone {one}"
    );
    assert!(
        without_store >= 4 * one && without_store >= 3 * with_store,
        "without the store {without_store}, with it {with_store}, one alone {one}"
    );
    // The fleet took most of its tokens from the store, on both adapters.
    let hits: u64 = outcomes[1..9].iter().map(|o| o.count("store_hits")).sum();
    let fetched: u64 = outcomes[1..9]
        .iter()
        .map(|o| o.count("token_requests"))
        .sum();
    assert_eq!(fetched, with_store, "every token request was the fleet's");
    assert!(hits >= 8, "store hits {hits}");
    for o in &outcomes[1..9] {
        assert!(o.count("token_requests") + o.count("store_hits") >= 1);
    }
}

/// Redis killed in the middle of a run, then restarted: no API call fails;
/// the token requests grow while it is down (each process fetches for
/// itself) and fall back once it is back. Counts over three windows of
/// the same length; about 27 s.
#[test]
fn a_redis_outage_costs_token_requests_never_a_call() {
    let test = "a_redis_outage_costs_token_requests_never_a_call";
    let Some(mut redis) = RedisServer::start_with_password_for_test(test, PASSWORD) else {
        return;
    };
    let dir = scratch("outage");
    let server = token_server(3);
    let mut fleet = Fleet::new(&dir);
    for i in 0..8 {
        let adapter = if i % 2 == 0 { "ureq" } else { "surf" };
        fleet.spawn(&call_args(
            &server,
            Some((&redis, "outage")),
            adapter,
            &["--duration", "26"],
            20,
        ));
    }
    let started = Instant::now();
    let at = |secs: u64| {
        let when = started + Duration::from_secs(secs);
        std::thread::sleep(when.saturating_duration_since(Instant::now()));
        server.token_requests()
    };
    // Windows of 5 s: healthy [2, 7), down [8, 13) (Redis killed at 7.5,
    // restarted at 13.5), back [20, 25) (the processes rest the store for
    // a few seconds after failures, doubling: 1 s, 2 s, 4 s).
    let healthy_from = at(2);
    let healthy = at(7) - healthy_from;
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    let down_from = at(8);
    let down = at(13) - down_from;
    std::thread::sleep(Duration::from_millis(500));
    redis.restart().unwrap();
    let back_from = at(20);
    let back = at(25) - back_from;
    let outcomes = fleet.finish(Duration::from_secs(40));
    let calls = assert_all_succeeded(&outcomes, "through the outage");
    eprintln!(
        "token requests in 5 s windows: healthy {healthy}, Redis down {down}, back {back} \
         ({calls} API calls, none failed)"
    );
    assert!(
        down >= healthy + 8,
        "down {down} should be well above healthy {healthy}"
    );
    assert!(
        back * 2 <= down,
        "back {back} should fall back well below down {down}"
    );
    // The outage was reported, secret-free (checked above), on stderr.
    assert!(
        outcomes
            .iter()
            .any(|o| o.stderr.contains("tokenctl: warning:") && o.stderr.contains("redis")),
        "{}",
        outcomes[0].stderr
    );
}

/// The lease holder is killed (SIGKILL) while the token server holds its
/// token request open: the other processes follow until the lease lapses
/// (`--token-timeout 2`: a lease of 2 + 5 s), then one of them fetches and
/// the other takes its token from the store; no call fails. About 10 s.
#[test]
fn a_lease_holder_killed_mid_request_is_replaced_after_its_lease() {
    let test = "a_lease_holder_killed_mid_request_is_replaced_after_its_lease";
    let Some(redis) = RedisServer::start_with_password_for_test(test, PASSWORD) else {
        return;
    };
    let dir = scratch("lease");
    // Long-lived tokens: no refresh during the test.
    let server = token_server(600);
    let gate = Gate::new();
    server.push_token_fault(TokenFault::Hold(gate.clone()));
    let mut fleet = Fleet::new(&dir);
    let timeout = ["--token-timeout", "2"];
    let mut holder_args = call_args(
        &server,
        Some((&redis, "lease")),
        "ureq",
        &["--requests", "1"],
        10,
    );
    holder_args.extend(timeout.map(String::from));
    let holder = fleet.spawn(&holder_args);
    // The holder has read the store, taken the lease and sent its request.
    assert!(
        server.wait_for_token_requests(1, Duration::from_secs(20)),
        "the lease holder's token request never arrived"
    );
    fleet.kill(holder);
    let started = Instant::now();
    for adapter in ["ureq", "surf"] {
        let mut args = call_args(
            &server,
            Some((&redis, "lease")),
            adapter,
            &["--requests", "20"],
            10,
        );
        args.extend(timeout.map(String::from));
        fleet.spawn(&args);
    }
    assert!(
        server.wait_for_token_requests(2, Duration::from_secs(30)),
        "no process fetched after the lease holder died"
    );
    let replaced_after = started.elapsed();
    let outcomes = fleet.finish(Duration::from_secs(40));
    gate.open();
    assert_eq!(outcomes[holder].code, None, "killed by a signal");
    assert_all_succeeded(&outcomes[1..], "the followers");
    let fetched: u64 = outcomes[1..]
        .iter()
        .map(|o| o.count("token_requests"))
        .sum();
    let hits: u64 = outcomes[1..].iter().map(|o| o.count("store_hits")).sum();
    assert_eq!(
        (server.token_requests(), fetched, hits),
        (2, 1, 1),
        "the held request, then one fetch for both followers"
    );
    eprintln!("the second token request came {replaced_after:?} after the holder was killed");
}

fn token_args(
    server: &LocalAuthServer,
    store_url: &str,
    adapter: &str,
    extra: &[&str],
) -> Vec<String> {
    [
        "token",
        "--token-url",
        &server.token_url(),
        "--client-id",
        "m2m",
        "--client-secret-env",
        SECRET_VAR,
        "--adapter",
        adapter,
        "--store",
        store_url,
        "--store-key-env",
        KEY_VAR,
    ]
    .iter()
    .chain(extra)
    .map(|s| s.to_string())
    .collect()
}

fn run_one(dir: &Path, args: &[String]) -> Outcome {
    let mut fleet = Fleet::new(dir);
    fleet.spawn(args);
    fleet.finish(Duration::from_secs(30)).pop().unwrap()
}

/// `token` with a store says where its token came from: the token endpoint
/// for the first process, the store for the next (on the other adapter);
/// with Redis down it still gets a token, from the endpoint, and warns.
#[test]
fn token_says_whether_it_came_from_the_store() {
    let test = "token_says_whether_it_came_from_the_store";
    let Some(mut redis) = RedisServer::start_with_password_for_test(test, PASSWORD) else {
        return;
    };
    let server = token_server(600);
    let dir = scratch("source");
    let first = run_one(&dir, &token_args(&server, &redis.url(), "ureq", &[]));
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert_eq!(first.stderr, "token source: the token endpoint\n");
    let second = run_one(
        &dir,
        &token_args(&server, &redis.url(), "surf", &["--json"]),
    );
    assert_eq!(second.code, Some(0), "{}", second.stderr);
    let value: serde_json::Value = serde_json::from_str(&second.stdout).unwrap();
    assert_eq!(value["source"], "store");
    assert_eq!(value["access_token"].as_str(), Some(first.stdout.trim()));
    assert_eq!(server.token_requests(), 1);
    redis.kill();
    let down = run_one(&dir, &token_args(&server, &redis.url(), "ureq", &[]));
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    assert!(
        down.stderr.contains("tokenctl: warning:")
            && down.stderr.ends_with("token source: the token endpoint\n"),
        "{}",
        down.stderr
    );
    assert_eq!(server.token_requests(), 2);
    for outcome in [&first, &second, &down] {
        for text in [&outcome.stdout, &outcome.stderr] {
            assert!(!text.contains(PASSWORD) && !text.contains(&store_key()));
        }
    }
}

/// Bad store flags are usage errors (exit 2), one line each, naming the
/// flag and never the password or the key. Needs no Redis.
#[test]
fn bad_store_flags_are_usage_errors_without_secrets() {
    let server = token_server(600);
    let dir = scratch("usage");
    let url = format!("redis://:{PASSWORD}@127.0.0.1:1/0");
    // The arguments, extra environment variables, and what stderr must say.
    type Case<'a> = (Vec<String>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 8] = [
        (
            token_args(&server, &url, "ureq", &[])
                .into_iter()
                .filter(|a| a != "--store-key-env" && a != KEY_VAR)
                .collect(),
            vec![],
            "tokens never sit in Redis in clear",
        ),
        (
            token_args(&server, &url, "ureq", &[]),
            vec![(KEY_VAR, "not base64!")],
            "is not standard base64",
        ),
        (
            token_args(&server, &url, "surf", &[]),
            vec![(KEY_VAR, "c2hvcnQ=")],
            "decodes to 5 bytes; a store key is exactly 32 bytes",
        ),
        (
            token_args(&server, &url, "ureq", &[]),
            vec![(KEY_VAR, "")],
            "decodes to 0 bytes",
        ),
        (
            token_args(
                &server,
                &format!("rediss://:{PASSWORD}@127.0.0.1:1"),
                "ureq",
                &[],
            ),
            vec![],
            "--store: redis token store: only redis:// URLs are supported",
        ),
        (
            token_args(
                &server,
                &format!("redis://:{PASSWORD}@127.0.0.1:1/x"),
                "surf",
                &[],
            ),
            vec![],
            "database number",
        ),
        (
            token_args(
                &server,
                &url,
                "ureq",
                &["--store-old-key-env", "TK_UNSET_9"],
            ),
            vec![],
            "--store-old-key-env: environment variable TK_UNSET_9 is not set",
        ),
        (
            token_args(&server, &url, "ureq", &["--store-namespace", ""]),
            vec![],
            "--store-namespace must not be empty",
        ),
    ];
    for (args, env, expected) in cases {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokenctl"));
        command
            .args(&args)
            .env(SECRET_VAR, SECRET)
            .env(KEY_VAR, store_key());
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{expected}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!stderr.contains(PASSWORD), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    // Store flags without a store, and a store flag twice.
    for (extra, expected) in [
        (
            vec!["--store-key-env", KEY_VAR],
            "--store-key-env goes with --store",
        ),
        (
            vec!["--store", "redis://127.0.0.1:1", "--store-env", "X"],
            "give --store URL or --store-env VAR, once",
        ),
    ] {
        let mut args = vec![
            "token",
            "--token-url",
            "http://127.0.0.1:1/t",
            "--client-id",
            "m2m",
            "--client-secret",
            "s",
        ];
        args.extend(extra);
        let out = Command::new(env!("CARGO_BIN_EXE_tokenctl"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(server.token_requests(), 0);
}

/// `tokenctl demo --store …`: the demo's client seals its tokens into that
/// Redis (what a fleet of demos would share); the password shows nowhere.
#[test]
fn the_demo_shares_its_tokens_through_a_store_when_given_one() {
    let Some(redis) =
        RedisServer::start_with_password_for_test("the_demo_shares_its_tokens", PASSWORD)
    else {
        return;
    };
    let out = Command::new(env!("CARGO_BIN_EXE_tokenctl"))
        .args(["demo", "--duration", "2", "--store", &redis.url()])
        .args(["--store-key-env", KEY_VAR, "--store-namespace", "demo-test"])
        .env(KEY_VAR, store_key())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("sharing tokens through the fleet store"),
        "{stdout}"
    );
    assert!(!stdout.contains(PASSWORD) && !stderr.contains(PASSWORD));
    // The demo's token sits in Redis, sealed, under a hashed name.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_connection().unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("tk:*")
        .query(&mut connection)
        .unwrap();
    assert!(names.iter().any(|n| n.ends_with(":e")), "{names:?}");
}
