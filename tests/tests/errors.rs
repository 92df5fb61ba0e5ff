//! Token failures as a newcomer meets them through each middleware, against
//! the local authorization server (loopback only): a wrong client secret
//! comes back out of the HTTP library's error, typed, with `token_failure`,
//! and classifies with one call per question; the second call, during the
//! backoff, answers the same and says that it is backing off.

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_driver::Error;
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

/// A server that knows `m2m` with the secret `s3cret`.
fn server() -> LocalAuthServer {
    LocalAuthServer::start(ServerConfig {
        clients: vec![("m2m".to_owned(), "s3cret".to_owned())],
        ..ServerConfig::default()
    })
    .unwrap()
}

/// `m2m` with a secret the server does not accept.
fn wrong_secret(server: &LocalAuthServer) -> ClientConfig {
    ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("not-the-secret")),
    )
    .unwrap()
}

/// The first failure: the refusal itself.
fn assert_refused(error: &Error) {
    assert!(matches!(error, Error::OAuth(_)), "{error:?}");
    assert!(error.is_oauth(), "{error:?}");
    assert_eq!(error.oauth_code(), Some("invalid_client"));
    assert!(!error.is_unavailable());
    assert_eq!(error.retry_in(), None);
    assert!(!error.is_transport() && !error.is_invalid_response() && !error.is_config());
}

/// A call during the backoff: the same refusal, seen through `Unavailable`.
fn assert_backing_off_after_refusal(error: &Error) {
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(error.is_unavailable());
    assert!(error.is_oauth(), "sees through Unavailable: {error:?}");
    assert_eq!(error.oauth_code(), Some("invalid_client"));
    assert!(error.retry_in().is_some());
    assert!(!error.is_transport() && !error.is_invalid_response() && !error.is_config());
}

#[test]
fn ureq_middleware_wrong_secret_maps_back_to_a_typed_oauth_error() {
    let server = server();
    let tokens = token_keeper_ureq::TokenClient::new();
    tokens.add_client("m2m", wrong_secret(&server)).unwrap();
    let agent = token_keeper_ureq::TokenMiddleware::new(tokens)
        .route(&server.base_url(), "m2m")
        .unwrap()
        .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
    let url = format!("{}/orders", server.api_url());

    let first = agent.get(&url).call().unwrap_err();
    let refused = token_keeper_ureq::token_failure(&first).expect("a token failure");
    assert_refused(refused);

    let second = agent.get(&url).call().unwrap_err();
    let backing_off = token_keeper_ureq::token_failure(&second).expect("a token failure");
    assert_backing_off_after_refusal(backing_off);

    // One token request (the backoff sent none) and no API request at all.
    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.api_requests(), 0);
    // ureq's own failures are not token failures.
    assert!(token_keeper_ureq::token_failure(&ureq::Error::StatusCode(500)).is_none());
}

#[test]
fn surf_middleware_wrong_secret_maps_back_to_a_typed_oauth_error() {
    let server = server();
    let tokens = token_keeper_surf::AsyncTokenClient::new(token_keeper_surf::DirectHttp::new());
    tokens.add_client("m2m", wrong_secret(&server)).unwrap();
    let middleware = token_keeper_surf::TokenMiddleware::new(tokens)
        .route(&server.base_url(), "m2m")
        .unwrap();
    let api = surf::Client::new().with(middleware);
    let url = format!("{}/orders", server.api_url());

    let (first, second) = async_std::task::block_on(async {
        let first = api.get(&url).await.unwrap_err();
        let second = api.get(&url).await.unwrap_err();
        (first, second)
    });

    let refused = token_keeper_surf::token_failure(&first).expect("a token failure");
    assert_refused(refused);
    // The documented status and Display: not an answer of the API's.
    assert_eq!(first.status(), token_keeper_surf::TOKEN_FAILURE_STATUS);
    assert_eq!(first.status(), surf::StatusCode::InternalServerError);
    assert_eq!(
        first.to_string(),
        format!("no token, so the request was not sent: {refused}")
    );
    assert!(
        first
            .to_string()
            .contains("authorization server refused the token request (401): invalid_client"),
        "{first}"
    );
    // Still reachable the way it always was.
    assert!(first.downcast_ref::<Error>().is_some());

    let backing_off = token_keeper_surf::token_failure(&second).expect("a token failure");
    assert_backing_off_after_refusal(backing_off);
    assert_eq!(second.status(), token_keeper_surf::TOKEN_FAILURE_STATUS);
    assert!(
        second
            .to_string()
            .starts_with("no token, so the request was not sent: no token available; backing off"),
        "{second}"
    );

    assert_eq!(server.token_requests(), 1);
    assert_eq!(server.api_requests(), 0);
    // Errors that are not the middleware's are not token failures.
    let other = surf::Error::from_str(surf::StatusCode::InternalServerError, "boom");
    assert!(token_keeper_surf::token_failure(&other).is_none());
}

#[test]
fn a_forced_refresh_during_a_backoff_reports_the_failure_that_started_it() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = token_keeper_ureq::TokenClient::new();
    let config = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    tokens.header("m2m").unwrap();
    // The next token request is refused: the valid token is still served,
    // and the key backs off.
    server.push_token_fault(token_keeper_testkit::TokenFault::Status {
        status: 400,
        body: r#"{"error":"invalid_client"}"#.into(),
        retry_after: None,
    });
    let first = tokens.force_refresh("m2m");
    assert!(
        tokens.header("m2m").is_ok(),
        "the valid token is still served"
    );
    // Whether the first call already saw the refusal or not, a forced refresh
    // during the backoff names it: an OAuth refusal, not a transport failure.
    let during = tokens.force_refresh("m2m").unwrap_err();
    assert!(during.is_unavailable(), "{during:?}");
    assert!(
        during.is_oauth() && !during.is_transport(),
        "{during:?} (first: {first:?})"
    );
    assert_eq!(during.oauth_code(), Some("invalid_client"));
}
