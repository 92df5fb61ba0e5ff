//! [`DirectHttp`]: token requests on a connection of their own, read by a
//! bounded HTTP/1.1 reader.
//!
//! surf's HTTP/1 backend (async-h1) reads a response head line by line
//! without a bound until the line ends, so an endless header line fills
//! memory until the timeout; it reads a body that runs until the connection
//! closes as empty, and it takes a `100 Continue` for the final answer. Token
//! requests are few, small and security-sensitive, so this transport does
//! without it: one TCP (and, for `https`, rustls) connection per request,
//! closed after the answer, whose bytes go to
//! [`ResponseReader`](crate::http1::ResponseReader): a sans-IO reader with a
//! 64 KiB bound on the head (interim `1xx` heads included) and the core's
//! bound on the body, fuzzed on its own.

use std::sync::Arc;

use crate::http1::{Http1Error, ResponseLimits, ResponseReader};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::rustls::pki_types::{CertificateDer, ServerName};
use futures_rustls::rustls::{ClientConfig, RootCertStore};
use futures_rustls::TlsConnector;
use token_keeper::{Proxy, TransportError, TransportErrorKind};
use token_keeper_driver::tls::{TlsError, TlsRoots, TlsSettings};
use zeroize::Zeroizing;

/// The size of one read from the connection.
const READ_CHUNK: usize = 16 * 1024;

/// The most a proxy's answer to `CONNECT` may hold before its blank line.
const MAX_CONNECT_ANSWER: usize = 16 * 1024;

/// Sends token and discovery requests itself: a new connection per request
/// (`Connection: close`), TLS through rustls (ring, the webpki roots, TLS 1.2
/// and 1.3, the same stack as the ureq adapter), and a response reader with
/// hard bounds: at most 64 KiB of head (interim `1xx` heads included, and
/// skipped), bodies framed as RFC 9112 says (a body that runs until the
/// connection closes included), at most the core's body cap plus one byte.
/// Over TLS such a body must end with the server's `close_notify`: a bare TCP
/// close could be an attacker cutting the answer short, so it is an `Io`
/// error (answers with a `Content-Length` or chunking are unaffected).
///
/// surf's async-h1 backend buffers an endless header line without bound until
/// the timeout, reads a body without `Content-Length` or chunking as empty,
/// takes a `100 Continue` for the answer, and its pool can hand back a
/// connection after a cancelled exchange. This is the recommended transport
/// of an [`AsyncTokenClient`](crate::AsyncTokenClient); requests to your APIs
/// still go through your surf client and its middleware.
///
/// ```no_run
/// use token_keeper_surf::{AsyncTokenClient, DirectHttp};
///
/// let tokens = AsyncTokenClient::new(DirectHttp::new());
/// ```
#[derive(Clone)]
pub struct DirectHttp {
    tls: Arc<ClientConfig>,
    /// Whether the roots are the webpki ones (for `Debug`).
    custom_roots: bool,
}

impl std::fmt::Debug for DirectHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectHttp")
            .field(
                "roots",
                &if self.custom_roots {
                    "custom"
                } else {
                    "webpki-roots"
                },
            )
            .finish()
    }
}

impl Default for DirectHttp {
    fn default() -> Self {
        DirectHttp::new()
    }
}

/// A root certificate [`DirectHttp::with_root_certificates`] could not use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateError {
    index: usize,
    reason: String,
}

impl std::fmt::Display for CertificateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "root certificate #{} is not usable: {}",
            self.index, self.reason
        )
    }
}

impl std::error::Error for CertificateError {}

impl DirectHttp {
    /// Trusts the Mozilla roots of the `webpki-roots` crate.
    pub fn new() -> DirectHttp {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        DirectHttp {
            tls: Arc::new(client_config(roots)),
            custom_roots: false,
        }
    }

    /// Trusts only these roots (DER-encoded X.509 certificates): for an
    /// authorization server behind a private CA.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let ca_der: &[u8] = include_bytes!("../tests/fixtures/test-ca.der");
    /// let http = token_keeper_surf::DirectHttp::with_root_certificates([ca_der])?;
    /// # Ok(()) }
    /// ```
    pub fn with_root_certificates<'a>(
        ders: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<DirectHttp, CertificateError> {
        let mut roots = RootCertStore::empty();
        let mut ders = ders.into_iter().peekable();
        if ders.peek().is_none() {
            return Err(CertificateError {
                index: 0,
                reason: "no root certificate given: every handshake would fail".to_owned(),
            });
        }
        for (index, der) in ders.enumerate() {
            roots
                .add(CertificateDer::from(der.to_vec()))
                .map_err(|e| CertificateError {
                    index,
                    reason: e.to_string(),
                })?;
        }
        Ok(DirectHttp {
            tls: Arc::new(client_config(roots)),
            custom_roots: true,
        })
    }

