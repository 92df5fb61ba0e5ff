//! Load A/B of the whole service: what the token middleware costs a real
//! axum service under load, end to end over loopback.
//!
//! ```text
//! cargo bench -p health-records-service --bench load_ab [-- PAIRS SECONDS CONCURRENCY [TTL]]
//! ```
//!
//! (defaults: 12 pairs, 3 s per run, 16 concurrent requests, 1 h tokens;
//! with TTL, B's tokens last TTL seconds, so each run refreshes under load,
//! and its token requests are checked against one per refresh). A local token
//! server and API (testkit's `LocalAuthServer`, its
//! `/api/v1/integration/health-records` answering a small JSON document)
//! run in this process. Each run starts a fresh `health-records-service` process (the
//! release build cargo made for this bench), warms it up for 0.5 s, then
//! drives `GET /records` for SECONDS from CONCURRENCY tokio tasks sharing
//! one keep-alive reqwest client, and counts the answers (every one must be
//! a 200):
//!
//! - **A**: `--fixed-authorization-env`: `/records` sends a fixed
//!   `Authorization` header (a token fetched once by this bench) through
//!   the same reqwest client, without the token middleware;
//! - **B**: the service as shipped, the middleware attaching the cached token.
//!
//! Pairs alternate their order (AB, BA, AB, …) so that neither side always
//! runs first. Printed: each pair's requests/s and B/A, the median B/A, the
//! order-balanced median (geometric mean of each AB/BA couple), and the
//! token requests each run made (B: exactly 1, its first call's; A: 0).
//!
//! Without `--bench` (as `cargo test --benches` runs bench targets) it
//! exits at once.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::Service;
use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_reqwest::ReqwestTokenClient;
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

const SECRET: &str = "s3cret"; // testkit's client m2m
const WARM_UP: Duration = Duration::from_millis(500);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Fixed header, no middleware.
    A,
    /// The token middleware.
    B,
}

struct Run {
    rate: f64,
    token_requests: u64,
    /// From the service's start to its exit: how long its tokens had to last.
    lived: Duration,
}

/// Drives `url` from `concurrency` tasks until `duration` has passed; the
/// number of 200 answers (anything else fails the bench).
async fn load(client: &reqwest::Client, url: &str, concurrency: usize, duration: Duration) -> u64 {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, done) = (client.clone(), url.to_owned(), Arc::clone(&done));
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let response = client.get(&url).send().await.expect("GET /records");
                let status = response.status();
                let body = response.bytes().await.expect("body");
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(finished) = tasks.join_next().await {
        finished.expect("load task");
    }
    done.load(Ordering::Relaxed)
}

fn run(
    mode: Mode,
    server: &LocalAuthServer,
    fixed: &str,
    seconds: Duration,
    concurrency: usize,
    runtime: &tokio::runtime::Runtime,
) -> Run {
    let before = server.token_requests();
    let started = Instant::now();
    let token_url = server.token_url();
    // The seed's path: a small synthetic health-records JSON document.
    let api = server.health_records_url();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--token-url",
        &token_url,
        "--client-id",
        "m2m",
        "--api",
        &api,
    ];
    if mode == Mode::A {
        args.extend(["--fixed-authorization-env", "TK_BENCH_FIXED_AUTH"]);
    }
    let mut service = Service::start(
        &args,
        &[("TK_CLIENT_SECRET", SECRET), ("TK_BENCH_FIXED_AUTH", fixed)],
    );
    let url = service.url("/records");
    let client = token_keeper_reqwest::TokenMiddleware::client_builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("load client");
    let served = runtime.block_on(async {
        load(&client, &url, concurrency, WARM_UP).await;
        let start = Instant::now();
        let served = load(&client, &url, concurrency, seconds).await;
        served as f64 / start.elapsed().as_secs_f64()
    });
    drop(client);
    let status = service.stop();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{mode:?}: {status:?}\n{}",
        service.stderr()
    );
    Run {
        rate: served,
        token_requests: server.token_requests() - before,
        lived: started.elapsed(),
    }
}

