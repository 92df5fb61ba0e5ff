//! URLs and origins, checked once: where a secret, a token or a proof may go.
//!
//! **Why this exists.** The same URL rules used to live in several places and
//! drifted apart: "https, or http on loopback" in the client configuration,
//! twice in discovery and again in the adapters' routes; origin normalisation
//! in DPoP, in the routes and in `tokenctl`; the user-information and port
//! checks in the configuration and in one transport, while discovery skipped
//! them, so a discovered `https://as.example:99999/token` was accepted (and
//! [`http::Uri`] reads `:99999` as "no port", which would quietly mean 443).
//! Now each rule is written here, once, and everything else asks [`HttpUrl`]
//! or [`Origin`].
//!
//! **The rules.** An [`HttpUrl`] is an absolute URL with
//!
//! * the scheme `http` or `https`, in any case;
//! * a non-empty host: a name, an IPv4 address or a bracketed IPv6 address
//!   (brackets that hold anything else are refused, zone identifiers too);
//! * no user information (`user:password@`): credentials go in headers, and
//!   the refusal never repeats the URL, since the user information may be a
//!   password;
//! * no port, an empty port (`https://host:/`, the default), or a port of
//!   ASCII digits from 1 to 65535; `:0`, `:65536`, `:99999`, `:x` and `:+443`
//!   are refused rather than read as "the default port";
//! * no fragment (RFC 6749 §3.2 forbids one on the token endpoint, RFC 8414 §2
//!   on an issuer, and RFC 9449 leaves it out of `htu`).
//!
//! Its [`Origin`] is the scheme, the host (lowercase, IPv6 without brackets)
//! and the port (explicit or the scheme's default), so `https://A.example:443`
//! and `https://a.example` are one origin. An origin is shown as
//! `https://host` or `http://[::1]:8080`: the default port left out, IPv6
//! bracketed. DPoP nonces are kept per that string; routes compare origins.
//!
//! A secret or a token may go to a URL only if it
//! [may carry credentials](Origin::may_carry_credentials): `https` to any
//! host, or plain `http` to a loopback host as
//! [`proxy::is_loopback_host`](crate::proxy::is_loopback_host) defines it
//! (`localhost`, `127.0.0.0/8`, `::1`; not `localhost.` nor `127.1`).
//! [`HttpUrl::require_credential_safe`] checks it.
//!
//! ```
//! use token_keeper::{HttpUrl, Origin, Scheme, UrlError};
//!
//! let url = HttpUrl::parse("HTTPS://Auth.Example.com:443/connect/token?x=1")?;
//! assert_eq!(url.origin().to_string(), "https://auth.example.com");
//! assert_eq!(url.origin().scheme(), Scheme::Https);
//! assert_eq!(url.origin().port(), 443);
//! assert_eq!(url.htu(), "https://auth.example.com/connect/token");
//! let url = url.require_credential_safe()?;
//! assert_eq!(url.uri().path(), "/connect/token");
//!
//! // An origin as configured (for routes): no path, query or fragment.
//! let api = Origin::parse("http://[::1]:8080")?;
//! assert!(api.may_carry_credentials());
//! assert_eq!(api.authority(), "[::1]:8080");
//! assert_eq!(Origin::parse("https://api.example/v1"), Err(UrlError::UnexpectedPath));
//!
//! // Refusals name the problem, never the user information.
//! let error = HttpUrl::parse("https://svc:hunter2@as.example/token").unwrap_err();
//! assert_eq!(error, UrlError::UserInfo);
//! assert!(!error.to_string().contains("hunter2"));
//! assert_eq!(HttpUrl::parse("https://as.example:99999/token"), Err(UrlError::InvalidPort));
//! assert_eq!(
//!     HttpUrl::parse("http://as.example/token")?.require_credential_safe(),
//!     Err(UrlError::PlainHttp)
//! );
//! # Ok::<(), UrlError>(())
//! ```

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use http::Uri;

use crate::proxy::is_loopback_host;

