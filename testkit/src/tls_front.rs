//! A TLS-terminating front for plain-HTTP test servers.
//!
//! [`TlsFront`] listens on `127.0.0.1` on an ephemeral port and presents the
//! test certificate in `testkit/fixtures/tls/` (a certificate for `idp.test`,
//! `localhost` and `127.0.0.1`, signed by a test CA; see that folder's
//! README). Each accepted connection gets a thread of its own that completes
//! the TLS handshake (counting it as completed or failed), opens a plain TCP
//! connection to the backend given at start (typically a
//! [`LocalAuthServer`](crate::LocalAuthServer)'s [`addr`](crate::LocalAuthServer::addr)),
//! and relays bytes both ways until either side closes. So a test gets an
//! `https://` token endpoint whose certificate only [`TlsFront::ca_der`] (or
//! the file at [`TlsFront::ca_pem_path`]) makes trusted.
//!
//! rustls 0.23 with the ring provider, TLS 1.2 and 1.3. Everything is bounded:
//! handshakes must finish within 10 s, a relayed connection lives at most
//! 60 s and may sit idle 30 s at most, at most 256 connections are served at
//! once, and dropping the front shuts every connection down and joins every
//! thread.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::relay::{self, lock, Acceptor, Connection, CHUNK, CONNECTION_DEADLINE, IDLE_LIMIT};

/// The test CA's certificate, DER (`testkit/fixtures/tls/test-ca.der`).
const CA_DER: &[u8] = include_bytes!("../fixtures/tls/test-ca.der");
/// The test CA's certificate, PEM (`testkit/fixtures/tls/test-ca.pem`).
const CA_PEM: &str = include_str!("../fixtures/tls/test-ca.pem");
/// The server certificate the front presents.
const SERVER_CERT_DER: &[u8] = include_bytes!("../fixtures/tls/server-cert.der");
/// Its private key, PKCS#8.
const SERVER_KEY_DER: &[u8] = include_bytes!("../fixtures/tls/server-key.pk8.der");

/// The DNS name the fixture certificate is for (it also names `localhost`
/// and the address `127.0.0.1`). Clients that connect to the front's port
/// under this name (a proxy route, or a resolver override) verify it.
pub const SERVER_NAME: &str = "idp.test";

/// How long a client has to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// A running TLS front: `https://127.0.0.1:PORT` (or `idp.test`, `localhost`)
/// in front of a plain-TCP backend. Stops, closing its connections and
/// joining its threads, when dropped.
pub struct TlsFront {
    acceptor: Acceptor,
    shared: Arc<Shared>,
}

/// Handshake outcomes.
#[derive(Default)]
struct Counts {
    completed: u64,
    failed: u64,
}

/// What the connection threads and the handle share.
struct Shared {
    backend: SocketAddr,
    config: Arc<ServerConfig>,
    counts: Mutex<Counts>,
    progress: Condvar,
}

impl Shared {
    fn count(&self, completed: bool) {
        let mut counts = lock(&self.counts);
        if completed {
            counts.completed += 1;
        } else {
            counts.failed += 1;
        }
        self.progress.notify_all();
    }
}

impl TlsFront {
    /// Starts a front on `127.0.0.1` with an ephemeral port that relays each
    /// connection, once its TLS handshake completed, to `backend` over plain
    /// TCP (a new backend connection per client connection).
    pub fn start(backend: SocketAddr) -> io::Result<TlsFront> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(SERVER_CERT_DER)],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(SERVER_KEY_DER)),
            )
            .map_err(io::Error::other)?;
        let shared = Arc::new(Shared {
            backend,
            config: Arc::new(config),
            counts: Mutex::new(Counts::default()),
            progress: Condvar::new(),
        });
        let acceptor = Acceptor::start(
            "tls-front",
            MAX_CONNECTIONS,
            Arc::clone(&shared),
            serve_connection,
        )?;
        Ok(TlsFront { acceptor, shared })
    }

    /// The address the front listens on (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The port the front listens on.
    pub fn port(&self) -> u16 {
        self.addr().port()
    }

    /// `https://127.0.0.1:PORT` (the certificate names `127.0.0.1`).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr())
    }

    /// The backend connections are relayed to.
    pub fn backend(&self) -> SocketAddr {
        self.shared.backend
    }

    /// TLS handshakes completed so far (each is one relayed connection).
    pub fn handshakes_completed(&self) -> u64 {
        lock(&self.shared.counts).completed
    }

    /// TLS handshakes that failed so far: the client refused the certificate
    /// (unknown CA, wrong name), spoke something else than TLS, closed
    /// early, or took too long.
    pub fn handshakes_failed(&self) -> u64 {
        lock(&self.shared.counts).failed
    }

    /// Waits (at most `timeout`) until at least `n` handshakes have ended,
    /// completed or failed; `true` if they have. A client learns that its
    /// handshake failed before the front does: wait for the count before
    /// checking [`handshakes_failed`](Self::handshakes_failed).
    pub fn wait_for_handshakes(&self, n: u64, timeout: Duration) -> bool {
        let counts = lock(&self.shared.counts);
        let (_counts, result) = self
            .shared
            .progress
            .wait_timeout_while(counts, timeout, |c| c.completed + c.failed < n)
            .unwrap_or_else(PoisonError::into_inner);
        !result.timed_out()
    }

    /// The test CA's certificate, DER: the one root a client needs to trust
    /// the front. Never trust it outside tests.
    pub fn ca_der() -> &'static [u8] {
        CA_DER
    }

    /// The test CA's certificate, PEM (the same certificate as [`ca_der`](Self::ca_der)).
    pub fn ca_pem() -> &'static str {
        CA_PEM
    }

    /// The absolute path of `testkit/fixtures/tls/test-ca.pem`, for a CLI's
    /// `--cacert` option or `SSL_CERT_FILE`.
    pub fn ca_pem_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join("tls")
            .join("test-ca.pem")
    }
}

