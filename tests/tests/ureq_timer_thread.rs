//! The client's background thread ends when the last clone of the client is
//! dropped. Alone in its test binary, so no other client's thread is counted.

#![cfg(target_os = "linux")]

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_ureq::TokenClient;

/// Threads of this process whose name starts with `prefix` (Linux keeps 15 bytes of it).
fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end().starts_with(prefix))
        .count()
}

#[test]
fn dropping_the_last_clone_stops_the_timer_thread() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    assert_eq!(threads_named("token-keeper-ti"), 0);
    let tokens = TokenClient::new();
    let clone = tokens.clone();
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    tokens.header("m2m").unwrap();
    assert_eq!(threads_named("token-keeper-ti"), 1);
    drop(tokens);
    assert_eq!(
        threads_named("token-keeper-ti"),
        1,
        "a clone still holds the client"
    );
    assert!(clone.header("m2m").is_ok());
    drop(clone);
    // Drop joins the thread, so it is gone by now: no waiting needed.
    assert_eq!(threads_named("token-keeper-ti"), 0);
}
