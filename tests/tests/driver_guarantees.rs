//! What the one driver guarantees, whatever the adapter: a caller only asks
//! and waits, so one that stops waiting strands nobody (the engine owns the
//! token request and wakes every waiter with its outcome).
//!
//! And no `Signer` is called under the core's lock: a slow signer (an HSM, a
//! KMS) holds up only the request it signs, and a failing one fails only
//! that request.
//!
//! Deterministic: the token server holds its answer until the test opens a
//! gate, a slow signer holds its signature until the test releases it;
//! nothing sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use futures_lite::future::{self, FutureExt};
use token_keeper::jose::{Algorithm, PublicJwk, SignError, Signer};
use token_keeper::{ClientAuth, ClientConfig, ClientSecret, TokenError};
use token_keeper_driver::Error;
use token_keeper_keys::PrivateKey;
use token_keeper_surf::{AsyncTokenClient, DirectHttp};
use token_keeper_testkit::{Gate, LocalAuthServer, ServerConfig, TokenFault};

fn config(token_url: &str) -> ClientConfig {
    ClientConfig::new(
        token_url,
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap()
}

#[test]
fn a_caller_dropped_while_waiting_strands_no_other_caller() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let gate = Gate::new();
    server.push_token_fault(TokenFault::Hold(gate.clone()));
    let tokens = AsyncTokenClient::new(DirectHttp::new());
    tokens
        .add_client("m2m", config(&server.token_url()))
        .unwrap();

    // Caller A starts the token request, then is dropped while it waits
    // (as a timeout or a `select!` would drop it).
    let mut a = Box::pin(tokens.header("m2m"));
    assert!(future::block_on(future::poll_once(&mut a)).is_none());
    assert!(server.wait_for_token_requests(1, Duration::from_secs(10)));
    drop(a);

    // Caller B asks while the request is still held: it waits for it…
    let mut b = Box::pin(tokens.header("m2m"));
    assert!(future::block_on(future::poll_once(&mut b)).is_none());
    // …and gets the header as soon as the server answers, well before the
    // request deadline (30 s) would have let the core give up.
    gate.open();
    let header = future::block_on(b.or(async {
        async_io::Timer::after(Duration::from_secs(10)).await;
        panic!("caller B was stranded by caller A's cancellation");
    }))
    .unwrap();
    assert!(header.to_str().unwrap().starts_with("Bearer "));
    assert_eq!(server.token_requests(), 1);
    assert_eq!(tokens.stats().token_requests, 1);
}

#[test]
fn a_closure_given_the_header_may_call_the_client_again() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = token_keeper_ureq::TokenClient::new();
    tokens.add_client("a", config(&server.token_url())).unwrap();
    tokens.add_client("b", config(&server.token_url())).unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let caller = tokens.clone();
    // On a cold cache both headers are fetched: the closure runs after the
    // core's lock is released, so its own call to the client can proceed.
    std::thread::spawn(move || {
        let nested = caller.with_header("a", |_| caller.header("b"));
        let _ = done.send(nested.map(|inner| inner.is_ok()));
    });
    let outcome = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("with_header's closure deadlocked on the client's lock");
    assert!(outcome.unwrap());
    assert_eq!(server.token_requests(), 2);

    // The async client, likewise.
    let async_tokens = AsyncTokenClient::new(DirectHttp::new());
    async_tokens
        .add_client("a", config(&server.token_url()))
        .unwrap();
    async_tokens
        .add_client("b", config(&server.token_url()))
        .unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let caller = async_tokens.clone();
    std::thread::spawn(move || {
        let nested = future::block_on(
            caller.with_header("a", |_| future::block_on(caller.header("b")).is_ok()),
        );
        let _ = done.send(nested);
    });
    let outcome = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("with_header's closure deadlocked on the client's lock");
    assert!(outcome.unwrap());
}

