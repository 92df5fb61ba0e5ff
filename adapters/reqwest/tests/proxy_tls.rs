//! The reqwest token transport behind a proxy and with a private CA: a
//! loopback destination never goes through the proxy; any other goes through
//! exactly one HTTP `CONNECT` (with `Proxy-Authorization` from the proxy
//! URL); a proxy that refuses the tunnel, or one we cannot honour, is a
//! clear error; a CA is trusted only when it is added through
//! `ClientOptions::tls`.
//!
//! The proxy is a recording one on 127.0.0.1 that maps `idp.test:443` to a
//! TLS front (certificate for `idp.test`, `localhost` and `127.0.0.1` from a
//! test CA) before the local token server: no DNS, no other address.

use std::time::Duration;

use token_keeper::{ProxySettings, TransportErrorKind};
use token_keeper_reqwest::{ClientOptions, Error, ReqwestTokenClient, TlsSettings};
use token_keeper_testkit::fixtures::{
    secret_client, transport_error, trusting_test_ca, ProxiedIdp,
};
use token_keeper_testkit::recording_proxy::RecordingProxy;
use token_keeper_testkit::tls_front::TlsFront;
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

fn client(proxy: ProxySettings, tls: TlsSettings) -> ReqwestTokenClient {
    ReqwestTokenClient::with_options(ClientOptions {
        proxy,
        tls,
        timeout: Duration::from_secs(10),
        ..ClientOptions::default()
    })
    .unwrap()
}

/// A token client with the client `"m2m"` at `token_url`.
fn m2m_tokens(proxy: ProxySettings, tls: TlsSettings, token_url: &str) -> ReqwestTokenClient {
    let tokens = client(proxy, tls);
    tokens.add_client("m2m", secret_client(token_url)).unwrap();
    tokens
}

/// Waits on a runtime of the test's own (the client runs on any executor).
fn header(tokens: &ReqwestTokenClient, name: &str) -> Result<http::HeaderValue, Error> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(tokens.header(name))
}

#[test]
fn loopback_token_requests_never_touch_the_proxy() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let proxy = RecordingProxy::start(Vec::new()).unwrap();
    let port = server.addr().port();
    for settings in [
        ProxySettings::from_env_vars([
            ("ALL_PROXY", proxy.url()),
            ("HTTPS_PROXY", proxy.url()),
            ("http_proxy", proxy.url()),
        ]),
        ProxySettings::explicit(&proxy.url(), "").unwrap(),
    ] {
        let tokens = client(settings, TlsSettings::default());
        tokens
            .add_client("ip", secret_client(&server.token_url()))
            .unwrap();
        let by_name = format!("http://localhost:{port}/token");
        tokens.add_client("name", secret_client(&by_name)).unwrap();
        header(&tokens, "ip").unwrap();
        header(&tokens, "name").unwrap();
    }
    assert_eq!(server.token_requests(), 4);
    assert_eq!(proxy.requests(), Vec::new());
}

#[test]
fn a_remote_token_endpoint_goes_through_exactly_one_connect_with_the_proxy_credentials() {
    let idp = ProxiedIdp::start_with_proxy_auth("corp user", "pw:Secret%1").unwrap();
    let (server, proxy) = (idp.server(), idp.proxy());
    let url = proxy.url_with_credentials("corp user", "pw:Secret%1");
    let tokens = client(
        ProxySettings::from_env_vars([("https_proxy", url.as_str())]),
        trusting_test_ca(),
    );
    assert!(!format!("{tokens:?}").contains("Secret"));
    tokens
        .add_client("m2m", secret_client("https://idp.test/token"))
        .unwrap();
    let header = header(&tokens, "m2m").unwrap();
    assert!(header.to_str().unwrap().starts_with("Bearer "));
    assert_eq!(proxy.connects(), vec!["idp.test:443".to_owned()]);
    assert_eq!(server.token_requests(), 1);
    // A second request reuses the client kept for this proxy.
    tokens.invalidate("m2m").unwrap();
    self::header(&tokens, "m2m").unwrap();
    assert_eq!(proxy.connects().len(), 2);
    assert_eq!(server.token_requests(), 2);
}

#[test]
fn a_proxy_that_wants_credentials_or_knows_no_route_is_a_clear_error() {
    let idp = ProxiedIdp::start_with_proxy_auth("u", "p").unwrap();
    let (server, proxy) = (idp.server(), idp.proxy());
    for (proxy_url, host, says) in [
        (proxy.url(), "idp.test", "proxy authorization required"),
        (
            proxy.url_with_credentials("u", "p"),
            "elsewhere.test",
            "tunnel error",
        ),
    ] {
        let tokens = m2m_tokens(
            ProxySettings::explicit(&proxy_url, "").unwrap(),
            trusting_test_ca(),
            &format!("https://{host}/token"),
        );
        let e = transport_error(header(&tokens, "m2m"));
        assert_eq!(e.kind(), TransportErrorKind::Connect, "{e}");
        assert!(e.to_string().contains(says), "{e}");
    }
    assert_eq!(server.token_requests(), 0);
}

#[test]
fn a_socks_proxy_is_an_error_not_a_direct_connection() {
    let tokens = m2m_tokens(
        ProxySettings::from_env_vars([("HTTPS_PROXY", "socks5h://127.0.0.1:9")]),
        TlsSettings::default(),
        "https://idp.test/token",
    );
    let e = transport_error(header(&tokens, "m2m"));
    assert_eq!(e.kind(), TransportErrorKind::Connect);
    assert!(e.to_string().contains("socks5h"), "{e}");
}

#[test]
fn a_private_ca_is_refused_by_default_and_trusted_once_added() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let front = TlsFront::start(server.addr()).unwrap();
    let token_url = format!("{}/token", front.url());

    let tokens = m2m_tokens(ProxySettings::none(), TlsSettings::default(), &token_url);
    let e = transport_error(header(&tokens, "m2m"));
    assert_eq!(e.kind(), TransportErrorKind::Connect, "{e}");
    assert!(front.wait_for_handshakes(1, Duration::from_secs(10)));
    assert_eq!(front.handshakes_failed(), 1);

    for tls in [
        trusting_test_ca(),
        TlsSettings::webpki()
            .with_ca_file(&TlsFront::ca_pem_path())
            .unwrap(),
    ] {
        let tokens = m2m_tokens(ProxySettings::none(), tls, &token_url);
        header(&tokens, "m2m").unwrap();
    }
    assert_eq!(server.token_requests(), 2);
}