/// Longest URL text accepted, in bytes: the most [`http::Uri`] holds.
const MAX_URL_LEN: usize = u16::MAX as usize - 1;

/// `http` or `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// `http`: plain text.
    Http,
    /// `https`: TLS.
    Https,
}

impl Scheme {
    /// `"http"` or `"https"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    /// The port a URL without one means: 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a URL was refused.
///
/// Its `Display` is one line that names the problem and never repeats the
/// URL (which may hold a password as user information, or be huge);
/// [`UrlError::reason`] gives the same text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UrlError {
    /// The text does not parse as a URI.
    NotUrl,
    /// The text is longer than any [`http::Uri`] can hold (65 534 bytes).
    TooLong,
    /// Not an absolute `http` or `https` URL: no scheme (`as.example:443`),
    /// or another one (`ftp://`).
    NotHttp,
    /// The host is missing or empty (`https://:443/`, a relative `/token`).
    NoHost,
    /// The host is neither a name, nor an IPv4 address, nor an IPv6 address
    /// in brackets (`https://[v1.x]/`, `https://a[::1]/`, a zone identifier).
    InvalidHost,
    /// The URL carries user information (`user:password@host`).
    UserInfo,
    /// The port is not ASCII digits from 1 to 65535 (`:0`, `:99999`, `:x`).
    InvalidPort,
    /// The URL has a fragment (`#…`).
    Fragment,
    /// An origin was expected (`scheme://host[:port]`, at most a `/` after
    /// it) and the URL has a path.
    UnexpectedPath,
    /// The URL has a query where none is allowed (an origin, an issuer).
    UnexpectedQuery,
    /// Plain `http` to a host that is not loopback, where a secret or a token
    /// would go: use `https`.
    PlainHttp,
}

impl UrlError {
    /// What is wrong, as one line (the `Display` text).
    pub fn reason(self) -> &'static str {
        match self {
            UrlError::NotUrl => "the URL is not a valid URL",
            UrlError::TooLong => "the URL is longer than 65534 bytes",
            UrlError::NotHttp => "the URL is not an absolute http or https URL",
            UrlError::NoHost => "the URL has no host",
            UrlError::InvalidHost => {
                "the URL has an invalid host (not a name, an IPv4 address or a bracketed IPv6 address)"
            }
            UrlError::UserInfo => "the URL carries user information (not shown)",
            UrlError::InvalidPort => "the URL has an invalid port (not a number from 1 to 65535)",
            UrlError::Fragment => "the URL has a fragment",
            UrlError::UnexpectedPath => {
                "the URL has a path where an origin (scheme://host[:port]) is expected"
            }
            UrlError::UnexpectedQuery => "the URL has a query where none is allowed",
            UrlError::PlainHttp => "the URL uses plain http to a host that is not loopback; use https",
        }
    }
}

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for UrlError {}

