//! Client and manager configuration.
//!
//! A [`ClientConfig`] describes one named client (the "m2m" client of a
//! service): where its token endpoint is, how it authenticates, what it asks
//! for, and how its tokens are refreshed. [`ManagerConfig`] holds the limits
//! that apply to every client.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use http::Uri;
use zeroize::Zeroizing;

use crate::jose::Signer;

use crate::discovery::{parse_issuer, ServerMetadata};
use crate::error::ConfigError;
use crate::key::{validate_param_name, validate_resource, Scope};
use crate::url::{HttpUrl, UrlError};

/// A client secret. Its `Debug` output is redacted and its memory is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(Zeroizing<String>);

impl ClientSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> ClientSecret {
        ClientSecret(Zeroizing::new(secret.into()))
    }

    /// The secret itself. Named so that every use stands out in review.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret([redacted])")
    }
}

/// How the client authenticates to the token endpoint (RFC 6749 §2.3).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ClientAuth {
    /// `client_secret_basic`: `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`,
    /// with the RFC 6749 §2.3.1 form-urlencoding (a space becomes `+`).
    Basic(ClientSecret),
    /// `client_secret_basic` without the form-urlencoding step, for servers
    /// that do not decode the credentials (`base64(id ":" secret)`).
    BasicRaw(ClientSecret),
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    Post(ClientSecret),
    /// No client authentication: only `client_id` in the body. For servers
    /// that authenticate the client by other means (mutual TLS, a network boundary).
    None,
    /// `private_key_jwt` (RFC 7523 §2.2): a signed client assertion, fresh
    /// for every attempt (retries included).
    PrivateKeyJwt(PrivateKeyJwt),
}

/// The `aud` of a `private_key_jwt` client assertion, always sent as a
/// single string (never an array).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AssertionAudience {
    /// The token endpoint URL (the default; RFC 7523 §3).
    TokenEndpoint,
    /// The authorization server's issuer identifier, as
    /// draft-ietf-oauth-rfc7523bis recommends (a single string, so that an
    /// assertion cannot be made out to several servers at once; OpenID
    /// Connect servers accept it too). It must be an issuer identifier (an
    /// `https` URL, or `http` on loopback, without query or fragment):
    /// [`ClientConfig::new`] refuses anything else, and
    /// [`ClientConfig::check_against`] compares it with the discovered issuer.
    Issuer(String),
}

/// Settings of `private_key_jwt` client authentication.
#[derive(Clone, Debug)]
pub struct PrivateKeyJwt {
    pub(crate) signer: Arc<dyn Signer>,
    pub(crate) audience: AssertionAudience,
    pub(crate) lifetime: Duration,
}

impl PrivateKeyJwt {
    /// Assertions signed by `signer`, for the token endpoint, valid 60 s.
    pub fn new(signer: Arc<dyn Signer>) -> PrivateKeyJwt {
        PrivateKeyJwt {
            signer,
            audience: AssertionAudience::TokenEndpoint,
            lifetime: Duration::from_secs(60),
        }
    }

    /// Sets the `aud` claim.
    pub fn audience(mut self, audience: AssertionAudience) -> PrivateKeyJwt {
        self.audience = audience;
        self
    }

    /// Sets how long each assertion is valid (`exp - iat`; default 60 s).
    pub fn lifetime(mut self, lifetime: Duration) -> PrivateKeyJwt {
        self.lifetime = lifetime;
        self
    }
}

impl ClientAuth {
    /// The secret this method sends, if any; used to scrub error excerpts.
    pub(crate) fn secret(&self) -> Option<&ClientSecret> {
        match self {
            ClientAuth::Basic(s) | ClientAuth::BasicRaw(s) | ClientAuth::Post(s) => Some(s),
            ClientAuth::None | ClientAuth::PrivateKeyJwt(_) => None,
        }
    }
}

