//! The service as a real process, against real servers: the oidc-provider
//! fixture (`tests/interop/server.mjs`: a real authorization server and a
//! protected API that verifies its JWTs and DPoP proofs), testkit's local
//! token server and API, and closed loopback ports. No mocks.
//!
//! The oidc-provider tests follow the interop rule: without
//! `tests/interop/node_modules` they skip (saying so on stderr), unless
//! `TOKEN_KEEPER_INTEROP=required`, where they fail. The others always run.
//! Everything binds to 127.0.0.1; every wait has a deadline.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::{closed_port, get, http_client, run_to_exit, Answer, Service};
use token_keeper::jose::{Algorithm, Signer};
use token_keeper_reqwest::PrivateKey;
use token_keeper_testkit::api_server::{SplitApiConfig, SplitApiServer};
use token_keeper_testkit::oidc_provider::{self, Fixture, DEFAULT_SECRET};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

/// The fixture's tokens live 60 s: long enough that no refresh-ahead falls
/// inside a test, so token counts are exact.
fn fixture() -> Fixture {
    Fixture::start(&oidc_provider::Options {
        token_ttl: Duration::from_secs(60),
        ..oidc_provider::Options::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// `GET {service}{path}`, blocking.
fn call(rt: &tokio::runtime::Runtime, service: &Service, path: &str) -> Answer {
    let client = http_client();
    rt.block_on(get(&client, &service.url(path)))
        .unwrap_or_else(|e| panic!("GET {path}: {e}; stderr:\n{}", service.stderr()))
}

fn counter(value: &Value, path: &[&str]) -> u64 {
    path.iter().fold(value, |v, p| &v[*p]).as_u64().unwrap_or(0)
}

/// What `/healthz` and every error answer must never show.
fn assert_clean(text: &str, secret: &str) {
    assert!(!text.contains(secret), "the secret shows: {text}");
    for word in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(
            !text
                .to_ascii_lowercase()
                .contains(&word.to_ascii_lowercase()),
            "{word:?} in {text}"
        );
    }
}

/// A short JSON error: valid JSON, under 1 KiB, with this `error` code, a
/// `detail`, and no secret or panic.
fn assert_short_json_error(answer: &Answer, status: u16, code: &str, secret: &str) -> Value {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(answer.body.len() < 1024, "{} bytes", answer.body.len());
    assert_eq!(
        answer.headers["content-type"], "application/json",
        "{:?}",
        answer.headers
    );
    let json = answer.json();
    assert_eq!(json["error"], code, "{json}");
    assert!(
        json["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{json}"
    );
    assert_clean(&answer.body, secret);
    json
}

/// A Bearer client found by discovery (`--issuer`), with an RFC 8707
/// resource: `/healthz` before any call (empty, 200), `/records` (the API's
/// 200 and JSON: the client, Bearer, no `jkt`), `/healthz` after (fresh, one
/// token request), and the fixture's counters agree.
#[test]
fn bearer_client_by_discovery_records_and_healthz() {
    if !oidc_provider::installed("bearer_client_by_discovery") {
        return;
    }
    let fixture = fixture();
    let rt = runtime();
    let api = fixture.health_records_url();
    let service = Service::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--issuer",
            &fixture.issuer,
            "--client-id",
            "post",
            "--scope",
            "api:read",
            "--resource",
            &fixture.resource,
            "--api",
            &api,
        ],
        &[("TK_CLIENT_SECRET", DEFAULT_SECRET)],
    );
    let line = &service.startup_line;
    assert!(
        line.contains(&format!("token endpoint {}/token", fixture.issuer)),
        "{line}"
    );
    assert!(line.contains(&api), "{line}");

    let before = call(&rt, &service, "/healthz");
    assert_eq!(before.status, 200, "{}", before.body);
    let health = before.json();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["client"], "m2m", "{health}");
    assert_eq!(health["state"], "empty", "{health}");
    assert_eq!(health["token_requests"], 0, "{health}");
    assert_eq!(health["usable_for_ms"], Value::Null, "{health}");
    assert_eq!(health["last_error"], Value::Null, "{health}");

    let records = call(&rt, &service, "/records");
    assert_eq!(records.status, 200, "{}", records.body);
    assert_eq!(records.headers["cache-control"], "no-store");
    let body = records.json();
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["client_id"], "post", "{body}");
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert_eq!(body["scope"], "api:read", "{body}");
    assert_eq!(body["jkt"], Value::Null, "{body}");

    let after = call(&rt, &service, "/healthz");
    assert_eq!(after.status, 200, "{}", after.body);
    let health = after.json();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["state"], "fresh", "{health}");
    assert_eq!(health["token_requests"], 1, "{health}");
    let usable = health["usable_for_ms"].as_u64().expect("usable_for_ms");
    assert!((1..=60_000).contains(&usable), "{health}");
    assert!(health["refresh_in_ms"].as_u64().is_some(), "{health}");
    assert_clean(&after.body, DEFAULT_SECRET);

    let stats = fixture.stats();
    assert_eq!(
        counter(&stats, &["token", "post", "requests"]),
        1,
        "{stats}"
    );
    assert_eq!(counter(&stats, &["token", "post", "issued"]), 1, "{stats}");
    assert_eq!(counter(&stats, &["api", "post", "ok_bearer"]), 1, "{stats}");
    assert_clean(&service.stderr(), DEFAULT_SECRET);
}