    /// Whether this transport has roots of its own (anything but the default).
    pub(crate) fn has_own_roots(&self) -> bool {
        self.custom_roots
    }

    /// Trusts what `tls` says: the Mozilla roots, plus the CAs it adds, or the
    /// operating system's store and verifier (with the `platform-verifier`
    /// feature), plus the CAs it adds.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use token_keeper_surf::{DirectHttp, TlsSettings};
    /// # let ca_der: &[u8] = include_bytes!("../tests/fixtures/test-ca.der");
    /// let http = DirectHttp::with_tls(&TlsSettings::webpki().with_ca_der(ca_der)?)?;
    /// # Ok(()) }
    /// ```
    pub fn with_tls(tls: &TlsSettings) -> Result<DirectHttp, TlsError> {
        let extra = tls.extra_certificates();
        let config = match tls.roots() {
            TlsRoots::Webpki => {
                let mut roots = RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                for certificate in extra {
                    roots
                        .add(certificate.clone())
                        .map_err(|e| TlsError::new(format!("unusable CA certificate: {e}")))?;
                }
                client_config(roots)
            }
            #[cfg(feature = "platform-verifier")]
            TlsRoots::Platform => {
                let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
                let verifier = if extra.is_empty() {
                    rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
                } else {
                    rustls_platform_verifier::Verifier::new_with_extra_roots(
                        extra.iter().cloned(),
                        Arc::clone(&provider),
                    )
                }
                .map_err(|e| {
                    TlsError::new(format!("the operating system's certificate store: {e}"))
                })?;
                ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| TlsError::new(e.to_string()))?
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(verifier))
                    .with_no_client_auth()
            }
            #[allow(unreachable_patterns)]
            _ => {
                return Err(TlsError::new(
                    "these TLS roots are not supported by this build",
                ))
            }
        };
        Ok(DirectHttp {
            tls: Arc::new(config),
            custom_roots: *tls != TlsSettings::default(),
        })
    }

    /// Sends `request` and reads its answer, the body cut at `max_body + 1`
    /// bytes, directly or through an HTTP `CONNECT` tunnel to `via` (the
    /// core's proxy decision for its destination), connecting within
    /// `connect_timeout`. The caller bounds the whole exchange.
    pub(crate) async fn send(
        &self,
        via: Option<&Proxy>,
        request: http::Request<Vec<u8>>,
        max_body: usize,
        connect_timeout: std::time::Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let target = Target::of(request.uri())?;
        // One write for head and body (one segment, one TLS record for a
        // token request); the body may hold the client secret, so the copy is wiped.
        let mut message = Zeroizing::new(request_head(&request, &target));
        message.extend_from_slice(request.body());
        let head_request = request.method() == http::Method::HEAD;
        let limits = ResponseLimits {
            body: max_body,
            ..ResponseLimits::default()
        };
        // A name TLS cannot use is known before any connection is made.
        let server_name = if target.tls {
            Some(ServerName::try_from(target.host.clone()).map_err(|_| {
                TransportError::new(
                    TransportErrorKind::Connect,
                    format!("{:?} is not a valid TLS server name", target.host),
                )
            })?)
        } else {
            None
        };
        let (host, port) = match via {
            Some(via) => (via.host(), via.port()),
            None => (target.host.as_str(), target.port),
        };
        let what = if via.is_some() { "the proxy " } else { "" };
        let connect = async {
            async_net::TcpStream::connect((host, port))
                .await
                .map_err(|e| {
                    TransportError::new(
                        TransportErrorKind::Connect,
                        format!("connecting to {what}{host}:{port}: {e}"),
                    )
                })
        };
        let connect_deadline = async {
            async_io::Timer::after(connect_timeout).await;
            Err(TransportError::new(
                TransportErrorKind::Timeout,
                format!(
                    "no connection to {what}{host}:{port} within {} ms",
                    connect_timeout.as_millis()
                ),
            ))
        };
        let mut tcp = futures_lite::FutureExt::or(connect, connect_deadline).await?;
        // Token requests are one write each way: no point waiting for more to send.
        let _ = tcp.set_nodelay(true);
        if let Some(via) = via {
            open_tunnel(&mut tcp, via, &target).await?;
        }
        let reader = ResponseReader::new(limits, head_request);
        if let Some(name) = server_name {
            let tls = TlsConnector::from(Arc::clone(&self.tls))
                .connect(name, tcp)
                .await
                .map_err(|e| {
                    TransportError::new(
                        TransportErrorKind::Connect,
                        format!("TLS handshake with {}: {e}", target.host),
                    )
                })?;
            exchange(tls, &message, reader).await
        } else {
            exchange(tcp, &message, reader).await
        }
    }
}

