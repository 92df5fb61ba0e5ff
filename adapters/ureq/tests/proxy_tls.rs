//! The blocking client behind a proxy and with a private CA: a loopback
//! destination never goes through the proxy; any other goes through exactly
//! one `CONNECT`; a proxy we cannot honour is an error, never a quiet direct
//! connection; a CA is trusted only when it is added.
//!
//! The proxy is a recording one on 127.0.0.1 that maps `idp.test:443` to a
//! TLS front (certificate for `idp.test`, `localhost` and `127.0.0.1` from a
//! test CA) before the local token server: no DNS, no other address.

use std::time::Duration;

use token_keeper::{ProxySettings, TransportErrorKind};
use token_keeper_testkit::fixtures::{
    secret_client, transport_error, trusting_test_ca, ProxiedIdp,
};
use token_keeper_testkit::recording_proxy::{basic_proxy_authorization, RecordingProxy};
use token_keeper_testkit::tls_front::TlsFront;
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_ureq::{ClientOptions, Error, TlsSettings, TokenClient, TokenMiddleware};

fn client(proxy: ProxySettings, tls: TlsSettings) -> Result<TokenClient, Error> {
    TokenClient::with_options(ClientOptions {
        proxy,
        tls,
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    })
}

/// A token client with the client `"m2m"` at `token_url`.
fn m2m_tokens(proxy: ProxySettings, tls: TlsSettings, token_url: &str) -> TokenClient {
    let tokens = client(proxy, tls).unwrap();
    tokens.add_client("m2m", secret_client(token_url)).unwrap();
    tokens
}

/// The middleware of a token client with no proxy and the default TLS
/// settings, that attaches the `"m2m"` tokens `server` issues to requests to `server`.
fn loopback_middleware(server: &LocalAuthServer) -> TokenMiddleware {
    let tokens = m2m_tokens(
        ProxySettings::none(),
        TlsSettings::default(),
        &server.token_url(),
    );
    TokenMiddleware::new(tokens)
        .route(&server.base_url(), "m2m")
        .unwrap()
}

/// Every proxy variable curl and ureq read, all naming `proxy`.
fn everything_through(proxy: &RecordingProxy) -> ProxySettings {
    ProxySettings::from_env_vars([
        ("ALL_PROXY", proxy.url()),
        ("all_proxy", proxy.url()),
        ("HTTPS_PROXY", proxy.url()),
        ("https_proxy", proxy.url()),
        ("HTTP_PROXY", proxy.url()),
        ("http_proxy", proxy.url()),
    ])
}

#[test]
fn loopback_token_discovery_and_api_requests_never_touch_the_proxy() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let proxy = RecordingProxy::start(Vec::new()).unwrap();
    let port = server.addr().port();
    for settings in [
        everything_through(&proxy),
        ProxySettings::explicit(&proxy.url(), "").unwrap(),
    ] {
        let tokens = client(settings, TlsSettings::default()).unwrap();
        tokens.discover(&server.base_url()).unwrap();
        tokens
            .add_client("ip", secret_client(&server.token_url()))
            .unwrap();
        let by_name = format!("http://localhost:{port}/token");
        tokens.add_client("name", secret_client(&by_name)).unwrap();
        tokens.header("ip").unwrap();
        tokens.header("name").unwrap();
        let agent = TokenMiddleware::new(tokens.clone())
            .route(&server.base_url(), "ip")
            .unwrap()
            .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
        assert_eq!(agent.get(server.api_url()).call().unwrap().status(), 200);
    }
    assert!(server.token_requests() >= 4);
    assert_eq!(proxy.requests(), Vec::new());
}

#[test]
fn a_proxy_set_on_the_agent_is_kept_except_for_a_token_to_loopback() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let proxy = RecordingProxy::start(Vec::new()).unwrap();
    let theirs = ureq::Proxy::new(&proxy.url()).unwrap();
    let agent = loopback_middleware(&server).build_agent(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(Some(theirs.clone()))
    });
    // The token-carrying request to loopback goes direct…
    assert_eq!(agent.get(server.api_url()).call().unwrap().status(), 200);
    assert_eq!(proxy.requests(), Vec::new());
    // …one that carries no token goes where the user said (here: a proxy
    // that knows no route, so it fails), as the user asked.
    let other = LocalAuthServer::start(ServerConfig::default()).unwrap();
    assert!(agent.get(other.api_url()).call().is_err());
    assert_eq!(
        proxy.connects(),
        vec![format!("127.0.0.1:{}", other.addr().port())]
    );
}