/// DPoP-bound clients: one with its key in a PEM file (`--dpop-key`), the
/// other with an ephemeral key (`TK_DPOP=1`), both configured through the
/// environment fallbacks. The API checks each proof (`ath`, `htu`, its own
/// nonce) and answers with the `jkt` the token is bound to: the key's.
#[test]
fn dpop_clients_with_a_key_file_and_an_ephemeral_key() {
    if !oidc_provider::installed("dpop_clients") {
        return;
    }
    let fixture = fixture();
    let rt = runtime();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("hrs-dpop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("dpop-key.pem");
    let (key, pem) = PrivateKey::generate_pem(Algorithm::ES256).unwrap();
    std::fs::write(&key_file, pem.as_bytes()).unwrap();
    let jkt = key.public_jwk().thumbprint().to_owned();
    let token_url = format!("{}/token", fixture.issuer);
    let api = fixture.health_records_url();
    let common = [
        ("TK_CLIENT_SECRET", DEFAULT_SECRET),
        ("TK_TOKEN_URL", token_url.as_str()),
        ("TK_API", api.as_str()),
        ("TK_SCOPE", "api:read"),
        ("TK_LISTEN", "127.0.0.1:0"),
    ];

    let key_path = key_file.to_str().unwrap();
    let with_file = Service::start(
        &["--client-id", "basic-dpop", "--dpop-key", key_path],
        &common,
    );
    assert!(
        with_file
            .startup_line
            .contains(&format!("DPoP key jkt {jkt}")),
        "{}",
        with_file.startup_line
    );
    let ephemeral = Service::start(
        &[],
        &[
            &common[..],
            &[("TK_CLIENT_ID", "post-dpop"), ("TK_DPOP", "1")],
        ]
        .concat(),
    );
    let ephemeral_jkt = ephemeral
        .startup_line
        .split("DPoP key jkt ")
        .nth(1)
        .and_then(|rest| rest.split([',', ')']).next())
        .expect("the startup line names the ephemeral key's jkt")
        .to_owned();
    assert_ne!(ephemeral_jkt, jkt);

    for (service, client_id, expected_jkt) in [
        (&with_file, "basic-dpop", jkt.as_str()),
        (&ephemeral, "post-dpop", ephemeral_jkt.as_str()),
    ] {
        // Twice: the second call reuses the token and the API's nonce.
        for attempt in 0..2 {
            let records = call(&rt, service, "/records");
            assert_eq!(
                records.status, 200,
                "{client_id} #{attempt}: {}",
                records.body
            );
            let body = records.json();
            assert_eq!(body["client_id"], client_id, "{body}");
            assert_eq!(body["token_type"], "DPoP", "{body}");
            assert_eq!(body["jkt"], expected_jkt, "{body}");
        }
        let health = call(&rt, service, "/healthz");
        assert_eq!(health.status, 200, "{}", health.body);
        assert_eq!(health.json()["state"], "fresh", "{}", health.body);
        assert_clean(&service.stderr(), DEFAULT_SECRET);
        let stats = fixture.stats();
        let token = &stats["token"][client_id];
        assert_eq!(counter(token, &["issued"]), 1, "{stats}");
        assert_eq!(counter(token, &["issued_dpop"]), 1, "{stats}");
        assert_eq!(
            counter(&stats, &["api", client_id, "ok_dpop"]),
            2,
            "{stats}"
        );
        assert_eq!(
            counter(&stats, &["api", client_id, "rejected"]),
            0,
            "{stats}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// 100 concurrent `/records` on a cold service: every one answered 200,
/// and between them exactly one token request reached the token endpoint.
#[test]
fn a_hundred_concurrent_records_cost_one_token_request() {
    if !oidc_provider::installed("a_hundred_concurrent_records") {
        return;
    }
    let fixture = fixture();
    let rt = runtime();
    let token_url = format!("{}/token", fixture.issuer);
    let api = fixture.health_records_url();
    let service = Service::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-url",
            &token_url,
            "--client-id",
            "basic",
            "--scope",
            "api:read",
            "--api",
            &api,
        ],
        &[("TK_CLIENT_SECRET", DEFAULT_SECRET)],
    );
    let url = service.url("/records");
    let answers: Vec<Result<Answer, String>> = rt.block_on(async {
        let client = http_client();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let (client, url) = (client.clone(), url.clone());
            tasks.spawn(async move { get(&client, &url).await });
        }
        let mut answers = Vec::new();
        while let Some(done) = tasks.join_next().await {
            answers.push(done.expect("task"));
        }
        answers
    });
    assert_eq!(answers.len(), 100);
    for answer in &answers {
        let answer = answer.as_ref().expect("GET /records");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.json()["client_id"], "basic", "{}", answer.body);
    }
    let stats = fixture.stats();
    assert_eq!(
        counter(&stats, &["token", "basic", "requests"]),
        1,
        "{stats}"
    );
    assert_eq!(counter(&stats, &["token", "basic", "issued"]), 1, "{stats}");
    assert_eq!(counter(&stats, &["api", "basic", "ok"]), 100, "{stats}");
    let health = call(&rt, &service, "/healthz").json();
    assert_eq!(health["token_requests"], 1, "{health}");
}

