//! The oidc-provider fixture: panva's `oidc-provider` (npm, 9.x) as a real
//! authorization server, with a protected API that verifies its JWT access
//! tokens through the provider's JWKS and checks DPoP proofs with its own
//! rotating nonce. Both are run by `tests/interop/server.mjs` (see
//! `tests/interop/README.md`); this module starts it as a process and reads
//! what it prints.
//!
//! Used by `tests/tests/interop_oidc_provider.rs` and by the example
//! service's tests (`examples/health-records-service/tests/service.rs`).
//!
//! Needs `npm ci` in `tests/interop` (and Node.js 20 or later). Without
//! `tests/interop/node_modules` a test should skip, unless
//! `TOKEN_KEEPER_INTEROP=required` (as in CI), where it fails: that is what
//! [`installed`] decides. `NODE` overrides the node binary.
//!
//! The server prints one JSON line when ready (`issuer`, `api`, `resource`,
//! `token_ttl`, `clients`); everything else (the reason behind every
//! refusal) goes to stderr, which [`Fixture::log`] keeps. It serves its
//! counters as JSON at `GET {api}/stats` ([`Fixture::stats`]), and exits
//! when its stdin closes (dropping the [`Fixture`]) or after
//! [`Options::time_limit`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The directory of `server.mjs` (`tests/interop` in the workspace).
pub fn interop_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ is inside the workspace")
        .join("tests")
        .join("interop")
}

/// Whether the fixture is installed; `false` means "skip", which is allowed
/// only when `TOKEN_KEEPER_INTEROP` is not `required` (then this panics,
/// failing the test). A skip is reported on stderr, past the test harness's
/// capture, naming `test`.
pub fn installed(test: &str) -> bool {
    if interop_dir()
        .join("node_modules")
        .join("oidc-provider")
        .is_dir()
    {
        return true;
    }
    let required = std::env::var("TOKEN_KEEPER_INTEROP").is_ok_and(|v| v == "required");
    assert!(
        !required,
        "TOKEN_KEEPER_INTEROP=required but tests/interop/node_modules is missing: \
         run `npm ci` in tests/interop first"
    );
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: oidc-provider is not installed (run `npm ci` in tests/interop; \
         set TOKEN_KEEPER_INTEROP=required to make this a failure)"
    );
    false
}

/// How the fixture is started (its environment variables).
#[derive(Clone, Debug)]
pub struct Options {
    /// The secret of the `client_secret_basic` / `_post` clients (`basic`,
    /// `post` and their `-dpop` twins): `INTEROP_CLIENT_SECRET`.
    pub client_secret: String,
    /// `private_key_jwt` clients, a JSON object of client id → public JWK
    /// with its `alg` (each gets a `-dpop` twin): `INTEROP_JWT_CLIENTS`.
    pub jwt_clients: Value,
    /// The access tokens' lifetime, whole seconds: `INTEROP_TOKEN_TTL_S`.
    pub token_ttl: Duration,
    /// How often the API rotates its DPoP nonce, whole seconds:
    /// `INTEROP_API_NONCE_S`.
    pub api_nonce_every: Duration,
    /// The most the process lives, whole seconds: `INTEROP_TIME_LIMIT_S`.
    pub time_limit: Duration,
    /// The longest wait for the ready line.
    pub ready_within: Duration,
}

/// The fixture's own default client secret; it needs the RFC 6749 §2.3.1
/// form-urlencoding (space, `:`, `+`, `/`, `%`, `&`, `=`).
pub const DEFAULT_SECRET: &str = "interop s3cret: a+b/c%d&e=f";

impl Default for Options {
    fn default() -> Self {
        Options {
            client_secret: DEFAULT_SECRET.to_owned(),
            jwt_clients: Value::Object(Default::default()),
            token_ttl: Duration::from_secs(10),
            api_nonce_every: Duration::from_secs(4),
            time_limit: Duration::from_secs(300),
            ready_within: Duration::from_secs(30),
        }
    }
}

/// A running `server.mjs`: the authorization server and the protected API.
/// Dropping it closes the server's stdin, which ends it (killed if it
/// lingers past 5 s).
pub struct Fixture {
    child: Child,
    stdin: Option<ChildStdin>,
    /// The issuer (`http://127.0.0.1:PORT`); its token endpoint is `{issuer}/token`.
    pub issuer: String,
    /// The API's base URL (`http://127.0.0.1:PORT`): `/data` and
    /// `/api/v1/integration/health-records` answer alike, `/stats` counts.
    pub api: String,
    /// The API's RFC 8707 resource indicator (`{api}/`), the `aud` of its tokens.
    pub resource: String,
    log: Arc<Mutex<String>>,
}

