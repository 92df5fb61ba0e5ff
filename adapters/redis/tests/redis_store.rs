//! `RedisStore` against a real `redis-server` (from the testkit): round
//! trips, leases, rotation, garbage in Redis, an outage and its recovery,
//! passwords, and what Redis gets to see.
//!
//! Without `redis-server` on `PATH` each test prints `skipped: redis-server
//! not installed` and passes, unless `TOKEN_KEEPER_REDIS=required`.

use std::time::{Duration, Instant};

use token_keeper::{
    ManagerConfig, OwnerId, RandomSource, StoreError, StoreErrorKind, StoreKey, StoreOp,
    StoreReply, StoreSettings, StoredToken, TokenManager, TokenType,
};
use token_keeper_driver::Store;
use token_keeper_redis::{entry, RedisStore, RedisStoreOptions, StoreKeys};
use token_keeper_testkit::RedisServer;

const K1: [u8; 32] = [0x11; 32];
const K2: [u8; 32] = [0x22; 32];
const K3: [u8; 32] = [0x33; 32];
const CLIENT_ID: &str = "client-id-7f3a9c";
const SCOPE: &str = "orders.read";
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.secret-access-token-value.sig";

/// A lease owner with the given bytes. `OwnerId` has no public
/// constructor: a core with the store enabled draws its owner from its
/// random source.
fn owner(byte: u8) -> OwnerId {
    struct Fixed(u8);
    impl RandomSource for Fixed {
        fn fill(&self, dest: &mut [u8]) {
            dest.fill(self.0);
        }
    }
    let mut manager = TokenManager::new(ManagerConfig::default(), u64::from(byte));
    manager.set_random_source(Box::new(Fixed(byte)));
    manager.enable_store(StoreSettings::default());
    let owner = manager.store_owner().expect("the store is enabled");
    assert_eq!(owner.as_bytes(), &[byte; 16]);
    owner
}

/// A store key holding a client id and a scope, as the core's do.
fn store_key(suffix: &str) -> StoreKey {
    let mut bytes = vec![StoreKey::VERSION];
    for field in ["https://auth.example.com/token", CLIENT_ID, SCOPE, suffix] {
        bytes.extend_from_slice(&(field.len() as u32).to_be_bytes());
        bytes.extend_from_slice(field.as_bytes());
    }
    StoreKey::from_bytes(&bytes)
}

fn token() -> StoredToken {
    StoredToken::new(
        TOKEN.to_owned(),
        TokenType::Bearer,
        Some(SCOPE.to_owned()),
        Duration::from_secs(3600),
    )
    .unwrap()
}

fn options(server: &RedisServer, keys: StoreKeys) -> RedisStoreOptions {
    RedisStoreOptions::new(server.url(), keys)
        .namespace("tests")
        // Generous on a loaded 2-core machine; still bounded.
        .command_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
}

fn store(server: &RedisServer, keys: StoreKeys) -> RedisStore {
    RedisStore::new(options(server, keys)).unwrap()
}

