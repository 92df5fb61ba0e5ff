//! An HTTP proxy that records what clients ask of it, for proxy tests.
//!
//! [`RecordingProxy`] listens on `127.0.0.1` on an ephemeral port and serves
//! one request per connection. It reads the request head (at most 16 KiB),
//! records its method, target and `Proxy-Authorization` header
//! ([`RecordedProxyRequest`]), and then:
//!
//! - with [`RecordingProxy::start_with_auth`], answers `407 Proxy
//!   Authentication Required` (with `Proxy-Authenticate: Basic realm="test"`)
//!   unless the request carries exactly the expected `Proxy-Authorization`;
//! - for `CONNECT host:port`, looks the target up in the routes given at start
//!   (no DNS: `idp.test:443` can lead to a [`TlsFront`](crate::tls_front::TlsFront)
//!   on 127.0.0.1), answers `200 Connection established` and relays bytes both
//!   ways until both sides have closed; an unknown target gets `502`;
//! - anything else (`GET http://…`, absolute-form requests to a forwarding
//!   proxy) is recorded and answered `502`: the proxy only tunnels.
//!
//! A request is recorded before it is answered, so once a client has seen
//! the proxy's answer, [`RecordingProxy::requests`] lists its request.
//! Everything is bounded: the head must arrive within 10 s, a tunnel lives at
//! most 60 s and may sit idle 30 s at most, at most 256 connections are
//! served at once, at most 10 000 requests are recorded, and dropping the
//! proxy shuts every connection down and joins every thread.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a tunnel lives, request head included.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(60);
/// The longest either side of a tunnel may stay silent before it is cut.
const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How long a write to either side may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting to a route's address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After an error answer, how long (and how much) the rest of the request is
/// read and discarded, so that closing does not reset the answer away.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Requests recorded; later ones are not.
const MAX_RECORDED: usize = 10_000;
/// Bytes read from a socket at a time.
const CHUNK: usize = 16 * 1024;

/// One request as the proxy received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedProxyRequest {
    /// The method, as sent (`CONNECT`, `GET`, …).
    pub method: String,
    /// The request target: `host:port` for `CONNECT` (e.g. `idp.test:443`),
    /// otherwise usually an absolute URI (`http://idp.test/token`).
    pub target: String,
    /// The `Proxy-Authorization` header's value (trimmed), if any.
    pub proxy_authorization: Option<String>,
}

/// A running recording proxy at `http://127.0.0.1:PORT`. Stops, closing its
/// connections and joining its threads, when dropped.
pub struct RecordingProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// What the acceptor, the connection threads and the handle share.
struct Shared {
    /// `CONNECT` targets, lowercased, and where they lead.
    routes: HashMap<String, SocketAddr>,
    require_auth: Option<String>,
    stopping: AtomicBool,
    requests: Mutex<Vec<RecordedProxyRequest>>,
    /// Open sockets by connection, shut down on drop to unblock their threads.
    sockets: Mutex<HashMap<u64, Vec<TcpStream>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Tracks `stream` under connection `id`; `false` (and nothing tracked)
    /// once the proxy is stopping.
    fn register(&self, id: u64, stream: &TcpStream) -> bool {
        let mut sockets = lock(&self.sockets);
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        if let Ok(clone) = stream.try_clone() {
            sockets.entry(id).or_default().push(clone);
        }
        true
    }

    fn forget(&self, id: u64) {
        lock(&self.sockets).remove(&id);
    }

    fn record(&self, request: RecordedProxyRequest) {
        let mut requests = lock(&self.requests);
        if requests.len() < MAX_RECORDED {
            requests.push(request);
        }
    }
}

impl RecordingProxy {
    /// Starts a proxy on `127.0.0.1` with an ephemeral port that tunnels
    /// `CONNECT` requests for the targets in `routes` (`("idp.test:443",
    /// addr)`: host, case-insensitive, and port) to their addresses, and
    /// answers `502` to everything else.
    pub fn start(routes: Vec<(String, SocketAddr)>) -> io::Result<RecordingProxy> {
        RecordingProxy::start_inner(routes, None)
    }

    /// Like [`start`](Self::start), but every request must carry
    /// `Proxy-Authorization: <expected_header_value>` (e.g. the value of
    /// [`basic_proxy_authorization`]); others get `407 Proxy Authentication
    /// Required` with `Proxy-Authenticate: Basic realm="test"`, and are recorded too.
    pub fn start_with_auth(
        routes: Vec<(String, SocketAddr)>,
        expected_header_value: impl Into<String>,
    ) -> io::Result<RecordingProxy> {
        RecordingProxy::start_inner(routes, Some(expected_header_value.into()))
    }

