//! [`RedisServer`]: a real `redis-server` (from `PATH`) on a free
//! `127.0.0.1` port, for the shared-store tests, with the outage controls
//! they need ([`RedisServer::kill`], [`RedisServer::restart`]).
//!
//! Tests that need it call [`RedisServer::start_for_test`]: without
//! `redis-server` on `PATH` they are skipped with a clear line, unless
//! `TOKEN_KEEPER_REDIS=required` is set (as `scripts/test.sh` does), when
//! they fail instead.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer `PING` after it is spawned.
const STARTUP_BOUND: Duration = Duration::from_secs(5);

/// Whether `redis-server` can be run from `PATH`.
pub fn redis_server_available() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Whether the environment requires the Redis tests to run
/// (`TOKEN_KEEPER_REDIS=required`).
pub fn redis_required() -> bool {
    std::env::var("TOKEN_KEEPER_REDIS").is_ok_and(|value| value == "required")
}

/// A `redis-server` child process listening on `127.0.0.1`, with no
/// persistence (`--save "" --appendonly no`). Killed when dropped.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    password: Option<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits (at most 5 s) until it
    /// answers `PING`.
    pub fn start() -> io::Result<RedisServer> {
        RedisServer::launch(None)
    }

    /// Starts a server that requires `password` (`--requirepass`).
    pub fn start_with_password(password: &str) -> io::Result<RedisServer> {
        RedisServer::launch(Some(password.to_owned()))
    }

    /// For a test: a started server, or `None` (after printing
    /// `skipped: redis-server not installed`) when `redis-server` is not on
    /// `PATH`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is missing and `TOKEN_KEEPER_REDIS=required`, or if
    /// it is installed but does not start.
    pub fn start_for_test(test: &str) -> Option<RedisServer> {
        RedisServer::for_test(test, None)
    }

    /// [`RedisServer::start_for_test`] with `--requirepass password`.
    pub fn start_with_password_for_test(test: &str, password: &str) -> Option<RedisServer> {
        RedisServer::for_test(test, Some(password))
    }

    fn for_test(test: &str, password: Option<&str>) -> Option<RedisServer> {
        if !redis_server_available() {
            if redis_required() {
                panic!(
                    "{test}: TOKEN_KEEPER_REDIS=required but redis-server is not on PATH \
                     (install it: apt-get install -y redis-server)"
                );
            }
            // Straight to stderr, past the test harness's capture, so the skip is seen.
            let _ = writeln!(
                io::stderr(),
                "{test}: skipped: redis-server not installed \
                 (set TOKEN_KEEPER_REDIS=required to make this a failure)"
            );
            return None;
        }
        let started = match password {
            Some(password) => RedisServer::start_with_password(password),
            None => RedisServer::start(),
        };
        match started {
            Ok(server) => Some(server),
            Err(error) => panic!("{test}: redis-server is installed but did not start: {error}"),
        }
    }

    fn launch(password: Option<String>) -> io::Result<RedisServer> {
        // A free port can be taken between the probe and the spawn: a few tries.
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            let mut server = RedisServer {
                child: None,
                port,
                password: password.clone(),
            };
            match server.spawn() {
                Ok(()) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| io::Error::other("redis-server did not start on a free port")))
    }

    /// Spawns the process on `self.port` and waits for `PING`.
    fn spawn(&mut self) -> io::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "no"])
            .args(["--dir", &std::env::temp_dir().to_string_lossy()]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + STARTUP_BOUND;
        loop {
            if let Some(status) = child.try_wait()? {
                return Err(io::Error::other(format!(
                    "redis-server exited at startup ({status})"
                )));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "redis-server did not answer PING within 5 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:PORT/0`, with the password if there is one.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}/0", self.port),
            None => format!("redis://127.0.0.1:{}/0", self.port),
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running (not killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server at once (SIGKILL) and reaps it: an outage.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server if it runs, then starts a new one on the same port
    /// (empty: nothing is persisted) and waits for it as
    /// [`RedisServer::start`] does.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        // The port was just freed: retry briefly if the new process cannot
        // bind it yet.
        let deadline = Instant::now() + STARTUP_BOUND;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Whether something on `port` answers an inline `PING` like Redis (`+PONG`,
/// or an error such as `-NOAUTH` when a password is required).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let timeout = Some(Duration::from_millis(500));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 64];
    match stream.read(&mut reply) {
        Ok(n) if n > 0 => reply[0] == b'+' || reply[0] == b'-',
        _ => false,
    }
}
