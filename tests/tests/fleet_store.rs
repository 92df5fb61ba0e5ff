//! The fleet store through the whole stack: clients of both adapters, each
//! with a `RedisStore` of its own on one real `redis-server`, against the
//! local authorization server over loopback.
//!
//! A token fetched by one client is served to the others from Redis; Redis
//! down, holding garbage, or keyed differently costs token requests, never a
//! failed call. Without `redis-server` each test says it skipped, unless
//! `TOKEN_KEEPER_REDIS=required` (the test command sets it).

use std::time::Duration;

use token_keeper::{ClientAuth, ClientConfig, ClientSecret, StoreSettings};
use token_keeper_driver::FleetStore;
use token_keeper_redis::{RedisStore, RedisStoreOptions, StoreKeys};
use token_keeper_surf::{AsyncTokenClient, DirectHttp};
use token_keeper_testkit::scenarios::captured_logs;
use token_keeper_testkit::{LocalAuthServer, RedisServer, ServerConfig};
use token_keeper_ureq::TokenClient;

const SECRET: &str = "fleet-s3cret";
const KEY: [u8; 32] = [0x5a; 32];

fn server() -> LocalAuthServer {
    LocalAuthServer::start(ServerConfig {
        clients: vec![("m2m".into(), SECRET.into())],
        ttl_secs: 300,
        ..ServerConfig::default()
    })
    .expect("local server")
}

fn config(server: &LocalAuthServer) -> ClientConfig {
    ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new(SECRET)),
    )
    .unwrap()
    .scope("api")
}

fn fleet_store(redis: &RedisServer, key: [u8; 32], namespace: &str) -> FleetStore {
    let store = RedisStore::new(
        RedisStoreOptions::new(redis.url(), StoreKeys::new(1, key)).namespace(namespace),
    )
    .expect("valid options");
    FleetStore::new(store).with_settings(StoreSettings {
        poll_interval: Duration::from_millis(20),
        ..StoreSettings::default()
    })
}

fn blocking(store: FleetStore) -> TokenClient {
    TokenClient::with_options(token_keeper_ureq::ClientOptions {
        store: Some(store),
        ..Default::default()
    })
    .unwrap()
}

fn nonblocking(store: FleetStore) -> AsyncTokenClient {
    AsyncTokenClient::with_options(
        DirectHttp::new(),
        token_keeper_surf::ClientOptions {
            store: Some(store),
            ..Default::default()
        },
    )
    .unwrap()
}

#[test]
fn a_token_fetched_by_one_client_is_served_to_the_others_from_redis() {
    let Some(redis) = RedisServer::start_for_test("fleet_store::shared") else {
        return;
    };
    let server = server();
    let first = blocking(fleet_store(&redis, KEY, "shared"));
    let second = blocking(fleet_store(&redis, KEY, "shared"));
    let third = nonblocking(fleet_store(&redis, KEY, "shared"));
    for tokens in [&first, &second] {
        tokens.add_client("m2m", config(&server)).unwrap();
    }
    third.add_client("m2m", config(&server)).unwrap();

    let header = first.header("m2m").unwrap();
    assert_eq!(server.token_requests(), 1);
    assert_eq!(second.header("m2m").unwrap(), header);
    assert_eq!(
        async_std::task::block_on(third.header("m2m")).unwrap(),
        header
    );
    // One token for the three: the others read it from Redis.
    assert_eq!(server.token_requests(), 1);
    assert_eq!(first.stats().token_requests, 1);
    assert_eq!(
        (second.stats().token_requests, second.stats().store_hits),
        (0, 1)
    );
    assert_eq!(
        (third.stats().token_requests, third.stats().store_hits),
        (0, 1)
    );

    // Another namespace is another fleet.
    let other = blocking(fleet_store(&redis, KEY, "elsewhere"));
    other.add_client("m2m", config(&server)).unwrap();
    assert_ne!(other.header("m2m").unwrap(), header);
    assert_eq!(server.token_requests(), 2);
}

#[test]
fn clients_that_start_together_fetch_once() {
    let Some(redis) = RedisServer::start_for_test("fleet_store::together") else {
        return;
    };
    let server = server();
    let clients: Vec<TokenClient> = (0..4)
        .map(|_| blocking(fleet_store(&redis, KEY, "together")))
        .collect();
    for tokens in &clients {
        tokens.add_client("m2m", config(&server)).unwrap();
    }
    let headers: Vec<_> = std::thread::scope(|scope| {
        let asks: Vec<_> = clients
            .iter()
            .map(|tokens| scope.spawn(|| tokens.header("m2m").unwrap()))
            .collect();
        asks.into_iter().map(|ask| ask.join().unwrap()).collect()
    });
    assert!(
        headers.windows(2).all(|pair| pair[0] == pair[1]),
        "{headers:?}"
    );
    // The lease lets one of them fetch; the others follow it.
    assert_eq!(server.token_requests(), 1);
}