/// The token requests a service living `lived` may make with `ttl` s tokens
/// and the default refresh policy: one per usable stretch at least (its
/// calls never stop), at most one per earliest refresh point, plus one.
fn token_bounds(ttl: u64, lived: Duration) -> (u64, u64) {
    let policy = token_keeper::RefreshPolicy::default();
    let ttl = ttl as f64;
    let usable = ttl - policy.expiry_buffer.as_secs_f64().min(ttl / 4.0);
    let earliest_refresh = usable * (policy.refresh_at - policy.refresh_jitter);
    let lived = lived.as_secs_f64();
    // The first call comes after start-up: the last stretch may be unused.
    let least = ((lived / usable).floor() as u64).max(1);
    let most = 2 + (lived / earliest_refresh).floor() as u64;
    (least, most)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!(
            "load_ab: skipped (a benchmark: `cargo bench -p health-records-service --bench load_ab`)"
        );
        return;
    }
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let pairs = numbers.first().copied().unwrap_or(12).max(1) as usize;
    let seconds = Duration::from_secs(numbers.get(1).copied().unwrap_or(3).max(1));
    let concurrency = numbers.get(2).copied().unwrap_or(16).max(1) as usize;
    let ttl = numbers.get(3).copied().unwrap_or(3600).clamp(2, 3600);

    let server = LocalAuthServer::start(ServerConfig {
        ttl_secs: 3600,
        idle_timeout: Duration::from_secs(60),
        ..ServerConfig::default()
    })
    .expect("local token server");
    // The load generator: one worker, so that the service keeps most of the CPU.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    // Mode A's fixed header: a token of the same server, fetched once here.
    let fixed = runtime.block_on(async {
        let tokens = ReqwestTokenClient::new();
        let config = ClientConfig::new(
            &server.token_url(),
            "m2m",
            ClientAuth::Basic(ClientSecret::new(SECRET)),
        )
        .unwrap();
        tokens.add_client("m2m", config).unwrap();
        let header = tokens.header("m2m").await.expect("a token for mode A");
        header.to_str().unwrap().to_owned()
    });
    // A's header keeps its hour; B's tokens last `ttl`.
    server.set_ttl_secs(ttl);

    println!(
        "load_ab: {pairs} pairs, {} s per run, concurrency {concurrency}, {} CPUs, load {}",
        seconds.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("pair  order  A req/s  B req/s   B/A  token requests A,B");
    let mut ratios = Vec::new();
    let mut b_tokens = Vec::new();
    let mut a_tokens = Vec::new();
    let mut b_bounds = Vec::new();
    for pair in 0..pairs {
        let order = if pair % 2 == 0 {
            [Mode::A, Mode::B]
        } else {
            [Mode::B, Mode::A]
        };
        let mut a = None;
        let mut b = None;
        for mode in order {
            let result = run(mode, &server, &fixed, seconds, concurrency, &runtime);
            match mode {
                Mode::A => a = Some(result),
                Mode::B => b = Some(result),
            }
        }
        let (a, b) = (a.expect("A ran"), b.expect("B ran"));
        let ratio = b.rate / a.rate;
        ratios.push(ratio);
        a_tokens.push(a.token_requests);
        b_tokens.push(b.token_requests);
        b_bounds.push(token_bounds(ttl, b.lived));
        println!(
            "{pair:>4}  {}  {:>7.0}  {:>7.0}  {ratio:.3}  {},{}",
            if pair % 2 == 0 { "AB" } else { "BA" },
            a.rate,
            b.rate,
            a.token_requests,
            b.token_requests
        );
    }
    println!(
        "{pairs} pairs\n{}",
        token_keeper_testkit::ab::summarize(&ratios)
    );
    println!(
        "token requests per run: B {b_tokens:?} ({ttl} s tokens; one per refresh: bounds {b_bounds:?}), A {a_tokens:?}"
    );
    assert!(
        b_tokens
            .iter()
            .zip(&b_bounds)
            .all(|(n, (least, most))| (least..=most).contains(&n)),
        "every B run makes one token request per refresh"
    );
    assert!(a_tokens.iter().all(|&n| n == 0), "A runs ask for no token");
}