    fn start_inner(
        routes: Vec<(String, SocketAddr)>,
        require_auth: Option<String>,
    ) -> io::Result<RecordingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            routes: routes
                .into_iter()
                .map(|(target, addr)| (target.to_ascii_lowercase(), addr))
                .collect(),
            require_auth,
            stopping: AtomicBool::new(false),
            requests: Mutex::new(Vec::new()),
            sockets: Mutex::new(HashMap::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("recording-proxy".into())
            .spawn(move || accept_loop(listener, accept_shared))?;
        Ok(RecordingProxy {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address the proxy listens on (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's URL, `http://127.0.0.1:PORT` (for `HTTPS_PROXY` or a
    /// client's proxy setting).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The proxy's URL with credentials, `http://USER:PASSWORD@127.0.0.1:PORT`
    /// (both percent-encoded as URL userinfo requires).
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!(
            "http://{}:{}@{}",
            percent_encode_userinfo(user),
            percent_encode_userinfo(password),
            self.addr
        )
    }

    /// Every request received so far, in order of arrival (at most 10 000).
    pub fn requests(&self) -> Vec<RecordedProxyRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The targets of the `CONNECT` requests received so far, in order,
    /// whether or not they were tunnelled (refused or unknown ones included).
    pub fn connects(&self) -> Vec<String> {
        lock(&self.shared.requests)
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case("CONNECT"))
            .map(|r| r.target.clone())
            .collect()
    }
}

impl std::fmt::Debug for RecordingProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingProxy")
            .field("addr", &self.addr)
            .field("routes", &self.shared.routes)
            .field("require_auth", &self.shared.require_auth.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the acceptor with one last connection, and unblock the connections.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, streams) in lock(&self.shared.sockets).drain() {
            for stream in streams {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// `Basic base64(user:password)`: the `Proxy-Authorization` value a client
/// sends for these credentials (RFC 7617), to give to
/// [`RecordingProxy::start_with_auth`].
pub fn basic_proxy_authorization(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_standard(format!("{user}:{password}").as_bytes())
    )
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64_standard(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            group.get(1).copied().unwrap_or(0),
            group.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Percent-encodes all but the RFC 3986 unreserved characters.
fn percent_encode_userinfo(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Accepts until the proxy stops, then joins the connection threads.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id: u64 = 0;
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        workers.retain(|worker| !worker.is_finished());
        if workers.len() >= MAX_CONNECTIONS {
            continue; // dropped: the client sees a reset
        }
        let id = next_id;
        next_id += 1;
        if !shared.register(id, &stream) {
            break;
        }
        let worker_shared = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("recording-proxy-conn".into())
            .spawn(move || {
                serve_connection(id, &stream, &worker_shared);
                let _ = stream.shutdown(Shutdown::Both);
                worker_shared.forget(id);
            });
        match spawned {
            Ok(worker) => workers.push(worker),
            Err(_) => shared.forget(id),
        }
    }
    for worker in workers {
        let _ = worker.join();
    }
}

/// Sets `stream`'s read timeout to `limit`, or less if `deadline` is nearer;
/// an error once `deadline` has passed.
fn read_timeout_until(stream: &TcpStream, deadline: Instant, limit: Duration) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "connection deadline passed",
        ));
    }
    stream.set_read_timeout(Some(left.min(limit)))
}

/// A request head read off a connection.
enum Head {
    /// The head (without its final empty line) and the bytes that followed it.
    Complete(String, Vec<u8>),
    /// Longer than [`MAX_HEAD`].
    TooLarge,
    /// The connection closed (or failed, or timed out) before the head ended.
    Incomplete,
}

fn read_head(client: &TcpStream, deadline: Instant) -> Head {
    let mut from_client = client;
    let mut data = Vec::new();
    let mut buf = [0u8; 2048];
    // Each round adds at least one byte, up to MAX_HEAD (+ one chunk), or ends.
    loop {
        if let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(end + 4);
            data.truncate(end);
            return Head::Complete(String::from_utf8_lossy(&data).into_owned(), rest);
        }
        if data.len() > MAX_HEAD {
            return Head::TooLarge;
        }
        if read_timeout_until(client, deadline, HEAD_TIMEOUT).is_err() {
            return Head::Incomplete;
        }
        match from_client.read(&mut buf) {
            Ok(0) => return Head::Incomplete,
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Head::Incomplete,
        }
    }
}

