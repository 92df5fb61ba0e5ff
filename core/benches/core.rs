//! Benchmarks of the core's hot paths. See `docs/BENCHMARKS.md` for figures.
//!
//! Run with `cargo bench -p token-keeper --bench core`.
//!
//! * `hit/*`: what an API call costs when a Fresh token is cached, in the core
//!   (`authorize`) and in the adapter's lock-free read of the published snapshot.
//! * `scaling/*`: the snapshot read from 1 and 2 threads at once, with a guard
//!   load (no shared write), an `Arc` clone (`load_full`: a shared refcount) and
//!   a `Mutex<HashMap>`. Throughput is aggregate reads per second.
//! * `parse/*`: `parse_token_response` on a typical success and an OAuth error.
//! * `request/build`: a miss, from `authorize` (Fetch) to `poll_request`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant as WallInstant, SystemTime};

use arc_swap::ArcSwapOption;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use http::StatusCode;
use token_keeper::response::parse_token_response;
use token_keeper::{
    Authorization, ClientAuth, ClientConfig, ClientSecret, Instant, KeyId, ManagerConfig, Now,
    Snapshot, TokenManager, TokenState,
};

/// Seconds after the origin at which the cached token was issued.
const ISSUED_AT: u64 = 1;

/// A `Now` the way an adapter builds one: two clock readings, no arithmetic.
fn now_at(nanos: u64) -> Now {
    Now::new(Instant::from_nanos(nanos), SystemTime::UNIX_EPOCH)
}

fn manager() -> (TokenManager, KeyId) {
    let mut manager = TokenManager::new(ManagerConfig::default(), 7);
    let config = ClientConfig::new(
        "https://auth.example.com/connect/token",
        "m2m-client",
        ClientAuth::Basic(ClientSecret::new("s3cret-s3cret")),
    )
    .expect("valid config")
    .scope("api.read api.write");
    let client = manager.add_client("m2m", config).expect("client added");
    let key = manager.default_key(client);
    (manager, key)
}

/// Base64url without padding: enough to build a realistic JWT.
fn base64url(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A JWT shaped like an RS256 access token from a typical authorization server.
fn jwt() -> String {
    let header = br#"{"alg":"RS256","kid":"5B3C1A7E9F2D4C6B8A0E1F3D5C7B9A2E","typ":"at+jwt"}"#;
    let claims = br#"{"iss":"https://auth.example.com","nbf":1767225600,"iat":1767225600,"exp":1767229200,"aud":["https://api.example.com","https://auth.example.com/resources"],"scope":["api.read","api.write"],"client_id":"m2m-client","sub":"m2m-client","azp":"m2m-client","auth_time":1767225600,"jti":"8F14E45FCEEA167A5A36DEDD4BEA2543","tenant":"acme","client_env":"production"}"#;
    // An RSA-2048 signature is 256 bytes.
    let signature: Vec<u8> = (0..256u32)
        .map(|i| (i.wrapping_mul(167) ^ 0x5a) as u8)
        .collect();
    format!(
        "{}.{}.{}",
        base64url(header),
        base64url(claims),
        base64url(&signature)
    )
}

fn success_body() -> String {
    format!(
        r#"{{"access_token":"{}","token_type":"Bearer","expires_in":3600,"scope":"api.read api.write"}}"#,
        jwt()
    )
}

const ERROR_BODY: &str = r#"{"error":"invalid_client","error_description":"Client authentication failed","error_uri":"https://auth.example.com/docs/errors#invalid_client"}"#;

/// A manager whose key holds a Fresh token, obtained through a real response.
/// Returns the snapshot the core published for it.
fn manager_with_token() -> (TokenManager, KeyId, Arc<Snapshot>) {
    let (mut manager, key) = manager();
    let t0 = Now::from_secs(ISSUED_AT);
    let Authorization::Fetch(id) = manager.authorize(key, t0) else {
        panic!("an empty key must fetch");
    };
    let _request = manager.poll_request().expect("request queued");
    let response = http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(success_body())
        .expect("valid response");
    manager
        .handle_response(id, response, t0)
        .expect("known request");
    while manager.poll_event().is_some() {}
    let mut snapshot = None;
    while let Some((k, s)) = manager.poll_snapshot() {
        if k == key {
            snapshot = s;
        }
    }
    let snapshot = snapshot.expect("a snapshot was published");
    (manager, key, snapshot)
}

/// The adapter's hit path: guard load, one compare, read the header.
#[inline]
fn guard_read(cell: &ArcSwapOption<Snapshot>, now: Instant) -> usize {
    let guard = cell.load();
    match guard.as_ref() {
        Some(s) if s.is_fresh(now) => s.header().len(),
        _ => 0,
    }
}

/// The same with an `Arc` clone: a write to the shared refcount (and a drop).
#[inline]
fn refcount_read(cell: &ArcSwapOption<Snapshot>, now: Instant) -> usize {
    match cell.load_full() {
        Some(s) if s.is_fresh(now) => s.header().len(),
        _ => 0,
    }
}

/// The same behind a mutex over a map of snapshots.
#[inline]
fn mutex_read(map: &Mutex<HashMap<KeyId, Arc<Snapshot>>>, key: KeyId, now: Instant) -> usize {
    let map = map.lock().expect("not poisoned");
    match map.get(&key) {
        Some(s) if s.is_fresh(now) => s.header().len(),
        _ => 0,
    }
}

fn hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("hit");

    let (mut manager, key, snapshot) = manager_with_token();
    let start = ISSUED_AT * 1_000_000_000 + 1_000_000;
    let refresh_at = snapshot.fresh_until().as_nanos();
    match manager.authorize(key, now_at(start)) {
        Authorization::Attach(a) if a.state() == TokenState::Fresh => {}
        other => panic!("expected a Fresh attach, got {other:?}"),
    }
    let mut t = start;
    group.bench_function("authorize_fresh", |b| {
        b.iter(|| {
            // 1 ns per call: billions of calls stay far before the refresh point.
            t += 1;
            match manager.authorize(black_box(key), black_box(now_at(t))) {
                Authorization::Attach(a) => a.header().len(),
                _ => 0,
            }
        })
    });
    assert!(t < refresh_at, "the benchmark left the Fresh window");
    match manager.authorize(key, now_at(t)) {
        Authorization::Attach(a) if a.state() == TokenState::Fresh => {}
        other => panic!("expected a Fresh attach after the run, got {other:?}"),
    }
    assert!(
        manager.poll_request().is_none(),
        "the hit path sent a request"
    );

    let cell = ArcSwapOption::from(Some(snapshot.clone()));
    let now = Instant::from_nanos(start);
    assert!(guard_read(&cell, now) > 0);
    group.bench_function("snapshot_is_fresh", |b| {
        b.iter(|| guard_read(black_box(&cell), black_box(now)))
    });
    group.bench_function("snapshot_load_full", |b| {
        b.iter(|| refcount_read(black_box(&cell), black_box(now)))
    });
    group.finish();
}

