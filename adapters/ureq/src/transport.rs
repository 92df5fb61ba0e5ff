//! Sending the core's requests with ureq, and reading the answers within bounds.

use std::io::Read;
use std::time::Duration;

use token_keeper::{ConfigError, Proxy, TransportError, TransportErrorKind};
#[cfg(test)]
use token_keeper::{ProxyDecision, ProxySettings};
#[cfg(any(feature = "rustls", feature = "native-tls"))]
use token_keeper_driver::tls::TlsRoots;
use token_keeper_driver::tls::TlsSettings;
use token_keeper_driver::{Error, Transport};

/// An agent for token and discovery requests: 4xx/5xx are responses, not
/// errors (their headers and OAuth error bodies matter); no redirects are
/// followed (a token endpoint that redirects is misconfigured, and following
/// could carry credentials elsewhere); every call is bounded in time. It has
/// no proxy of its own (ureq's default would read the environment and tunnel
/// even loopback destinations): the engine applies the core's proxy
/// decision to each request ([`UreqTransport`]).
pub(crate) fn token_agent(
    connect_timeout: Duration,
    timeout: Duration,
    tls: &TlsSettings,
) -> Result<ureq::Agent, Error> {
    let config = ureq::Agent::config_builder();
    #[cfg(any(feature = "rustls", feature = "native-tls"))]
    let config = config.tls_config(tls_config(tls)?);
    #[cfg(not(any(feature = "rustls", feature = "native-tls")))]
    if *tls != TlsSettings::default() {
        return Err(Error::Config(ConfigError::new(
            "TLS settings need the rustls or native-tls feature of token-keeper-ureq",
        )));
    }
    Ok(config
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_connect(Some(connect_timeout))
        .timeout_global(Some(timeout))
        .user_agent(concat!("token-keeper/", env!("CARGO_PKG_VERSION")))
        .build()
        .new_agent())
}

/// ureq's TLS configuration for `tls`: the Mozilla roots (ureq's default),
/// the Mozilla roots plus the user's CAs, or the platform verifier. The
/// token client applies it to its own requests; give it to the agents you
/// build for your APIs too (`ConfigBuilder::tls_config`) when they should
/// trust the same CAs:
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use token_keeper_ureq::TlsSettings;
/// let tls = TlsSettings::webpki().with_ca_file("corp-ca.pem".as_ref())?;
/// let agent = ureq::Agent::config_builder()
///     .tls_config(token_keeper_ureq::tls_config(&tls)?)
///     .build()
///     .new_agent();
/// # Ok(()) }
/// ```
#[cfg(any(feature = "rustls", feature = "native-tls"))]
pub fn tls_config(tls: &TlsSettings) -> Result<ureq::tls::TlsConfig, Error> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let extra = tls.extra_certificates();
    let roots = match tls.roots() {
        TlsRoots::Webpki if extra.is_empty() => RootCerts::WebPki,
        TlsRoots::Webpki => {
            let mozilla = webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter();
            let all: Vec<Certificate<'static>> = mozilla
                .chain(extra)
                .map(|der| Certificate::from_der(der.as_ref()).to_owned())
                .collect();
            RootCerts::from(all)
        }
        #[cfg(feature = "platform-verifier")]
        TlsRoots::Platform if extra.is_empty() => RootCerts::PlatformVerifier,
        #[cfg(feature = "platform-verifier")]
        TlsRoots::Platform => {
            return Err(Error::Config(ConfigError::new(
                "the ureq adapter cannot add CA certificates to the operating system's store: \
                 install the CA in the system store, or add it to the Mozilla roots \
                 (TlsSettings::webpki().with_ca_file(..))",
            )))
        }
        #[allow(unreachable_patterns)]
        _ => {
            return Err(Error::Config(ConfigError::new(
                "these TLS roots are not supported by this build",
            )))
        }
    };
    Ok(TlsConfig::builder().root_certs(roots).build())
}

/// ureq's form of a proxy the core decided to tunnel through.
pub(crate) fn ureq_proxy(proxy: &Proxy) -> Result<ureq::Proxy, ureq::Error> {
    // ureq puts the host into a URL: an IPv6 address needs its brackets.
    let host = if proxy.host().contains(':') {
        format!("[{}]", proxy.host())
    } else {
        proxy.host().to_owned()
    };
    let mut builder = ureq::Proxy::builder(ureq::ProxyProtocol::Http)
        .host(&host)
        .port(proxy.port());
    if let Some((user, password)) = proxy.credentials() {
        builder = builder.username(user).password(password);
    }
    builder.build()
}

/// Sends token and discovery requests for the engine: an agent with no
/// proxy of its own and no redirects ([`token_agent`]).
pub(crate) struct UreqTransport(pub(crate) ureq::Agent);

impl Transport for UreqTransport {
    /// Sends `request` (through `via`, set on the request) and reads at most
    /// `max_body + 1` bytes of the answer, so the core can tell an over-long
    /// body from one that fits.
    fn send(
        &self,
        request: http::Request<Vec<u8>>,
        via: Option<&Proxy>,
        max_body: usize,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let agent = &self.0;
        let request = match via {
            None => request,
            Some(via) => {
                let proxy = ureq_proxy(via).map_err(|e| {
                    TransportError::new(
                        TransportErrorKind::Connect,
                        format!("unusable proxy {}: {e}", via.url_without_credentials()),
                    )
                })?;
                agent.configure_request(request).proxy(Some(proxy)).build()
            }
        };
        let response = agent.run(request).map_err(classify)?;
        let (parts, body) = response.into_parts();
        let mut bytes = Vec::new();
        body.into_reader()
            .take(max_body as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| {
                // ureq reports its own timeouts during the body read as an io::Error
                // of kind Other wrapping ureq::Error::Timeout.
                let ureq_timeout = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<ureq::Error>())
                    .is_some_and(|inner| matches!(inner, ureq::Error::Timeout(_)));
                let kind = match e.kind() {
                    _ if ureq_timeout => TransportErrorKind::Timeout,
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                        TransportErrorKind::Timeout
                    }
                    _ => TransportErrorKind::Io,
                };
                TransportError::new(kind, format!("reading the response body: {e}"))
            })?;
        Ok(http::Response::from_parts(parts, bytes))
    }
}

/// Maps ureq's error to the core's transport error kinds.
pub(crate) fn classify(error: ureq::Error) -> TransportError {
    let kind = match &error {
        ureq::Error::Timeout(_) => TransportErrorKind::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => TransportErrorKind::Connect,
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::AddrNotAvailable => {
                TransportErrorKind::Connect
            }
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                TransportErrorKind::Timeout
            }
            _ => TransportErrorKind::Io,
        },
        _ => TransportErrorKind::Other,
    };
    TransportError::new(kind, error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_proxy_is_usable() {
        let settings = ProxySettings::explicit("http://u:p@[::1]:3128", "").unwrap();
        let remote: http::Uri = "https://idp.test/token".parse().unwrap();
        let ProxyDecision::Tunnel(via) = settings.decide(&remote) else {
            panic!("an explicit proxy tunnels a remote destination");
        };
        let proxy = ureq_proxy(via).unwrap();
        assert_eq!(proxy.port(), 3128);
        assert_eq!(proxy.username(), Some("u"));
    }
}