/// A DPoP key whose signatures wait, once armed, until the test releases
/// them: an HSM or a KMS that takes its time. Each signature it holds first
/// says so on `entered`.
#[derive(Debug)]
struct SlowSigner {
    key: PrivateKey,
    armed: AtomicBool,
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl SlowSigner {
    /// The signer, the receiver of its "entered" signals, and the sender that
    /// releases one held signature per message (dropping it releases them all).
    fn new(armed: bool) -> (Arc<SlowSigner>, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered, on_entry) = mpsc::channel();
        let (release, released) = mpsc::channel();
        let signer = SlowSigner {
            key: PrivateKey::generate(Algorithm::ES256).unwrap(),
            armed: AtomicBool::new(armed),
            entered: Mutex::new(entered),
            release: Mutex::new(released),
        };
        (Arc::new(signer), on_entry, release)
    }

    fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }
}

impl Signer for SlowSigner {
    fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    fn public_jwk(&self) -> &PublicJwk {
        self.key.public_jwk()
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
        if self.armed.load(Ordering::SeqCst) {
            let _ = self.entered.lock().unwrap().send(());
            // Released by the test, or by its end (the sender dropped).
            let _ = self.release.lock().unwrap().recv();
        }
        self.key.sign(input)
    }
}

/// Runs `f` on a thread; its result, or `None` if it took longer than 10 s.
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    finished.recv_timeout(Duration::from_secs(10)).ok()
}

/// Client A (DPoP) and client B (Bearer) on one `TokenClient`, both of `server`.
fn dpop_and_bearer(
    server: &LocalAuthServer,
    signer: Arc<SlowSigner>,
) -> token_keeper_ureq::TokenClient {
    let tokens = token_keeper_ureq::TokenClient::new();
    tokens
        .add_client("a", config(&server.token_url()).dpop(signer))
        .unwrap();
    tokens.add_client("b", config(&server.token_url())).unwrap();
    tokens
}

/// Finding 3: no `Signer` call happens under the core's lock. While A's
/// token request waits for its DPoP proof's signature, B gets a token of its
/// own: the signing is done on the engine's sender thread, not in the core.
#[test]
fn a_slow_signer_of_a_token_request_holds_up_no_other_client() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let (signer, entered, release) = SlowSigner::new(true);
    let tokens = dpop_and_bearer(&server, signer);

    let a = tokens.clone();
    let (a_done, a_finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = a_done.send(a.header("a"));
    });
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("A's token request never asked for its proof's signature");

    // A's signature is held. B needs no signature, and no lock A's signing holds.
    let b = tokens.clone();
    let Some(b_header) = bounded(move || b.header("b")) else {
        drop(release);
        panic!("client B waited for client A's signer: it signs under the core's lock");
    };
    assert!(b_header.unwrap().to_str().unwrap().starts_with("Bearer "));
    assert_eq!(server.token_requests(), 1, "only B's request went out");

    release.send(()).unwrap();
    let a_header = a_finished
        .recv_timeout(Duration::from_secs(10))
        .expect("A never completed after its signer was released")
        .unwrap();
    assert!(a_header.to_str().unwrap().starts_with("DPoP "));
    assert_eq!(server.token_requests(), 2);
}