impl std::fmt::Debug for TlsFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFront")
            .field("addr", &self.addr())
            .field("backend", &self.shared.backend)
            .finish_non_exhaustive()
    }
}

fn serve_connection(client: &TcpStream, conn: &Connection<'_>, shared: &Shared) {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    relay::prepare(client);
    let mut tls = match handshake(client, shared, deadline) {
        Ok(tls) => {
            shared.count(true);
            tls
        }
        Err(_) => {
            shared.count(false);
            return;
        }
    };
    let Ok(backend) = relay::connect(&shared.backend, conn) else {
        // Nothing to relay to: end the TLS session cleanly.
        tls.send_close_notify();
        let _ = flush_tls(&mut tls, client);
        return;
    };
    relay_tls(tls, client, &backend, deadline);
    let _ = backend.shutdown(Shutdown::Both);
}

/// Completes the server side of the handshake on `client`.
fn handshake(
    client: &TcpStream,
    shared: &Shared,
    deadline: Instant,
) -> io::Result<ServerConnection> {
    let mut tls = ServerConnection::new(Arc::clone(&shared.config)).map_err(io::Error::other)?;
    let deadline = deadline.min(Instant::now() + HANDSHAKE_TIMEOUT);
    let mut io = client;
    // Each round makes progress or fails (a timeout included), and the deadline bounds the rounds.
    while tls.is_handshaking() {
        relay::read_timeout_until(client, deadline, HANDSHAKE_TIMEOUT)?;
        tls.complete_io(&mut io)?;
    }
    Ok(tls)
}

