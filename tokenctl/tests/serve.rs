//! `tokenctl serve` as a developer runs it: the real binary in the
//! foreground on a loopback port, a service (here `tokenctl token` and plain
//! ureq requests) pointed at it.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

const SECRET: &str = "serve-secret-5b2c9e";
const API_PATH: &str = "/api/v1/integration/health-records";
/// The bound on every wait for the server (its start, its log lines).
const WAIT: Duration = Duration::from_secs(30);

fn tokenctl() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenctl"));
    command
        .env_remove("RUST_BACKTRACE")
        .env_remove("TK_CLIENT_SECRET");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A running `tokenctl serve`, killed when dropped (a failing test leaves no
/// server behind).
struct Serve {
    child: Child,
    /// The server's base URL, as printed.
    base: String,
    /// The four lines it printed on start.
    banner: Vec<String>,
    /// Its stderr, line by line.
    log: Receiver<String>,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Why a start failed: the port was taken between finding it and binding
/// it (try another), or anything else (fail the test).
enum Start {
    Running(Serve),
    PortTaken,
}

/// A port free a moment ago: bound on 127.0.0.1:0, then released.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port on 127.0.0.1")
        .port()
}

/// Starts `tokenctl serve --listen 127.0.0.1:<free port> <extra>` with
/// `env` set, retrying (a bounded number of times) when the port was taken
/// in the meantime.
fn serve(extra: &[&str], env: &[(&str, &str)]) -> Serve {
    for _ in 0..5 {
        let listen = format!("127.0.0.1:{}", free_port());
        match start(&listen, extra, env) {
            Start::Running(serve) => return serve,
            Start::PortTaken => continue,
        }
    }
    panic!("no free port in 5 attempts");
}

fn start(listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Start {
    let mut command = tokenctl();
    command
        .args(["serve", "--listen", listen])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn tokenctl serve");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = lines(stderr);
    let (tx, banner_lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut serve = Serve {
        child,
        base: format!("http://{listen}"),
        banner: Vec::new(),
        log,
    };
    let deadline = Instant::now() + WAIT;
    while serve.banner.len() < 4 {
        let left = deadline.saturating_duration_since(Instant::now());
        match banner_lines.recv_timeout(left) {
            Ok(line) => serve.banner.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => panic!("no banner within {WAIT:?}"),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stdout closed before the banner: the process is exiting.
                let status = serve.child.wait().unwrap();
                let mut err = String::new();
                let deadline = Instant::now() + WAIT;
                while let Ok(line) = serve
                    .log
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    err.push_str(&line);
                }
                if err.contains("cannot listen") && err.contains("in use") {
                    return Start::PortTaken;
                }
                panic!("tokenctl serve exited ({status}) before listening: {err}");
            }
        }
    }
    Start::Running(serve)
}

/// The lines of a child's stderr, as they come.
fn lines(stderr: ChildStderr) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

impl Serve {
    /// The next stderr line (bounded wait).
    fn next_log_line(&self) -> String {
        self.log
            .recv_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no log line within {WAIT:?}: {e}"))
    }

    /// Stops the server and returns the rest of its stderr.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = String::new();
        // The reader thread ends at EOF, which the kill brings.
        let deadline = Instant::now() + WAIT;
        while let Ok(line) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            rest.push_str(&line);
            rest.push('\n');
        }
        rest
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(WAIT))
        .build()
        .into()
}

/// `GET` the API with this `Authorization`: status, `WWW-Authenticate`,
/// `Content-Type` and body.
fn get_api(base: &str, authorization: Option<&str>) -> (u16, String, String, String) {
    let mut request = agent().get(format!("{base}{API_PATH}"));
    if let Some(value) = authorization {
        request = request.header("Authorization", value);
    }
    let mut response = request.call().expect("GET the API");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (challenge, content_type) = (header("www-authenticate"), header("content-type"));
    let body = response.body_mut().read_to_string().unwrap_or_default();
    (response.status().as_u16(), challenge, content_type, body)
}

