//! [`Routes`]: which origins get which key's tokens.
//!
//! A token is attached only to requests whose origin (scheme, host, port) was
//! configured for it, and only `https` origins or `http` on a loopback host
//! may be configured: a bearer token sent in clear text is a token given away.

use http::Uri;
use token_keeper::{ConfigError, KeyId};

use crate::error::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    fn new(scheme: &str, host: &str, port: Option<u16>) -> Option<Origin> {
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if host.is_empty() {
            return None;
        }
        Some(Origin {
            scheme,
            host,
            port: port.unwrap_or(default_port),
        })
    }

    fn of(uri: &Uri) -> Option<Origin> {
        Origin::new(uri.scheme_str()?, uri.host()?, uri.port_u16())
    }

    fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Origins and the keys whose tokens they get.
#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<(Origin, KeyId)>,
}

impl Routes {
    /// No routes.
    pub fn new() -> Routes {
        Routes::default()
    }

    /// Attaches `key`'s tokens to requests for `origin` (`https://host[:port]`,
    /// or `http://` on a loopback host).
    pub fn add(&mut self, origin: &str, key: KeyId) -> Result<(), Error> {
        let uri: Uri = origin
            .parse()
            .map_err(|_| Error::Config(ConfigError::new("origin is not a valid URL")))?;
        let origin = Origin::of(&uri).ok_or_else(|| {
            Error::Config(ConfigError::new(
                "origin must be an http(s) URL with a host",
            ))
        })?;
        if origin.scheme != "https" && !origin.is_loopback() {
            return Err(Error::Config(ConfigError::new(
                "tokens are attached only to https origins (or http on loopback)",
            )));
        }
        self.routes.push((origin, key));
        Ok(())
    }

    /// The key for a request URI, if its origin is routed.
    pub fn key_for(&self, uri: &Uri) -> Option<KeyId> {
        let origin = Origin::of(uri)?;
        self.find(&origin)
    }

    /// The key for a request given by its parts (for HTTP libraries with their own URL type).
    pub fn key_for_parts(&self, scheme: &str, host: &str, port: Option<u16>) -> Option<KeyId> {
        let origin = Origin::new(scheme, host, port)?;
        self.find(&origin)
    }

    fn find(&self, origin: &Origin) -> Option<KeyId> {
        self.routes
            .iter()
            .find(|(o, _)| o == origin)
            .map(|(_, key)| *key)
    }
}

/// Whether requests with this method usually carry a body; an empty replayed
/// body is sent as "no body" for the others.
pub fn may_carry_body(method: &str) -> bool {
    !matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS" | "TRACE")
}

#[cfg(test)]
mod tests {
    use super::*;
    use token_keeper::{ClientAuth, ClientConfig, ClientSecret, ManagerConfig, TokenManager};

    fn key() -> KeyId {
        let mut core = TokenManager::new(ManagerConfig::default(), 1);
        let c = core
            .add_client(
                "c",
                ClientConfig::new(
                    "https://as.example/t",
                    "c",
                    ClientAuth::Basic(ClientSecret::new("s")),
                )
                .unwrap(),
            )
            .unwrap();
        core.default_key(c)
    }

    #[test]
    fn origins_match_scheme_host_and_port() {
        let key = key();
        let mut routes = Routes::new();
        routes.add("https://API.example.com", key).unwrap();
        routes.add("http://127.0.0.1:8080", key).unwrap();
        routes.add("http://[::1]:9000", key).unwrap();
        assert_eq!(
            routes.key_for(&"https://api.example.com/x?y".parse().unwrap()),
            Some(key)
        );
        assert_eq!(
            routes.key_for(&"https://api.example.com:443/".parse().unwrap()),
            Some(key)
        );
        assert_eq!(
            routes.key_for(&"https://api.example.com:8443/".parse().unwrap()),
            None
        );
        assert_eq!(
            routes.key_for(&"http://api.example.com/".parse().unwrap()),
            None
        );
        assert_eq!(
            routes.key_for(&"https://evil.example.com/".parse().unwrap()),
            None
        );
        assert_eq!(
            routes.key_for(&"http://127.0.0.1:8080/api".parse().unwrap()),
            Some(key)
        );
        assert_eq!(routes.key_for_parts("http", "::1", Some(9000)), Some(key));
        assert_eq!(routes.key_for_parts("http", "127.0.0.1", Some(8081)), None);
    }

    #[test]
    fn clear_text_is_refused_off_loopback() {
        let key = key();
        let mut routes = Routes::new();
        assert!(routes.add("http://api.example.com", key).is_err());
        assert!(routes.add("ftp://api.example.com", key).is_err());
        assert!(routes.add("not a url", key).is_err());
        assert!(routes.add("http://localhost:1", key).is_ok());
        assert!(may_carry_body("POST") && !may_carry_body("GET"));
    }
}
