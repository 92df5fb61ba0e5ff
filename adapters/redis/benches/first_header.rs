//! A new client's first header with a warm store against the same with a
//! cold one (a token endpoint round trip), alternated A/B.
//!
//! `cargo bench -p token-keeper-redis --bench first_header [-- ROUNDS]`
//!
//! Needs `redis-server` on `PATH` (the testkit starts one on a free loopback
//! port) and uses the testkit's local authorization server on loopback, so
//! both sides are the best case of a machine-local store and token endpoint:
//! the difference is the work each path does. Each round builds a new
//! client (as a new process would: its engine, its threads, its store
//! connection) and times client creation to first header.

use std::time::{Duration, Instant};

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_driver::FleetStore;
use token_keeper_redis::{RedisStore, RedisStoreOptions, StoreKeys};
use token_keeper_testkit::{LocalAuthServer, RedisServer, ServerConfig};
use token_keeper_ureq::{ClientOptions, TokenClient};

const KEY: [u8; 32] = [0x42; 32];

fn first_header(server: &LocalAuthServer, store: Option<&RedisServer>) -> Duration {
    let start = Instant::now();
    let store = store.map(|redis| {
        FleetStore::new(
            RedisStore::new(RedisStoreOptions::new(redis.url(), StoreKeys::new(1, KEY)))
                .expect("store options"),
        )
    });
    let tokens = TokenClient::with_options(ClientOptions {
        store,
        ..Default::default()
    })
    .expect("client");
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .expect("config");
    tokens.add_client("m2m", config).expect("client");
    tokens.header("m2m").expect("header");
    start.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    let Ok(redis) = RedisServer::start() else {
        eprintln!("first_header: redis-server is not installed (apt-get install redis-server)");
        std::process::exit(1);
    };
    let server = LocalAuthServer::start(ServerConfig::default()).expect("local server");
    // Warm the store: one client fetches and writes the token.
    first_header(&server, Some(&redis));
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first.
        if round % 2 == 0 {
            warm.push(first_header(&server, Some(&redis)));
            cold.push(first_header(&server, None));
        } else {
            cold.push(first_header(&server, None));
            warm.push(first_header(&server, Some(&redis)));
        }
    }
    warm.sort();
    cold.sort();
    let requests = server.token_requests();
    println!("first header of a new client, {rounds} rounds each, alternated:");
    for (name, times) in [("warm store", &warm), ("no store (token endpoint)", &cold)] {
        println!(
            "  {name:<26} median {:>8.3} ms   p90 {:>8.3} ms   p99 {:>8.3} ms",
            percentile(times, 0.5).as_secs_f64() * 1e3,
            percentile(times, 0.9).as_secs_f64() * 1e3,
            percentile(times, 0.99).as_secs_f64() * 1e3,
        );
    }
    // The warm rounds made no token request: one to warm, one per cold round.
    println!("  token requests: {requests} (1 to warm the store + {rounds} cold)");
    assert_eq!(requests, 1 + rounds as u64, "a warm round fetched a token");
}