fn raw(server: &RedisServer) -> redis::Connection {
    redis::Client::open(server.url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

fn read(store: &RedisStore, key: &StoreKey) -> Result<Option<(StoredToken, Duration)>, StoreError> {
    match store.execute(key, &StoreOp::Read)? {
        StoreReply::Entry(entry) => Ok(entry),
        other => panic!("Read answered {other:?}"),
    }
}

fn lease(store: &RedisStore, key: &StoreKey, owner: OwnerId, ttl: Duration) -> bool {
    match store.execute(key, &StoreOp::Lease { owner, ttl }).unwrap() {
        StoreReply::Lease(held) => held,
        other => panic!("Lease answered {other:?}"),
    }
}

fn write(store: &RedisStore, key: &StoreKey, owner: OwnerId, ttl: Duration) {
    let reply = store
        .execute(
            key,
            &StoreOp::Write {
                owner,
                token: token(),
                ttl,
            },
        )
        .unwrap();
    assert!(matches!(reply, StoreReply::Done), "{reply:?}");
}

fn release(store: &RedisStore, key: &StoreKey, owner: OwnerId) {
    let reply = store.execute(key, &StoreOp::Release { owner }).unwrap();
    assert!(matches!(reply, StoreReply::Done), "{reply:?}");
}

fn assert_invalid(result: Result<Option<(StoredToken, Duration)>, StoreError>) {
    match result {
        Err(error) => {
            assert_eq!(error.kind(), StoreErrorKind::Invalid, "{error}");
            assert!(!error.to_string().contains(TOKEN));
        }
        Ok(entry) => panic!("expected Invalid, read {entry:?}"),
    }
}

#[test]
fn write_then_read_round_trips() {
    let Some(server) = RedisServer::start_for_test("write_then_read_round_trips") else {
        return;
    };
    let store = store(&server, StoreKeys::new(1, K1));
    let key = store_key("round-trip");
    assert!(read(&store, &key).unwrap().is_none(), "no entry yet");

    let ttl = Duration::from_secs(60);
    write(&store, &key, owner(1), ttl);
    let (read_token, remaining) = read(&store, &key).unwrap().expect("the entry written");
    assert_eq!(read_token, token());
    assert_eq!(read_token.access_token().expose_secret(), TOKEN);
    assert_eq!(read_token.scope(), Some(SCOPE));
    assert_eq!(read_token.lifetime(), Duration::from_secs(3600));
    assert!(remaining <= ttl, "{remaining:?}");
    assert!(remaining > Duration::ZERO);

    // Another store of the same fleet (same namespace, same keys) reads it;
    // another namespace does not see it.
    let other = store_in(&server, StoreKeys::new(1, K1), "tests");
    assert_eq!(read(&other, &key).unwrap().unwrap().0, token());
    let elsewhere = store_in(&server, StoreKeys::new(1, K1), "elsewhere");
    assert!(read(&elsewhere, &key).unwrap().is_none());

    // A zero TTL is rounded up to 1 ms: the entry is written, and soon gone.
    let short = store_key("zero-ttl");
    write(&store, &short, owner(1), Duration::ZERO);
    assert!(poll_until(|| read(&store, &short).unwrap().is_none()));
}

fn store_in(server: &RedisServer, keys: StoreKeys, namespace: &str) -> RedisStore {
    RedisStore::new(options(server, keys).namespace(namespace)).unwrap()
}

/// Polls `condition` every 10 ms for at most 10 s; whether it held.
fn poll_until(mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn lease_is_exclusive_and_released_only_by_its_owner() {
    let Some(server) =
        RedisServer::start_for_test("lease_is_exclusive_and_released_only_by_its_owner")
    else {
        return;
    };
    let a = store(&server, StoreKeys::new(1, K1));
    let b = store(&server, StoreKeys::new(1, K1));
    let (owner_a, owner_b) = (owner(0xa), owner(0xb));
    let key = store_key("lease");
    let ttl = Duration::from_secs(60);

    assert!(lease(&a, &key, owner_a, ttl), "the first taker holds it");
    assert!(!lease(&b, &key, owner_b, ttl), "the second does not");
    assert!(!lease(&a, &key, owner_a, ttl), "not even its holder twice");

    // A release by a non-owner leaves the lease in place.
    release(&b, &key, owner_b);
    assert!(!lease(&b, &key, owner_b, ttl));

    // The holder's write releases it.
    write(&a, &key, owner_a, ttl);
    assert!(read(&b, &key).unwrap().is_some());
    assert!(
        lease(&b, &key, owner_b, ttl),
        "released by the holder's write"
    );

    // A write by a non-owner writes the entry but leaves the lease.
    write(&a, &key, owner_a, ttl);
    assert!(!lease(&a, &key, owner_a, ttl));

    // Its owner's release frees it.
    release(&a, &key, owner_a);
    assert!(!lease(&a, &key, owner_a, ttl));
    release(&b, &key, owner_b);
    assert!(lease(&a, &key, owner_a, ttl));

    // The lease's TTL is the one asked for.
    let pttl: i64 = redis::cmd("PTTL")
        .arg(a.names(&key).lease)
        .query(&mut raw(&server))
        .unwrap();
    assert!(pttl > 0 && pttl <= 60_000, "{pttl}");
}

#[test]
fn lease_lapses_after_its_ttl() {
    let Some(server) = RedisServer::start_for_test("lease_lapses_after_its_ttl") else {
        return;
    };
    let a = store(&server, StoreKeys::new(1, K1));
    let b = store(&server, StoreKeys::new(1, K1));
    let (owner_a, owner_b) = (owner(0xa), owner(0xb));
    let key = store_key("lapse");

    assert!(lease(&a, &key, owner_a, Duration::from_millis(300)));
    // Until it lapses, b cannot take it; then it can.
    assert!(poll_until(|| lease(
        &b,
        &key,
        owner_b,
        Duration::from_secs(60)
    )));
    assert!(!lease(&a, &key, owner_a, Duration::from_secs(60)));

    // a's late write (its lease has lapsed) writes the entry but does not
    // release b's lease.
    write(&a, &key, owner_a, Duration::from_secs(60));
    assert!(read(&a, &key).unwrap().is_some());
    assert!(!lease(&a, &key, owner_a, Duration::from_secs(60)));
}

#[test]
fn rotation_reads_old_keys_and_refuses_unknown_ones() {
    let Some(server) =
        RedisServer::start_for_test("rotation_reads_old_keys_and_refuses_unknown_ones")
    else {
        return;
    };
    let key = store_key("rotation_reads_old_keys_and_refuses_unknown_ones");
    let before = store(&server, StoreKeys::new(1, K1));
    write(&before, &key, owner(1), Duration::from_secs(60));

    let during = store(&server, StoreKeys::new(2, K2).with_old(1, K1));
    assert_eq!(read(&during, &key).unwrap().unwrap().0, token());

    // A store that knows neither id 1 nor its key refuses it.
    let after = store(&server, StoreKeys::new(3, K3));
    assert_invalid(read(&after, &key));

    // Rewritten under key 2: the rotated store reads it, the old one cannot.
    write(&during, &key, owner(1), Duration::from_secs(60));
    let raw_entry: Vec<u8> = redis::cmd("GET")
        .arg(during.names(&key).entry)
        .query(&mut raw(&server))
        .unwrap();
    assert_eq!(raw_entry[0], entry::VERSION);
    assert_eq!(raw_entry[1], 2, "sealed with the current key");
    assert_eq!(read(&during, &key).unwrap().unwrap().0, token());
    assert_invalid(read(&before, &key));
    // Invalid is no entry to the core: a write overwrites it.
    write(&before, &key, owner(1), Duration::from_secs(60));
    assert!(read(&before, &key).unwrap().is_some());
}

#[test]
fn garbage_in_redis_is_invalid_never_a_panic() {
    let Some(server) = RedisServer::start_for_test("garbage_in_redis_is_invalid_never_a_panic")
    else {
        return;
    };
    let store = store(&server, StoreKeys::new(1, K1));
    let key = store_key("garbage");
    let other_key = store_key("another");
    let names = store.names(&key);
    let mut conn = raw(&server);
    write(&store, &key, owner(1), Duration::from_secs(60));
    write(&store, &other_key, owner(1), Duration::from_secs(60));
    let get = |conn: &mut redis::Connection, name: &str| -> Vec<u8> {
        redis::cmd("GET").arg(name).query(conn).unwrap()
    };
    let valid = get(&mut conn, &names.entry);
    let other_entry = get(&mut conn, &store.names(&other_key).entry);

    let mut future_version = valid.clone();
    future_version[0] = 2;
    let mut unknown_key_id = valid.clone();
    unknown_key_id[1] = 9;
    let mut flipped = valid.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0x80;
    let random: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random bytes", random),
        ("empty", Vec::new()),
        ("truncated", valid[..valid.len() / 2].to_vec()),
        ("header only", valid[..14].to_vec()),
        ("another key's entry", other_entry),
        ("future version", future_version),
        ("unknown key id", unknown_key_id),
        ("flipped tag bit", flipped),
        ("plain text token", TOKEN.as_bytes().to_vec()),
        ("too large", vec![1u8; entry::MAX_ENTRY + 1]),
    ];
    for (what, value) in cases {
        let _: () = redis::cmd("SET")
            .arg(&names.entry)
            .arg(value)
            .arg("PX")
            .arg(60_000)
            .query(&mut conn)
            .unwrap();
        match read(&store, &key) {
            Err(error) => assert_eq!(error.kind(), StoreErrorKind::Invalid, "{what}: {error}"),
            Ok(entry) => panic!("{what}: read {entry:?}"),
        }
    }

    // A valid entry with no TTL was not written by a store.
    let _: () = redis::cmd("SET")
        .arg(&names.entry)
        .arg(&valid)
        .query(&mut conn)
        .unwrap();
    assert_invalid(read(&store, &key));

    // Another type under the entry's name.
    let _: () = redis::cmd("DEL")
        .arg(&names.entry)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("RPUSH")
        .arg(&names.entry)
        .arg("x")
        .query(&mut conn)
        .unwrap();
    assert_invalid(read(&store, &key));
    // A write replaces it.
    write(&store, &key, owner(1), Duration::from_secs(60));
    assert_eq!(read(&store, &key).unwrap().unwrap().0, token());

    // Another type under the lease's name, with no time to live: it could
    // never lapse, so the next lease replaces it (and a write releases that).
    let _: () = redis::cmd("HSET")
        .arg(&names.lease)
        .arg("f")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    assert!(lease(&store, &key, owner(1), Duration::from_secs(60)));
    write(&store, &key, owner(1), Duration::from_secs(60));
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&names.lease)
        .query(&mut conn)
        .unwrap();
    assert_eq!(exists, 0, "the write released the lease");

    // The store still works for other keys after all this.
    assert_eq!(read(&store, &other_key).unwrap().unwrap().0, token());
}

#[test]
fn outage_fails_fast_and_recovers_after_restart() {
    let Some(mut server) =
        RedisServer::start_for_test("outage_fails_fast_and_recovers_after_restart")
    else {
        return;
    };
    let store = RedisStore::new(
        options(&server, StoreKeys::new(1, K1))
            .command_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(400)),
    )
    .unwrap();
    let key = store_key("outage_fails_fast_and_recovers_after_restart");
    write(&store, &key, owner(1), Duration::from_secs(60));
    assert!(read(&store, &key).unwrap().is_some());

    server.kill();
    // Every operation returns, as Unavailable, while Redis is down: on the
    // dropped connection, while backing off, and on refused reconnections.
    let started = Instant::now();
    let mut messages = Vec::new();
    for op in [
        StoreOp::Read,
        StoreOp::Lease {
            owner: owner(1),
            ttl: Duration::from_secs(1),
        },
        StoreOp::Read,
        StoreOp::Release { owner: owner(1) },
    ]
    .iter()
    .cycle()
    .take(12)
    {
        let error = store.execute(&key, op).unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
        messages.push(error.to_string());
        std::thread::sleep(Duration::from_millis(30));
    }
    // Bounded: twelve operations well within a minute.
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(
        messages.iter().any(|m| m.contains("backing off")),
        "{messages:#?}"
    );

    server.restart().unwrap();
    // After the backoff, the store reconnects by itself (the restarted
    // server is empty).
    let mut last = None;
    let recovered = poll_until(|| match store.execute(&key, &StoreOp::Read) {
        Ok(reply) => {
            last = Some(reply);
            true
        }
        Err(error) => {
            assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
            false
        }
    });
    assert!(recovered, "the store did not reconnect within 10 s");
    assert!(matches!(last, Some(StoreReply::Entry(None))), "{last:?}");
    write(&store, &key, owner(1), Duration::from_secs(60));
    assert_eq!(read(&store, &key).unwrap().unwrap().0, token());
}