/// `tokenctl token` against the server, with the secret in `TK_TEST_SECRET`.
fn fetch_token(base: &str, client_id: &str, secret: &str, extra: &[&str]) -> Output {
    tokenctl()
        .args([
            "token",
            "--token-url",
            &format!("{base}/token"),
            "--client-id",
            client_id,
            "--client-secret-env",
            "TK_TEST_SECRET",
            "--proxy",
            "none",
        ])
        .args(extra)
        .env("TK_TEST_SECRET", secret)
        .output()
        .unwrap()
}

#[test]
fn serve_issues_tokens_and_answers_the_health_records_api() {
    let serve = serve(&[], &[("TK_CLIENT_SECRET", SECRET)]);
    let base = &serve.base;
    assert_eq!(
        serve.banner,
        [
            format!(
                "tokenctl serve: local token server on {base} (development only; tokens last 300 s)"
            ),
            format!("  token endpoint  {base}/token"),
            format!("  protected API   {base}{API_PATH}"),
            "  client id       m2m  (secret from $TK_CLIENT_SECRET)".to_owned(),
        ]
    );

    // A token for the configured client, then the API with it: 200 and JSON.
    let out = fetch_token(base, "m2m", SECRET, &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let token: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(token["token_type"], "Bearer");
    // The client's usable life: the server's 300 s less its refresh margin.
    let expires_in = token["expires_in"].as_u64().unwrap();
    assert!((200..=300).contains(&expires_in), "{expires_in}");
    let access_token = token["access_token"].as_str().unwrap().to_owned();
    assert_eq!(serve.next_log_line(), "POST /token 200");

    let (status, _, content_type, body) = get_api(base, Some(&format!("Bearer {access_token}")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(content_type, "application/json");
    let records: serde_json::Value = serde_json::from_str(&body).expect("the API answers JSON");
    assert_eq!(records["client_id"], "m2m");
    assert!(!records["records"].as_array().unwrap().is_empty(), "{body}");
    assert_eq!(serve.next_log_line(), format!("GET {API_PATH} 200"));

    // No token, or one the server never issued: 401 with a challenge.
    let (status, challenge, _, _) = get_api(base, None);
    assert_eq!(status, 401);
    assert_eq!(challenge, r#"Bearer error="invalid_token""#);
    assert_eq!(
        serve.next_log_line(),
        format!("GET {API_PATH} 401 invalid_token (unknown token)")
    );
    let (status, challenge, _, _) = get_api(base, Some("Bearer lt-0-forged"));
    assert_eq!(status, 401);
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    serve.next_log_line();

    // A DPoP-bound token through the managed client: proof at the token
    // endpoint and at the API.
    let out = tokenctl()
        .args([
            "call",
            &format!("{base}{API_PATH}"),
            "--token-url",
            &format!("{base}/token"),
            "--client-id",
            "m2m",
            "--client-secret-env",
            "TK_TEST_SECRET",
            "--proxy",
            "none",
            "--dpop",
            "--requests",
            "2",
        ])
        .env("TK_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(serve.next_log_line(), "POST /token 200 DPoP-bound");
    assert_eq!(serve.next_log_line(), format!("GET {API_PATH} 200"));
    assert_eq!(serve.next_log_line(), format!("GET {API_PATH} 200"));

    let rest = serve.stop();
    assert!(
        !rest.contains(SECRET) && !rest.contains(&access_token),
        "{rest}"
    );
}

#[test]
fn serve_refuses_a_wrong_secret_and_the_testkit_default_client() {
    let serve = serve(
        &[
            "--client-id",
            "records-svc",
            "--client-secret-env",
            "MY_SECRET",
            "--ttl",
            "60",
        ],
        &[("MY_SECRET", SECRET)],
    );
    assert_eq!(
        serve.banner[3],
        "  client id       records-svc  (secret from $MY_SECRET)"
    );
    assert!(
        serve.banner[0].ends_with("tokens last 60 s)"),
        "{}",
        serve.banner[0]
    );
    assert!(!serve.banner.concat().contains(SECRET));
    let base = serve.base.clone();

    // tokenctl token: refused by the server (exit 3), invalid_client.
    for (client_id, secret) in [
        ("records-svc", "wrong-secret"),
        ("m2m", "s3cret"), // the testkit's default client is not accepted
        ("m2m", SECRET),
    ] {
        let out = fetch_token(&base, client_id, secret, &[]);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{client_id}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("invalid_client"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(serve.next_log_line(), "POST /token 401 invalid_client");
    }

    // Plain token requests (client_secret_post): a wrong secret is 401
    // invalid_client; the right one gets the lifetime asked for.
    let token_request = |secret: &str| {
        let mut response = agent()
            .post(format!("{base}/token"))
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(format!(
                "grant_type=client_credentials&client_id=records-svc&client_secret={secret}"
            ))
            .unwrap();
        let body = response.body_mut().read_to_string().unwrap();
        let value: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        (response.status().as_u16(), value)
    };
    let (status, error) = token_request("nope");
    assert_eq!(status, 401);
    assert_eq!(error["error"], "invalid_client");
    assert_eq!(serve.next_log_line(), "POST /token 401 invalid_client");
    let (status, token) = token_request(SECRET);
    assert_eq!(status, 200, "{token}");
    assert_eq!(token["expires_in"].as_u64(), Some(60));
    assert_eq!(serve.next_log_line(), "POST /token 200");
    let access_token = token["access_token"].as_str().unwrap();
    let (status, _, _, body) = get_api(&base, Some(&format!("Bearer {access_token}")));
    assert_eq!(status, 200);
    let records: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(records["client_id"], "records-svc");

    let rest = serve.stop();
    assert!(!rest.contains(SECRET), "{rest}");
}

/// Runs `tokenctl serve` expecting it to exit at once (a usage error): its
/// output, after a bounded wait; a server that started anyway is killed.
fn serve_fails(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut child = tokenctl()
        .arg("serve")
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Both pipes read to their end, which comes when the process exits.
    let out = read_to_end(child.stdout.take().unwrap());
    let err = read_to_end(child.stderr.take().unwrap());
    let deadline = Instant::now() + WAIT;
    let wait = |rx: &Receiver<Vec<u8>>| {
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
    };
    let (Ok(out), Ok(err)) = (wait(&out), wait(&err)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tokenctl serve {args:?} did not exit within {WAIT:?}");
    };
    let status = child.wait().unwrap();
    Output {
        status,
        stdout: out,
        stderr: err,
    }
}

/// Everything `pipe` gives until its end, sent once it ends.
fn read_to_end(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(bytes);
    });
    rx
}

fn assert_usage_error(out: &Output, expected: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.starts_with("tokenctl: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(expected), "{expected:?} in {err}");
    assert!(!err.contains(SECRET), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}

#[test]
fn serve_without_its_secret_exits_2() {
    let port = free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let out = serve_fails(&["--listen", &listen], &[]);
    assert_usage_error(&out, "TK_CLIENT_SECRET is not set");
    let out = serve_fails(&["--listen", &listen], &[("TK_CLIENT_SECRET", "")]);
    assert_usage_error(&out, "TK_CLIENT_SECRET is empty");
    let out = serve_fails(
        &["--listen", &listen, "--client-secret-env", "OTHER_SECRET"],
        &[("TK_CLIENT_SECRET", SECRET)],
    );
    assert_usage_error(&out, "OTHER_SECRET is not set");
}

#[test]
fn serve_listens_on_loopback_only() {
    for listen in ["0.0.0.0:8443", "[::]:8443", "192.0.2.10:8443"] {
        let out = serve_fails(&["--listen", listen], &[("TK_CLIENT_SECRET", SECRET)]);
        assert_usage_error(&out, "not a loopback address");
    }
    for (args, expected) in [
        (&["--ttl", "0"][..], "--ttl"),
        (&["--ttl", "100000"][..], "--ttl"),
        (&["--listen", "nowhere"][..], "not an address"),
        (
            &["--client-secret", SECRET][..],
            "environment variable only",
        ),
    ] {
        let out = serve_fails(args, &[("TK_CLIENT_SECRET", SECRET)]);
        assert_usage_error(&out, expected);
    }
}