/// The request line and `Proxy-Authorization` of a head; `None` if malformed.
fn parse_head(head: &str) -> Option<RecordedProxyRequest> {
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next().filter(|m| !m.is_empty())?;
    let target = request_line.next().filter(|t| !t.is_empty())?;
    let version = request_line.next()?;
    if !version.starts_with("HTTP/") || request_line.next().is_some() {
        return None;
    }
    let mut proxy_authorization = None;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("proxy-authorization") {
            proxy_authorization = Some(value.trim().to_owned());
        }
    }
    Some(RecordedProxyRequest {
        method: method.to_owned(),
        target: target.to_owned(),
        proxy_authorization,
    })
}

/// Answers with an error and closes: the answer, a half-close, then (bounded)
/// reading and discarding whatever the client still sends, so that closing
/// with unread data does not reset the connection before the client has read
/// the answer.
fn refuse(client: &TcpStream, status: &str, extra_headers: &str, body: &str) {
    let mut to_client = client;
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    if to_client.write_all(answer.as_bytes()).is_err() {
        return;
    }
    let _ = client.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut discarded = 0;
    let mut buf = [0u8; 4096];
    let mut from_client = client;
    while discarded < LINGER_BYTES && read_timeout_until(client, deadline, LINGER).is_ok() {
        match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
}

fn serve_connection(id: u64, client: &TcpStream, shared: &Shared) {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    let _ = client.set_nodelay(true);
    let _ = client.set_write_timeout(Some(WRITE_TIMEOUT));
    let (head, early) = match read_head(client, deadline) {
        Head::Complete(head, early) => (head, early),
        Head::TooLarge => {
            return refuse(
                client,
                "431 Request Header Fields Too Large",
                "",
                "head too large\n",
            )
        }
        Head::Incomplete => return,
    };
    let Some(request) = parse_head(&head) else {
        return refuse(client, "400 Bad Request", "", "malformed request head\n");
    };
    shared.record(request.clone());
    if let Some(expected) = &shared.require_auth {
        if request.proxy_authorization.as_deref() != Some(expected.as_str()) {
            return refuse(
                client,
                "407 Proxy Authentication Required",
                "Proxy-Authenticate: Basic realm=\"test\"\r\n",
                "proxy authentication required\n",
            );
        }
    }
    if !request.method.eq_ignore_ascii_case("CONNECT") {
        return refuse(
            client,
            "502 Bad Gateway",
            "",
            "this proxy only tunnels (CONNECT)\n",
        );
    }
    let Some(route) = shared.routes.get(&request.target.to_ascii_lowercase()) else {
        return refuse(client, "502 Bad Gateway", "", "no route to that target\n");
    };
    let Ok(backend) = TcpStream::connect_timeout(route, CONNECT_TIMEOUT) else {
        return refuse(
            client,
            "502 Bad Gateway",
            "",
            "the route's address refused\n",
        );
    };
    if !shared.register(id, &backend) {
        return;
    }
    let _ = backend.set_nodelay(true);
    let _ = backend.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut to_client = client;
    let mut to_backend = &backend;
    let opened = to_client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .and_then(|()| to_backend.write_all(&early));
    if opened.is_ok() {
        tunnel(client, &backend, deadline);
    }
    let _ = backend.shutdown(Shutdown::Both);
}

/// Relays both ways, client to backend on this thread and backend to client
/// on a scoped one. A clean end in one direction half-closes the other side
/// (so an answer still in flight arrives); an error shuts both sockets down,
/// which ends the other direction too.
fn tunnel(client: &TcpStream, backend: &TcpStream, deadline: Instant) {
    let abort = || {
        let _ = client.shutdown(Shutdown::Both);
        let _ = backend.shutdown(Shutdown::Both);
    };
    let pump = |from: &TcpStream, to: &TcpStream| match copy(from, to, deadline) {
        Ok(()) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => abort(),
    };
    std::thread::scope(|scope| {
        let down = std::thread::Builder::new()
            .name("recording-proxy-down".into())
            .spawn_scoped(scope, || pump(backend, client));
        if down.is_err() {
            abort();
            return;
        }
        pump(client, backend);
        // The scope joins the other direction.
    });
}

/// Copies `from` to `to` until `from` ends.
fn copy(from: &TcpStream, to: &TcpStream, deadline: Instant) -> io::Result<()> {
    let mut reader = from;
    let mut writer = to;
    let mut buf = vec![0u8; CHUNK];
    loop {
        read_timeout_until(from, deadline, IDLE_LIMIT)?;
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => writer.write_all(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_front::{TlsFront, SERVER_NAME};
    use crate::{LocalAuthServer, ServerConfig};
    use std::sync::Arc;

    const WAIT: Duration = Duration::from_secs(10);

    fn open(proxy: &RecordingProxy) -> TcpStream {
        let tcp = TcpStream::connect(proxy.addr()).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_write_timeout(Some(WAIT)).unwrap();
        tcp
    }

    /// Reads an answer head, byte by byte (bounded).
    fn read_head_of(stream: &mut impl Read) -> String {
        let mut data = Vec::new();
        let mut byte = [0u8; 1];
        while !data.ends_with(b"\r\n\r\n") {
            assert!(data.len() < 16 * 1024, "head too large");
            assert_eq!(stream.read(&mut byte).unwrap(), 1, "closed mid-head");
            data.push(byte[0]);
        }
        String::from_utf8(data).unwrap()
    }

    fn read_all(stream: &mut impl Read) -> String {
        let mut data = Vec::new();
        stream.take(256 * 1024).read_to_end(&mut data).unwrap();
        String::from_utf8(data).unwrap()
    }

    const DISCOVERY_CLOSE: &str =
        "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: idp.test\r\nConnection: close\r\n\r\n";

    #[test]
    fn connect_reaches_the_mapped_backend_and_is_recorded() {
        let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
        let proxy = RecordingProxy::start(vec![("idp.test:443".into(), server.addr())]).unwrap();
        let mut tcp = open(&proxy);
        tcp.write_all(b"CONNECT IDP.test:443 HTTP/1.1\r\nHost: idp.test:443\r\n\r\n")
            .unwrap();
        assert_eq!(
            read_head_of(&mut tcp),
            "HTTP/1.1 200 Connection established\r\n\r\n"
        );
        tcp.write_all(DISCOVERY_CLOSE.as_bytes()).unwrap();
        let answer = read_all(&mut tcp);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("\"token_endpoint\""), "{answer}");
        assert_eq!(proxy.connects(), vec!["IDP.test:443".to_owned()]);
        assert_eq!(
            proxy.requests(),
            vec![RecordedProxyRequest {
                method: "CONNECT".into(),
                target: "IDP.test:443".into(),
                proxy_authorization: None,
            }]
        );
        // The discovery document names the backend that answered it.
        assert!(answer.contains(&format!("\"issuer\":\"http://{}\"", server.addr())));
    }

    #[test]
    fn bytes_sent_with_the_connect_head_reach_the_backend() {
        let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
        let proxy = RecordingProxy::start(vec![("idp.test:80".into(), server.addr())]).unwrap();
        let mut tcp = open(&proxy);
        let both =
            format!("CONNECT idp.test:80 HTTP/1.1\r\nHost: idp.test:80\r\n\r\n{DISCOVERY_CLOSE}");
        tcp.write_all(both.as_bytes()).unwrap();
        let answer = read_all(&mut tcp);
        let (established, rest) =
            answer.split_at("HTTP/1.1 200 Connection established\r\n\r\n".len());
        assert_eq!(established, "HTTP/1.1 200 Connection established\r\n\r\n");
        assert!(rest.starts_with("HTTP/1.1 200"), "{rest}");
    }

    #[test]
    fn unmapped_target_gets_502() {
        let backend = TcpListener::bind("127.0.0.1:0").unwrap();
        backend.set_nonblocking(true).unwrap();
        let routes = vec![("idp.test:443".into(), backend.local_addr().unwrap())];
        let proxy = RecordingProxy::start(routes).unwrap();
        let mut tcp = open(&proxy);
        tcp.write_all(b"CONNECT elsewhere.test:443 HTTP/1.1\r\nHost: elsewhere.test:443\r\n\r\n")
            .unwrap();
        let answer = read_all(&mut tcp);
        assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
        assert_eq!(proxy.connects(), vec!["elsewhere.test:443".to_owned()]);
        // The proxy connects before it answers: had it, the connection would be queued.
        let error = backend.accept().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn absolute_form_requests_are_recorded_and_get_502() {
        let proxy = RecordingProxy::start(Vec::new()).unwrap();
        let mut tcp = open(&proxy);
        tcp.write_all(
            b"POST http://idp.test/token HTTP/1.1\r\nHost: idp.test\r\nProxy-Authorization: Basic eDp5\r\nContent-Length: 29\r\n\r\ngrant_type=client_credentials",
        )
        .unwrap();
        let answer = read_all(&mut tcp);
        assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
        assert!(proxy.connects().is_empty());
        assert_eq!(
            proxy.requests(),
            vec![RecordedProxyRequest {
                method: "POST".into(),
                target: "http://idp.test/token".into(),
                proxy_authorization: Some("Basic eDp5".into()),
            }]
        );
    }

    #[test]
    fn start_with_auth_answers_407_without_the_header() {
        let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
        let expected = basic_proxy_authorization("proxy-user", "pa:ss word");
        let routes = vec![("idp.test:443".to_owned(), server.addr())];
        let proxy = RecordingProxy::start_with_auth(routes, expected.clone()).unwrap();
        let attempts = [
            None,
            Some(basic_proxy_authorization("proxy-user", "wrong")),
            Some(expected.clone()),
        ];
        for authorization in &attempts {
            let mut tcp = open(&proxy);
            let header = authorization
                .as_ref()
                .map(|value| format!("Proxy-Authorization: {value}\r\n"))
                .unwrap_or_default();
            let connect =
                format!("CONNECT idp.test:443 HTTP/1.1\r\nHost: idp.test:443\r\n{header}\r\n");
            tcp.write_all(connect.as_bytes()).unwrap();
            if authorization.as_ref() == Some(&expected) {
                assert_eq!(
                    read_head_of(&mut tcp),
                    "HTTP/1.1 200 Connection established\r\n\r\n"
                );
            } else {
                let answer = read_all(&mut tcp);
                assert!(answer.starts_with("HTTP/1.1 407 "), "{answer}");
                assert!(
                    answer.contains("\r\nProxy-Authenticate: Basic realm=\"test\"\r\n"),
                    "{answer}"
                );
            }
        }
        let recorded: Vec<_> = proxy
            .requests()
            .into_iter()
            .map(|r| r.proxy_authorization)
            .collect();
        assert_eq!(recorded, attempts);
        assert_eq!(proxy.connects().len(), 3);
    }

    #[test]
    fn credentials_helpers() {
        assert_eq!(
            basic_proxy_authorization("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64_standard(b""), "");
        assert_eq!(base64_standard(b"f"), "Zg==");
        assert_eq!(base64_standard(b"fo"), "Zm8=");
        assert_eq!(base64_standard(b"foo"), "Zm9v");
        assert_eq!(base64_standard(b"foob"), "Zm9vYg==");
        let proxy = RecordingProxy::start(Vec::new()).unwrap();
        assert_eq!(
            proxy.url(),
            format!("http://127.0.0.1:{}", proxy.addr().port())
        );
        assert_eq!(
            proxy.url_with_credentials("u@x", "p:w/d"),
            format!("http://u%40x:p%3Aw%2Fd@127.0.0.1:{}", proxy.addr().port())
        );
    }

    #[test]
    fn tls_through_the_tunnel_to_a_tls_front() {
        use rustls::pki_types::{CertificateDer, ServerName};
        use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

        let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
        let front = TlsFront::start(server.addr()).unwrap();
        let proxy = RecordingProxy::start(vec![("idp.test:443".into(), front.addr())]).unwrap();
        let mut tcp = open(&proxy);
        tcp.write_all(b"CONNECT idp.test:443 HTTP/1.1\r\nHost: idp.test:443\r\n\r\n")
            .unwrap();
        assert!(read_head_of(&mut tcp).starts_with("HTTP/1.1 200 "));
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(TlsFront::ca_der())).unwrap();
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = ServerName::try_from(SERVER_NAME).unwrap();
        let conn = ClientConnection::new(Arc::new(config), name).unwrap();
        let mut tls = StreamOwned::new(conn, tcp);
        tls.write_all(DISCOVERY_CLOSE.as_bytes()).unwrap();
        let answer = read_all(&mut tls);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert_eq!(front.handshakes_completed(), 1);
        assert_eq!(proxy.connects(), vec!["idp.test:443".to_owned()]);
    }

    #[test]
    fn drop_ends_open_tunnels() {
        let server = LocalAuthServer::start(ServerConfig::default()).unwrap();
        let proxy = RecordingProxy::start(vec![("idp.test:443".into(), server.addr())]).unwrap();
        let mut tcp = open(&proxy);
        tcp.write_all(b"CONNECT idp.test:443 HTTP/1.1\r\n\r\n")
            .unwrap();
        assert!(read_head_of(&mut tcp).starts_with("HTTP/1.1 200 "));
        let _silent = open(&proxy); // never sends a head
        let started = Instant::now();
        drop(proxy);
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut rest = [0u8; 16];
        assert!(!matches!(tcp.read(&mut rest), Ok(n) if n > 0));
    }
}