#[test]
fn password_urls_work_and_the_password_stays_secret() {
    const PASSWORD: &str = "pw-Zq8rT4vLx2";
    let Some(server) = RedisServer::start_with_password_for_test(
        "password_urls_work_and_the_password_stays_secret",
        PASSWORD,
    ) else {
        return;
    };
    assert!(server.url().contains(PASSWORD));
    let options = options(&server, StoreKeys::new(1, K1));
    let store = RedisStore::new(options.clone()).unwrap();
    let key = store_key("password");
    write(&store, &key, owner(1), Duration::from_secs(60));
    assert_eq!(read(&store, &key).unwrap().unwrap().0, token());

    let mut shown = vec![
        format!("{options:?}"),
        format!("{options:#?}"),
        format!("{store:?}"),
        format!("{store:#?}"),
    ];
    // A wrong password: Unavailable, and neither password in the error.
    let wrong_url = server.url().replace(PASSWORD, "wrong-Pw-77");
    let wrong = RedisStore::new(
        RedisStoreOptions::new(wrong_url, StoreKeys::new(1, K1)).namespace("tests"),
    )
    .unwrap();
    let error = wrong.execute(&key, &StoreOp::Read).unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    assert!(error.message().contains("authentication failed"), "{error}");
    shown.push(format!("{error} {error:?} {wrong:?}"));
    // No password at all: refused by the server, as Unavailable.
    let none = RedisStore::new(RedisStoreOptions::new(
        format!("redis://127.0.0.1:{}/0", server.port()),
        StoreKeys::new(1, K1),
    ))
    .unwrap();
    let error = none.execute(&key, &StoreOp::Read).unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    shown.push(format!("{error} {error:?}"));
    // A refused scheme with a password.
    let refused = RedisStore::new(RedisStoreOptions::new(
        server.url().replace("redis://", "rediss://"),
        StoreKeys::new(1, K1),
    ))
    .unwrap_err();
    shown.push(format!("{refused} {refused:?}"));

    for text in &shown {
        assert!(!text.contains(PASSWORD), "{text}");
        assert!(!text.contains("wrong-Pw-77"), "{text}");
    }
    assert!(shown[2].contains("127.0.0.1") && shown[2].contains(&server.port().to_string()));
}

