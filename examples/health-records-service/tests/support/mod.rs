//! Running the built `health-records-service` binary as a process, and
//! calling it over loopback HTTP: shared by the tests (`tests/service.rs`)
//! and the load bench (`benches/load_ab.rs`, which includes this file).
//!
//! Every wait is bounded by a deadline; nothing sleeps to synchronise: the
//! service is ready when its startup line (with the bound address) is out,
//! and it has exited when `try_wait` says so.

#![allow(dead_code)] // each includer uses its own part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The binary under test, built by cargo for this package's tests and benches.
pub const BIN: &str = env!("CARGO_BIN_EXE_health-records-service");

/// The longest wait for the startup line (discovery included).
pub const READY_WITHIN: Duration = Duration::from_secs(30);

/// What the startup line says before the address.
const LISTENING: &str = "listening on http://";

/// A running service. Dropping it kills the process (if still running).
pub struct Service {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://ADDR`.
    pub base: String,
    /// The startup line.
    pub startup_line: String,
    stderr: Arc<Mutex<String>>,
}

/// The command for the binary with `args` and only the environment `env`
/// (no variable of the test's own environment, `TK_*` and proxies included).
fn command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_clear();
    for (name, value) in env {
        command.env(name, value);
    }
    command
}

impl Service {
    /// Starts the service and waits for its startup line; panics with its
    /// stderr if it exits first or gives none within [`READY_WITHIN`].
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Service {
        let mut child = command(args, env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting health-records-service");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        let pipe = child.stderr.take().expect("piped stderr");
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut ready = Some(ready_tx);
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                {
                    let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                    text.push_str(&line);
                    text.push('\n');
                }
                if line.contains(LISTENING) {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(line);
                    }
                }
            }
            // The pipe closed: the process is gone (a dropped sender tells).
        });
        let line = match ready_rx.recv_timeout(READY_WITHIN) {
            Ok(line) => line,
            Err(why) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "health-records-service {args:?} gave no startup line ({why:?}; {status:?}); \
                     stderr:\n{}",
                    stderr.lock().unwrap_or_else(|e| e.into_inner())
                );
            }
        };
        let addr: SocketAddr = line
            .split(LISTENING)
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("no address in the startup line {line:?}"));
        Service {
            child,
            addr,
            base: format!("http://{addr}"),
            startup_line: line,
            stderr,
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the service wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `INT`) with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {}: {status}", self.pid());
    }

    /// The exit status, once the process has exited within `within`
    /// (polled every 10 ms); `None` if it is still running then.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the exit status within 15 s (killed and `None` past it).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        self.signal("TERM");
        let status = self.wait_exit(Duration::from_secs(15));
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary to its end (killed past `within`): for the flag errors.
pub fn run_to_exit(args: &[&str], env: &[(&str, &str)], within: Duration) -> Output {
    let mut child = command(args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting health-records-service");
    let deadline = Instant::now() + within;
    while child.try_wait().expect("status").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().expect("output")
}

/// A loopback port nothing listens on (bound, then released; nothing else
/// on this machine is expected to take it within a test).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A reqwest client for loopback calls: keep-alive, no proxy, bounded.
pub fn http_client() -> reqwest::Client {
    token_keeper_reqwest::TokenMiddleware::client_builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// One answer: status, headers, body as text.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// `GET url` with `client`.
pub async fn get(client: &reqwest::Client, url: &str) -> Result<Answer, String> {
    let response = client.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.map_err(|e| e.to_string())?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}