impl Fixture {
    /// Starts the server with `options` and waits for its ready line;
    /// panics (with the server's log) if it gives none in time.
    pub fn start(options: &Options) -> Fixture {
        let node = std::env::var("NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(&node)
            .arg("server.mjs")
            .current_dir(interop_dir())
            .env("INTEROP_CLIENT_SECRET", &options.client_secret)
            .env("INTEROP_JWT_CLIENTS", options.jwt_clients.to_string())
            .env(
                "INTEROP_TOKEN_TTL_S",
                options.token_ttl.as_secs().to_string(),
            )
            .env(
                "INTEROP_API_NONCE_S",
                options.api_nonce_every.as_secs().to_string(),
            )
            .env(
                "INTEROP_TIME_LIMIT_S",
                options.time_limit.as_secs().to_string(),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting `{node} server.mjs` (Node.js 20+ needed): {e}"));
        let stdin = child.stdin.take();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[server] {line}");
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = ready_tx.send(lines.next());
            for _ in lines {}
        });
        let mut fixture = Fixture {
            child,
            stdin,
            issuer: String::new(),
            api: String::new(),
            resource: String::new(),
            log,
        };
        let line = match ready_rx.recv_timeout(options.ready_within) {
            Ok(Some(Ok(line))) => line,
            other => {
                // The server has stopped or hangs: end it, then its stderr
                // reader has the whole log (bounded wait for the reader).
                fixture.stop();
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline && fixture.log().is_empty() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                panic!(
                    "server.mjs gave no ready line within {:?} ({other:?}); its log:\n{}",
                    options.ready_within,
                    fixture.log()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ready line {line:?} is not JSON: {e}"));
        let field = |name: &str| {
            ready[name]
                .as_str()
                .unwrap_or_else(|| panic!("ready line {line:?} has no {name}"))
                .to_owned()
        };
        fixture.issuer = field("issuer");
        fixture.api = field("api");
        fixture.resource = field("resource");
        fixture
    }

    /// Everything the server wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `{api}/data?call=N`. The query must not end up in a DPoP proof's
    /// `htu` (the API refuses it).
    pub fn data_url(&self, call: u64) -> String {
        format!("{}/data?call={call}", self.api)
    }

    /// The seed's path on the API: `{api}/api/v1/integration/health-records`.
    pub fn health_records_url(&self) -> String {
        format!("{}/api/v1/integration/health-records", self.api)
    }

    /// The server's counters (`GET {api}/stats`): per client id, `token`
    /// (`requests`, `issued`, `issued_dpop`, `use_dpop_nonce`, `errors`,
    /// `with_dpop_proof`, `auth`) and `api` (`requests`, `ok`, `ok_dpop`,
    /// `ok_bearer`, `use_dpop_nonce`, `rejected`, `distinct_tokens`), and
    /// the last `rejections` with their reasons. Panics if they cannot be read.
    pub fn stats(&self) -> Value {
        let (status, body) = http_get(&format!("{}/stats", self.api), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("GET {}/stats: {e}", self.api));
        assert_eq!(status, 200, "GET /stats: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("stats are not JSON ({e}): {body}"))
    }

    /// Ends the server now (closes its stdin, then kills it if it lingers
    /// past 5 s) and waits for it. Dropping the fixture does the same.
    pub fn stop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A plain `GET` of an `http://host:port/path` URL with `Connection:
/// close`, bounded by `timeout` for connecting and for each read and write:
/// the status and the body (as text; the fixture answers JSON). Enough for
/// the fixture's `/stats`, with nothing but `std`.
pub fn http_get(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .to_socket_addrs()
        .map_err(|e| format!("{authority}: {e}"))?
        .next()
        .ok_or_else(|| format!("{authority}: no address"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\nAccept: application/json\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut answer)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of head in {} bytes", answer.len()))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {head:?}"))?;
    let chunked = head.lines().any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// A chunked body, de-chunked (the fixture sends `Content-Length`; this is
/// for other servers).
fn dechunk(mut body: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body
            .split_once("\r\n")
            .ok_or("a chunk size line without its end")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("a chunk longer than the body")?;
        out.push_str(chunk);
        body = rest
            .get(size..)
            .and_then(|r| r.strip_prefix("\r\n"))
            .ok_or("a chunk without its CRLF")?;
    }
}
