//! The blocking client's hit path: the header for a named client with a
//! cached Fresh token, the clock read included.
//!
//! `cargo bench -p token-keeper-ureq --bench hit_path`
//!
//! - `client/with_header`: reads the header in place (guard load, no copy, no refcount).
//! - `client/header`: returns an owned `HeaderValue` (a clone: one shared refcount increment).
//! - `client/clock_read`: the `CLOCK_BOOTTIME` read alone.
//! - `client/with_header_at`: the hit path without its clock read.
//! - `client/*_1_thread` / `*_2_threads`: the same calls split over one or two
//!   threads started together; the time per call halves if reads scale.

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_ureq::TokenClient;

fn client() -> (LocalAuthServer, TokenClient) {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = TokenClient::new();
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    tokens.header("m2m").unwrap();
    (server, tokens)
}

/// Runs `iters` calls split over `threads` threads started together; the wall time.
fn parallel(tokens: &TokenClient, threads: u64, iters: u64, with_clock: bool) -> Duration {
    let now = tokens.clock().monotonic();
    let barrier = Barrier::new(threads as usize + 1);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                barrier.wait();
                for _ in 0..iters / threads {
                    if with_clock {
                        black_box(tokens.with_header("m2m", |h| h.len()).unwrap());
                    } else {
                        black_box(tokens.with_header_at("m2m", now, |h| h.len()).unwrap());
                    }
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let (_server, tokens) = client();
    let mut group = c.benchmark_group("client");
    group.bench_function("with_header", |b| {
        b.iter(|| black_box(tokens.with_header("m2m", |h| h.len()).unwrap()))
    });
    group.bench_function("header", |b| {
        b.iter(|| black_box(tokens.header("m2m").unwrap()))
    });
    group.bench_function("clock_read", |b| {
        b.iter(|| black_box(tokens.clock().monotonic()))
    });
    let now = tokens.clock().monotonic();
    group.bench_function("with_header_at", |b| {
        b.iter(|| black_box(tokens.with_header_at("m2m", now, |h| h.len()).unwrap()))
    });
    for (name, threads, clock) in [
        ("with_header_1_thread", 1, true),
        ("with_header_2_threads", 2, true),
        ("with_header_at_1_thread", 1, false),
        ("with_header_at_2_threads", 2, false),
    ] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| parallel(&tokens, threads, iters, clock))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
