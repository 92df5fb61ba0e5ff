//! The application's `log` backend runs after the core's lock is released:
//! a logger is the application's code, and one that calls the client (here,
//! its health view, which takes the lock) must not deadlock it.
//!
//! A test binary of its own: the logger is process-wide.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_ureq::TokenClient;

/// The client the logger calls back into, once the test has made it.
static CLIENT: OnceLock<TokenClient> = OnceLock::new();

struct CallingLogger;

impl log::Log for CallingLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("token_keeper")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            if let Some(client) = CLIENT.get() {
                // Takes the core's lock: a deadlock if the line is written under it.
                let _ = client.health();
            }
        }
    }

    fn flush(&self) {}
}

static LOGGER: CallingLogger = CallingLogger;

#[test]
fn a_logger_that_calls_the_client_does_not_deadlock_it() {
    log::set_logger(&LOGGER).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = CLIENT.get_or_init(TokenClient::new);
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(CLIENT.get().unwrap().header("m2m").is_ok());
    });
    let got = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("the logger ran under the core's lock and deadlocked the client");
    assert!(got);
}