/// Runs `read` `iters` times on each of `threads` threads at once and returns
/// the wall time from the first thread's start to the last thread's end, as
/// the threads themselves measured it (the spawning thread may be descheduled
/// when there are as many workers as cores, so it cannot time them). Criterion
/// divides by `iters`, so perfect scaling shows the same time per iteration
/// for 1 and 2 threads, and twice the aggregate throughput.
fn run_threads<F>(threads: usize, iters: u64, read: F) -> Duration
where
    F: Fn() -> usize + Sync,
{
    let barrier = Barrier::new(threads);
    let spans: Vec<(WallInstant, WallInstant)> = thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    // One read first, so that per-thread setup (arc-swap's
                    // debt slots) is not timed.
                    black_box(read());
                    barrier.wait();
                    let start = WallInstant::now();
                    let mut sum = 0usize;
                    for _ in 0..iters {
                        sum = sum.wrapping_add(read());
                    }
                    black_box(sum);
                    (start, WallInstant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("reader thread"))
            .collect()
    });
    let first_start = spans.iter().map(|s| s.0).min().expect("one thread");
    let last_end = spans.iter().map(|s| s.1).max().expect("one thread");
    last_end - first_start
}

fn scaling(c: &mut Criterion) {
    let (_manager, key, snapshot) = manager_with_token();
    let now = Instant::from_nanos(ISSUED_AT * 1_000_000_000 + 1_000_000);
    let cell = ArcSwapOption::from(Some(snapshot.clone()));
    let map = Mutex::new(HashMap::from([(key, snapshot)]));

    let mut group = c.benchmark_group("scaling");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("guard_load/{threads}_threads"), |b| {
            b.iter_custom(|iters| run_threads(threads, iters, || guard_read(&cell, black_box(now))))
        });
        group.bench_function(format!("load_full/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, || refcount_read(&cell, black_box(now)))
            })
        });
        group.bench_function(format!("mutex_hashmap/{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                run_threads(threads, iters, || mutex_read(&map, key, black_box(now)))
            })
        });
    }
    group.finish();
}

fn parse(c: &mut Criterion) {
    let body = success_body();
    let max = ManagerConfig::default().max_response_body;
    let sensitive = ["s3cret-s3cret"];
    assert!(parse_token_response(StatusCode::OK, body.as_bytes(), max, &sensitive).is_ok());
    assert!(parse_token_response(
        StatusCode::UNAUTHORIZED,
        ERROR_BODY.as_bytes(),
        max,
        &sensitive
    )
    .is_err_and(|e| e.is_oauth()));

    let mut group = c.benchmark_group("parse");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("typical_response", |b| {
        b.iter(|| {
            parse_token_response(
                StatusCode::OK,
                black_box(body.as_bytes()),
                max,
                black_box(&sensitive),
            )
        })
    });
    group.throughput(Throughput::Bytes(ERROR_BODY.len() as u64));
    group.bench_function("oauth_error", |b| {
        b.iter(|| {
            parse_token_response(
                StatusCode::UNAUTHORIZED,
                black_box(ERROR_BODY.as_bytes()),
                max,
                black_box(&sensitive),
            )
        })
    });
    group.finish();
}

fn request(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    group.bench_function("build", |b| {
        b.iter_batched(
            manager,
            |(mut manager, key)| {
                let Authorization::Fetch(_) = manager.authorize(key, now_at(0)) else {
                    panic!("an empty key must fetch");
                };
                let request = manager.poll_request().expect("request queued");
                // Dropped outside the timed section.
                (manager, request)
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, hit, scaling, parse, request);
criterion_main!(benches);