/// When tokens are considered stale and expired.
///
/// A token issued with lifetime `L` (from `expires_in`, measured from the
/// moment the token request was created, so network time only shortens it) is:
///
/// * **usable** until `L - buffer`, where `buffer = min(expiry_buffer, L / 4)`.
///   The default buffer is 60 s, yet a short-lived token is still used for at
///   least three quarters of its life: a 5 s token is attached for 3.75 s, not
///   thrown away at once.
/// * **Fresh** until its refresh point, `usable * (refresh_at - jitter * r)`,
///   where `r` in `[0, 1)` comes from the manager's injected random source, so
///   a fleet of processes started together does not refresh in lockstep. With
///   the defaults (0.8 and 0.1) a one-hour token is refreshed between 70 % and
///   80 % of its usable life.
/// * **Stale** from the refresh point until the end of its usable life: it is
///   still attached while exactly one refresh runs.
/// * **Expired** afterwards: never attached again.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshPolicy {
    /// Safety margin before the server-side expiry (default 60 s; capped at a
    /// quarter of the token's lifetime).
    pub expiry_buffer: Duration,
    /// Fraction of the usable life after which a refresh starts (default 0.8; clamped to `0.0..=1.0`).
    pub refresh_at: f64,
    /// How much earlier, as a fraction of the usable life, the refresh point may be moved at random (default 0.1).
    pub refresh_jitter: f64,
    /// Lifetime assumed when the server sends no `expires_in` (default 300 s). Never "forever".
    pub default_lifetime: Duration,
    /// Longest lifetime believed; larger `expires_in` values are clamped (default 24 h).
    pub max_lifetime: Duration,
    /// Refresh ahead on a timer (see [`TokenManager::poll_timeout`](crate::TokenManager::poll_timeout))
    /// rather than only when a caller finds the token stale (default `true`).
    pub proactive: bool,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        RefreshPolicy {
            expiry_buffer: Duration::from_secs(60),
            refresh_at: 0.8,
            refresh_jitter: 0.1,
            default_lifetime: Duration::from_secs(300),
            max_lifetime: Duration::from_secs(24 * 3600),
            proactive: true,
        }
    }
}

/// How failed token requests are retried.
///
/// After the `n`-th consecutive failure the key waits
/// `min(max, initial * 2^(n-1))`, shortened at random by up to `jitter`
/// (a fraction), and never less than a server's `Retry-After` (itself capped
/// at [`BackoffPolicy::max_retry_after`]).
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffPolicy {
    /// Delay after the first failure (default 1 s).
    pub initial: Duration,
    /// Longest computed delay (default 60 s).
    pub max: Duration,
    /// Fraction by which each delay may be shortened at random (default 0.2; clamped to `0.0..=1.0`).
    pub jitter: f64,
    /// Longest `Retry-After` honoured (default 1 h).
    pub max_retry_after: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: 0.2,
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

/// One named client: the token endpoint, the credentials and what to ask for.
///
/// ```
/// use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
///
/// let config = ClientConfig::new(
///     "https://auth.example.com/connect/token",
///     "m2m",
///     ClientAuth::Basic(ClientSecret::new("s3cret")),
/// )?
/// .scope("api.read api.write")
/// .resource("https://api.example.com/")?
/// .param("tenant", "acme")?;
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), token_keeper::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub(crate) token_endpoint: Uri,
    pub(crate) client_id: String,
    pub(crate) auth: ClientAuth,
    pub(crate) scope: Scope,
    pub(crate) resources: Vec<String>,
    pub(crate) audience: Option<String>,
    pub(crate) params: Vec<(String, String)>,
    pub(crate) refresh: RefreshPolicy,
    pub(crate) backoff: BackoffPolicy,
    pub(crate) dpop: Option<Arc<dyn Signer>>,
    pub(crate) require_dpop_bound: bool,
}

impl ClientConfig {
    /// A client with its token endpoint, id and authentication.
    ///
    /// The endpoint must be an absolute `https` URL, or `http` on a loopback
    /// host (`127.0.0.0/8`, `::1`, `localhost`): client secrets are never sent
    /// in clear text over a network.
    pub fn new(
        token_endpoint: &str,
        client_id: impl Into<String>,
        auth: ClientAuth,
    ) -> Result<ClientConfig, ConfigError> {
        let token_endpoint = parse_endpoint(token_endpoint)?;
        if let ClientAuth::PrivateKeyJwt(settings) = &auth {
            check_assertion_audience(&settings.audience)?;
        }
        let client_id = client_id.into();
        if client_id.is_empty() {
            return Err(ConfigError::new("client id is empty"));
        }
        Ok(ClientConfig {
            token_endpoint,
            client_id,
            auth,
            scope: Scope::default(),
            resources: Vec::new(),
            audience: None,
            params: Vec::new(),
            refresh: RefreshPolicy::default(),
            backoff: BackoffPolicy::default(),
            dpop: None,
            require_dpop_bound: false,
        })
    }

    /// Binds tokens to this key with DPoP (RFC 9449): every token request
    /// and every API request carries a proof signed by it, tokens come back
    /// as `token_type: DPoP` and are attached as `Authorization: DPoP …`.
    pub fn dpop(mut self, signer: Arc<dyn Signer>) -> ClientConfig {
        self.dpop = Some(signer);
        self
    }

