//! The core driven over real HTTP on 127.0.0.1, by the smallest possible
//! driver: a blocking std `TcpStream` client that sends the core's
//! `http::Request`s as they are. This proves the requests the core builds are
//! what a real server expects (form body, Basic credentials encoding) and that
//! the run loop needs nothing more than what the crate docs describe.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, StatusCode};
use token_keeper::{
    Authorization, ClientAuth, ClientConfig, ClientSecret, KeyId, ManagerConfig, Now,
    ResourceOutcome, ResourceResponse, TokenError, TokenManager,
};
use token_keeper_testkit::{ApiFault, LocalAuthServer, ServerConfig, TokenFault};

/// Sends one request with `Connection: close` and reads the whole response.
fn send(request: &http::Request<Vec<u8>>) -> http::Response<Vec<u8>> {
    let authority = request.uri().authority().unwrap().as_str();
    let mut stream = TcpStream::connect(authority).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n",
        request.method()
    );
    for (name, value) in request.headers() {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", request.body().len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(request.body()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut builder = http::Response::builder().status(status);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        builder = builder.header(name.trim(), value.trim());
    }
    let mut body = Vec::new();
    reader.read_to_end(&mut body).unwrap();
    builder.body(body).unwrap()
}

fn now() -> Now {
    Now::from_secs(0)
}

/// The run loop of the crate docs: authorize, send what the core queues, repeat.
fn header_for(manager: &mut TokenManager, key: KeyId) -> Result<HeaderValue, TokenError> {
    for _ in 0..3 {
        match manager.authorize(key, now()) {
            Authorization::Attach(attach) => return Ok(attach.header().clone()),
            Authorization::Unavailable { error, .. } => return Err(error.clone()),
            Authorization::Fetch(_) | Authorization::Wait(_) => {
                while let Some(request) = manager.poll_request() {
                    let id = request.id();
                    match request.into_request() {
                        Ok(request) => manager.handle_response(id, send(&request), now()),
                        Err(error) => manager.handle_signing_error(id, error, now()),
                    }
                    .unwrap();
                }
            }
        }
    }
    panic!("no decision after three rounds")
}

fn api_get(server: &LocalAuthServer, header: &HeaderValue) -> http::Response<Vec<u8>> {
    let request = http::Request::get(server.api_url())
        .header(AUTHORIZATION, header)
        .body(Vec::new())
        .unwrap();
    send(&request)
}

fn manager_for(server: &LocalAuthServer, id: &str, auth: ClientAuth) -> (TokenManager, KeyId) {
    let mut manager = TokenManager::new(ManagerConfig::default(), 3);
    let client = manager
        .add_client(
            "m2m",
            ClientConfig::new(&server.token_url(), id, auth)
                .unwrap()
                .scope("api"),
        )
        .unwrap();
    let key = manager.default_key(client);
    (manager, key)
}

#[test]
fn fetch_then_call_the_api_with_basic_and_post_authentication() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    for auth in [
        ClientAuth::Basic(ClientSecret::new("s3cret")),
        ClientAuth::Post(ClientSecret::new("s3cret")),
    ] {
        let (mut manager, key) = manager_for(&server, "m2m", auth);
        let header = header_for(&mut manager, key).unwrap();
        assert_eq!(api_get(&server, &header).status(), StatusCode::OK);
        // The cached token serves further calls without another token request.
        let before = server.token_requests();
        for _ in 0..5 {
            let again = header_for(&mut manager, key).unwrap();
            assert_eq!(again, header);
        }
        assert_eq!(server.token_requests(), before);
    }
    let recorded = server.last_token_request().unwrap();
    assert_eq!(recorded.field("grant_type"), Some("client_credentials"));
    assert_eq!(recorded.field("scope"), Some("api"));
    assert_eq!(recorded.field("client_secret"), Some("s3cret"));
    assert_eq!(recorded.header("accept"), Some("application/json"));
}

#[test]
fn credentials_with_reserved_characters_survive_the_basic_encoding() {
    let (id, secret) = ("my client:1", "p:w d%+é/=&");
    let config = ServerConfig {
        clients: vec![(id.to_owned(), secret.to_owned())],
        ..ServerConfig::default()
    };
    let server = LocalAuthServer::start(config).unwrap();
    let (mut manager, key) = manager_for(&server, id, ClientAuth::Basic(ClientSecret::new(secret)));
    let header = header_for(&mut manager, key).unwrap();
    assert_eq!(api_get(&server, &header).status(), StatusCode::OK);
}

#[test]
fn a_wrong_secret_is_a_typed_oauth_error_without_the_secret() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let (mut manager, key) = manager_for(
        &server,
        "m2m",
        ClientAuth::Basic(ClientSecret::new("wrong-secret")),
    );
    let error = header_for(&mut manager, key).unwrap_err();
    let TokenError::OAuth(oauth) = &error else {
        panic!("{error:?}")
    };
    assert_eq!(oauth.code(), "invalid_client");
    assert_eq!(oauth.status(), StatusCode::UNAUTHORIZED);
    assert!(!format!("{error} {error:?}").contains("wrong-secret"));
    // Backing off: the next call fails at once, with no new token request.
    let requests = server.token_requests();
    assert!(header_for(&mut manager, key).is_err());
    assert_eq!(server.token_requests(), requests);
}

#[test]
fn server_errors_and_garbage_become_typed_errors() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    server.push_token_fault(TokenFault::Status {
        status: 503,
        body: "<html>busy</html>".into(),
        retry_after: Some("30".into()),
    });
    let (mut manager, key) = manager_for(
        &server,
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    );
    let error = header_for(&mut manager, key).unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    match manager.authorize(key, now()) {
        Authorization::Unavailable { retry_at, .. } => {
            assert_eq!(retry_at, Now::from_secs(30).monotonic())
        }
        other => panic!("{other:?}"),
    }

    server.push_token_fault(TokenFault::Body(
        r#"{"access_token":"a\r\nX-Evil: 1","token_type":"Bearer"}"#.into(),
    ));
    let (mut manager, key) = manager_for(
        &server,
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    );
    let error = header_for(&mut manager, key).unwrap_err();
    assert!(error.is_invalid_response(), "{error:?}");
}

#[test]
fn a_401_for_the_cached_token_refetches_once() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let (mut manager, key) = manager_for(
        &server,
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    );
    let first = header_for(&mut manager, key).unwrap();
    server.push_api_fault(ApiFault::UnauthorizedOnce);
    let rejected = api_get(&server, &first);
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    let outcome = manager.handle_resource_response(
        key,
        &ResourceResponse {
            status: rejected.status(),
            headers: rejected.headers(),
            sent_authorization: Some(&first),
            uri: None,
            attempt: 0,
        },
        now(),
    );
    assert_eq!(outcome, ResourceOutcome::Retry);
    let second = header_for(&mut manager, key).unwrap();
    assert_ne!(second, first);
    assert_eq!(api_get(&server, &second).status(), StatusCode::OK);
    assert_eq!(server.tokens_issued(), 2);
    // A late 401 for the first token does not throw away the second.
    let headers = HeaderMap::new();
    manager.handle_resource_response(
        key,
        &ResourceResponse {
            status: StatusCode::UNAUTHORIZED,
            headers: &headers,
            sent_authorization: Some(&first),
            uri: None,
            attempt: 0,
        },
        now(),
    );
    assert_eq!(header_for(&mut manager, key).unwrap(), second);
    assert_eq!(server.tokens_issued(), 2);
}
