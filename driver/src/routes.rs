//! [`Routes`]: which origins get which key's tokens.
//!
//! A token is attached only to requests whose origin (scheme, host, port) was
//! configured for it, and only `https` origins or `http` on a loopback host
//! may be configured: a bearer token sent in clear text is a token given away.
//! Origins are the core's [`Origin`]: one check of schemes, hosts, ports and
//! user information for routes, endpoints, DPoP and the proxy decision.

use http::Uri;
use token_keeper::{ConfigError, KeyId, Origin, UrlError};

use crate::error::Error;

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
    /// or `http://` on a loopback host). An origin is scheme, host and port
    /// only: a path is refused, since tokens are not routed by path and a
    /// path that was silently ignored would send them wider than meant.
    pub fn add(&mut self, origin: &str, key: KeyId) -> Result<(), Error> {
        let origin = Origin::parse(origin).map_err(|e| match e {
            UrlError::UnexpectedPath => Error::Config(ConfigError::new(
                "a route is an origin (https://host[:port]), without a path: tokens go to \
                 every path of the origin",
            )),
            other => Error::Config(ConfigError::new(other.reason())),
        })?;
        if !origin.may_carry_credentials() {
            return Err(Error::Config(ConfigError::new(
                "tokens are attached only to https origins (or http on loopback)",
            )));
        }
        self.routes.push((origin, key));
        Ok(())
    }

    /// The key for a request URI, if its origin is routed. A URI the core's
    /// URL check refuses (user information, an invalid port) is never routed.
    pub fn key_for(&self, uri: &Uri) -> Option<KeyId> {
        let origin = Origin::of(uri).ok()?;
        self.routes
            .iter()
            .find(|(o, _)| *o == origin)
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
        assert_eq!(
            routes.key_for(&"http://[::1]:9000/".parse().unwrap()),
            Some(key)
        );
        assert_eq!(
            routes.key_for(&"http://127.0.0.1:8081/".parse().unwrap()),
            None
        );
        // User information or an invalid port: never routed.
        assert_eq!(
            routes.key_for(&"https://u:p@api.example.com/".parse().unwrap()),
            None
        );
    }

    #[test]
    fn clear_text_is_refused_off_loopback() {
        let key = key();
        let mut routes = Routes::new();
        assert!(routes.add("http://api.example.com", key).is_err());
        assert!(routes.add("ftp://api.example.com", key).is_err());
        assert!(routes.add("not a url", key).is_err());
        assert!(routes.add("http://localhost:1", key).is_ok());
        // A path is refused, not silently ignored.
        let error = routes.add("https://api.example.com/v1", key).unwrap_err();
        assert!(error.to_string().contains("without a path"), "{error}");
        assert!(routes.add("https://api.example.com/", key).is_ok());
        assert!(may_carry_body("POST") && !may_carry_body("GET"));
    }
}
