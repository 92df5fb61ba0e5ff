//! The blocking client's own duties beyond the scenario table: discovery and its cache.

use token_keeper::discovery::DiscoveryError;
use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_ureq::{Error, TokenClient};

#[test]
fn discovery_finds_the_token_endpoint_and_caches_it() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = TokenClient::new();
    let metadata = tokens.discover(&server.base_url()).unwrap();
    assert_eq!(metadata.issuer(), server.base_url());
    assert_eq!(metadata.token_endpoint(), server.token_url());
    assert!(metadata
        .token_endpoint_auth_methods()
        .contains(&"client_secret_basic".to_owned()));
    let config = ClientConfig::new(
        metadata.token_endpoint(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap();
    tokens.add_client("m2m", config).unwrap();
    assert!(tokens
        .header("m2m")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Bearer "));
    // Cached: answered without the server.
    let issuer = server.base_url();
    drop(server);
    assert_eq!(tokens.discover(&issuer).unwrap(), metadata);
}

#[test]
fn discovery_refuses_a_document_for_another_issuer() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = TokenClient::new();
    // Same server, named differently: the document's issuer does not match.
    let other_name = format!("http://localhost:{}", server.addr().port());
    match tokens.discover(&other_name) {
        Err(Error::Discovery(DiscoveryError::IssuerMismatch { .. })) => {}
        other => panic!("expected an issuer mismatch, got {other:?}"),
    }
    // A path with no documents falls back, then reports both missing.
    match tokens.discover(&format!("{}/tenant", server.base_url())) {
        Err(Error::Discovery(DiscoveryError::NotFound)) => {}
        other => panic!("expected not found, got {other:?}"),
    }
}

#[test]
fn unknown_clients_and_bad_routes_are_errors() {
    let tokens = TokenClient::new();
    assert!(matches!(tokens.header("nope"), Err(Error::UnknownClient(name)) if name == "nope"));
    let config = ClientConfig::new(
        "https://as.example/token",
        "m2m",
        ClientAuth::Basic(ClientSecret::new("x")),
    )
    .unwrap();
    tokens.add_client("m2m", config.clone()).unwrap();
    assert!(matches!(
        tokens.add_client("m2m", config),
        Err(Error::Config(_))
    ));
    let middleware = token_keeper_ureq::TokenMiddleware::new(tokens.clone());
    assert!(
        middleware
            .clone()
            .route("http://api.example.com", "m2m")
            .is_err(),
        "plain http off loopback"
    );
    assert!(middleware
        .clone()
        .route("https://api.example.com", "other")
        .is_err());
    assert!(middleware.route("https://api.example.com", "m2m").is_ok());
}

#[test]
fn an_issuer_audience_is_checked_against_the_discovered_issuer() {
    use std::sync::Arc;
    use token_keeper::jose::Algorithm;
    use token_keeper::{AssertionAudience, PrivateKeyJwt};
    use token_keeper_keys::PrivateKey;

    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = TokenClient::new();
    let metadata = tokens.discover(&server.base_url()).unwrap();
    let key = Arc::new(PrivateKey::generate(Algorithm::ES256).unwrap());
    let with_audience = |issuer: &str| {
        let auth =
            PrivateKeyJwt::new(key.clone()).audience(AssertionAudience::Issuer(issuer.to_owned()));
        ClientConfig::new(
            metadata.token_endpoint(),
            "m2m",
            ClientAuth::PrivateKeyJwt(auth),
        )
    };
    // Made out to another issuer: refused when the client is added.
    let wrong = with_audience("https://other.example").unwrap();
    match tokens.add_client("wrong", wrong) {
        Err(Error::Config(e)) => assert!(e.to_string().contains("issuer"), "{e}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    tokens
        .add_client("right", with_audience(metadata.issuer()).unwrap())
        .unwrap();
}

#[test]
fn an_unreachable_issuer_is_a_discovery_error_that_says_so() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let issuer = format!("http://127.0.0.1:{port}");
    let ureq_error = TokenClient::new().discover(&issuer).unwrap_err();
    let surf_error = async_std::task::block_on(
        token_keeper_surf::AsyncTokenClient::new(token_keeper_surf::DirectHttp::new())
            .discover(&issuer),
    )
    .unwrap_err();
    for error in [ureq_error, surf_error] {
        assert!(
            matches!(error, Error::Discovery(DiscoveryError::Unreachable(_))),
            "{error:?}"
        );
        assert!(error.is_discovery(), "{error:?}");
        let text = error.to_string();
        assert!(text.contains("authorization server"), "{text}");
        assert!(!text.contains("token endpoint"), "{text}");
    }
}
