//! Fixtures the adapters' proxy and TLS tests share: a token endpoint at
//! `https://idp.test` that only a recording proxy leads to ([`ProxiedIdp`]),
//! the client the local server knows ([`secret_client`]), TLS settings that
//! trust the test CA ([`trusting_test_ca`]), and the check that a request
//! failed for want of an answer ([`transport_error`]).
//!
//! Everything listens on `127.0.0.1`; `idp.test` is never resolved: the proxy
//! maps the `CONNECT` target `idp.test:443` to the TLS front's address.

use std::io;

use token_keeper::{ClientAuth, ClientConfig, ClientSecret, TransportError};
use token_keeper_driver::tls::TlsSettings;
use token_keeper_driver::Error;

use crate::recording_proxy::{basic_proxy_authorization, RecordingProxy};
use crate::tls_front::TlsFront;
use crate::{LocalAuthServer, ServerConfig};

/// The `CONNECT` target a [`ProxiedIdp`]'s proxy leads to its TLS front.
pub const IDP_TARGET: &str = "idp.test:443";

/// A [`LocalAuthServer`] (default configuration) behind a [`TlsFront`],
/// behind a [`RecordingProxy`] that tunnels [`IDP_TARGET`] to the front: a
/// client that uses the proxy and trusts the test CA reaches the server's
/// token endpoint as `https://idp.test/token`. Stops all three when dropped.
pub struct ProxiedIdp {
    // Dropped in this order: the outermost first.
    proxy: RecordingProxy,
    front: TlsFront,
    server: LocalAuthServer,
}

impl ProxiedIdp {
    /// Starts the three, with a proxy that asks for no credentials.
    pub fn start() -> io::Result<ProxiedIdp> {
        ProxiedIdp::start_inner(None)
    }

    /// Starts the three, with a proxy that answers `407` to every request
    /// that does not carry `Proxy-Authorization` for `user` and `password`
    /// (see [`RecordingProxy::start_with_auth`]).
    pub fn start_with_proxy_auth(user: &str, password: &str) -> io::Result<ProxiedIdp> {
        ProxiedIdp::start_inner(Some(basic_proxy_authorization(user, password)))
    }

    fn start_inner(proxy_authorization: Option<String>) -> io::Result<ProxiedIdp> {
        let server = LocalAuthServer::start(ServerConfig::default())?;
        let front = TlsFront::start(server.addr())?;
        let routes = vec![(IDP_TARGET.to_owned(), front.addr())];
        let proxy = match proxy_authorization {
            Some(expected) => RecordingProxy::start_with_auth(routes, expected)?,
            None => RecordingProxy::start(routes)?,
        };
        Ok(ProxiedIdp {
            proxy,
            front,
            server,
        })
    }

    /// The local authorization server (plain HTTP on its own address too).
    pub fn server(&self) -> &LocalAuthServer {
        &self.server
    }

    /// The TLS front before the server.
    pub fn front(&self) -> &TlsFront {
        &self.front
    }

    /// The recording proxy that leads to the front.
    pub fn proxy(&self) -> &RecordingProxy {
        &self.proxy
    }
}

/// The client a default [`LocalAuthServer`] knows: `m2m` with the secret
/// `s3cret` (`client_secret_basic`), at `token_url`.
pub fn secret_client(token_url: &str) -> ClientConfig {
    ClientConfig::new(
        token_url,
        "m2m",
        ClientAuth::Basic(ClientSecret::new("s3cret")),
    )
    .unwrap()
}

/// TLS settings that trust the web PKI roots and the test CA (so a
/// [`TlsFront`]'s certificate). Never use them outside tests.
pub fn trusting_test_ca() -> TlsSettings {
    TlsSettings::webpki()
        .with_ca_pem(TlsFront::ca_pem().as_bytes())
        .unwrap()
}

/// The transport error an adapter's `result` holds (the request got no
/// answer: refused, reset, TLS failure, a proxy that refused or could not be
/// used); panics, naming what it holds, if it holds anything else.
pub fn transport_error<T: std::fmt::Debug>(result: Result<T, Error>) -> TransportError {
    match result {
        Err(Error::Transport(e)) => e,
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_proxy_leads_idp_test_to_the_front_before_the_server() {
        let idp = ProxiedIdp::start_with_proxy_auth("u", "p").unwrap();
        assert_eq!(idp.front().backend(), idp.server().addr());
        assert_eq!(idp.server().token_requests(), 0);
        assert!(idp.proxy().requests().is_empty());
        assert!(format!("{:?}", idp.proxy()).contains(IDP_TARGET));
        assert_eq!(secret_client("https://idp.test/token").client_id(), "m2m");
        let _ = trusting_test_ca();
    }
}