/// The same for an API request's proof: it is signed after the core's lock
/// is released, so a slow signature holds up only its own call.
#[test]
fn a_slow_signer_of_an_api_proof_holds_up_no_other_client() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let (signer, entered, release) = SlowSigner::new(false);
    let tokens = dpop_and_bearer(&server, Arc::clone(&signer));
    assert!(tokens
        .header("a")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("DPoP "));
    signer.arm();

    let a = tokens.clone();
    let key = tokens.key("a").unwrap();
    let (a_done, a_finished) = mpsc::channel();
    std::thread::spawn(move || {
        let uri: http::Uri = "https://api.example/orders".parse().unwrap();
        let _ = a_done.send(a.authorize_request(key, &http::Method::GET, &uri));
    });
    entered
        .recv_timeout(Duration::from_secs(10))
        .expect("A's API request never asked for its proof's signature");

    let b = tokens.clone();
    let Some(b_header) = bounded(move || b.header("b")) else {
        drop(release);
        panic!("client B waited for client A's signer: it signs under the core's lock");
    };
    assert!(b_header.unwrap().to_str().unwrap().starts_with("Bearer "));

    release.send(()).unwrap();
    let authorized = a_finished
        .recv_timeout(Duration::from_secs(10))
        .expect("A never completed after its signer was released")
        .unwrap();
    assert!(authorized
        .authorization
        .to_str()
        .unwrap()
        .starts_with("DPoP "));
    assert!(
        authorized.dpop.is_some(),
        "a DPoP-bound token goes with a proof"
    );
}

/// A DPoP key that signs until it is broken: then every signature fails
/// (an unreachable KMS).
#[derive(Debug)]
struct BreakableSigner {
    key: PrivateKey,
    broken: AtomicBool,
}

impl BreakableSigner {
    fn new(broken: bool) -> Arc<BreakableSigner> {
        Arc::new(BreakableSigner {
            key: PrivateKey::generate(Algorithm::ES256).unwrap(),
            broken: AtomicBool::new(broken),
        })
    }
}

impl Signer for BreakableSigner {
    fn algorithm(&self) -> Algorithm {
        self.key.algorithm()
    }

    fn public_jwk(&self) -> &PublicJwk {
        self.key.public_jwk()
    }

    fn sign(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(SignError("the KMS is unreachable".into()));
        }
        self.key.sign(input)
    }
}

/// Signed on the engine's thread, a token request that cannot be signed is
/// never sent; the key fails and backs off as after any failed request.
#[test]
fn a_token_request_that_cannot_be_signed_is_not_sent_and_backs_off() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let config = || config(&server.token_url()).dpop(BreakableSigner::new(true));
    let blocking = token_keeper_ureq::TokenClient::new();
    blocking.add_client("a", config()).unwrap();
    let tasks = AsyncTokenClient::new(DirectHttp::new());
    tasks.add_client("a", config()).unwrap();
    let header = |adapter: usize| match adapter {
        0 => blocking.header("a"),
        _ => future::block_on(tasks.header("a")),
    };
    for adapter in 0..2 {
        // The caller who waited for the request sees the failure itself…
        let error = header(adapter).unwrap_err();
        assert!(
            matches!(&error, Error::Signing(e) if e.0.contains("KMS")),
            "{adapter}: {error:?}"
        );
        // …a later caller, the backoff it started.
        let error = header(adapter).unwrap_err();
        assert!(
            matches!(
                &error,
                Error::Unavailable {
                    cause: TokenError::Signing(_),
                    ..
                }
            ),
            "{adapter}: {error:?}"
        );
    }
    for stats in [blocking.stats(), tasks.stats()] {
        // Started (the core drew its `jti`s), failed, never sent.
        assert_eq!((stats.token_requests, stats.failures), (1, 1));
    }
    assert_eq!(server.token_requests(), 0, "nothing unsigned was sent");
}

/// A DPoP-bound token whose proof cannot be signed is not handed out, not
/// even as a Bearer token: the call fails.
#[test]
fn an_api_proof_that_cannot_be_signed_fails_the_call() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let signer = BreakableSigner::new(false);
    let tokens = token_keeper_ureq::TokenClient::new();
    tokens
        .add_client(
            "a",
            config(&server.token_url()).dpop(Arc::clone(&signer) as _),
        )
        .unwrap();
    let key = tokens.key("a").unwrap();
    let uri: http::Uri = "https://api.example/orders".parse().unwrap();
    let authorized = tokens
        .authorize_request(key, &http::Method::GET, &uri)
        .unwrap();
    assert!(authorized.dpop.is_some());
    signer.broken.store(true, Ordering::SeqCst);
    let error = tokens
        .authorize_request(key, &http::Method::GET, &uri)
        .unwrap_err();
    assert!(matches!(&error, Error::Signing(_)), "{error:?}");
}