/// Where requests go: scheme, host and port.
///
/// The host is lowercase and an IPv6 address is kept without its brackets;
/// the port is the explicit one or the scheme's default, so an explicit
/// default port is the same origin as none. `Display` shows
/// `scheme://authority` ([`Origin::authority`]): the form DPoP nonces are
/// kept per and routes compare.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    scheme: Scheme,
    /// Lowercase; IPv6 without brackets.
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of an absolute `http(s)` URL that passes [`HttpUrl`]'s
    /// checks (a [`Uri`] holds no fragment, so that one cannot be checked).
    pub fn of(uri: &Uri) -> Result<Origin, UrlError> {
        // A relative reference (`/token`) has no host; `as.example:443` has
        // one, and no scheme.
        let authority = uri.authority().ok_or(UrlError::NoHost)?.as_str();
        if authority.contains('@') {
            return Err(UrlError::UserInfo);
        }
        // The host ends at the closing bracket of an IPv6 address, else at
        // the port's colon.
        let host_end = if authority.starts_with('[') {
            authority.find(']').map_or(authority.len(), |i| i + 1)
        } else {
            authority.find(':').unwrap_or(authority.len())
        };
        let (written_host, after_host) = authority.split_at(host_end);
        if written_host.is_empty() {
            return Err(UrlError::NoHost);
        }
        let scheme = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => Scheme::Https,
            Some(s) if s.eq_ignore_ascii_case("http") => Scheme::Http,
            _ => return Err(UrlError::NotHttp),
        };
        let host = match written_host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
        {
            Some(v6) if v6.parse::<Ipv6Addr>().is_ok() => v6.to_ascii_lowercase(),
            Some(_) => return Err(UrlError::InvalidHost),
            None if written_host.contains(['[', ']']) => return Err(UrlError::InvalidHost),
            None => written_host.to_ascii_lowercase(),
        };
        // `http` reads `:99999`, `:x` and `:+443` its own way (the first two
        // as "no port"); only digits from 1 to 65535 are a port here.
        let port = match after_host {
            "" | ":" => scheme.default_port(),
            _ => after_host
                .strip_prefix(':')
                .filter(|digits| digits.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|digits| digits.parse::<u16>().ok())
                .filter(|&port| port != 0)
                .ok_or(UrlError::InvalidPort)?,
        };
        Ok(Origin { scheme, host, port })
    }

    /// An origin as configured: an [`HttpUrl`] with no path (or just `/`),
    /// no query and no fragment. `https://api.example/v1` is refused with
    /// [`UrlError::UnexpectedPath`], not read as `https://api.example`.
    pub fn parse(text: &str) -> Result<Origin, UrlError> {
        let url = HttpUrl::parse(text)?;
        if url.uri.path() != "/" {
            return Err(UrlError::UnexpectedPath);
        }
        if url.uri.query().is_some() {
            return Err(UrlError::UnexpectedQuery);
        }
        Ok(url.origin)
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The host: lowercase, an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port: the explicit one, or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the host names this machine without asking a resolver; see
    /// [`proxy::is_loopback_host`](crate::proxy::is_loopback_host).
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }

    /// Whether a secret or a token may be sent here: `https` to any host,
    /// or plain `http` to a loopback host.
    pub fn may_carry_credentials(&self) -> bool {
        self.scheme == Scheme::Https || self.is_loopback()
    }

    /// `host[:port]` as in a `Host` header: an IPv6 address bracketed, the
    /// scheme's default port left out.
    pub fn authority(&self) -> String {
        let mut authority = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port != self.scheme.default_port() {
            authority.push(':');
            authority.push_str(&self.port.to_string());
        }
        authority
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority())
    }
}

impl FromStr for Origin {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<Origin, UrlError> {
        Origin::parse(text)
    }
}

/// An absolute `http(s)` URL that passed the [module](self)'s checks, with
/// its parsed [`Uri`] and its [`Origin`].
///
/// `Display` shows the [`Uri`] as parsed (it holds no user information).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HttpUrl {
    uri: Uri,
    origin: Origin,
}

impl HttpUrl {
    /// Parses and checks `text`.
    pub fn parse(text: &str) -> Result<HttpUrl, UrlError> {
        if text.len() > MAX_URL_LEN {
            return Err(UrlError::TooLong);
        }
        let uri: Uri = text.parse().map_err(|_| UrlError::NotUrl)?;
        let url = HttpUrl::from_uri(uri)?;
        // `http::Uri` drops a fragment silently; `#` only ever starts one.
        if text.contains('#') {
            return Err(UrlError::Fragment);
        }
        Ok(url)
    }

    /// Checks an already parsed [`Uri`] (which cannot hold a fragment).
    pub fn from_uri(uri: Uri) -> Result<HttpUrl, UrlError> {
        let origin = Origin::of(&uri)?;
        Ok(HttpUrl { uri, origin })
    }

    /// The parsed URI.
    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The parsed URI, by value.
    pub fn into_uri(self) -> Uri {
        self.uri
    }