/// Writes all pending TLS records to `client`.
fn flush_tls(tls: &mut ServerConnection, client: &TcpStream) -> io::Result<()> {
    let mut out = client;
    while tls.wants_write() {
        if tls.write_tls(&mut out)? == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
    Ok(())
}

/// Moves the plaintext rustls has decrypted into `out`; `true` once the peer
/// has ended the TLS session (with `close_notify` or, after everything it
/// sent was read, by closing the connection).
fn drain_plaintext(tls: &mut ServerConnection, out: &mut Vec<u8>) -> io::Result<bool> {
    let mut buf = [0u8; 4096];
    loop {
        match tls.reader().read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

/// Relays between the TLS client and the plain backend: the calling thread
/// carries client to backend, a scoped thread backend to client. The rustls
/// connection is shared under a lock that is never held across a read.
/// A clean end in one direction half-closes the other side; an error shuts
/// both sockets down, which ends the other direction too.
fn relay_tls(tls: ServerConnection, client: &TcpStream, backend: &TcpStream, deadline: Instant) {
    let tls = TlsRelay {
        tls: Mutex::new(tls),
        client,
        backend,
        deadline,
    };
    relay::both_ways(
        "tls-front",
        client,
        backend,
        || tls.client_to_backend(),
        || tls.backend_to_client(),
    );
}

/// The two sides of a relayed connection and the TLS session on the client's.
struct TlsRelay<'a> {
    tls: Mutex<ServerConnection>,
    client: &'a TcpStream,
    backend: &'a TcpStream,
    deadline: Instant,
}

impl TlsRelay<'_> {
    fn client_to_backend(&self) -> io::Result<()> {
        let (client, tls) = (self.client, &self.tls);
        let mut to_backend = self.backend;
        let mut raw = vec![0u8; CHUNK];
        let mut plain = Vec::new();
        // Whatever arrived together with the client's last handshake flight.
        let mut closed = drain_plaintext(&mut lock(tls), &mut plain)?;
        loop {
            if !plain.is_empty() {
                to_backend.write_all(&plain)?;
                plain.clear();
            }
            if closed {
                return Ok(());
            }
            let n = relay::read_some(client, &mut raw, self.deadline, IDLE_LIMIT)?;
            if n == 0 {
                // A bare TCP close (no close_notify): most HTTP clients end so.
                return Ok(());
            }
            let mut conn = lock(tls);
            let mut input = &raw[..n];
            while !input.is_empty() && !closed {
                if conn.read_tls(&mut input)? == 0 {
                    break; // close_notify already received: nothing more is read
                }
                if let Err(e) = conn.process_new_packets() {
                    let _ = flush_tls(&mut conn, client); // the alert, if any
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                closed = drain_plaintext(&mut conn, &mut plain)?;
            }
            flush_tls(&mut conn, client)?;
        }
    }

    fn backend_to_client(&self) -> io::Result<()> {
        let mut raw = vec![0u8; CHUNK];
        loop {
            let n = relay::read_some(self.backend, &mut raw, self.deadline, IDLE_LIMIT)?;
            let mut conn = lock(&self.tls);
            if n == 0 {
                conn.send_close_notify();
                return flush_tls(&mut conn, self.client);
            }
            // The outgoing buffer was flushed empty last time: a chunk fits whole.
            conn.writer().write_all(&raw[..n])?;
            flush_tls(&mut conn, self.client)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LocalAuthServer, ServerConfig as AuthConfig};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    const WAIT: Duration = Duration::from_secs(10);

    fn client_config(roots: RootCertStore, tls12_only: bool) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider);
        let builder = if tls12_only {
            builder.with_protocol_versions(&[&rustls::version::TLS12])
        } else {
            builder.with_safe_default_protocol_versions()
        };
        Arc::new(
            builder
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    fn fixture_roots() -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(TlsFront::ca_der())).unwrap();
        roots
    }

    fn connect(
        front: &TlsFront,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> StreamOwned<ClientConnection, TcpStream> {
        let tcp = TcpStream::connect(front.addr()).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_write_timeout(Some(WAIT)).unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        let conn = ClientConnection::new(config, name).unwrap();
        StreamOwned::new(conn, tcp)
    }

    /// Reads one response with a `Content-Length` (bounded to 64 KiB).
    fn read_response(stream: &mut impl Read) -> (String, String) {
        let mut data = Vec::new();
        let mut byte = [0u8; 1];
        while !data.ends_with(b"\r\n\r\n") {
            assert!(data.len() < 64 * 1024, "head too large");
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-head");
            data.push(byte[0]);
        }
        let head = String::from_utf8(data).unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().unwrap())
            })
            .expect("Content-Length");
        assert!(length <= 64 * 1024);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).unwrap();
        (head, String::from_utf8(body).unwrap())
    }

    const DISCOVERY: &str =
        "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: idp.test\r\n\r\n";
    const DISCOVERY_CLOSE: &str =
        "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: idp.test\r\nConnection: close\r\n\r\n";

    #[test]
    fn fixture_ca_client_reaches_backend_with_keep_alive_and_close() {
        let server = LocalAuthServer::start(AuthConfig::default()).unwrap();
        let front = TlsFront::start(server.addr()).unwrap();
        assert_eq!(front.backend(), server.addr());
        let mut tls = connect(&front, client_config(fixture_roots(), false), SERVER_NAME);
        // Two exchanges on one connection, then one that closes it.
        for _ in 0..2 {
            tls.write_all(DISCOVERY.as_bytes()).unwrap();
            let (head, body) = read_response(&mut tls);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            assert!(body.contains("\"token_endpoint\""), "{body}");
        }
        tls.write_all(DISCOVERY_CLOSE.as_bytes()).unwrap();
        let (head, _) = read_response(&mut tls);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        // The backend closed: the front ends the session with close_notify.
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(front.handshakes_completed(), 1);
        assert_eq!(front.handshakes_failed(), 0);
    }

    #[test]
    fn names_localhost_and_ip_and_tls12_work_too() {
        let server = LocalAuthServer::start(AuthConfig::default()).unwrap();
        let front = TlsFront::start(server.addr()).unwrap();
        for (name, tls12) in [
            ("localhost", false),
            ("127.0.0.1", false),
            (SERVER_NAME, true),
        ] {
            let mut tls = connect(&front, client_config(fixture_roots(), tls12), name);
            tls.write_all(DISCOVERY_CLOSE.as_bytes()).unwrap();
            let (head, _) = read_response(&mut tls);
            assert!(head.starts_with("HTTP/1.1 200"), "{name}: {head}");
            if tls12 {
                assert_eq!(
                    tls.conn.protocol_version(),
                    Some(rustls::ProtocolVersion::TLSv1_2)
                );
            }
        }
        assert_eq!(front.handshakes_completed(), 3);
        assert!(front.url().starts_with("https://127.0.0.1:"));
        assert_eq!(front.port(), front.addr().port());
    }

    /// A backend that echoes one connection until it closes.
    fn echo_backend() -> (SocketAddr, JoinHandle<u64>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.set_read_timeout(Some(WAIT)).unwrap();
            let mut total = 0u64;
            let mut buf = [0u8; 8192];
            loop {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => {
                        stream.write_all(&buf[..n]).unwrap();
                        total += n as u64;
                    }
                }
            }
        });
        (addr, echo)
    }

    #[test]
    fn relays_large_payloads_both_ways() {
        let (backend, echo) = echo_backend();
        let front = TlsFront::start(backend).unwrap();
        let mut tls = connect(&front, client_config(fixture_roots(), false), SERVER_NAME);
        let chunk: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        for _ in 0..10 {
            tls.write_all(&chunk).unwrap();
            let mut back = vec![0u8; chunk.len()];
            tls.read_exact(&mut back).unwrap();
            assert_eq!(back, chunk);
        }
        // The client ends the session: the backend sees the end, and so the client.
        tls.conn.send_close_notify();
        tls.flush().unwrap();
        assert_eq!(echo.join().unwrap(), 200_000);
        let mut rest = Vec::new();
        tls.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(front.handshakes_completed(), 1);
    }

    #[test]
    fn refused_certificates_count_as_failed_handshakes() {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        backend.set_nonblocking(true).unwrap();
        let front = TlsFront::start(backend.local_addr().unwrap()).unwrap();
        // No roots at all (as a client with webpki roots only would see it:
        // an unknown issuer), then the right root but a name the certificate lacks.
        let attempts = [
            (client_config(RootCertStore::empty(), false), SERVER_NAME),
            (client_config(fixture_roots(), false), "other.test"),
        ];
        for (config, name) in attempts {
            let mut tls = connect(&front, config, name);
            let error = tls.write_all(DISCOVERY_CLOSE.as_bytes()).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{name}: {error}");
        }
        assert!(front.wait_for_handshakes(2, WAIT));
        assert_eq!(front.handshakes_failed(), 2);
        assert_eq!(front.handshakes_completed(), 0);
        // The backend is connected to only after a completed handshake.
        let error = backend.accept().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn plain_http_to_the_front_is_a_failed_handshake() {
        let server = LocalAuthServer::start(AuthConfig::default()).unwrap();
        let front = TlsFront::start(server.addr()).unwrap();
        let mut tcp = TcpStream::connect(front.addr()).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.write_all(DISCOVERY_CLOSE.as_bytes()).unwrap();
        let mut answer = Vec::new();
        let _ = tcp.take(64 * 1024).read_to_end(&mut answer);
        assert!(!answer.starts_with(b"HTTP/"));
        assert!(front.wait_for_handshakes(1, WAIT));
        assert_eq!(front.handshakes_failed(), 1);
    }

    #[test]
    fn drop_ends_open_connections() {
        let server = LocalAuthServer::start(AuthConfig::default()).unwrap();
        let front = TlsFront::start(server.addr()).unwrap();
        let mut tls = connect(&front, client_config(fixture_roots(), false), SERVER_NAME);
        tls.write_all(DISCOVERY.as_bytes()).unwrap();
        let (head, _) = read_response(&mut tls);
        assert!(head.starts_with("HTTP/1.1 200"));
        // An idle keep-alive connection (and an unfinished handshake) do not hold the drop up.
        let _half = TcpStream::connect(front.addr()).unwrap();
        let started = Instant::now();
        drop(front);
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut rest = [0u8; 16];
        assert!(!matches!(tls.read(&mut rest), Ok(n) if n > 0));
    }

    #[test]
    fn ca_files_agree() {
        let from_pem = CertificateDer::from_pem_slice(TlsFront::ca_pem().as_bytes()).unwrap();
        assert_eq!(from_pem.as_ref(), TlsFront::ca_der());
        let path = TlsFront::ca_pem_path();
        assert!(path.is_absolute());
        assert_eq!(std::fs::read_to_string(path).unwrap(), TlsFront::ca_pem());
    }
}