/// A forced refresh reports the outcome of its own request: a refused
/// refresh fails, although the old token is still valid and still served.
#[test]
fn a_forced_refresh_that_fails_fails_even_while_the_old_token_is_served() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let blocking = token_keeper_ureq::TokenClient::new();
    let nonblocking = AsyncTokenClient::new(DirectHttp::new());
    blocking
        .add_client("m2m", config(&server.token_url()))
        .unwrap();
    nonblocking
        .add_client("m2m", config(&server.token_url()))
        .unwrap();
    let old = blocking.header("m2m").unwrap();
    let old_async = future::block_on(nonblocking.header("m2m")).unwrap();

    let refused = || TokenFault::Status {
        status: 400,
        body: r#"{"error":"invalid_client"}"#.into(),
        retry_after: None,
    };
    server.push_token_fault(refused());
    let failed = blocking.force_refresh("m2m").unwrap_err();
    assert_eq!(failed.oauth_code(), Some("invalid_client"), "{failed:?}");
    server.push_token_fault(refused());
    let failed = future::block_on(nonblocking.force_refresh("m2m")).unwrap_err();
    assert_eq!(failed.oauth_code(), Some("invalid_client"), "{failed:?}");

    // The old tokens are still served: the failure was the refresh's.
    assert_eq!(blocking.header("m2m").unwrap(), old);
    assert_eq!(
        future::block_on(nonblocking.header("m2m")).unwrap(),
        old_async
    );
    assert_eq!(server.token_requests(), 4);
}

/// A forced refresh that succeeds returns once the new token is cached.
#[test]
fn a_forced_refresh_returns_with_the_new_token_cached() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = token_keeper_ureq::TokenClient::new();
    tokens
        .add_client("m2m", config(&server.token_url()))
        .unwrap();
    let old = tokens.header("m2m").unwrap();
    tokens.force_refresh("m2m").unwrap();
    let new = tokens.header("m2m").unwrap();
    assert_ne!(new, old);
    assert_eq!(server.token_requests(), 2);
}

/// One step from an issuer to a working client, on both adapters; a
/// configuration that contradicts the metadata is refused.
#[test]
fn a_client_is_added_from_its_issuer_in_one_step() {
    let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let issuer = server.base_url();
    let basic = |endpoint: &str| {
        ClientConfig::new(
            endpoint,
            "m2m",
            ClientAuth::Basic(ClientSecret::new("s3cret")),
        )
    };
    let blocking = token_keeper_ureq::TokenClient::new();
    blocking
        .add_client_from_issuer("m2m", &issuer, basic)
        .unwrap();
    assert!(blocking
        .header("m2m")
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Bearer "));

    let nonblocking = AsyncTokenClient::new(DirectHttp::new());
    future::block_on(nonblocking.add_client_from_issuer("m2m", &issuer, basic)).unwrap();
    assert!(future::block_on(nonblocking.header("m2m"))
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("Bearer "));

    // Another endpoint than the one the issuer publishes is refused.
    let elsewhere = blocking
        .add_client_from_issuer("other", &issuer, |endpoint| {
            basic(&format!("{endpoint}/elsewhere"))
        })
        .unwrap_err();
    assert!(matches!(elsewhere, Error::Config(_)), "{elsewhere:?}");
    assert!(matches!(
        blocking.key("other"),
        Err(Error::UnknownClient(_))
    ));

    // An issuer with no metadata is a discovery error, not a token error.
    let missing = blocking
        .add_client_from_issuer("nowhere", "http://127.0.0.1:9", basic)
        .unwrap_err();
    assert!(matches!(missing, Error::Discovery(_)), "{missing:?}");
}
