//! `tokenctl` as a user runs it: the real binary against the local server.

use std::process::{Command, Output};

use token_keeper_testkit::{ApiFault, LocalAuthServer, ServerConfig, TokenFault};

const SECRET: &str = "cli-secret-7d1e";

fn server() -> LocalAuthServer {
    LocalAuthServer::start(ServerConfig {
        clients: vec![("m2m".into(), SECRET.into())],
        ttl_secs: 3600,
        scope: Some("api".into()),
        ..ServerConfig::default()
    })
    .unwrap()
}

const ADAPTERS: [&str; 2] = ["ureq", "surf"];

fn tokenctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenctl"))
        .args(args)
        .env("TK_TEST_SECRET", SECRET)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

/// Checks the one-line error convention: a single line, no panic text, no secret.
fn assert_clean_error(o: &Output, code: i32) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("tokenctl: "), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    assert!(!err.contains(SECRET), "{err}");
}

#[test]
fn token_prints_the_access_token_on_both_adapters() {
    let s = server();
    for (i, adapter) in ADAPTERS.into_iter().enumerate() {
        let out = tokenctl(&[
            "token",
            "--token-url",
            &s.token_url(),
            "--client-id",
            "m2m",
            "--client-secret-env",
            "TK_TEST_SECRET",
            "--adapter",
            adapter,
        ]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
        let token = stdout(&out);
        assert!(
            token.trim().starts_with(&format!("lt-{i}-")),
            "{adapter}: {token}"
        );
        assert_eq!(s.tokens_issued(), i as u64 + 1);
    }
}

#[test]
fn token_json_has_the_documented_keys() {
    let s = server();
    let out = tokenctl(&[
        "token",
        "--token-url",
        &s.token_url(),
        "--client-id",
        "m2m",
        "--client-secret",
        SECRET,
        "--auth",
        "post",
        "--scope",
        "api",
        "--param",
        "tenant=acme",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let object = value.as_object().unwrap();
    let mut keys: Vec<_> = object.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["access_token", "expires_in", "scope", "token_type"]);
    assert_eq!(object["token_type"], "Bearer");
    assert_eq!(object["scope"], "api");
    assert!(object["expires_in"].as_u64().unwrap() > 3500);
    let recorded = s.last_token_request().unwrap();
    assert_eq!(recorded.field("client_secret"), Some(SECRET));
    assert_eq!(recorded.field("tenant"), Some("acme"));
}

#[test]
fn issuer_discovery_finds_the_token_endpoint() {
    let s = server();
    for (i, adapter) in ADAPTERS.into_iter().enumerate() {
        let out = tokenctl(&[
            "token",
            "--issuer",
            &s.base_url(),
            "--client-id",
            "m2m",
            "--client-secret-env",
            "TK_TEST_SECRET",
            "--adapter",
            adapter,
        ]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
        assert_eq!(s.tokens_issued(), i as u64 + 1);
    }
}

#[test]
fn exit_codes_are_the_same_on_both_adapters() {
    let s = server();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}/token");
    // 2: usage.
    assert_clean_error(&tokenctl(&["token", "--client-id", "m2m"]), 2);
    assert_clean_error(&tokenctl(&["frobnicate"]), 2);
    for adapter in ADAPTERS {
        let with = |args: &[&str]| {
            let mut all = args.to_vec();
            all.extend(["--adapter", adapter]);
            tokenctl(&all)
        };
        assert_clean_error(
            &with(&[
                "token",
                "--token-url",
                &s.token_url(),
                "--client-id",
                "m2m",
                "--client-secret-env",
                "TK_UNSET_VAR_X",
            ]),
            2,
        );
        assert_clean_error(
            &with(&[
                "token",
                "--token-url",
                "http://example.com/t",
                "--client-id",
                "m2m",
                "--client-secret",
                "x",
            ]),
            2,
        );
        // 3: refused.
        let out = with(&[
            "token",
            "--token-url",
            &s.token_url(),
            "--client-id",
            "m2m",
            "--client-secret",
            "wrong",
        ]);
        assert_clean_error(&out, 3);
        assert!(stderr(&out).contains("invalid_client"), "{adapter}");
        // 4: transport (nothing listens on a port we just freed).
        assert_clean_error(
            &with(&[
                "token",
                "--token-url",
                &dead,
                "--client-id",
                "m2m",
                "--client-secret",
                SECRET,
            ]),
            4,
        );
        // 5: invalid response.
        s.push_token_fault(TokenFault::Body("<html>login</html>".into()));
        assert_clean_error(
            &with(&[
                "token",
                "--token-url",
                &s.token_url(),
                "--client-id",
                "m2m",
                "--client-secret",
                SECRET,
            ]),
            5,
        );
    }
}

#[test]
fn call_reports_the_documented_summary_on_both_adapters() {
    for adapter in ADAPTERS {
        let s = server();
        let api = format!("{}/things", s.api_url());
        let out = tokenctl(&[
            "call",
            &api,
            "--token-url",
            &s.token_url(),
            "--client-id",
            "m2m",
            "--client-secret-env",
            "TK_TEST_SECRET",
            "--requests",
            "40",
            "--concurrency",
            "4",
            "--json",
            "--adapter",
            adapter,
        ]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
        let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        let object = value.as_object().unwrap();
        let mut keys: Vec<_> = object.keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "failed",
                "p50_ms",
                "p99_ms",
                "requests",
                "succeeded",
                "token_requests"
            ]
        );
        assert_eq!(object["requests"], 40);
        assert_eq!(object["succeeded"], 40);
        assert_eq!(object["failed"], 0);
        assert_eq!(object["token_requests"], 1, "{adapter}");
        assert!(object["p99_ms"].as_f64().unwrap() >= object["p50_ms"].as_f64().unwrap());
        assert_eq!(s.api_requests(), 40);
    }
}

#[test]
fn call_exits_non_zero_unless_every_request_succeeded() {
    for adapter in ADAPTERS {
        let s = server();
        // Two 401s in a row: the retry fails too, so one request fails.
        s.push_api_fault(ApiFault::UnauthorizedOnce);
        s.push_api_fault(ApiFault::UnauthorizedOnce);
        let api = s.api_url();
        let out = tokenctl(&[
            "call",
            &api,
            "--token-url",
            &s.token_url(),
            "--client-id",
            "m2m",
            "--client-secret",
            SECRET,
            "--requests",
            "3",
            "--adapter",
            adapter,
        ]);
        assert_eq!(out.status.code(), Some(1), "{adapter}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("failed 1"),
            "{adapter}: {}",
            stdout(&out)
        );
    }
}

#[test]
fn demo_runs_and_explains_itself() {
    let out = tokenctl(&["demo", "--duration", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for word in [
        "caching",
        "single-flight",
        "refresh-ahead",
        "token requests",
    ] {
        assert!(text.contains(word), "{text}");
    }
}

#[test]
fn key_flags_fail_cleanly() {
    let s = server();
    // A key file that does not exist, or is not a key: a usage error naming the path, no panic.
    let out = tokenctl(&[
        "token",
        "--token-url",
        &s.token_url(),
        "--client-id",
        "m2m",
        "--auth",
        "private-key-jwt",
        "--private-key",
        "/nonexistent/key.pem",
    ]);
    assert_clean_error(&out, 2);
    assert!(
        stderr(&out).contains("/nonexistent/key.pem"),
        "{}",
        stderr(&out)
    );
    let out = tokenctl(&[
        "token",
        "--token-url",
        &s.token_url(),
        "--client-id",
        "m2m",
        "--client-secret",
        SECRET,
        "--dpop-key",
        "/etc/hostname",
    ]);
    assert_clean_error(&out, 2);
    let out = tokenctl(&[
        "token",
        "--token-url",
        &s.token_url(),
        "--client-id",
        "m2m",
        "--auth",
        "private-key-jwt",
        "--private-key",
        "/etc/hostname",
        "--alg",
        "HS256",
    ]);
    assert_clean_error(&out, 2);
}

#[test]
fn dpop_binds_tokens_and_calls_on_both_adapters() {
    for adapter in ADAPTERS {
        let s = server();
        let out = tokenctl(&[
            "token",
            "--token-url",
            &s.token_url(),
            "--client-id",
            "m2m",
            "--client-secret",
            SECRET,
            "--dpop",
            "--json",
            "--adapter",
            adapter,
        ]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
        let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(value["token_type"], "DPoP", "{adapter}");
        let recorded = s.last_token_request().unwrap();
        assert!(
            recorded
                .header("dpop")
                .is_some_and(|p| p.split('.').count() == 3),
            "a DPoP proof was sent"
        );
        // And API calls carry DPoP tokens with proofs the server accepts.
        let out = tokenctl(&[
            "call",
            &s.api_url(),
            "--token-url",
            &s.token_url(),
            "--client-id",
            "m2m",
            "--client-secret",
            SECRET,
            "--dpop",
            "--requests",
            "5",
            "--json",
            "--adapter",
            adapter,
        ]);
        assert!(
            out.status.success(),
            "{adapter}: {} {}",
            stdout(&out),
            stderr(&out)
        );
        let value: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
        assert_eq!(value["succeeded"], 5, "{adapter}");
    }
}

#[test]
fn private_key_jwt_from_a_pem_file_on_both_adapters() {
    use token_keeper::jose::Signer;
    let dir = std::env::temp_dir().join(format!("tokenctl-pkj-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("client.pem");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let key = token_keeper_common::keys::PrivateKey::from_file(&pem, None).unwrap();
    let s = LocalAuthServer::start(ServerConfig {
        jwt_clients: vec![("pkj".into(), key.public_jwk().clone())],
        ..ServerConfig::default()
    })
    .unwrap();
    for adapter in ADAPTERS {
        let out = tokenctl(&[
            "token",
            "--token-url",
            &s.token_url(),
            "--client-id",
            "pkj",
            "--auth",
            "private-key-jwt",
            "--private-key",
            pem.to_str().unwrap(),
            "--json",
            "--adapter",
            adapter,
        ]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
        let recorded = s.last_token_request().unwrap();
        assert_eq!(
            recorded.field("client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert!(recorded.field("client_secret").is_none());
    }
    // The wrong key is refused by the server: exit code 3, one line, no key material.
    let other = dir.join("other.pem");
    let made = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ED25519", "-out"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success());
    let out = tokenctl(&[
        "token",
        "--token-url",
        &s.token_url(),
        "--client-id",
        "pkj",
        "--auth",
        "private-key-jwt",
        "--private-key",
        other.to_str().unwrap(),
    ]);
    assert_clean_error(&out, 3);
    let _ = std::fs::remove_dir_all(&dir);
}