/// The token endpoint is down (a closed loopback port): `/records` answers
/// 503 with a short JSON error (the second time with `Retry-After`, while
/// the client backs off), `/healthz` turns 503 and says why, and neither the
/// answers nor the log show the secret or a panic.
#[test]
fn token_endpoint_down_records_503_and_healthz_says_so() {
    const SECRET: &str = "hrs-test-s3cret-Zq9";
    let rt = runtime();
    let token_url = format!("http://127.0.0.1:{}/token", closed_port());
    let api = format!(
        "http://127.0.0.1:{}/api/v1/integration/health-records",
        closed_port()
    );
    let service = Service::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--token-url",
            &token_url,
            "--client-id",
            "m2m",
            "--api",
            &api,
        ],
        &[("TK_CLIENT_SECRET", SECRET)],
    );
    let before = call(&rt, &service, "/healthz");
    assert_eq!(before.status, 200, "{}", before.body);
    assert_eq!(before.json()["state"], "empty");

    let first = call(&rt, &service, "/records");
    let json = assert_short_json_error(&first, 503, "token_unavailable", SECRET);
    eprintln!("first /records: {json}");
    // While the client backs off (1 s after the first failure, less up to
    // 20 % jitter, then doubling), calls fail at once with `Retry-After`. A
    // call that lands just after a backoff ended tries again and fails
    // without it: a few calls, each refused in a millisecond, find one.
    let mut with_retry_after = None;
    for _ in 0..5 {
        let answer = call(&rt, &service, "/records");
        assert_short_json_error(&answer, 503, "token_unavailable", SECRET);
        if answer.headers.contains_key("retry-after") {
            with_retry_after = Some(answer);
            break;
        }
    }
    let second = with_retry_after.expect("a 503 with Retry-After while backing off");
    eprintln!("during the backoff: {}", second.body);
    let retry_after: u64 = second.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert!(second.json()["detail"]
        .as_str()
        .unwrap()
        .contains("backing off"));

    let health = call(&rt, &service, "/healthz");
    assert_eq!(health.status, 503, "{}", health.body);
    assert_clean(&health.body, SECRET);
    let health = health.json();
    assert_eq!(health["status"], "unavailable", "{health}");
    // `backing_off`; or, had the backoff just ended, `empty` with the
    // failure on record: 503 `unavailable` either way.
    let state = health["state"].as_str().unwrap();
    assert!(["backing_off", "empty"].contains(&state), "{health}");
    assert_eq!(health["usable_for_ms"], Value::Null, "{health}");
    assert!(health["token_requests"].as_u64().unwrap() >= 1, "{health}");
    let message = health["last_error"]["message"]
        .as_str()
        .expect("last_error");
    assert!(!message.is_empty(), "{health}");
    assert!(
        health["last_error"]["ago_ms"].as_u64().is_some(),
        "{health}"
    );
    // With no more `/records`, the probe alone tries again once each
    // backoff is over (a readiness probe must not keep the service out of
    // rotation for ever): its token request count grows.
    let tried = health["token_requests"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut grew = false;
    while std::time::Instant::now() < deadline {
        let health = call(&rt, &service, "/healthz");
        assert_eq!(health.status, 503, "{}", health.body);
        if health.json()["token_requests"].as_u64().unwrap() > tried {
            grew = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(grew, "/healthz never started a new token request");
    assert_clean(&service.stderr(), SECRET);
}

/// Failures on the API's side are 502s with short JSON: a closed port, an
/// answer that is not JSON, one over 1 MiB. A JSON answer comes back as it
/// is, with the token attached on the way out (testkit's health-records API,
/// which `tokenctl serve` runs, checks it); and the bench's
/// `--fixed-authorization-env` sends its own header without asking for a
/// token.
#[test]
fn api_failures_are_502_and_answers_pass_through() {
    const SECRET: &str = "s3cret"; // testkit's client m2m
    let rt = runtime();
    let tokens = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let token_url = tokens.token_url();
    let start = |api: &str, extra: &[&str], env: &[(&str, &str)]| {
        let args = [
            &[
                "--listen",
                "127.0.0.1:0",
                "--token-url",
                &token_url,
                "--client-id",
                "m2m",
                "--api",
                api,
            ][..],
            extra,
        ]
        .concat();
        Service::start(&args, &[&[("TK_CLIENT_SECRET", SECRET)][..], env].concat())
    };

    // testkit's own API (what `tokenctl serve` runs): it accepts only the
    // tokens its token endpoint issued.
    let service = start(&tokens.health_records_url(), &[], &[]);
    let answer = call(&rt, &service, "/records");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["client_id"], "m2m", "{}", answer.body);
    assert!(answer.json()["records"].is_array(), "{}", answer.body);
    assert_eq!(tokens.token_requests(), 1);
    // A refusal that survives the middleware's one retry: the API's status,
    // not its body (an error page may hold what a caller must not see).
    tokens.push_api_fault(token_keeper_testkit::ApiFault::UnauthorizedOnce);
    tokens.push_api_fault(token_keeper_testkit::ApiFault::UnauthorizedOnce);
    let answer = call(&rt, &service, "/records");
    let json = assert_short_json_error(&answer, 401, "api_error", SECRET);
    assert_eq!(json["api_status"], 401, "{json}");
    assert_eq!(tokens.token_requests(), 2, "the retry's new token");

    let json_api = SplitApiServer::start(SplitApiConfig::default()).unwrap();
    let service = start(&format!("{}/records", json_api.base_url()), &[], &[]);
    let answer = call(&rt, &service, "/records");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body, r#"{"ok":true}"#);
    let sent = json_api
        .last_authorization()
        .flatten()
        .expect("Authorization");
    assert!(sent.starts_with("Bearer "), "{sent}");
    assert_eq!(
        tokens.token_requests(),
        3,
        "one per service process, and the refused one's replacement"
    );

    let fixed = start(
        &format!("{}/records", json_api.base_url()),
        &["--fixed-authorization-env", "TK_FIXED_AUTH"],
        &[("TK_FIXED_AUTH", "Bearer fixed-for-the-bench")],
    );
    assert!(
        fixed.startup_line.contains("bench mode A"),
        "{}",
        fixed.startup_line
    );
    assert!(!fixed.startup_line.contains("fixed-for-the-bench"));
    assert_eq!(call(&rt, &fixed, "/records").status, 200);
    assert_eq!(
        json_api.last_authorization().flatten().as_deref(),
        Some("Bearer fixed-for-the-bench")
    );
    assert_eq!(tokens.token_requests(), 3, "mode A asks for no token");

    let closed = start(&format!("http://127.0.0.1:{}/x", closed_port()), &[], &[]);
    let answer = call(&rt, &closed, "/records");
    assert_short_json_error(&answer, 502, "api_unreachable", SECRET);

    let html = SplitApiServer::start(SplitApiConfig {
        body: b"<html>maintenance</html>".to_vec(),
        ..SplitApiConfig::default()
    })
    .unwrap();
    let service = start(&format!("{}/x", html.base_url()), &[], &[]);
    let answer = call(&rt, &service, "/records");
    let json = assert_short_json_error(&answer, 502, "bad_api_answer", SECRET);
    assert_eq!(json["api_status"], 200, "{json}");

    let huge = SplitApiServer::start(SplitApiConfig {
        body: vec![b' '; 2 * 1024 * 1024],
        ..SplitApiConfig::default()
    })
    .unwrap();
    let service = start(&format!("{}/x", huge.base_url()), &[], &[]);
    let answer = call(&rt, &service, "/records");
    let json = assert_short_json_error(&answer, 502, "bad_api_answer", SECRET);
    assert!(json["detail"].as_str().unwrap().contains("1 MiB"), "{json}");

    let not_found = call(&rt, &service, "/nothing");
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.json()["error"], "not_found");
    // Another method on a route: JSON too, like every answer of the service.
    let (status, text) = rt.block_on(async {
        let answer = http_client()
            .post(service.url("/records"))
            .send()
            .await
            .unwrap();
        (answer.status(), answer.text().await.unwrap())
    });
    assert_eq!(status, 405);
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["error"], "method_not_allowed");
}

