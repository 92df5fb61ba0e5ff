//! Rules of the security review that hold on every adapter: a rejected
//! token is not refetched without end (401 damping), and no credential
//! (client secret, token, DPoP proof) follows a redirect to another origin.
//!
//! Every server is on 127.0.0.1; time is the injected clock; nothing sleeps.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use token_keeper::jose::Algorithm;
use token_keeper::{ClientConfig, ManualClock};
use token_keeper_keys::PrivateKey;
use token_keeper_testkit::fixtures::secret_client;
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

/// A loopback server that answers every request with the same bytes (and
/// closes the connection), recording each request head it read.
struct Scripted {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Scripted {
    fn start(answer: impl Fn(SocketAddr) -> String + Send + 'static) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let stopping = Arc::new(AtomicBool::new(false));
        let (seen, stop) = (Arc::clone(&heads), Arc::clone(&stopping));
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let head = read_head(&mut stream);
                seen.lock().unwrap().push(head);
                let _ = stream.write_all(answer(addr).as_bytes());
            }
        });
        Scripted {
            addr,
            heads,
            stopping,
            thread: Some(thread),
        }
    }

    fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The request head (up to 16 KiB), lowercased for header checks.
fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_ascii_lowercase()
}

/// A server that redirects every request to `target` with `status`.
fn redirecting_to(target: String, status: u16) -> Scripted {
    Scripted::start(move |_| {
        format!(
            "HTTP/1.1 {status} Moved\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    })
}

/// A server that answers 200 with a small body.
fn landing() -> Scripted {
    Scripted::start(|_| {
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            .to_owned()
    })
}

fn assert_no_credentials(heads: &[String]) {
    for head in heads {
        assert!(!head.contains("\r\nauthorization:"), "{head}");
        assert!(!head.contains("\r\ndpop:"), "{head}");
    }
}

/// The client `m2m` at `token_url`; with DPoP-bound tokens (a fresh ES256
/// key) if `dpop`.
fn m2m_client(token_url: &str, dpop: bool) -> ClientConfig {
    let config = secret_client(token_url);
    if dpop {
        config.dpop(Arc::new(PrivateKey::generate(Algorithm::ES256).unwrap()))
    } else {
        config
    }
}

/// A blocking token client on `clock` with the client `"m2m"` set up as `config`.
fn ureq_tokens(clock: &ManualClock, config: ClientConfig) -> token_keeper_ureq::TokenClient {
    let options = token_keeper_ureq::ClientOptions {
        clock: Arc::new(clock.clone()),
        seed: 7,
        proxy: token_keeper::ProxySettings::none(),
        ..Default::default()
    };
    let tokens = token_keeper_ureq::TokenClient::with_options(options).unwrap();
    tokens.add_client("m2m", config).unwrap();
    tokens
}

/// An async token client over `transport` on `clock`, with the client
/// `"m2m"` set up as `config`.
fn surf_tokens(
    transport: impl Into<token_keeper_surf::TokenTransport>,
    clock: &ManualClock,
    config: ClientConfig,
) -> token_keeper_surf::AsyncTokenClient {
    let options = token_keeper_surf::ClientOptions {
        clock: Arc::new(clock.clone()),
        seed: 7,
        proxy: token_keeper::ProxySettings::none(),
        ..Default::default()
    };
    let tokens = token_keeper_surf::AsyncTokenClient::with_options(transport, options).unwrap();
    tokens.add_client("m2m", config).unwrap();
    tokens
}

/// The ureq middleware that attaches `"m2m"`'s tokens to requests to `origin`.
fn ureq_middleware(
    tokens: token_keeper_ureq::TokenClient,
    origin: &str,
) -> token_keeper_ureq::TokenMiddleware {
    token_keeper_ureq::TokenMiddleware::new(tokens)
        .route(origin, "m2m")
        .unwrap()
}

/// The surf middleware that attaches `"m2m"`'s tokens to requests to `origin`.
fn surf_middleware(
    tokens: token_keeper_surf::AsyncTokenClient,
    origin: &str,
) -> token_keeper_surf::TokenMiddleware {
    token_keeper_surf::TokenMiddleware::new(tokens)
        .route(origin, "m2m")
        .unwrap()
}

/// A surf client whose token middleware (`DirectHttp`, on `clock`) attaches
/// `"m2m"`'s tokens from `issuer` to requests to `origin`.
fn surf_client(issuer: &LocalAuthServer, clock: &ManualClock, origin: &str) -> surf::Client {
    let tokens = surf_tokens(
        token_keeper_surf::DirectHttp::new(),
        clock,
        secret_client(&issuer.token_url()),
    );
    surf::Client::new().with(surf_middleware(tokens, origin))
}

// --- 401 damping -----------------------------------------------------------

/// An API at an origin of its own that accepts none of the issuer's tokens
/// (a wrong audience, say): every call is answered 401.
fn issuer_and_rejecting_api() -> (LocalAuthServer, LocalAuthServer) {
    let issuer = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let api = LocalAuthServer::start(ServerConfig::default()).unwrap();
    (issuer, api)
}

#[test]
fn ureq_an_api_that_rejects_every_token_costs_two_token_requests_per_damping_window() {
    let (issuer, api) = issuer_and_rejecting_api();
    let clock = ManualClock::new();
    let tokens = ureq_tokens(&clock, secret_client(&issuer.token_url()));
    let agent = ureq_middleware(tokens, &api.base_url())
        .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
    for call in 0..100 {
        let response = agent.get(api.api_url()).call().unwrap();
        assert_eq!(response.status(), 401, "call {call}");
    }
    assert!(
        issuer.token_requests() <= 2,
        "{} token requests for 100 rejected calls",
        issuer.token_requests()
    );
    // Past the window (10 s of the injected clock) a 401 invalidates again, once.
    clock.advance(Duration::from_secs(11));
    let before = issuer.token_requests();
    for _ in 0..10 {
        assert_eq!(agent.get(api.api_url()).call().unwrap().status(), 401);
    }
    assert!(issuer.token_requests() - before <= 2);
    assert!(api.api_rejected() >= 110);
}

#[test]
fn surf_an_api_that_rejects_every_token_costs_two_token_requests_per_damping_window() {
    let (issuer, api) = issuer_and_rejecting_api();
    let clock = ManualClock::new();
    let client = surf_client(&issuer, &clock, &api.base_url());
    async_std::task::block_on(async {
        for call in 0..100 {
            let response = client.get(api.api_url()).await.unwrap();
            assert_eq!(u16::from(response.status()), 401, "call {call}");
        }
    });
    assert!(
        issuer.token_requests() <= 2,
        "{} token requests for 100 rejected calls",
        issuer.token_requests()
    );
}

// --- Redirects from an API -------------------------------------------------

/// An issuer whose JWT checks (DPoP proofs) read `clock`.
fn issuer_on(clock: &ManualClock) -> LocalAuthServer {
    LocalAuthServer::start(ServerConfig {
        clock: Some(clock.clone()),
        ..ServerConfig::default()
    })
    .unwrap()
}

#[test]
fn ureq_a_token_or_proof_never_follows_a_redirect_to_another_origin() {
    let clock = ManualClock::new();
    let issuer = issuer_on(&clock);
    for dpop in [false, true] {
        let elsewhere = landing();
        let api = redirecting_to(format!("{}/landing", elsewhere.origin()), 302);
        let tokens = ureq_tokens(&clock, m2m_client(&issuer.token_url(), dpop));
        let middleware = ureq_middleware(tokens, &api.origin());
        // Both ways of adding the middleware: build_agent, and by hand on a
        // configuration that follows redirects (ureq's default, 10 hops).
        let built = middleware
            .clone()
            .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
        let by_hand = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .middleware(middleware)
            .build()
            .new_agent();
        for agent in [built, by_hand] {
            let response = agent
                .get(format!("{}/records", api.origin()))
                .call()
                .unwrap();
            // The redirect is handed back, not followed with the token on it.
            assert_eq!(response.status(), 302, "dpop: {dpop}");
        }
        let asked = api.heads();
        assert_eq!(asked.len(), 2);
        let scheme = if dpop { "dpop " } else { "bearer " };
        assert!(asked
            .iter()
            .all(|h| h.contains(&format!("\r\nauthorization: {scheme}"))));
        assert_no_credentials(&elsewhere.heads());
    }
}

#[test]
fn surf_redirect_middleware_before_the_token_middleware_carries_no_credential_elsewhere() {
    let clock = ManualClock::new();
    let issuer = issuer_on(&clock);
    for dpop in [false, true] {
        let elsewhere = landing();
        let api = redirecting_to(format!("{}/landing", elsewhere.origin()), 302);
        let tokens = surf_tokens(
            token_keeper_surf::DirectHttp::new(),
            &clock,
            m2m_client(&issuer.token_url(), dpop),
        );
        // The order the README prescribes: Redirect first, then the token middleware.
        // Keep-alive off: the scripted servers close every connection, and
        // async-h1's pool could hand a closed one to the next hop.
        let api_client: surf::Client = surf::Config::new()
            .set_http_keep_alive(false)
            .try_into()
            .unwrap();
        let client = api_client
            .with(surf::middleware::Redirect::default())
            .with(surf_middleware(tokens, &api.origin()));
        let status = async_std::task::block_on(async {
            client
                .get(format!("{}/records", api.origin()))
                .await
                .unwrap()
                .status()
        });
        assert_eq!(u16::from(status), 200, "followed to the landing page");
        // surf's Redirect probes each hop on a client without middleware, then
        // sends the last hop through the chain: the landing page's origin is
        // not configured, so no hop carries a token or a proof.
        assert!(!api.heads().is_empty());
        assert!(!elsewhere.heads().is_empty());
        assert_no_credentials(&api.heads());
        assert_no_credentials(&elsewhere.heads());
    }
}

// --- Redirects from the token endpoint -------------------------------------

#[test]
fn a_token_endpoint_redirect_is_never_followed_on_any_transport() {
    for transport in ["ureq", "direct", "surf-backend"] {
        let elsewhere = landing();
        let endpoint = redirecting_to(format!("{}/token", elsewhere.origin()), 307);
        let token_url = format!("{}/token", endpoint.origin());
        let clock = ManualClock::new();
        let error = match transport {
            "ureq" => {
                let tokens = ureq_tokens(&clock, secret_client(&token_url));
                tokens.header("m2m").unwrap_err()
            }
            other => {
                let http: token_keeper_surf::TokenTransport = if other == "direct" {
                    token_keeper_surf::DirectHttp::new().into()
                } else {
                    token_keeper_surf::TokenTransport::surf(surf::Config::new()).unwrap()
                };
                let tokens = surf_tokens(http, &clock, secret_client(&token_url));
                async_std::task::block_on(tokens.header("m2m")).unwrap_err()
            }
        };
        assert!(
            matches!(error, token_keeper_ureq::Error::InvalidResponse(_)),
            "{transport}: {error:?}"
        );
        assert_eq!(endpoint.heads().len(), 1, "{transport}");
        assert!(
            endpoint.heads()[0].contains("\r\nauthorization: basic "),
            "{transport}"
        );
        assert!(
            elsewhere.heads().is_empty(),
            "{transport}: the redirect was followed: {:?}",
            elsewhere.heads()
        );
    }
}

// --- A 401's body is read before the retry ---------------------------------

#[test]
fn surf_reads_the_401_body_before_retrying_on_a_kept_alive_connection() {
    use token_keeper_testkit::api_server::{SplitApiConfig, SplitApiServer};
    let clock = ManualClock::new();
    let issuer = issuer_on(&clock);
    let api = SplitApiServer::start(SplitApiConfig {
        unauthorized_first: 1,
        body: vec![b'x'; 64 * 1024],
        ..SplitApiConfig::default()
    })
    .unwrap();
    let client = surf_client(&issuer, &clock, &api.base_url());
    async_std::task::block_on(async {
        for call in 0..5 {
            let mut response = client
                .get(format!("{}/records", api.base_url()))
                .await
                .unwrap_or_else(|e| panic!("call {call}: {e}"));
            assert_eq!(u16::from(response.status()), 200, "call {call}");
            assert_eq!(response.body_bytes().await.unwrap().len(), 64 * 1024);
        }
    });
    assert_eq!(api.requests(), 6);
    assert_eq!(issuer.token_requests(), 2);
}