    /// Refuses tokens the server did not bind to the DPoP key (default
    /// `false`).
    ///
    /// RFC 9449 §7.1 lets a server answer a DPoP token request with a plain
    /// `token_type: Bearer` token; by default such a token is used as Bearer
    /// (and [`Event::TokenNotBound`](crate::Event::TokenNotBound) says so), for
    /// interoperability. A client whose tokens must not be replayable if
    /// stolen sets this: the answer then fails with
    /// [`ResponseProblem::NotDPoPBound`](crate::ResponseProblem::NotDPoPBound),
    /// the token is neither cached nor used, and the key backs off as after any
    /// unusable response. Needs [`ClientConfig::dpop`]:
    /// [`TokenManager::add_client`](crate::TokenManager::add_client) refuses it alone.
    pub fn require_dpop_bound(mut self, required: bool) -> ClientConfig {
        self.require_dpop_bound = required;
        self
    }

    /// Whether unbound (Bearer) answers are refused; see [`ClientConfig::require_dpop_bound`].
    pub fn requires_dpop_bound(&self) -> bool {
        self.require_dpop_bound
    }

    /// The DPoP key, if tokens are bound to one.
    pub fn dpop_signer(&self) -> Option<&Arc<dyn Signer>> {
        self.dpop.as_ref()
    }

    /// The space-separated scopes to request (order and duplicates do not matter).
    pub fn scope(mut self, scope: &str) -> ClientConfig {
        self.scope = Scope::parse(scope);
        self
    }

    /// Adds an RFC 8707 `resource` (an absolute URI without a fragment); may be repeated.
    pub fn resource(mut self, resource: &str) -> Result<ClientConfig, ConfigError> {
        validate_resource(resource)?;
        self.resources.push(resource.to_owned());
        Ok(self)
    }

    /// Sets the `audience` parameter (used by Auth0, Okta and others instead of `resource`).
    pub fn audience(mut self, audience: impl Into<String>) -> ClientConfig {
        self.audience = Some(audience.into());
        self
    }