/// Bad settings exit 2 with one clear line naming the flag or variable;
/// `--help` exits 0 with the usage; a taken port exits 1.
#[test]
fn bad_flags_exit_2_with_a_clear_message() {
    let within = Duration::from_secs(30);
    let base = [
        "--listen",
        "127.0.0.1:0",
        "--token-url",
        "http://127.0.0.1:9/token",
        "--api",
        "http://127.0.0.1:9/api",
    ];
    let secret = [("TK_CLIENT_SECRET", "flag-test-s3cret")];
    // (flags, environment, what the one line on stderr must say)
    type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 5] = [
        (base.to_vec(), &secret, "--client-id ID is required"),
        (
            [
                &base[..],
                &["--client-id", "m2m", "--client-secret-env", "HRS_UNSET_VAR"],
            ]
            .concat(),
            &secret,
            "environment variable HRS_UNSET_VAR is not set",
        ),
        (
            [&base[..], &["--client-id", "m2m"]].concat(),
            &[],
            "TK_CLIENT_SECRET is not set",
        ),
        (
            [&base[..], &["--client-id", "m2m", "--frobnicate"]].concat(),
            &secret,
            "--frobnicate",
        ),
        (
            [
                &base[..],
                &["--client-id", "m2m", "--issuer", "http://127.0.0.1:9"],
            ]
            .concat(),
            &secret,
            "not both",
        ),
    ];
    for (args, env, expected) in cases {
        let output = run_to_exit(&args, env, within);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("flag-test-s3cret"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    let help = run_to_exit(&["--help"], &[], within);
    assert_eq!(help.status.code(), Some(0));
    let usage = String::from_utf8_lossy(&help.stdout);
    assert!(usage.contains("--client-secret-env VAR"), "{usage}");
    assert!(
        !usage.contains("fixed-authorization"),
        "a hidden flag: {usage}"
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let args = [&["--listen", &addr], &base[2..], &["--client-id", "m2m"]].concat();
    let output = run_to_exit(&args, &secret, within);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("--listen {addr}")), "{stderr}");
}

/// SIGTERM and SIGINT stop the service gracefully, with exit code 0,
/// promptly even with an idle keep-alive connection open.
#[test]
fn sigterm_and_sigint_stop_it_gracefully() {
    let rt = runtime();
    for signal in ["TERM", "INT"] {
        let mut service = Service::start(
            &[
                "--listen",
                "127.0.0.1:0",
                "--token-url",
                &format!("http://127.0.0.1:{}/token", closed_port()),
                "--client-id",
                "m2m",
                "--api",
                "http://127.0.0.1:9/api",
            ],
            &[("TK_CLIENT_SECRET", "x")],
        );
        // A keep-alive connection, idle once this answer is read.
        let client = http_client();
        let answer = rt.block_on(get(&client, &service.url("/healthz"))).unwrap();
        assert_eq!(answer.status, 200);
        service.signal(signal);
        let status = service.wait_exit(Duration::from_secs(10));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "SIG{signal}: {status:?}; stderr:\n{}",
            service.stderr()
        );
        assert!(
            service
                .stderr()
                .contains(&format!("SIG{signal}, shutting down")),
            "{}",
            service.stderr()
        );
        drop(client);
    }
}
