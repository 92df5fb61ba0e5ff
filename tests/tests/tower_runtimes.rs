//! The tower adapter on tokio: a herd of 1 000 tasks calling the API
//! through one `TokenService` while no token is cached causes exactly one
//! token request (`tokio::spawn` also proves the service's futures are
//! `Send`), and a token failure comes back typed, with the API never asked.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{Gate, LocalAuthServer, ServerConfig, TokenFault};
use token_keeper_tower::{token_failure, NoToken, ReqwestTokenClient, TokenLayer, TokenService};
use tower::ServiceExt;

const TASKS: usize = 1000;

type Http = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

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

fn api(
    runtime: &tokio::runtime::Runtime,
    server: &LocalAuthServer,
    secret: &str,
) -> TokenService<Http> {
    let tokens = ReqwestTokenClient::new();
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new(secret)),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    let layer = TokenLayer::new(&tokens)
        .route(&server.base_url(), "m2m")
        .unwrap();
    let _entered = runtime.enter();
    let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
    tower::ServiceBuilder::new().layer(layer).service(http)
}

fn get(url: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(url).body(Full::default()).unwrap()
}

#[test]
fn tokio_herd_of_1000_tasks_through_the_layer_makes_one_token_request() {
    let server = server("s3cret");
    let gate = Gate::new();
    server.push_token_fault(TokenFault::Hold(gate.clone()));
    let runtime = runtime();
    let api = api(&runtime, &server, "s3cret");
    let url = server.api_url();
    let tasks: Vec<_> = (0..TASKS)
        .map(|_| {
            let (api, request) = (api.clone(), get(&url));
            runtime.spawn(async move {
                let response = api.oneshot(request).await.unwrap();
                let status = response.status().as_u16();
                response.into_body().collect().await.unwrap();
                status
            })
        })
        .collect();
    // Once the single request is held at the server, let it through.
    assert!(server.wait_for_token_requests(1, Duration::from_secs(20)));
    gate.open();
    let statuses = runtime.block_on(async {
        let mut out = Vec::new();
        for task in tasks {
            out.push(task.await.unwrap());
        }
        out
    });
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.api_requests(), TASKS as u64);
    let sent = server.api_authorizations();
    assert!(sent.iter().all(|a| a == &sent[0] && a.is_some()));
}

#[test]
fn a_token_failure_through_the_layer_comes_back_typed() {
    let server = server("s3cret");
    let runtime = runtime();
    let api = api(&runtime, &server, "wrong-secret-value");
    let error = runtime
        .block_on(api.oneshot(get(&server.api_url())))
        .unwrap_err();
    let no_token = token_failure(&*error).expect("a token failure");
    assert!(no_token.is_oauth(), "{no_token:?}");
    assert_eq!(no_token.oauth_code(), Some("invalid_client"));
    assert!(error.downcast_ref::<NoToken>().is_some());
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
fn other_failures_are_not_token_failures_and_unrouted_requests_get_no_token() {
    let server = server("s3cret");
    let runtime = runtime();
    let api = api(&runtime, &server, "s3cret");
    // Nothing listens on this port once the listener is dropped; it is not routed either.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let error = runtime
        .block_on(api.oneshot(get(&format!("http://127.0.0.1:{port}/"))))
        .unwrap_err();
    assert!(token_failure(&*error).is_none(), "{error}");
    assert_eq!(
        server.token_requests(),
        0,
        "no token for an unrouted origin"
    );
}

// ---- where a token must not go, found by review -------------------------------

/// A one-shot HTTP/1.1 listener on 127.0.0.1 that records the head of the
/// first request it gets and answers `200` with no body.
fn recording_listener() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        // Bounded: a head of at most 64 KiB.
        while head.len() < 65_536 && !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => break,
            }
        }
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        let _ = tx.send(String::from_utf8_lossy(&head).to_lowercase());
    });
    (port, rx)
}

fn layer_for(server: &LocalAuthServer) -> (ReqwestTokenClient, TokenLayer) {
    let tokens = ReqwestTokenClient::new();
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    let layer = TokenLayer::new(&tokens)
        .route(&server.base_url(), "m2m")
        .unwrap();
    (tokens, layer)
}