#[test]
fn a_remote_token_endpoint_goes_through_exactly_one_connect_with_the_proxy_credentials() {
    let idp = ProxiedIdp::start_with_proxy_auth("corp user", "pw:Secret%1").unwrap();
    let (server, proxy) = (idp.server(), idp.proxy());
    let url = proxy.url_with_credentials("corp user", "pw:Secret%1");
    let settings = ProxySettings::from_env_vars([("HTTPS_PROXY", url.as_str())]);
    assert!(!format!("{settings:?}").contains("Secret"));
    let tokens = m2m_tokens(settings, trusting_test_ca(), "https://idp.test/token");
    let header = tokens.header("m2m").unwrap();
    assert!(header.to_str().unwrap().starts_with("Bearer "));
    assert_eq!(proxy.connects(), vec!["idp.test:443".to_owned()]);
    assert_eq!(
        proxy.requests()[0].proxy_authorization.as_deref(),
        Some(basic_proxy_authorization("corp user", "pw:Secret%1").as_str())
    );
    assert_eq!(server.token_requests(), 1);
}

#[test]
fn a_socks_proxy_is_an_error_not_a_direct_connection() {
    let tokens = m2m_tokens(
        ProxySettings::from_env_vars([("ALL_PROXY", "socks5://127.0.0.1:9")]),
        TlsSettings::default(),
        "https://idp.test/token",
    );
    let e = transport_error(tokens.header("m2m"));
    assert_eq!(e.kind(), TransportErrorKind::Connect);
    assert!(e.to_string().contains("socks5"), "{e}");
}

#[test]
fn a_private_ca_is_refused_by_default_and_trusted_once_added() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let front = TlsFront::start(server.addr()).unwrap();
    let token_url = format!("{}/token", front.url());

    let tokens = m2m_tokens(ProxySettings::none(), TlsSettings::default(), &token_url);
    transport_error(tokens.header("m2m"));
    assert!(front.wait_for_handshakes(1, Duration::from_secs(10)));
    assert_eq!(front.handshakes_failed(), 1);
    assert_eq!(server.token_requests(), 0);

    for tls in [
        trusting_test_ca(),
        TlsSettings::webpki()
            .with_ca_der(TlsFront::ca_der())
            .unwrap(),
        TlsSettings::webpki()
            .with_ca_file(&TlsFront::ca_pem_path())
            .unwrap(),
    ] {
        let tokens = m2m_tokens(ProxySettings::none(), tls, &token_url);
        tokens.header("m2m").unwrap();
    }
    assert_eq!(server.token_requests(), 3);
}

#[test]
fn unusable_ca_certificates_are_refused_when_configured() {
    let no_certificate = TlsSettings::webpki()
        .with_ca_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    assert!(no_certificate.is_err());
    let garbage = TlsSettings::webpki().with_ca_der(b"\x30\x03\x02\x01\x00");
    assert!(garbage.is_err());
    let missing = TlsSettings::webpki().with_ca_file("/nonexistent/ca.pem".as_ref());
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/ca.pem"));
}

#[cfg(feature = "platform-verifier")]
#[test]
fn ureq_cannot_add_cas_to_the_os_store_and_says_so() {
    let tls = TlsSettings::platform()
        .with_ca_pem(TlsFront::ca_pem().as_bytes())
        .unwrap();
    match client(ProxySettings::none(), tls) {
        Err(Error::Config(e)) => assert!(e.to_string().contains("operating system"), "{e}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    assert!(client(ProxySettings::none(), TlsSettings::platform()).is_ok());
}

#[test]
fn a_token_to_loopback_goes_direct_even_with_a_per_request_proxy() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let proxy = RecordingProxy::start(Vec::new()).unwrap();
    let agent = loopback_middleware(&server)
        .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
    let theirs = ureq::Proxy::new(&proxy.url()).unwrap();
    let response = agent
        .get(server.api_url())
        .config()
        .proxy(Some(theirs))
        .build()
        .call()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(proxy.requests(), Vec::new());
}

#[test]
fn a_hand_added_middleware_sends_tokens_as_the_core_decides() {
    let idp = ProxiedIdp::start().unwrap();
    let (server, proxy) = (idp.server(), idp.proxy());
    let tokens = m2m_tokens(
        ProxySettings::explicit(&proxy.url(), "").unwrap(),
        trusting_test_ca(),
        &server.token_url(),
    );
    let middleware = TokenMiddleware::new(tokens)
        .route("https://idp.test", "m2m")
        .unwrap()
        .route(&server.base_url(), "m2m")
        .unwrap();
    // An agent configured by hand, with no proxy of its own and the test CA.
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .tls_config(token_keeper_ureq::tls_config(&trusting_test_ca()).unwrap())
        .middleware(middleware)
        .build()
        .new_agent();
    // A token for a remote API goes through the proxy the core names…
    let remote = agent.get("https://idp.test/api").call().unwrap();
    assert_eq!(remote.status(), 200);
    assert_eq!(proxy.connects(), vec!["idp.test:443".to_owned()]);
    // …and one for loopback goes direct.
    assert_eq!(agent.get(server.api_url()).call().unwrap().status(), 200);
    assert_eq!(proxy.connects().len(), 1);
}