    /// Its origin.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The DPoP `htu` (RFC 9449 §4.2): `scheme://authority/path`, without
    /// query and fragment, scheme and host lowercase, the default port left
    /// out. The path is kept as written (`/` when there is none).
    pub fn htu(&self) -> String {
        format!("{}{}", self.origin, self.uri.path())
    }

    /// This URL, if a secret or a token may be sent to it
    /// ([`Origin::may_carry_credentials`]); else [`UrlError::PlainHttp`].
    pub fn require_credential_safe(self) -> Result<HttpUrl, UrlError> {
        if self.origin.may_carry_credentials() {
            Ok(self)
        } else {
            Err(UrlError::PlainHttp)
        }
    }
}

impl fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.uri.fmt(f)
    }
}

impl FromStr for HttpUrl {
    type Err = UrlError;

    fn from_str(text: &str) -> Result<HttpUrl, UrlError> {
        HttpUrl::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "origin port" of a URL that parses, or the error.
    fn checked(text: &str) -> Result<(String, u16), UrlError> {
        HttpUrl::parse(text).map(|url| (url.origin().to_string(), url.origin().port()))
    }

    #[test]
    fn urls_table() {
        use UrlError::*;
        let ok = |origin: &str, port: u16| Ok((origin.to_owned(), port));
        for (text, expected) in [
            // Schemes, in any case.
            ("https://as.example/token", ok("https://as.example", 443)),
            ("http://as.example/token", ok("http://as.example", 80)),
            ("HTTPS://AS.Example/Token", ok("https://as.example", 443)),
            ("HtTp://LocalHost:8080", ok("http://localhost:8080", 8080)),
            ("ftp://as.example/x", Err(NotHttp)),
            ("ws://as.example/x", Err(NotHttp)),
            ("/token", Err(NoHost)),
            ("as.example:443", Err(NotHttp)),
            ("//as.example/token", Err(NoHost)),
            ("not a url", Err(NotUrl)),
            ("", Err(NotUrl)),
            ("https:/as.example", Err(NotUrl)),
            // IPv6: bracketed in the text and in Display, bare in host().
            ("http://[::1]:8080/t", ok("http://[::1]:8080", 8080)),
            ("https://[2001:DB8::7]/t", ok("https://[2001:db8::7]", 443)),
            (
                "https://[::ffff:127.0.0.1]",
                ok("https://[::ffff:127.0.0.1]", 443),
            ),
            ("https://[v1.x]/t", Err(InvalidHost)),
            ("https://[fe80::1%25eth0]/t", Err(InvalidHost)),
            ("https://a[::1]/t", Err(InvalidHost)),
            // Default ports are left out; an explicit one equals none.
            ("https://a:443/t", ok("https://a", 443)),
            ("http://a:80/t", ok("http://a", 80)),
            ("https://a:80/t", ok("https://a:80", 80)),
            ("http://a:443/t", ok("http://a:443", 443)),
            ("https://a:0443/t", ok("https://a", 443)),
            ("https://a:/t", ok("https://a", 443)),
            ("http://[::1]:/t", ok("http://[::1]", 80)),
            // Ports.
            ("https://a:1/t", ok("https://a:1", 1)),
            ("https://a:65535/t", ok("https://a:65535", 65535)),
            ("https://a:0/t", Err(InvalidPort)),
            ("https://a:65536/t", Err(InvalidPort)),
            ("https://a:99999/t", Err(InvalidPort)),
            ("https://a:x/t", Err(InvalidPort)),
            ("https://a:+443/t", Err(InvalidPort)),
            ("https://[::1]:99999/t", Err(InvalidPort)),
            ("https://[::1]x/t", Err(InvalidPort)),
            // Hosts.
            ("https://:443/t", Err(NoHost)),
            ("https://:/t", Err(NoHost)),
            // User information, with or without a password.
            ("https://user:pw@as.example/t", Err(UserInfo)),
            ("https://user@as.example/t", Err(UserInfo)),
            ("https://:pw@as.example/t", Err(UserInfo)),
            ("http://user:pw@127.0.0.1/t", Err(UserInfo)),
            // Fragments, even empty ones.
            ("https://as.example/t#frag", Err(Fragment)),
            ("https://as.example/t#", Err(Fragment)),
            ("https://as.example#x", Err(Fragment)),
            ("https://as.example/t?q=1#x", Err(Fragment)),
            // A query is fine in a URL.
            ("https://as.example/t?q=1", ok("https://as.example", 443)),
        ] {
            assert_eq!(checked(text), expected, "{text}");
        }
        let huge = format!("https://as.example/{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(checked(&huge), Err(UrlError::TooLong));
    }

    #[test]
    fn hosts_are_lowercase_and_bare() {
        for (text, scheme, host, port) in [
            (
                "https://API.Example.com/x",
                Scheme::Https,
                "api.example.com",
                443,
            ),
            ("http://[::1]:8080/x", Scheme::Http, "::1", 8080),
            ("http://[FD00::AB]/x", Scheme::Http, "fd00::ab", 80),
            ("http://127.0.0.1:9000", Scheme::Http, "127.0.0.1", 9000),
        ] {
            let url = HttpUrl::parse(text).unwrap();
            let origin = url.origin();
            assert_eq!(
                (origin.scheme(), origin.host(), origin.port()),
                (scheme, host, port),
                "{text}"
            );
        }
    }

    #[test]
    fn an_explicit_default_port_is_the_same_origin() {
        for (a, b, same) in [
            ("https://a:443", "https://a", true),
            ("https://A:443/", "https://a/", true),
            ("http://a:80", "HTTP://a", true),
            ("http://[::1]:80", "http://[::1]", true),
            ("https://a", "http://a", false),
            ("https://a", "https://a:8443", false),
            ("http://a:443", "https://a", false),
            // Only case and the default port are normalised: an IPv6
            // address written two ways is two origins (as it always was).
            ("http://[::1]", "http://[0:0:0:0:0:0:0:1]", false),
        ] {
            let (a_origin, b_origin) = (Origin::parse(a).unwrap(), Origin::parse(b).unwrap());
            assert_eq!(a_origin == b_origin, same, "{a} {b}");
            assert_eq!(
                a_origin.to_string() == b_origin.to_string(),
                same,
                "{a} {b}"
            );
        }
    }

    #[test]
    fn authority_and_display_leave_default_ports_out() {
        for (text, authority, shown) in [
            ("https://a.example", "a.example", "https://a.example"),
            ("https://a.example:443", "a.example", "https://a.example"),
            (
                "https://a.example:8443",
                "a.example:8443",
                "https://a.example:8443",
            ),
            (
                "http://a.example:443",
                "a.example:443",
                "http://a.example:443",
            ),
            ("http://[::1]", "[::1]", "http://[::1]"),
            ("http://[::1]:8080", "[::1]:8080", "http://[::1]:8080"),
            (
                "https://[2001:db8::1]:443/",
                "[2001:db8::1]",
                "https://[2001:db8::1]",
            ),
        ] {
            let origin = Origin::parse(text).unwrap();
            assert_eq!(origin.authority(), authority, "{text}");
            assert_eq!(origin.to_string(), shown, "{text}");
            assert_eq!(text.parse::<Origin>(), Ok(origin), "{text}");
        }
    }

    #[test]
    fn origins_have_no_path_query_or_fragment() {
        use UrlError::*;
        for (text, expected) in [
            ("https://api.example", Ok("https://api.example")),
            ("https://api.example/", Ok("https://api.example")),
            ("https://api.example:443/", Ok("https://api.example")),
            ("https://api.example/v1", Err(UnexpectedPath)),
            ("https://api.example//", Err(UnexpectedPath)),
            ("https://api.example/v1?x=1", Err(UnexpectedPath)),
            ("https://api.example?x=1", Err(UnexpectedQuery)),
            ("https://api.example/?", Err(UnexpectedQuery)),
            ("https://api.example/#x", Err(Fragment)),
            ("https://u:pw@api.example", Err(UserInfo)),
            ("api.example", Err(NotHttp)),
            ("/", Err(NoHost)),
        ] {
            let got = Origin::parse(text).map(|o| o.to_string());
            assert_eq!(got.as_deref().map_err(|e| *e), expected, "{text}");
        }
    }

    #[test]
    fn user_information_is_never_echoed() {
        for text in [
            "https://svc:hunter2@as.example/token",
            "https://hunter2@as.example/token",
            "http://svc:hunter2@as.example:99999/token#hunter2",
            "ftp://svc:hunter2@as.example/",
        ] {
            let error = HttpUrl::parse(text).unwrap_err();
            for shown in [
                error.to_string(),
                format!("{error:?}"),
                error.reason().into(),
            ] {
                assert!(!shown.contains("hunter2"), "{text}: {shown}");
                assert!(!shown.contains("svc"), "{text}: {shown}");
                assert!(!shown.contains('\n'), "{text}: {shown}");
            }
            assert!(Origin::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn credentials_go_over_https_or_to_loopback() {
        for (text, safe) in [
            ("https://as.example", true),
            ("https://10.0.0.1", true),
            ("https://localhost.", true),
            ("http://localhost", true),
            ("http://LOCALHOST:8080", true),
            ("http://127.0.0.1", true),
            ("http://127.255.0.9:9000", true),
            ("http://[::1]:8080", true),
            ("http://[::ffff:127.0.0.1]", true),
            ("http://localhost.", false),
            ("http://auth.localhost", false),
            ("http://127.1", false),
            ("http://2130706433", false),
            ("http://127.0.0.1.", false),
            ("http://10.0.0.1", false),
            ("http://[::2]", false),
            ("http://as.example", false),
        ] {
            let origin = Origin::parse(text).unwrap();
            assert_eq!(origin.may_carry_credentials(), safe, "{text}");
            assert_eq!(
                origin.is_loopback(),
                safe && text.starts_with("http:"),
                "{text}"
            );
            let url = HttpUrl::parse(text).unwrap().require_credential_safe();
            assert_eq!(url.is_ok(), safe, "{text}");
            if !safe {
                assert_eq!(url, Err(UrlError::PlainHttp), "{text}");
            }
        }
    }

    #[test]
    fn htu_drops_query_and_fragment_and_normalises() {
        for (text, htu) in [
            (
                "HTTPS://API.Example.com:443/a/b?q=1",
                "https://api.example.com/a/b",
            ),
            ("https://api.example.com", "https://api.example.com/"),
            ("https://api.example.com?q", "https://api.example.com/"),
            ("http://127.0.0.1:8080/token", "http://127.0.0.1:8080/token"),
            ("http://[::1]:80/Path/Case", "http://[::1]/Path/Case"),
            ("https://a:8443/%7Euser/x", "https://a:8443/%7Euser/x"),
        ] {
            assert_eq!(HttpUrl::parse(text).unwrap().htu(), htu, "{text}");
        }
        // A fragment never reaches `htu`: text with one is refused, and a
        // `Uri` has dropped it already.
        let uri: Uri = "https://a/x?y#z".parse().unwrap();
        assert_eq!(HttpUrl::from_uri(uri).unwrap().htu(), "https://a/x");
    }

    #[test]
    fn from_uri_agrees_with_parse() {
        for text in [
            "https://as.example/token",
            "http://[::1]:8080/x?y",
            "https://u:p@as.example/",
            "https://as.example:99999/",
            "ftp://as.example/",
        ] {
            let uri: Uri = text.parse().unwrap();
            let from_uri = HttpUrl::from_uri(uri.clone());
            assert_eq!(from_uri, HttpUrl::parse(text), "{text}");
            assert_eq!(Origin::of(&uri), from_uri.map(|u| u.origin().clone()));
        }
        let url = HttpUrl::parse("https://as.example/t?x=1").unwrap();
        assert_eq!(url.to_string(), "https://as.example/t?x=1");
        assert_eq!(url.clone().into_uri(), *url.uri());
    }

    #[test]
    fn errors_are_one_line_and_distinct() {
        use UrlError::*;
        let all = [
            NotUrl,
            TooLong,
            NotHttp,
            NoHost,
            InvalidHost,
            UserInfo,
            InvalidPort,
            Fragment,
            UnexpectedPath,
            UnexpectedQuery,
            PlainHttp,
        ];
        let texts: std::collections::HashSet<String> = all.iter().map(|e| e.to_string()).collect();
        assert_eq!(texts.len(), all.len());
        for text in texts {
            assert!(text.starts_with("the URL "), "{text}");
            assert!(!text.contains('\n'), "{text}");
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn scheme() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("http".to_owned()),
                Just("https".to_owned()),
                Just("HTTPS".to_owned()),
                Just("HttP".to_owned()),
            ]
        }

        /// Hosts as written in a URL.
        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-zA-Z0-9-]{1,12}(\\.[a-zA-Z0-9-]{1,12}){0,3}",
                any::<[u8; 4]>().prop_map(|[a, b, c, d]| format!("{a}.{b}.{c}.{d}")),
                any::<[u16; 8]>().prop_map(|parts| {
                    let [a, b, c, d, e, f, g, h] = parts;
                    format!("[{}]", Ipv6Addr::new(a, b, c, d, e, f, g, h))
                }),
                Just("localhost".to_owned()),
                Just("[::1]".to_owned()),
            ]
        }

        /// Anything that might look like a URL, user information and odd ports included.
        fn anything() -> impl Strategy<Value = String> {
            prop_oneof![
                ".{0,48}",
                "(https?|HTTPS|ftp|)(://)?([a-z:%]{0,6}@)?[a-zA-Z0-9.\\[\\]:%@-]{0,20}(:[0-9a-z+]{0,7})?(/[a-z/?#%]{0,8})?",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn valid_origins_round_trip(
                scheme in scheme(),
                host in host(),
                port in proptest::option::of(1u16..),
                slash in any::<bool>(),
            ) {
                let port_text = port.map(|p| format!(":{p}")).unwrap_or_default();
                let slash = if slash { "/" } else { "" };
                let text = format!("{scheme}://{host}{port_text}{slash}");
                let origin = Origin::parse(&text).unwrap();
                let shown = origin.to_string();
                prop_assert_eq!(Origin::parse(&shown), Ok(origin.clone()));
                prop_assert_eq!(&shown, &shown.to_ascii_lowercase());
                let expected_port = port.unwrap_or(origin.scheme().default_port());
                prop_assert_eq!(origin.port(), expected_port);
                let uri: Uri = text.parse().unwrap();
                prop_assert_eq!(Origin::of(&uri), Ok(origin.clone()));
                let url = HttpUrl::parse(&format!("{shown}/a/b?c=d")).unwrap();
                prop_assert_eq!(url.origin(), &origin);
                prop_assert_eq!(url.htu(), format!("{shown}/a/b"));
            }

            #[test]
            fn checking_never_panics_and_what_passes_round_trips(text in anything()) {
                let parsed = HttpUrl::parse(&text);
                if let Err(error) = &parsed {
                    let shown = error.to_string();
                    prop_assert!(!shown.contains('\n'));
                    prop_assert!(!shown.contains('@'));
                }
                if let Ok(uri) = text.parse::<Uri>() {
                    if let Ok(origin) = Origin::of(&uri) {
                        // Whatever was accepted shows as an origin that reads back the same.
                        prop_assert_eq!(Origin::parse(&origin.to_string()), Ok(origin.clone()));
                        prop_assert!(!origin.host().is_empty());
                        prop_assert_ne!(origin.port(), 0);
                    }
                }
                if let Ok(url) = parsed {
                    prop_assert!(!text.contains('#'));
                    prop_assert!(url.htu().starts_with(&url.origin().to_string()));
                }
            }
        }
    }
}
