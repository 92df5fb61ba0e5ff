//! No public type prints a secret.
//!
//! One client secret, one private key and the access tokens the server
//! issues are pushed through every public type that can hold or describe them
//! (configurations, requests, responses, tokens, snapshots, decisions, events,
//! every error, keys, every adapter's clients, middlewares, layers and health views),
//! and every `Debug`, `Display` and log line produced along the way is
//! searched for them.

use std::sync::Arc;

use token_keeper::jose::Signer;
use token_keeper::response::parse_token_response;
use token_keeper::{
    Authorization, ClientAuth, ClientConfig, ClientSecret, ManagerConfig, Now, PrivateKeyJwt,
    TokenManager,
};
use token_keeper_keys::PrivateKey;
use token_keeper_testkit::scenarios::captured_logs;
use token_keeper_testkit::{ApiFault, LocalAuthServer, ServerConfig, TokenFault};

const SECRET: &str = "Sup3r-Secret-Value-81f2";

/// The private scalar `d` of the test key below, as base64url (what a leak would show).
fn private_material(pem: &str) -> Vec<String> {
    // Every line of the PEM body, and the whole body joined: none may appear.
    let body: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect();
    let mut out = body.clone();
    out.push(body.concat());
    out
}

fn pem_key() -> (String, PrivateKey) {
    let dir = std::env::temp_dir().join(format!("tk-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("k.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(made.status.success());
    let pem = std::fs::read_to_string(&path).unwrap();
    let key = PrivateKey::from_file(&path, None).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    (pem, key)
}

#[test]
fn no_public_type_prints_a_secret_a_private_key_or_a_token() {
    captured_logs();
    let (pem, key) = pem_key();
    let key = Arc::new(key);
    let server = LocalAuthServer::start(ServerConfig {
        clients: vec![("m2m".into(), SECRET.into())],
        jwt_clients: vec![("pkj".into(), key.public_jwk().clone())],
        ttl_secs: 100,
        ..ServerConfig::default()
    })
    .unwrap();
    let mut texts: Vec<String> = Vec::new();
    let mut show = |label: &str, debug: String, display: Option<String>| {
        texts.push(format!("{label}: {debug} {}", display.unwrap_or_default()));
    };

    // Configuration and the core.
    let secret = ClientSecret::new(SECRET);
    show("ClientSecret", format!("{secret:?}"), None);
    let basic = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(secret.clone()),
    )
    .unwrap()
    .scope("api");
    let post =
        ClientConfig::new(&server.token_url(), "m2m", ClientAuth::Post(secret.clone())).unwrap();
    let pkj = ClientConfig::new(
        &server.token_url(),
        "pkj",
        ClientAuth::PrivateKeyJwt(PrivateKeyJwt::new(key.clone())),
    )
    .unwrap()
    .dpop(key.clone());
    for config in [&basic, &post, &pkj] {
        show("ClientConfig", format!("{config:?}"), None);
    }
    show("PrivateKey", format!("{key:?}"), None);
    show(
        "KeyError",
        format!(
            "{:?}",
            PrivateKey::from_pem(&pem.replace('A', "!"), None).unwrap_err()
        ),
        None,
    );

    let mut core = TokenManager::new(ManagerConfig::default(), 1);
    let client = core.add_client("m2m", post.clone()).unwrap();
    let key_id = core.default_key(client);
    let Authorization::Fetch(_) = core.authorize(key_id, Now::from_secs(0)) else {
        panic!()
    };
    let request = core.poll_request().unwrap();
    show("TokenRequest", format!("{request:?}"), None);
    show(
        "http::Request headers",
        format!("{:?}", request.request().headers()),
        None,
    );
    let body =
        format!(r#"{{"access_token":"tok-{SECRET}","token_type":"Bearer","expires_in":60}}"#);
    let parsed = parse_token_response(http::StatusCode::OK, body.as_bytes(), 1 << 20, &[]).unwrap();
    show("TokenResponse", format!("{parsed:?}"), None);
    show("AccessToken", format!("{:?}", parsed.access_token()), None);
    core.handle_response(
        request.id(),
        http::Response::builder()
            .status(200)
            .body(body.clone())
            .unwrap(),
        Now::from_secs(0),
    )
    .unwrap();
    if let Authorization::Attach(attach) = core.authorize(key_id, Now::from_secs(1)) {
        show("Attach", format!("{attach:?}"), None);
    }
    show(
        "TokenView",
        format!("{:?}", core.token(key_id, Now::from_secs(1)).unwrap()),
        None,
    );
    show("Snapshot", format!("{:?}", core.snapshot(key_id)), None);
    show(
        "KeyHealth",
        format!("{:?}", core.health(key_id, Now::from_secs(1))),
        None,
    );
    show("TokenManager", format!("{core:?}"), None);
    while let Some(event) = core.poll_event() {
        show("Event", format!("{event:?}"), None);
    }
    // Errors built from hostile bodies that echo the secret.
    for (status, body) in [
        (
            401,
            format!(r#"{{"error":"invalid_client","error_description":"bad {SECRET}"}}"#),
        ),
        (500, format!("echo client_secret={SECRET}")),
        (
            200,
            format!(r#"{{"access_token":"a b {SECRET}","token_type":"Bearer"}}"#),
        ),
    ] {
        let error = parse_token_response(
            http::StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
            1 << 20,
            &[SECRET],
        )
        .unwrap_err();
        show("TokenError", format!("{error:?}"), Some(error.to_string()));
    }

    // The blocking adapter: client, middleware, errors, logs.
    let tokens = token_keeper_ureq::TokenClient::new();
    tokens.add_client("m2m", basic.clone()).unwrap();
    tokens.add_client("pkj", pkj.clone()).unwrap();
    let header = tokens.header("m2m").unwrap();
    show("ureq TokenClient", format!("{tokens:?}"), None);
    show(
        "TokenInfo",
        format!("{:?}", tokens.token("m2m").unwrap()),
        None,
    );
    let middleware = token_keeper_ureq::TokenMiddleware::new(tokens.clone())
        .route(&server.base_url(), "m2m")
        .unwrap();
    show("ureq TokenMiddleware", format!("{middleware:?}"), None);
    let agent =
        middleware.build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
    server.push_api_fault(ApiFault::UnauthorizedOnce);
    assert_eq!(agent.get(&server.api_url()).call().unwrap().status(), 200);
    assert!(tokens.header("pkj").is_ok(), "private_key_jwt + DPoP token");
    let wrong = token_keeper_ureq::TokenClient::new();
    let wrong_secret = ClientConfig::new(
        &server.token_url(),
        "m2m",
        ClientAuth::Basic(ClientSecret::new(format!("{SECRET}-x"))),
    )
    .unwrap();
    wrong.add_client("m2m", wrong_secret).unwrap();
    let error = wrong.header("m2m").unwrap_err();
    show("ureq Error", format!("{error:?}"), Some(error.to_string()));
    show("ureq health", format!("{:?}", tokens.health()), None);
    show(
        "ureq health (failing)",
        format!("{:?}", wrong.health()),
        None,
    );

    // The async adapter.
    let async_tokens =
        token_keeper_surf::AsyncTokenClient::new(token_keeper_surf::DirectHttp::new());
    async_tokens.add_client("m2m", basic.clone()).unwrap();
    server.push_token_fault(TokenFault::Status {
        status: 500,
        body: format!("echo {SECRET}"),
        retry_after: None,
    });
    let error = async_std::task::block_on(async_tokens.header("m2m")).unwrap_err();
    show("surf Error", format!("{error:?}"), Some(error.to_string()));
    show("surf AsyncTokenClient", format!("{async_tokens:?}"), None);
    show(
        "surf health (failing)",
        format!("{:?}", async_tokens.health()),
        None,
    );
    show(
        "surf TokenTransport (DirectHttp)",
        format!("{:?}", async_tokens.transport()),
        None,
    );
    let surf_middleware = token_keeper_surf::TokenMiddleware::new(async_tokens.clone())
        .route(&server.base_url(), "m2m")
        .unwrap();
    show("surf TokenMiddleware", format!("{surf_middleware:?}"), None);

    // Proxies (the password in the proxy URL) and TLS settings.
    let proxy_url = format!("http://corp:{SECRET}@127.0.0.1:9");
    let from_env =
        token_keeper::ProxySettings::from_env_vars([("HTTPS_PROXY", proxy_url.as_str())]);
    show("ProxySettings (environment)", format!("{from_env:?}"), None);
    let explicit = token_keeper::ProxySettings::explicit(&proxy_url, "").unwrap();
    show("ProxySettings (explicit)", format!("{explicit:?}"), None);
    let remote: http::Uri = "https://idp.test/token".parse().unwrap();
    if let token_keeper::ProxyDecision::Tunnel(via) = explicit.decide(&remote) {
        show(
            "Proxy",
            format!("{via:?}"),
            Some(via.url_without_credentials()),
        );
    } else {
        panic!("an explicit proxy tunnels a remote destination");
    }
    let socks = format!("socks5://corp:{SECRET}@127.0.0.1:9");
    let unsupported = token_keeper::ProxySettings::from_env_vars([("ALL_PROXY", socks.as_str())]);
    show(
        "ProxyDecision (unsupported)",
        format!("{:?}", unsupported.decide(&remote)),
        None,
    );
    let refused = token_keeper::ProxySettings::explicit(&socks, "").unwrap_err();
    show(
        "ProxyError",
        format!("{refused:?}"),
        Some(refused.to_string()),
    );
    let options = token_keeper_ureq::ClientOptions {
        proxy: explicit.clone(),
        ..Default::default()
    };
    show("ureq ClientOptions", format!("{options:?}"), None);
    let proxied = token_keeper_ureq::TokenClient::with_options(options).unwrap();
    show("ureq TokenClient (proxied)", format!("{proxied:?}"), None);
    let surf_options = token_keeper_surf::ClientOptions {
        proxy: explicit,
        ..Default::default()
    };
    show("surf ClientOptions", format!("{surf_options:?}"), None);
    let tls = token_keeper_ureq::TlsSettings::webpki();
    show("TlsSettings", format!("{tls:?}"), None);
    let tls_error = token_keeper_ureq::TlsSettings::webpki()
        .with_ca_pem(SECRET.as_bytes())
        .unwrap_err();
    show(
        "TlsError",
        format!("{tls_error:?}"),
        Some(tls_error.to_string()),
    );
    let backend = token_keeper_surf::TokenTransport::surf(surf::Config::new()).unwrap();
    show(
        "surf TokenTransport (surf backend)",
        format!("{backend:?}"),
        None,
    );
    show(
        "OsRandom",
        format!("{:?}", token_keeper_driver::OsRandom::new()),
        None,
    );

    texts.push(captured_logs());
    let mut forbidden: Vec<String> = vec![
        SECRET.to_owned(),
        header
            .to_str()
            .unwrap()
            .trim_start_matches("Bearer ")
            .to_owned(),
    ];
    forbidden.extend(server.issued_tokens());
    forbidden.extend(private_material(&pem));
    for text in &texts {
        for needle in &forbidden {
            assert!(
                !text.contains(needle.as_str()),
                "leaked {needle:?} in: {text}"
            );
        }
    }
    assert!(
        texts.last().unwrap().contains("token acquired"),
        "the logs were captured"
    );
}

/// The shared-store protocol's values: a token on its way to the store, the
/// store's requests and replies, their events and errors, the fleet store
/// settings and the API-call policy.
#[test]
fn the_store_protocol_prints_no_token() {
    use token_keeper::{
        ApiCallPolicy, Event, StoreErrorKind, StoreOp, StoreReply, StoreSettings, StoredToken,
        TokenType,
    };
    const TOKEN: &str = "Stored-Token-Value-5c9e";
    let mut texts: Vec<String> = Vec::new();
    let mut core = TokenManager::new(ManagerConfig::default(), 3);
    core.enable_store(StoreSettings::default());
    let config = ClientConfig::new(
        "https://idp.example/token",
        "m2m",
        ClientAuth::Basic(ClientSecret::new(SECRET)),
    )
    .unwrap();
    let client = core.add_client("m2m", config).unwrap();
    let key = core.default_key(client);
    let now = Now::from_secs(10);
    let _ = core.authorize(key, now);
    let read = core.poll_store_request().expect("a read first");
    texts.push(format!("{read:?}"));
    core.handle_store_reply(read.id(), Ok(StoreReply::Entry(None)), now)
        .unwrap();
    let lease = core.poll_store_request().expect("then the lease");
    texts.push(format!("{lease:?}"));
    core.handle_store_reply(lease.id(), Ok(StoreReply::Lease(true)), now)
        .unwrap();
    let recheck = core.poll_store_request().expect("a read once more");
    texts.push(format!("{recheck:?}"));
    core.handle_store_reply(recheck.id(), Ok(StoreReply::Entry(None)), now)
        .unwrap();
    let request = core.poll_request().expect("the lease holder fetches");
    texts.push(format!("{request:?}"));
    let body = format!(r#"{{"access_token":"{TOKEN}","token_type":"Bearer","expires_in":60}}"#);
    let response = http::Response::builder().status(200).body(body).unwrap();
    core.handle_response(request.id(), response, now).unwrap();
    let write = core.poll_store_request().expect("then the write");
    assert!(matches!(write.op(), StoreOp::Write { .. }));
    texts.push(format!("{write:?}"));
    texts.push(format!("{:?}", write.op_at(now.monotonic())));
    let stored = StoredToken::new(
        TOKEN.into(),
        TokenType::Bearer,
        None,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    texts.push(format!("{stored:?}"));
    let error = token_keeper::StoreError::new(StoreErrorKind::Unavailable, "down");
    texts.push(format!("{error:?} {error}"));
    texts.push(format!(
        "{:?}",
        StoreReply::Entry(Some((stored, std::time::Duration::from_secs(5))))
    ));
    while let Some(event) = core.poll_event() {
        texts.push(format!("{event:?}"));
    }
    texts.push(format!(
        "{:?}",
        Event::StoreUnavailable {
            error,
            retry_in: std::time::Duration::from_secs(1)
        }
    ));
    texts.push(format!("{core:?}"));
    texts.push(format!("{:?}", core.store_owner()));
    texts.push(format!("{:?}", ApiCallPolicy::new()));
    texts.push(format!("{:?}", token_keeper_ureq::TokenClient::new()));
    for text in &texts {
        assert!(!text.contains(TOKEN), "leaked the token in: {text}");
        assert!(!text.contains(SECRET), "leaked the secret in: {text}");
    }
}

/// The tokio adapters' public types (reqwest's client and middleware,
/// tower's layer, service, response and token failure), on success and on
/// a refused client, print no secret and no token.
#[test]
fn the_tokio_adapters_print_no_secret_and_no_token() {
    use tower::{Layer, ServiceExt};

    captured_logs();
    let server = LocalAuthServer::start(ServerConfig {
        clients: vec![("m2m".into(), SECRET.into())],
        ..ServerConfig::default()
    })
    .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut texts: Vec<String> = Vec::new();
    let client = |id: &str| {
        let tokens = token_keeper_reqwest::ReqwestTokenClient::new();
        let config = ClientConfig::new(
            &server.token_url(),
            id,
            ClientAuth::Basic(ClientSecret::new(SECRET)),
        )
        .unwrap();
        tokens.add_client("m2m", config).unwrap();
        tokens
    };
    let get = || {
        http::Request::get(server.api_url())
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap()
    };
    let http = {
        let _entered = runtime.enter();
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Full<bytes::Bytes>>()
    };

    for id in ["m2m", "not-a-client"] {
        let tokens = client(id);
        let middleware = token_keeper_reqwest::TokenMiddleware::new(tokens.clone())
            .route(&server.base_url(), "m2m")
            .unwrap();
        texts.push(format!("{middleware:?}"));
        let api = reqwest_middleware::ClientBuilder::new(
            token_keeper_reqwest::TokenMiddleware::client_builder()
                .no_proxy()
                .build()
                .unwrap(),
        )
        .with(middleware)
        .build();
        match runtime.block_on(api.get(server.api_url()).send()) {
            Ok(response) => texts.push(format!("{response:?}")),
            Err(error) => texts.push(format!("{error} {error:?}")),
        }
        texts.push(format!("{tokens:?} {:?}", tokens.health()));

        let layer = token_keeper_tower::TokenLayer::new(&tokens)
            .route(&server.base_url(), "m2m")
            .unwrap();
        let service = layer.layer(http.clone());
        texts.push(format!("{layer:?} {service:?}"));
        match runtime.block_on(service.oneshot(get())) {
            Ok(response) => texts.push(format!("{response:?}")),
            Err(error) => {
                let typed = token_keeper_tower::token_failure(&*error).expect("a token failure");
                texts.push(format!("{error} {error:?} {typed:?}"));
            }
        }
    }
    assert_eq!(server.api_requests(), 2, "one call per adapter got a token");
    texts.push(captured_logs());
    let mut forbidden = vec![SECRET.to_owned()];
    forbidden.extend(server.issued_tokens());
    assert!(!server.issued_tokens().is_empty());
    for text in &texts {
        for needle in &forbidden {
            assert!(
                !text.contains(needle.as_str()),
                "leaked {needle:?} in: {text}"
            );
        }
    }
}