#[test]
fn redis_sees_no_client_id_scope_or_token() {
    let Some(server) = RedisServer::start_for_test("redis_sees_no_client_id_scope_or_token") else {
        return;
    };
    let store = store(&server, StoreKeys::new(1, K1));
    let key = store_key("names");
    assert!(lease(&store, &key, owner(1), Duration::from_secs(60)));
    write(&store, &key, owner(2), Duration::from_secs(60));
    assert!(!lease(&store, &key, owner(2), Duration::from_secs(60)));

    let mut conn = raw(&server);
    let names: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert_eq!(names.len(), 2, "the entry and the lease");
    let expected = store.names(&key);
    for name in &names {
        let text = String::from_utf8(name.clone()).unwrap();
        assert!(text == expected.entry || text == expected.lease, "{text}");
        assert!(!text.contains(CLIENT_ID) && !text.contains(SCOPE), "{text}");
        let value: Vec<u8> = redis::cmd("GET").arg(name).query(&mut conn).unwrap();
        for secret in [CLIENT_ID, SCOPE, TOKEN, "secret-access-token"] {
            assert!(
                !value.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{text} holds {secret}"
            );
        }
    }
}

#[test]
fn concurrent_operations_share_one_connection() {
    let Some(server) = RedisServer::start_for_test("concurrent_operations_share_one_connection")
    else {
        return;
    };
    let store = store(&server, StoreKeys::new(1, K1));
    std::thread::scope(|scope| {
        for thread in 0..4u8 {
            let store = &store;
            scope.spawn(move || {
                for i in 0..25 {
                    let key = store_key(&format!("thread-{thread}-{i}"));
                    assert!(lease(store, &key, owner(thread), Duration::from_secs(60)));
                    write(store, &key, owner(thread), Duration::from_secs(60));
                    assert_eq!(read(store, &key).unwrap().unwrap().0, token());
                }
            });
        }
    });
}

