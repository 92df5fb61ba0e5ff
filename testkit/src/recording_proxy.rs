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
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::relay::{self, lock, Acceptor, Connection, CONNECTION_DEADLINE};

/// The longest request head read.
const MAX_HEAD: usize = 16 * 1024;
/// How long a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// After an error answer, how long (and how much) the rest of the request is
/// read and discarded, so that closing does not reset the answer away.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;
/// Requests recorded; later ones are not.
const MAX_RECORDED: usize = 10_000;

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
    acceptor: Acceptor,
    shared: Arc<Shared>,
}

/// What the connection threads and the handle share.
struct Shared {
    /// `CONNECT` targets, lowercased, and where they lead.
    routes: HashMap<String, SocketAddr>,
    require_auth: Option<String>,
    requests: Mutex<Vec<RecordedProxyRequest>>,
}

impl Shared {
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
        let shared = Arc::new(Shared {
            routes: routes
                .into_iter()
                .map(|(target, addr)| (target.to_ascii_lowercase(), addr))
                .collect(),
            require_auth,
            requests: Mutex::new(Vec::new()),
        });
        let acceptor = Acceptor::start(
            "recording-proxy",
            MAX_CONNECTIONS,
            Arc::clone(&shared),
            serve_connection,
        )?;
        Ok(RecordingProxy { acceptor, shared })
    }

    /// The address the proxy listens on (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.acceptor.addr()
    }

    /// The proxy's URL, `http://127.0.0.1:PORT` (for `HTTPS_PROXY` or a
    /// client's proxy setting).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// The proxy's URL with credentials, `http://USER:PASSWORD@127.0.0.1:PORT`
    /// (both percent-encoded as URL userinfo requires).
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        format!(
            "http://{}:{}@{}",
            percent_encode_userinfo(user),
            percent_encode_userinfo(password),
            self.addr()
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
            .field("addr", &self.addr())
            .field("routes", &self.shared.routes)
            .field("require_auth", &self.shared.require_auth.is_some())
            .finish_non_exhaustive()
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
    STANDARD.encode(bytes)
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
        match relay::read_some(client, &mut buf, deadline, HEAD_TIMEOUT) {
            Ok(0) | Err(_) => return Head::Incomplete,
            Ok(n) => data.extend_from_slice(&buf[..n]),
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
    while discarded < LINGER_BYTES && relay::read_timeout_until(client, deadline, LINGER).is_ok() {
        match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
}

fn serve_connection(client: &TcpStream, conn: &Connection<'_>, shared: &Shared) {
    let deadline = Instant::now() + CONNECTION_DEADLINE;
    relay::prepare(client);
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
    let Ok(backend) = relay::connect(route, conn) else {
        return refuse(
            client,
            "502 Bad Gateway",
            "",
            "the route's address refused\n",
        );
    };
    let mut to_client = client;
    let mut to_backend = &backend;
    let opened = to_client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .and_then(|()| to_backend.write_all(&early));
    if opened.is_ok() {
        relay::both_ways(
            "recording-proxy",
            client,
            &backend,
            || relay::copy(client, &backend, deadline),
            || relay::copy(&backend, client, deadline),
        );
    }
    let _ = backend.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls_front::{TlsFront, SERVER_NAME};
    use crate::{LocalAuthServer, ServerConfig};
    use std::net::TcpListener;
    use std::sync::Arc;

    const WAIT: Duration = Duration::from_secs(10);

    fn open(proxy: &RecordingProxy) -> TcpStream {
        let tcp = TcpStream::connect(proxy.addr()).unwrap();
        tcp.set_read_timeout(Some(WAIT)).unwrap();
        tcp.set_write_timeout(Some(WAIT)).unwrap();
        tcp
    }

    /// A new connection to `proxy` that has sent `request`.
    fn send(proxy: &RecordingProxy, request: &[u8]) -> TcpStream {
        let mut tcp = open(proxy);
        tcp.write_all(request).unwrap();
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
        let mut tcp = send(
            &proxy,
            b"CONNECT IDP.test:443 HTTP/1.1\r\nHost: idp.test:443\r\n\r\n",
        );
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
        let both =
            format!("CONNECT idp.test:80 HTTP/1.1\r\nHost: idp.test:80\r\n\r\n{DISCOVERY_CLOSE}");
        let mut tcp = send(&proxy, both.as_bytes());
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
        let mut tcp = send(
            &proxy,
            b"CONNECT elsewhere.test:443 HTTP/1.1\r\nHost: elsewhere.test:443\r\n\r\n",
        );
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
        let mut tcp = send(
            &proxy,
            b"POST http://idp.test/token HTTP/1.1\r\nHost: idp.test\r\nProxy-Authorization: Basic eDp5\r\nContent-Length: 29\r\n\r\ngrant_type=client_credentials",
        );
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
            let header = authorization
                .as_ref()
                .map(|value| format!("Proxy-Authorization: {value}\r\n"))
                .unwrap_or_default();
            let connect =
                format!("CONNECT idp.test:443 HTTP/1.1\r\nHost: idp.test:443\r\n{header}\r\n");
            let mut tcp = send(&proxy, connect.as_bytes());
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
        let mut tcp = send(
            &proxy,
            b"CONNECT idp.test:443 HTTP/1.1\r\nHost: idp.test:443\r\n\r\n",
        );
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
        let mut tcp = send(&proxy, b"CONNECT idp.test:443 HTTP/1.1\r\n\r\n");
        assert!(read_head_of(&mut tcp).starts_with("HTTP/1.1 200 "));
        let _silent = open(&proxy); // never sends a head
        let started = Instant::now();
        drop(proxy);
        assert!(started.elapsed() < Duration::from_secs(5));
        let mut rest = [0u8; 16];
        assert!(!matches!(tcp.read(&mut rest), Ok(n) if n > 0));
    }
}