    /// Adds an extra form parameter. The names the protocol owns
    /// (`grant_type`, `client_id`, `scope`, `resource`, …) are refused.
    pub fn param(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<ClientConfig, ConfigError> {
        let name = name.into();
        validate_param_name(&name)?;
        self.params.push((name, value.into()));
        Ok(self)
    }

    /// Replaces the refresh policy.
    pub fn refresh_policy(mut self, policy: RefreshPolicy) -> ClientConfig {
        self.refresh = policy;
        self
    }

    /// Replaces the backoff policy.
    pub fn backoff_policy(mut self, policy: BackoffPolicy) -> ClientConfig {
        self.backoff = policy;
        self
    }

    /// Checks this client against the metadata its authorization server
    /// published (see [`discovery`](crate::discovery)), for adapters that
    /// configure a client from discovery or alongside it.
    ///
    /// Refuses a token endpoint other than the discovered one (compared as
    /// URLs: scheme and host case-insensitively, port, path and query exactly),
    /// and an [`AssertionAudience::Issuer`] other than the discovered issuer
    /// (compared exactly, as RFC 8414 §3.3 compares issuers): an assertion
    /// made out to another issuer is refused by this server, or worse, is
    /// accepted by the other one. The errors name neither value.
    pub fn check_against(&self, metadata: &ServerMetadata) -> Result<(), ConfigError> {
        let same_endpoint = metadata
            .token_endpoint()
            .parse::<Uri>()
            .is_ok_and(|discovered| discovered == self.token_endpoint);
        if !same_endpoint {
            return Err(ConfigError::new(
                "the token endpoint differs from the token_endpoint in the authorization server's metadata",
            ));
        }
        if let ClientAuth::PrivateKeyJwt(settings) = &self.auth {
            if let AssertionAudience::Issuer(issuer) = &settings.audience {
                if issuer != metadata.issuer() {
                    return Err(ConfigError::new(
                        "the private_key_jwt assertion audience differs from the issuer in the authorization server's metadata",
                    ));
                }
            }
        }
        Ok(())
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &Uri {
        &self.token_endpoint
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client authentication method.
    pub fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    /// The refresh policy.
    pub fn refresh(&self) -> &RefreshPolicy {
        &self.refresh
    }
}

/// Limits that apply to the whole manager.
#[derive(Clone, Debug, PartialEq)]
pub struct ManagerConfig {
    /// Largest token-endpoint response body accepted (default 1 MiB).
    /// Adapters read at most one byte more than this.
    pub max_response_body: usize,
    /// How long a token request may stay in flight before the core gives up
    /// on it (default 30 s). Adapters should time out sooner; this bound makes
    /// sure waiters are released even if an adapter loses a request.
    pub request_timeout: Duration,
    /// Most distinct cache keys (client + scope + resources + parameters) kept (default 10 000).
    pub max_keys: usize,
    /// How long a `DPoP-Nonce` from a server is used before it is forgotten (default 1 h).
    pub dpop_nonce_lifetime: Duration,
    /// How long a 401 from a protected resource stops throwing away tokens
    /// after it has thrown one away (default 10 s; zero turns damping off).
    ///
    /// An API that rejects every token (a wrong audience, a clock skewed
    /// server) would otherwise cost a token request and a retry per call, and
    /// never back off, since every token request succeeds. So once a 401 has
    /// invalidated a key's token, a 401 for a token fetched after it, within
    /// this window, neither invalidates it nor asks for a retry: the response
    /// goes to the caller, and [`Event::RejectionDamped`](crate::Event::RejectionDamped)
    /// says so. The first 401 after the window invalidates again and opens a
    /// new window. See [`TokenManager::handle_resource_response`](crate::TokenManager::handle_resource_response).
    pub resource_rejection_damping: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            max_response_body: 1024 * 1024,
            request_timeout: Duration::from_secs(30),
            max_keys: 10_000,
            dpop_nonce_lifetime: Duration::from_secs(3600),
            resource_rejection_damping: Duration::from_secs(10),
        }
    }
}

/// Checks a token endpoint with the crate's one URL rule ([`HttpUrl`]):
/// `https`, or `http` on loopback, no user information, a valid port, no
/// fragment (RFC 6749 §3.2).
fn parse_endpoint(url: &str) -> Result<Uri, ConfigError> {
    HttpUrl::parse(url)
        .and_then(HttpUrl::require_credential_safe)
        .map(HttpUrl::into_uri)
        .map_err(|error| {
            ConfigError::new(match error {
                UrlError::NotUrl | UrlError::TooLong => "token endpoint is not a valid URL",
                UrlError::NotHttp => "token endpoint must be an http(s) URL",
                UrlError::NoHost => "token endpoint has no host",
                UrlError::InvalidHost => "token endpoint has an invalid host",
                // Never echoed: the user information may be a password.
                UrlError::UserInfo => {
                    "token endpoint carries user information; give credentials as ClientAuth"
                }
                UrlError::InvalidPort => "token endpoint has an invalid port",
                UrlError::Fragment => "token endpoint has a fragment (RFC 6749 §3.2 forbids one)",
                UrlError::PlainHttp => "token endpoint uses http on a non-loopback host; use https",
                // Only origins and issuers refuse a path or a query.
                UrlError::UnexpectedPath | UrlError::UnexpectedQuery => {
                    "token endpoint is not a valid URL"
                }
            })
        })
}

/// Refuses an [`AssertionAudience::Issuer`] that is no issuer identifier:
/// a server compares `aud` with its issuer exactly, so a mistyped one fails
/// every token request; better to fail at configuration.
fn check_assertion_audience(audience: &AssertionAudience) -> Result<(), ConfigError> {
    let AssertionAudience::Issuer(issuer) = audience else {
        return Ok(());
    };
    parse_issuer(issuer).map(drop).map_err(|error| {
        ConfigError::new(match error {
            UrlError::NotUrl | UrlError::TooLong => {
                "private_key_jwt assertion audience: the issuer is not a valid URL"
            }
            UrlError::NoHost => "private_key_jwt assertion audience: the issuer has no host",
            UrlError::InvalidHost => {
                "private_key_jwt assertion audience: the issuer has an invalid host"
            }
            UrlError::NotHttp | UrlError::PlainHttp => {
                "private_key_jwt assertion audience: the issuer must be an https URL (or http on loopback)"
            }
            UrlError::UnexpectedQuery | UrlError::Fragment | UrlError::UnexpectedPath => {
                "private_key_jwt assertion audience: the issuer must not have a query or fragment"
            }
            UrlError::UserInfo => {
                "private_key_jwt assertion audience: the issuer carries user information"
            }
            UrlError::InvalidPort => {
                "private_key_jwt assertion audience: the issuer has an invalid port"
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> ClientAuth {
        ClientAuth::Basic(ClientSecret::new("hunter2"))
    }

    #[test]
    fn endpoint_must_be_https_or_loopback_http() {
        assert!(ClientConfig::new("https://as.example/token", "c", secret()).is_ok());
        assert!(ClientConfig::new("http://127.0.0.1:8080/token", "c", secret()).is_ok());
        assert!(ClientConfig::new("http://[::1]:8080/token", "c", secret()).is_ok());
        assert!(ClientConfig::new("http://localhost/token", "c", secret()).is_ok());
        let err = ClientConfig::new("http://as.example/token", "c", secret()).unwrap_err();
        assert!(err.to_string().contains("https"), "{err}");
        assert!(ClientConfig::new("ftp://as.example/token", "c", secret()).is_err());
        assert!(ClientConfig::new("/token", "c", secret()).is_err());
        for (url, why) in [
            ("https://user:pw@as.example/token", "user information"),
            ("https://as.example:99999/token", "invalid port"),
            ("http://127.0.0.1:65536/token", "invalid port"),
            ("https://:443/token", "no host"),
        ] {
            let err = ClientConfig::new(url, "c", secret()).unwrap_err();
            assert!(err.to_string().contains(why), "{url}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        assert!(ClientConfig::new("https://as.example:443/token", "c", secret()).is_ok());
        assert!(ClientConfig::new("https://[::1]:8443/token", "c", secret()).is_ok());
        assert!(ClientConfig::new("not a url", "c", secret()).is_err());
        assert!(ClientConfig::new("https://as.example/token", "", secret()).is_err());
    }

    #[test]
    fn endpoint_rules_are_the_shared_url_rules() {
        // New refusals, now that the endpoint goes through `HttpUrl`: a
        // fragment (RFC 6749 §3.2), port 0, a signed port, brackets around
        // no IPv6 address. The rest were refused before, with these words.
        for (url, why) in [
            ("https://as.example/token#x", "fragment"),
            ("https://as.example/token#", "fragment"),
            ("https://as.example:0/token", "invalid port"),
            ("https://as.example:+443/token", "invalid port"),
            ("https://as.example:x/token", "invalid port"),
            ("https://[v1.x]/token", "invalid host"),
            ("https://user@as.example/token", "user information"),
            ("http://user:pw@127.0.0.1/token", "user information"),
            ("http://localhost./token", "https"),
            ("http://127.1/token", "https"),
        ] {
            let err = ClientConfig::new(url, "c", secret()).unwrap_err();
            assert!(err.to_string().contains(why), "{url}: {err}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
        // Still accepted: an empty port means the default one; the endpoint
        // keeps its path, query and spelling.
        for url in [
            "https://as.example:/token",
            "https://as.example:65535/token",
            "https://AS.example/Token?tenant=a",
            "HTTP://LOCALHOST:8080/token",
        ] {
            let config = ClientConfig::new(url, "c", secret()).unwrap();
            assert_eq!(
                config.token_endpoint(),
                &url.parse::<Uri>().unwrap(),
                "{url}"
            );
        }
    }

    #[test]
    fn an_issuer_audience_follows_the_issuer_rules() {
        let check = |issuer: &str| {
            check_assertion_audience(&AssertionAudience::Issuer(issuer.to_owned()))
                .map_err(|e| e.to_string())
        };
        assert_eq!(check("https://as.example/realms/a"), Ok(()));
        assert_eq!(check("http://[::1]:8080"), Ok(()));
        // New refusals: user information, invalid ports and hosts. A query
        // and plain http off loopback were refused before, and still are.
        for (issuer, why) in [
            ("https://svc:pw@as.example", "user information"),
            ("https://as.example:99999", "invalid port"),
            ("https://as.example:0", "invalid port"),
            ("https://[v1.x]", "invalid host"),
            ("https://as.example?x", "query or fragment"),
            ("http://127.1", "https"),
        ] {
            let err = check(issuer).unwrap_err();
            assert!(
                err.contains("assertion audience") && err.contains(why),
                "{issuer}: {err}"
            );
            assert!(!err.contains("pw"), "{err}");
        }
    }

    #[test]
    fn secrets_are_redacted_in_debug() {
        let config = ClientConfig::new("https://as.example/token", "c", secret()).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn reserved_parameters_are_refused() {
        let config = ClientConfig::new("https://as.example/token", "c", secret()).unwrap();
        for name in [
            "grant_type",
            "client_id",
            "client_secret",
            "scope",
            "resource",
            "audience",
            "",
        ] {
            assert!(config.clone().param(name, "x").is_err(), "{name}");
        }
        assert!(config.param("tenant", "x").is_ok());
    }
}
