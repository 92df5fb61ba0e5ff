//! `tokenctl` behind a corporate proxy and with a private CA, as a user runs
//! it: the environment's proxy variables never carry a loopback token
//! request (the secret would cross the network in a CONNECT tunnel); a remote
//! token endpoint goes through exactly one CONNECT; `--cacert` adds a CA,
//! `--tls-roots platform` uses the system store (here `SSL_CERT_FILE`).

use std::process::{Command, Output};

use token_keeper_testkit::recording_proxy::RecordingProxy;
use token_keeper_testkit::tls_front::TlsFront;
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

const SECRET: &str = "proxy-secret-5c2a";
const ADAPTERS: [&str; 2] = ["ureq", "surf"];
const PROXY_VARIABLES: [&str; 8] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn server() -> LocalAuthServer {
    LocalAuthServer::start(ServerConfig {
        clients: vec![("m2m".into(), SECRET.into())],
        ..ServerConfig::default()
    })
    .unwrap()
}

/// tokenctl with a clean proxy environment plus `env`.
fn tokenctl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenctl"));
    command
        .args(args)
        .env("TK_TEST_SECRET", SECRET)
        .env_remove("RUST_BACKTRACE")
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    for name in PROXY_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

fn token_args<'a>(token_url: &'a str, adapter: &'a str) -> Vec<&'a str> {
    vec![
        "token",
        "--token-url",
        token_url,
        "--client-id",
        "m2m",
        "--client-secret-env",
        "TK_TEST_SECRET",
        "--adapter",
        adapter,
    ]
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn loopback_token_requests_and_api_calls_ignore_every_proxy_variable() {
    let s = server();
    let proxy = RecordingProxy::start(Vec::new()).unwrap();
    let url = proxy.url();
    let env: Vec<(&str, &str)> = PROXY_VARIABLES[..6]
        .iter()
        .map(|name| (*name, url.as_str()))
        .collect();
    let by_name = format!("http://localhost:{}/token", s.addr().port());
    for adapter in ADAPTERS {
        for token_url in [s.token_url(), by_name.clone()] {
            let out = tokenctl(&token_args(&token_url, adapter), &env);
            assert!(out.status.success(), "{adapter}: {}", stderr(&out));
        }
        let (api, token_url) = (s.api_url(), s.token_url());
        let mut call = token_args(&token_url, adapter);
        call[0] = "call";
        call.insert(1, &api);
        let out = tokenctl(&call, &env);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
    }
    assert_eq!(
        proxy.requests(),
        Vec::new(),
        "the proxy saw loopback requests"
    );
}

#[test]
fn a_remote_token_endpoint_goes_through_one_connect_and_trusts_the_cacert() {
    let s = server();
    let front = TlsFront::start(s.addr()).unwrap();
    let proxy = RecordingProxy::start(vec![("idp.test:443".to_owned(), front.addr())]).unwrap();
    let ca = TlsFront::ca_pem_path();
    let ca = ca.to_str().unwrap();
    for (i, adapter) in ADAPTERS.into_iter().enumerate() {
        let mut args = token_args("https://idp.test/token", adapter);
        args.extend(["--cacert", ca]);
        let out = tokenctl(&args, &[("HTTPS_PROXY", &proxy.url())]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
        assert_eq!(proxy.connects().len(), i + 1, "{adapter}");
    }
    assert!(proxy.connects().iter().all(|c| c == "idp.test:443"));
    assert_eq!(s.token_requests(), 2);
}

#[test]
fn a_private_ca_needs_cacert_or_the_platform_store() {
    let s = server();
    let front = TlsFront::start(s.addr()).unwrap();
    let token_url = format!("{}/token", front.url());
    let ca = TlsFront::ca_pem_path();
    let ca = ca.to_str().unwrap();
    for adapter in ADAPTERS {
        let out = tokenctl(&token_args(&token_url, adapter), &[]);
        assert_eq!(out.status.code(), Some(4), "{adapter}: {}", stderr(&out));

        let mut with_ca = token_args(&token_url, adapter);
        with_ca.extend(["--cacert", ca]);
        let out = tokenctl(&with_ca, &[]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));

        // The OS store, pointed at the test CA the way OpenSSL tools are.
        let mut platform = token_args(&token_url, adapter);
        platform.extend(["--tls-roots", "platform"]);
        let out = tokenctl(&platform, &[("SSL_CERT_FILE", ca)]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
    }
    assert_eq!(s.token_requests(), 4);
}

#[test]
fn platform_roots_with_cacert_are_refused_on_ureq_with_a_reason() {
    let ca = TlsFront::ca_pem_path();
    let mut args = token_args("https://idp.test/token", "ureq");
    args.extend(["--tls-roots", "platform", "--cacert", ca.to_str().unwrap()]);
    let out = tokenctl(&args, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("operating system"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn proxy_flag_overrides_the_environment() {
    let s = server();
    let front = TlsFront::start(s.addr()).unwrap();
    let proxy = RecordingProxy::start(vec![("idp.test:443".to_owned(), front.addr())]).unwrap();
    let ca = TlsFront::ca_pem_path();
    let proxy_url = proxy.url();
    let mut args = token_args("https://idp.test/token", "surf");
    args.extend(["--cacert", ca.to_str().unwrap(), "--proxy", &proxy_url]);
    let out = tokenctl(&args, &[("HTTPS_PROXY", "socks5://127.0.0.1:9")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(proxy.connects(), vec!["idp.test:443".to_owned()]);
    let out = tokenctl(
        &[
            "token",
            "--token-url",
            "https://idp.test/token",
            "--client-id",
            "m2m",
            "--client-secret-env",
            "TK_TEST_SECRET",
            "--proxy",
            "socks5://127.0.0.1:9",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--proxy"), "{}", stderr(&out));
}

#[test]
fn call_trusts_the_cacert_for_the_api_too() {
    let s = server();
    let front = TlsFront::start(s.addr()).unwrap();
    let api = format!("{}/api", front.url());
    let ca = TlsFront::ca_pem_path();
    let token_url = s.token_url();
    for adapter in ADAPTERS {
        let mut args = token_args(&token_url, adapter);
        args[0] = "call";
        args.insert(1, &api);
        let out = tokenctl(&args, &[]);
        assert_eq!(out.status.code(), Some(4), "{adapter}: {}", stderr(&out));
        args.extend(["--cacert", ca.to_str().unwrap(), "--requests", "3"]);
        let out = tokenctl(&args, &[]);
        assert!(out.status.success(), "{adapter}: {}", stderr(&out));
    }
    assert_eq!(s.api_requests(), 6);
}

#[test]
fn call_on_surf_refuses_an_api_the_proxy_settings_would_tunnel() {
    let s = server();
    let token_url = s.token_url();
    let mut args = token_args(&token_url, "surf");
    args[0] = "call";
    args.insert(1, "https://idp.test/api");
    let out = tokenctl(&args, &[("HTTPS_PROXY", "http://127.0.0.1:9")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--adapter ureq"), "{}", stderr(&out));
    assert_eq!(s.api_requests(), 0);
}