#[test]
fn redis_down_costs_token_requests_never_a_failed_call() {
    let Some(mut redis) = RedisServer::start_for_test("fleet_store::down") else {
        return;
    };
    captured_logs();
    let server = server();
    redis.kill();
    let first = blocking(fleet_store(&redis, KEY, "down"));
    let second = nonblocking(fleet_store(&redis, KEY, "down"));
    first.add_client("m2m", config(&server)).unwrap();
    second.add_client("m2m", config(&server)).unwrap();
    first.header("m2m").expect("no store, still a token");
    async_std::task::block_on(second.header("m2m")).expect("no store, still a token");
    // Each fetched its own, as without a store.
    assert_eq!(server.token_requests(), 2);
    let logs = captured_logs();
    assert!(
        logs.contains("token store unavailable"),
        "the outage is logged: {logs}"
    );
    assert!(!logs.contains(SECRET));

    // Back up: a newcomer is served from Redis once a token is written there.
    redis.restart().expect("restart redis");
    let writer = blocking(fleet_store(&redis, KEY, "down"));
    writer.add_client("m2m", config(&server)).unwrap();
    let header = writer.header("m2m").unwrap();
    let reader = blocking(fleet_store(&redis, KEY, "down"));
    reader.add_client("m2m", config(&server)).unwrap();
    assert_eq!(reader.header("m2m").unwrap(), header);
    assert_eq!(reader.stats().store_hits, 1);
}

#[test]
fn an_entry_under_another_key_is_refused_and_replaced() {
    let Some(redis) = RedisServer::start_for_test("fleet_store::other_key") else {
        return;
    };
    let server = server();
    // A process with another encryption key wrote the entry.
    let stranger = blocking(fleet_store(&redis, [0x77; 32], "rotated"));
    stranger.add_client("m2m", config(&server)).unwrap();
    let theirs = stranger.header("m2m").unwrap();
    // This one cannot open it: it fetches its own and overwrites the entry.
    let ours = blocking(fleet_store(&redis, KEY, "rotated"));
    ours.add_client("m2m", config(&server)).unwrap();
    let mine = ours.header("m2m").unwrap();
    assert_ne!(mine, theirs);
    assert_eq!(server.token_requests(), 2);
    // And the next process with this key reads what it wrote.
    let next = blocking(fleet_store(&redis, KEY, "rotated"));
    next.add_client("m2m", config(&server)).unwrap();
    assert_eq!(next.header("m2m").unwrap(), mine);
    assert_eq!(server.token_requests(), 2);
}

#[test]
fn a_forced_refresh_is_shared_too() {
    let Some(redis) = RedisServer::start_for_test("fleet_store::forced") else {
        return;
    };
    let server = server();
    let first = blocking(fleet_store(&redis, KEY, "forced"));
    first.add_client("m2m", config(&server)).unwrap();
    let old = first.header("m2m").unwrap();
    first.force_refresh("m2m").unwrap();
    let new = first.header("m2m").unwrap();
    assert_ne!(new, old);
    // Newcomers are served from Redis, never fetching: the old token while
    // the refreshed one's write is on its way (both are valid), then the
    // refreshed one.
    let mut served_new = false;
    for _attempt in 0..200 {
        let newcomer = blocking(fleet_store(&redis, KEY, "forced"));
        newcomer.add_client("m2m", config(&server)).unwrap();
        let header = newcomer.header("m2m").unwrap();
        assert!(header == new || header == old);
        if header == new {
            served_new = true;
            break;
        }
    }
    assert!(served_new, "the refreshed token never reached Redis");
    assert_eq!(server.token_requests(), 2);
}

/// A process that stops right after fetching (a CLI job, a crash-looping
/// pod) still leaves its token in Redis and no lease behind: dropping the
/// client waits (briefly) for its write. The next process is served from
/// Redis at once, rather than following a lease until it lapses.
#[test]
fn a_client_dropped_right_after_fetching_leaves_its_token_for_the_fleet() {
    let Some(redis) = RedisServer::start_for_test("fleet_store::dropped") else {
        return;
    };
    let server = server();
    for round in 0..5 {
        let namespace = format!("dropped-{round}");
        let first = blocking(fleet_store(&redis, KEY, &namespace));
        first.add_client("m2m", config(&server)).unwrap();
        let header = first.header("m2m").unwrap();
        drop(first);
        let next = blocking(fleet_store(&redis, KEY, &namespace));
        next.add_client("m2m", config(&server)).unwrap();
        assert_eq!(next.header("m2m").unwrap(), header, "round {round}");
        assert_eq!(next.stats().store_hits, 1);
    }
    assert_eq!(server.token_requests(), 5);
    let flushed = blocking(fleet_store(&redis, KEY, "flushed"));
    assert!(
        flushed.flush_store(Duration::from_secs(1)),
        "nothing queued"
    );
}
