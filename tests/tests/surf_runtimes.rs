//! The async client on three executors: async-std, smol and tokio. On each, a
//! herd of 1 000 tasks asking for a missing token causes exactly one token
//! request, and every task gets the same header. (`tokio::spawn` also proves
//! the client's futures are `Send`.)

use std::time::Duration;

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_surf::AsyncTokenClient;
use token_keeper_testkit::{Gate, LocalAuthServer, ServerConfig, TokenFault};

const TASKS: usize = 1000;

struct Herd {
    server: LocalAuthServer,
    tokens: AsyncTokenClient,
    gate: Gate,
}

fn herd() -> Herd {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let gate = Gate::new();
    server.push_token_fault(TokenFault::Hold(gate.clone()));
    let tokens = AsyncTokenClient::new(token_keeper_surf::DirectHttp::new());
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    Herd {
        server,
        tokens,
        gate,
    }
}

impl Herd {
    /// Once the single request is held at the server, let it through.
    fn release_when_requested(&self) {
        assert!(self
            .server
            .wait_for_token_requests(1, Duration::from_secs(20)));
        self.gate.open();
    }

    fn check(&self, headers: Vec<String>) {
        assert_eq!(headers.len(), TASKS);
        assert!(headers
            .iter()
            .all(|h| *h == headers[0] && h.starts_with("Bearer ")));
        assert_eq!(self.server.token_requests(), 1);
    }
}

async fn ask(tokens: AsyncTokenClient) -> String {
    tokens
        .header("m2m")
        .await
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned()
}

#[test]
fn async_std_herd_of_1000_tasks_makes_one_request() {
    let h = herd();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| async_std::task::spawn(ask(h.tokens.clone())))
        .collect();
    h.release_when_requested();
    let headers = async_std::task::block_on(async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await);
        }
        out
    });
    h.check(headers);
}

#[test]
fn smol_herd_of_1000_tasks_makes_one_request() {
    let h = herd();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| smol::spawn(ask(h.tokens.clone())))
        .collect();
    h.release_when_requested();
    let headers = smol::block_on(async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await);
        }
        out
    });
    h.check(headers);
}

#[test]
fn tokio_herd_of_1000_tasks_makes_one_request() {
    let h = herd();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| runtime.spawn(ask(h.tokens.clone())))
        .collect();
    h.release_when_requested();
    let headers = runtime.block_on(async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    h.check(headers);
}