fn client_config(roots: RootCertStore) -> ClientConfig {
    let provider = Arc::new(futures_rustls::rustls::crypto::ring::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring's provider supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Where a request goes.
struct Target {
    tls: bool,
    /// Without the brackets of an IPv6 literal.
    host: String,
    port: u16,
    /// The `Host` header: the URL's host and its explicit port, if any.
    host_header: String,
}

impl Target {
    /// Where `uri` goes, as the core's [`Origin`](token_keeper::Origin) reads
    /// it (http or https, a host, no user information, a valid port): the
    /// transport never turns a bad port into the default one, whatever
    /// request it is handed.
    fn of(uri: &http::Uri) -> Result<Target, TransportError> {
        let origin = token_keeper::Origin::of(uri).map_err(|e| {
            TransportError::new(
                TransportErrorKind::Other,
                format!("cannot send to this URL: {}", e.reason()),
            )
        })?;
        Ok(Target {
            tls: origin.scheme() == token_keeper::Scheme::Https,
            host: origin.host().to_owned(),
            port: origin.port(),
            host_header: origin.authority(),
        })
    }
}

/// The request line and headers. `http` header values hold no CR, LF or NUL,
/// so nothing here can split the head.
fn request_head(request: &http::Request<Vec<u8>>, target: &Target) -> Vec<u8> {
    // `path()` is "/" when the URL has none, also before a query.
    let uri = request.uri();
    let path = match uri.query() {
        Some(query) => format!("{}?{query}", uri.path()),
        None => uri.path().to_owned(),
    };
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(request.method().as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    head.extend_from_slice(target.host_header.as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in request.headers() {
        if matches!(
            name,
            &http::header::HOST
                | &http::header::CONNECTION
                | &http::header::CONTENT_LENGTH
                | &http::header::TRANSFER_ENCODING
        ) {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    let body = request.body();
    if !body.is_empty() || !matches!(*request.method(), http::Method::GET | http::Method::HEAD) {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head
}

/// Asks the proxy for a tunnel to `target` (HTTP `CONNECT`, with
/// `Proxy-Authorization` when the proxy URL has credentials) and reads its
/// answer up to the blank line, one byte at a time so that nothing of what
/// follows (the TLS handshake) is taken, and at most [`MAX_CONNECT_ANSWER`]
/// bytes. Only a `2xx` opens the tunnel.
async fn open_tunnel(
    tcp: &mut async_net::TcpStream,
    via: &token_keeper::Proxy,
    target: &Target,
) -> Result<(), TransportError> {
    let proxy = via.url_without_credentials();
    let broke = |e: std::io::Error| {
        TransportError::new(
            TransportErrorKind::Connect,
            format!("opening a tunnel through the proxy {proxy}: {e}"),
        )
    };
    // The head may hold the proxy password: wipe the copy.
    let head = Zeroizing::new(token_keeper::proxy::connect_request_head(
        via,
        &target.host,
        target.port,
    ));
    tcp.write_all(&head).await.map_err(broke)?;
    tcp.flush().await.map_err(broke)?;
    let mut answer = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_CONNECT_ANSWER {
            return Err(TransportError::new(
                TransportErrorKind::Connect,
                format!("the proxy {proxy} sent over {MAX_CONNECT_ANSWER} bytes without ending its answer to CONNECT"),
            ));
        }
        if tcp.read(&mut byte).await.map_err(broke)? == 0 {
            return Err(TransportError::new(
                TransportErrorKind::Connect,
                format!("the proxy {proxy} closed the connection before answering CONNECT"),
            ));
        }
        answer.push(byte[0]);
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&answer) {
        Ok(httparse::Status::Complete(_)) => match parsed.code {
            Some(200..=299) => Ok(()),
            Some(407) => Err(TransportError::new(
                TransportErrorKind::Connect,
                format!(
                    "the proxy {proxy} asks for credentials (HTTP 407): give them in the proxy URL"
                ),
            )),
            code => Err(TransportError::new(
                TransportErrorKind::Connect,
                format!(
                    "the proxy {proxy} refused a tunnel to {}:{} (HTTP {})",
                    target.host,
                    target.port,
                    code.unwrap_or(0)
                ),
            )),
        },
        _ => Err(TransportError::new(
            TransportErrorKind::Connect,
            format!("the proxy {proxy} answered CONNECT with something that is not HTTP"),
        )),
    }
}

/// Writes the request, then feeds the reader until it has the whole answer.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    message: &[u8],
    mut reader: ResponseReader,
) -> Result<http::Response<Vec<u8>>, TransportError> {
    let broke = |what: &str, e: std::io::Error| {
        TransportError::new(crate::transport::io_kind(&e), format!("{what}: {e}"))
    };
    stream
        .write_all(message)
        .await
        .map_err(|e| broke("sending the request", e))?;
    stream
        .flush()
        .await
        .map_err(|e| broke("sending the request", e))?;
    let mut buffer = vec![0u8; READ_CHUNK];
    loop {
        let read = stream
            .read(&mut buffer)
            .await
            .map_err(|e| broke("reading the response", e))?;
        let done = match buffer.get(..read) {
            Some([]) | None => reader.end_of_stream().map(Some),
            Some(bytes) => reader.receive(bytes),
        };
        if let Some(response) = done.map_err(unusable)? {
            return Ok(response);
        }
    }
}

/// What the reader refused, as the core's transport error.
fn unusable(error: Http1Error) -> TransportError {
    let kind = match error {
        Http1Error::ClosedBeforeResponse | Http1Error::Truncated { .. } => TransportErrorKind::Io,
        _ => TransportErrorKind::Other,
    };
    TransportError::new(kind, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &str) -> Result<Target, TransportError> {
        Target::of(&uri.parse().unwrap())
    }

    #[test]
    fn targets_take_default_ports_and_keep_explicit_ones_in_host() {
        let t = target("https://auth.example.com/token").unwrap();
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("auth.example.com", 443));
        assert_eq!(t.host_header, "auth.example.com");
        let t = target("http://127.0.0.1:8080/token").unwrap();
        assert!(!t.tls);
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        assert_eq!(t.host_header, "127.0.0.1:8080");
        let t = target("http://[::1]:9/token").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(t.host_header, "[::1]:9");
    }

    #[test]
    fn targets_refuse_other_schemes_user_information_and_bad_ports() {
        for uri in [
            "ftp://a.example/x",
            "https://user:pw@a.example/x",
            "https://a.example:99999/x",
            "http://127.0.0.1:65536/x",
        ] {
            let error = target(uri).err().unwrap();
            assert_eq!(error.kind(), TransportErrorKind::Other, "{uri}");
            assert!(!error.to_string().contains("pw"), "{error}");
        }
    }

    #[test]
    fn the_head_closes_the_connection_and_states_the_length() {
        let request = http::Request::post("https://auth.example.com:8443/connect/token?x=1")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("connection", "keep-alive")
            .header("host", "evil.example")
            .body(b"grant_type=client_credentials".to_vec())
            .unwrap();
        let target = Target::of(request.uri()).unwrap();
        let head = String::from_utf8(request_head(&request, &target)).unwrap();
        assert_eq!(
            head,
            "POST /connect/token?x=1 HTTP/1.1\r\n\
             Host: auth.example.com:8443\r\n\
             content-type: application/x-www-form-urlencoded\r\n\
             Content-Length: 29\r\n\
             Connection: close\r\n\r\n"
        );
        let query_only = http::Request::post("https://as.example?tenant=a")
            .body(Vec::new())
            .unwrap();
        let target = Target::of(query_only.uri()).unwrap();
        let head = String::from_utf8(request_head(&query_only, &target)).unwrap();
        assert!(
            head.starts_with("POST /?tenant=a HTTP/1.1\r\nHost: as.example\r\n"),
            "{head}"
        );
        let get = http::Request::get("http://127.0.0.1/.well-known/openid-configuration")
            .body(Vec::new())
            .unwrap();
        let target = Target::of(get.uri()).unwrap();
        let head = String::from_utf8(request_head(&get, &target)).unwrap();
        assert_eq!(
            head,
            "GET /.well-known/openid-configuration HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn debug_names_the_roots() {
        assert_eq!(
            format!("{:?}", DirectHttp::new()),
            r#"DirectHttp { roots: "webpki-roots" }"#
        );
    }
}
