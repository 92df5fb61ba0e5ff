//! What the one driver guarantees, whatever the adapter: a caller only asks
//! and waits, so one that stops waiting strands nobody (the engine owns the
//! token request and wakes every waiter with its outcome).
//!
//! Deterministic: the token server holds its answer until the test opens a
//! gate; nothing sleeps.

use std::time::Duration;

use futures_lite::future::{self, FutureExt};
use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_surf::{AsyncTokenClient, DirectHttp};
use token_keeper_testkit::{Gate, LocalAuthServer, ServerConfig, TokenFault};

fn config(token_url: &str) -> ClientConfig {
    ClientConfig::new(
        token_url,
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap()
}

#[test]
fn a_caller_dropped_while_waiting_strands_no_other_caller() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let gate = Gate::new();
    server.push_token_fault(TokenFault::Hold(gate.clone()));
    let tokens = AsyncTokenClient::new(DirectHttp::new());
    tokens
        .add_client("m2m", config(&server.token_url()))
        .unwrap();

    // Caller A starts the token request, then is dropped while it waits
    // (as a timeout or a `select!` would drop it).
    let mut a = Box::pin(tokens.header("m2m"));
    assert!(future::block_on(future::poll_once(&mut a)).is_none());
    assert!(server.wait_for_token_requests(1, Duration::from_secs(10)));
    drop(a);

    // Caller B asks while the request is still held: it waits for it…
    let mut b = Box::pin(tokens.header("m2m"));
    assert!(future::block_on(future::poll_once(&mut b)).is_none());
    // …and gets the header as soon as the server answers, well before the
    // request deadline (30 s) would have let the core give up.
    gate.open();
    let header = future::block_on(b.or(async {
        async_io::Timer::after(Duration::from_secs(10)).await;
        panic!("caller B was stranded by caller A's cancellation");
    }))
    .unwrap();
    assert!(header.to_str().unwrap().starts_with("Bearer "));
    assert_eq!(server.token_requests(), 1);
    assert_eq!(tokens.stats().token_requests, 1);
}

#[test]
fn a_closure_given_the_header_may_call_the_client_again() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = token_keeper_ureq::TokenClient::new();
    tokens.add_client("a", config(&server.token_url())).unwrap();
    tokens.add_client("b", config(&server.token_url())).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let caller = tokens.clone();
    // On a cold cache both headers are fetched: the closure runs after the
    // core's lock is released, so its own call to the client can proceed.
    std::thread::spawn(move || {
        let nested = caller.with_header("a", |_| caller.header("b"));
        let _ = done.send(nested.map(|inner| inner.is_ok()));
    });
    let outcome = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("with_header's closure deadlocked on the client's lock");
    assert!(outcome.unwrap());
    assert_eq!(server.token_requests(), 2);

    // The async client, likewise.
    let async_tokens = AsyncTokenClient::new(DirectHttp::new());
    async_tokens
        .add_client("a", config(&server.token_url()))
        .unwrap();
    async_tokens
        .add_client("b", config(&server.token_url()))
        .unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let caller = async_tokens.clone();
    std::thread::spawn(move || {
        let nested = future::block_on(
            caller.with_header("a", |_| future::block_on(caller.header("b")).is_ok()),
        );
        let _ = done.send(nested);
    });
    let outcome = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("with_header's closure deadlocked on the client's lock");
    assert!(outcome.unwrap());
}
