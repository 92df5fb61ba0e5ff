//! The reqwest adapter on tokio: a herd of 1 000 tasks asking for a missing
//! token causes exactly one token request (`tokio::spawn` also proves the
//! client's futures are `Send`), and a token failure through the middleware
//! comes back typed, with the API never asked.

use std::time::Duration;

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_reqwest::{token_failure, ReqwestTokenClient, TokenMiddleware};
use token_keeper_testkit::{Gate, LocalAuthServer, ServerConfig, TokenFault};

const TASKS: usize = 1000;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn server(secret: &str) -> LocalAuthServer {
    LocalAuthServer::start(ServerConfig {
        clients: vec![("m2m".to_owned(), secret.to_owned())],
        ..ServerConfig::default()
    })
    .unwrap()
}

fn tokens(server: &LocalAuthServer, secret: &str) -> ReqwestTokenClient {
    let tokens = ReqwestTokenClient::new();
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new(secret)),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    tokens
}

#[test]
fn tokio_herd_of_1000_tasks_makes_one_request() {
    let server = server("s3cret");
    let gate = Gate::new();
    server.push_token_fault(TokenFault::Hold(gate.clone()));
    let tokens = tokens(&server, "s3cret");
    let runtime = runtime();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let tokens = tokens.clone();
            runtime.spawn(async move {
                let header = tokens.header("m2m").await.unwrap();
                header.to_str().unwrap().to_owned()
            })
        })
        .collect();
    // Once the single request is held at the server, let it through.
    assert!(server.wait_for_token_requests(1, Duration::from_secs(20)));
    gate.open();
    let headers = runtime.block_on(async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    assert_eq!(headers.len(), TASKS);
    assert!(headers
        .iter()
        .all(|h| *h == headers[0] && h.starts_with("Bearer ")));
    assert_eq!(server.token_requests(), 1);
}

#[test]
fn a_token_failure_through_the_middleware_comes_back_typed() {
    let server = server("s3cret");
    let tokens = tokens(&server, "wrong-secret-value");
    let middleware = TokenMiddleware::new(tokens)
        .route(&server.base_url(), "m2m")
        .unwrap();
    let http = TokenMiddleware::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let api = reqwest_middleware::ClientBuilder::new(http)
        .with(middleware)
        .build();
    let error = runtime()
        .block_on(api.get(server.api_url()).send())
        .unwrap_err();
    let no_token = token_failure(&error).expect("a token failure");
    assert!(no_token.is_oauth(), "{no_token:?}");
    assert_eq!(no_token.oauth_code(), Some("invalid_client"));
    let text = format!("{error} {error:?} {no_token:?}");
    assert!(
        text.starts_with("no token, so the request was not sent"),
        "{text}"
    );
    assert!(!text.contains("wrong-secret-value"), "{text}");
    assert_eq!(server.api_requests(), 0, "the API was never asked");
    assert_eq!(server.token_requests(), 1);
}

#[test]
fn other_failures_are_not_token_failures() {
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = TokenMiddleware::client_builder()
        .no_proxy()
        .build()
        .unwrap();
    let api = reqwest_middleware::ClientBuilder::new(http).build();
    let error = runtime()
        .block_on(api.get(format!("http://127.0.0.1:{port}/")).send())
        .unwrap_err();
    assert!(token_failure(&error).is_none(), "{error}");
}