fn http_client(runtime: &tokio::runtime::Runtime) -> Http {
    let _entered = runtime.enter();
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

#[test]
fn a_connect_to_another_host_gets_no_token_even_with_relative_to() {
    let server = server("s3cret");
    let runtime = runtime();
    let (_tokens, layer) = layer_for(&server);
    let layer = layer.relative_to(&server.base_url()).unwrap();
    let api = tower::ServiceBuilder::new()
        .layer(layer)
        .service(http_client(&runtime));
    let (port, head) = recording_listener();
    // An authority-form URI has an origin of its own: it is not relative.
    let request = http::Request::connect(format!("127.0.0.1:{port}"))
        .body(Full::default())
        .unwrap();
    let _ = runtime.block_on(api.oneshot(request));
    let head = head.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(head.starts_with("connect "), "{head}");
    assert!(!head.contains("authorization"), "{head}");
    assert_eq!(server.token_requests(), 0);
}

#[test]
fn behind_relative_to_an_absolute_uri_of_another_origin_gets_no_token() {
    let server = server("s3cret");
    let runtime = runtime();
    let (_tokens, layer) = layer_for(&server);
    let (port, head) = recording_listener();
    let other = format!("http://127.0.0.1:{port}");
    // Both routed; the layer sits on a channel to the server's origin.
    let layer = layer
        .route(&other, "m2m")
        .unwrap()
        .relative_to(&server.base_url())
        .unwrap();
    let api = tower::ServiceBuilder::new()
        .layer(layer)
        .service(http_client(&runtime));
    let response = runtime
        .block_on(api.oneshot(get(&format!("{other}/x"))))
        .unwrap();
    assert_eq!(response.status(), 200);
    let head = head.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(!head.contains("authorization"), "{head}");
}

#[test]
fn a_host_header_naming_another_origin_gets_no_token() {
    let server = server("s3cret");
    let runtime = runtime();
    let (_tokens, layer) = layer_for(&server);
    let api = tower::ServiceBuilder::new()
        .layer(layer)
        .service(http_client(&runtime));
    let request = http::Request::get(server.api_url())
        .header("Host", "intranet.example")
        .body(Full::default())
        .unwrap();
    let _ = runtime.block_on(api.clone().oneshot(request)).unwrap();
    assert_eq!(
        server.last_api_authorization(),
        Some(None),
        "sent without a token"
    );
    // The URI's own authority in Host is fine.
    let authority = server.base_url().trim_start_matches("http://").to_owned();
    let request = http::Request::get(server.api_url())
        .header("Host", authority)
        .body(Full::default())
        .unwrap();
    let response = runtime.block_on(api.oneshot(request)).unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(server.token_requests(), 1);
}

#[test]
fn relative_to_an_origin_that_is_not_routed_is_refused() {
    let server = server("s3cret");
    let (_tokens, layer) = layer_for(&server);
    let error = layer.relative_to("https://grpc.example").unwrap_err();
    assert!(
        error.to_string().contains("route this origin first"),
        "{error}"
    );
}

#[test]
fn a_retry_that_cannot_get_a_token_hands_back_the_401() {
    let server = server("s3cret");
    let runtime = runtime();
    let (_tokens, layer) = layer_for(&server);
    let api = tower::ServiceBuilder::new()
        .layer(layer)
        .service(http_client(&runtime));
    let status = |api: &TokenService<Http>| {
        runtime
            .block_on(api.clone().oneshot(get(&server.api_url())))
            .map(|r| r.status().as_u16())
    };
    assert_eq!(status(&api).unwrap(), 200);
    // The API refuses the token; the token endpoint then fails.
    server.push_api_fault(token_keeper_testkit::ApiFault::UnauthorizedOnce);
    server.push_token_fault(TokenFault::Status {
        status: 503,
        body: "{}".to_owned(),
        retry_after: None,
    });
    // The request was sent: the caller gets its answer, not "not sent".
    assert_eq!(status(&api).unwrap(), 401);
    assert_eq!(server.token_requests(), 2);
}