/// A lease with no time to live (set by hand, or by something else) would
/// never lapse and stop the fleet from fetching: the next lease replaces it.
/// A live lease of another process, however long, is left alone.
#[test]
fn a_lease_that_could_never_lapse_is_replaced() {
    let Some(server) = RedisServer::start_for_test("a_lease_that_could_never_lapse_is_replaced")
    else {
        return;
    };
    let a = store(&server, StoreKeys::new(1, K1));
    let key = store_key("stuck");
    let lease_name = a.names(&key).lease;
    let mut connection = raw(&server);
    redis::cmd("SET")
        .arg(&lease_name)
        .arg("someone")
        .query::<()>(&mut connection)
        .unwrap();
    assert!(lease(&a, &key, owner(0xa), Duration::from_secs(35)));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&lease_name)
        .query(&mut connection)
        .unwrap();
    assert!(ttl > 0 && ttl <= 35_000, "{ttl}");

    // A long but live lease of another process stays.
    let key = store_key("long");
    let b = store(&server, StoreKeys::new(1, K1));
    assert!(lease(&b, &key, owner(0xb), Duration::from_secs(3600)));
    assert!(!lease(&a, &key, owner(0xa), Duration::from_secs(35)));
}

/// An entry copied into another namespace does not open there, even with
/// the same sealing key.
#[test]
fn an_entry_moved_to_another_namespace_does_not_open() {
    let Some(server) =
        RedisServer::start_for_test("an_entry_moved_to_another_namespace_does_not_open")
    else {
        return;
    };
    let here = store_in(&server, StoreKeys::new(1, K1), "here");
    let there = store_in(&server, StoreKeys::new(1, K1), "there");
    let key = store_key("moved");
    write(&here, &key, owner(1), Duration::from_secs(60));
    let mut connection = raw(&server);
    let sealed: Vec<u8> = redis::cmd("GET")
        .arg(here.names(&key).entry)
        .query(&mut connection)
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(there.names(&key).entry)
        .arg(sealed)
        .arg("PX")
        .arg(60_000)
        .query(&mut connection)
        .unwrap();
    assert_invalid(read(&there, &key));
    assert!(read(&here, &key).unwrap().is_some());
}
