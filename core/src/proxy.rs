//! Whether to reach a destination through an HTTP proxy: one decision, used
//! by every transport.
//!
//! **Why this exists.** Transports used to read the proxy variables each in
//! their own way and tunnelled even loopback token endpoints (`127.0.0.1`,
//! with the client secret in a plaintext request body) through a proxy. Now
//! every transport asks [`ProxySettings::decide`] and does what it answers.
//!
//! **The rules.**
//!
//! * A loopback destination ([`is_loopback_host`]: `localhost`,
//!   `127.0.0.0/8`, `::1`, `::ffff:127.x.y.z`) is **never** proxied,
//!   whatever the settings.
//! * A destination's scheme, host and port are its [`Origin`], the crate's
//!   one URL check. One that has none (not an absolute `http(s)` URL, user
//!   information, an invalid port such as `:99999`) goes direct if no proxy
//!   is configured, and is
//!   [`ProxyDecision::Unsupported`] if one would be used: it is never
//!   tunnelled to a guessed default port.
//! * Settings are [`ProxySettings::none`], [`ProxySettings::explicit`], or
//!   [`ProxySettings::from_env_vars`], which reads the environment the way
//!   curl does from (name, value) pairs the driver passes in (this crate
//!   never reads the process environment itself):
//!   - `http` destinations: `http_proxy`, then `all_proxy`, then `ALL_PROXY`.
//!     The uppercase `HTTP_PROXY` is ignored, as curl ignores it: a CGI
//!     server turns a request's `Proxy:` header into `HTTP_PROXY`, so a
//!     client could otherwise choose the proxy ("httpoxy").
//!   - `https` destinations: `https_proxy`, `HTTPS_PROXY`, `all_proxy`,
//!     `ALL_PROXY`, the first one set winning.
//!   - `no_proxy`, else `NO_PROXY`: comma-separated entries, whitespace
//!     trimmed. `*` exempts every host; a host name exempts itself and its
//!     subdomains (a leading `.` or `*.` is dropped; case and a trailing dot
//!     do not matter); an IP address exempts itself; a CIDR block
//!     (`10.0.0.0/8`, `fd00::/8`) exempts IP literals in it; `host:port`
//!     (`[v6]:port`) exempts the host on that port only (the destination's
//!     port defaults to 80 or 443). Entries that parse as none of these never
//!     match.
//!   - An empty (or blank) value counts as unset.
//! * A proxy URL is `http://[user[:password]@]host[:port][/]` or `host:port`;
//!   the port defaults to 1080 (curl's default) and user and password are
//!   percent-decoded. Only `http` proxies are supported (transports tunnel
//!   with `CONNECT`). A proxy that is `https://`, `socks5://` or anything
//!   else, or that cannot be parsed, is neither ignored nor bypassed: each
//!   destination that would use it gets [`ProxyDecision::Unsupported`], with
//!   a reason that names the variable and never contains the password.
//! * Inputs are bounded: a proxy URL longer than 2048 bytes is refused; a
//!   `NO_PROXY` longer than 64 KiB or with more than 4096 entries is refused
//!   too (destinations that would be proxied get `Unsupported`, since which
//!   hosts it exempts cannot be known).
//!
//! ```
//! use http::Uri;
//! use token_keeper::proxy::{connect_request_head, ProxyDecision, ProxySettings};
//!
//! // The driver passes the process environment in once, for example
//! // `std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(),
//! // v.to_string_lossy().into_owned()))`.
//! let settings = ProxySettings::from_env_vars([
//!     ("https_proxy", "http://svc:s3cret@proxy.corp:3128"),
//!     ("NO_PROXY", ".internal.corp, 10.0.0.0/8"),
//! ]);
//!
//! let api: Uri = "https://api.example.com/v1".parse()?;
//! let ProxyDecision::Tunnel(proxy) = settings.decide(&api) else { unreachable!() };
//! assert_eq!(proxy.url_without_credentials(), "http://proxy.corp:3128");
//! let head = connect_request_head(proxy, "api.example.com", 443);
//! assert!(head.starts_with(b"CONNECT api.example.com:443 HTTP/1.1\r\n"));
//!
//! // Exempted, and loopback: straight there.
//! let inside: Uri = "https://vault.internal.corp/token".parse()?;
//! assert_eq!(settings.decide(&inside), ProxyDecision::Direct);
//! let local: Uri = "http://127.0.0.1:8080/token".parse()?;
//! assert_eq!(settings.decide(&local), ProxyDecision::Direct);
//!
//! // A socks proxy is reported, not silently skipped.
//! let socks = ProxySettings::from_env_vars([("ALL_PROXY", "socks5://proxy.corp:1080")]);
//! let ProxyDecision::Unsupported(reason) = socks.decide(&api) else { unreachable!() };
//! assert!(reason.starts_with("ALL_PROXY names a socks5 proxy"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use http::{HeaderValue, Uri};
use zeroize::Zeroizing;

use crate::url::{Origin, Scheme, UrlError};

/// Longest proxy URL accepted, in bytes.
const MAX_PROXY_URL: usize = 2048;
/// Longest `NO_PROXY` accepted, in bytes.
const MAX_NO_PROXY: usize = 64 * 1024;
/// Most `NO_PROXY` entries accepted.
const MAX_NO_PROXY_ENTRIES: usize = 4096;
/// Port of a proxy URL that gives none (curl's).
const DEFAULT_PROXY_PORT: u16 = 1080;

const NOT_HTTP_DESTINATION: &str =
    "the destination is not an absolute http or https URL, so no proxy rule applies to it";

/// Why a destination without an [`Origin`] cannot be proxied.
fn unusable_destination(error: UrlError) -> &'static str {
    match error {
        UrlError::UserInfo => {
            "the destination URL carries user information, so it is not sent through a proxy"
        }
        UrlError::InvalidPort => {
            "the destination URL has an invalid port, so there is no port to tunnel to"
        }
        UrlError::InvalidHost => {
            "the destination URL has an invalid host, so there is no host to tunnel to"
        }
        UrlError::NotUrl
        | UrlError::TooLong
        | UrlError::NotHttp
        | UrlError::NoHost
        | UrlError::Fragment
        | UrlError::UnexpectedPath
        | UrlError::UnexpectedQuery
        | UrlError::PlainHttp => NOT_HTTP_DESTINATION,
    }
}

/// Whether `host` (as written in a URL, IPv6 with or without brackets) names
/// this machine without asking a resolver: `localhost` (any case), an IP
/// literal in `127.0.0.0/8`, `::1`, or `::ffff:127.x.y.z`. This is the one
/// definition the crate uses, for "never proxied" and for "plain http
/// allowed" alike, so it is strict: a plaintext secret must not depend on
/// the resolver. `localhost.` and `127.0.0.1.` (a trailing dot) go to DNS;
/// short forms such as `127.1` are read by some resolvers' numeric parsers
/// and not by others; subdomains of `localhost` (RFC 6761) stay on this
/// machine only if the resolver keeps them there. None of them counts.
pub fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse::<IpAddr>()
        .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// An HTTP proxy to tunnel through. `Debug` never shows the credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Lowercase, IPv6 without brackets.
    host: String,
    port: u16,
    credentials: Option<ProxyCredentials>,
}

#[derive(Clone, PartialEq, Eq)]
struct ProxyCredentials {
    user: Zeroizing<String>,
    password: Zeroizing<String>,
    /// `Basic base64(user:password)`, marked sensitive.
    authorization: HeaderValue,
}

impl Proxy {
    /// The proxy's host, lowercase, an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port (1080 when the URL gives none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, an IPv6 address in brackets: what to connect to.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `http://host:port`, without user or password: for logs.
    pub fn url_without_credentials(&self) -> String {
        format!("http://{}", self.authority())
    }

    /// The percent-decoded `(user, password)`, when the URL has any, for
    /// transports that take them apart. Prefer [`Proxy::authorization`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|c| (c.user.as_str(), c.password.as_str()))
    }

    /// The `Proxy-Authorization` value, `Basic base64(user:password)`, marked
    /// sensitive; `None` when the URL has no credentials.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.credentials.as_ref().map(|c| &c.authorization)
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let userinfo = if self.credentials.is_some() {
            "***@"
        } else {
            ""
        };
        write!(f, "Proxy(http://{userinfo}{})", self.authority())
    }
}

/// What a transport does for one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyDecision<'a> {
    /// Connect to the destination itself.
    Direct,
    /// Connect to this proxy and open a tunnel with [`connect_request_head`].
    Tunnel(&'a Proxy),
    /// The settings ask for a proxy token-keeper cannot use (or cannot make
    /// sense of). Fail the request with this reason (it names the variable
    /// and never contains a password); do not connect directly.
    Unsupported(&'a str),
}

/// Why an explicit proxy setting was refused. `Display` is one line and never
/// contains a password.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyError {
    /// The proxy is not an `http://` proxy (`https`, `socks5` and so on).
    UnsupportedScheme {
        /// The scheme, lowercase.
        scheme: String,
        /// The proxy URL without user information, for the message.
        proxy: String,
    },
    /// The proxy URL cannot be parsed.
    InvalidProxyUrl {
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The proxy URL is longer than the limit.
    ProxyUrlTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The no-proxy list is longer than the limit.
    NoProxyTooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The no-proxy list has more entries than the limit.
    TooManyNoProxyEntries {
        /// The limit.
        limit: usize,
    },
    /// A no-proxy entry is neither a host name, an IP address nor a CIDR block.
    InvalidNoProxyEntry {
        /// Where the entry is in the list, counting non-empty entries from 1.
        position: usize,
        /// The entry, cut short when long; `None` when it is withheld because
        /// it looks like a URL with user information (a proxy URL passed as
        /// the no-proxy list by mistake).
        entry: Option<String>,
        /// What is wrong with it.
        problem: &'static str,
    },
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::UnsupportedScheme { scheme, proxy } => write!(
                f,
                "the proxy URL names {} {scheme} proxy ({proxy}); token-keeper tunnels through \
                 http proxies only: use an http:// proxy",
                article(scheme)
            ),
            ProxyError::InvalidProxyUrl { problem } => {
                write!(f, "the proxy URL is not a usable proxy URL: {problem}")
            }
            ProxyError::ProxyUrlTooLong { limit } => {
                write!(f, "the proxy URL is longer than {limit} bytes")
            }
            ProxyError::NoProxyTooLong { limit } => {
                write!(f, "the no-proxy list is longer than {limit} bytes")
            }
            ProxyError::TooManyNoProxyEntries { limit } => {
                write!(f, "the no-proxy list has more than {limit} entries")
            }
            ProxyError::InvalidNoProxyEntry {
                position,
                entry: Some(entry),
                problem,
            } => write!(
                f,
                "no-proxy entry {position} ({entry:?}) is not usable: {problem}"
            ),
            ProxyError::InvalidNoProxyEntry {
                position,
                entry: None,
                problem,
            } => write!(
                f,
                "no-proxy entry {position} (not shown: it looks like a URL with credentials) \
                 is not usable: {problem}"
            ),
        }
    }
}

impl std::error::Error for ProxyError {}

/// Which destinations go through which proxy. `Debug` never shows passwords;
/// the default is [`ProxySettings::none`].
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxySettings {
    /// For `http` destinations: `None` = no proxy, `Err` = the reason it is unusable.
    http: Option<Result<Proxy, String>>,
    /// For `https` destinations.
    https: Option<Result<Proxy, String>>,
    no_proxy: NoProxy,
}

impl ProxySettings {
    /// Never use a proxy.
    pub fn none() -> ProxySettings {
        ProxySettings::default()
    }

    /// The proxy settings in the environment `vars`, read with curl's rules
    /// (see the [module documentation](self)). Give it the whole process
    /// environment, converted lossily so that a value which is not UTF-8
    /// shows up as unusable rather than disappearing; names that are not
    /// proxy variables are skipped. When a name appears twice, the later
    /// value counts. Never fails: problems surface per destination as
    /// [`ProxyDecision::Unsupported`].
    pub fn from_env_vars<I, K, V>(vars: I) -> ProxySettings
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        // Uppercase HTTP_PROXY is deliberately absent (httpoxy).
        const NAMES: [&str; 7] = [
            "http_proxy",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
        ];
        let mut found: [Option<EnvValue>; 7] = Default::default();
        for (name, value) in vars {
            let Some(index) = NAMES.iter().position(|n| *n == name.as_ref()) else {
                continue;
            };
            let value = value.as_ref();
            let limit = if index >= 5 {
                MAX_NO_PROXY
            } else {
                MAX_PROXY_URL
            };
            found[index] = if value.trim().is_empty() {
                None
            } else if value.len() > limit {
                Some(EnvValue::TooLong)
            } else {
                Some(EnvValue::Value(Zeroizing::new(value.trim().to_owned())))
            };
        }
        let first = |candidates: &[usize]| {
            candidates
                .iter()
                .find_map(|&i| found[i].as_ref().map(|value| (NAMES[i], value)))
        };
        let proxy_from = |(name, value): (&str, &EnvValue)| match value {
            EnvValue::TooLong => Err(format!(
                "{name} is longer than {MAX_PROXY_URL} bytes; token-keeper neither ignores it \
                 nor connects directly: fix it, or set NO_PROXY for this host"
            )),
            EnvValue::Value(url) => parse_proxy_url(url).map_err(|e| env_reason(name, &e)),
        };
        let http = first(&[0, 3, 4]).map(proxy_from);
        let https = first(&[1, 2, 3, 4]).map(proxy_from);
        let no_proxy = match first(&[5, 6]) {
            None => NoProxy::default(),
            Some((name, EnvValue::TooLong)) => NoProxy::Refused(no_proxy_refusal(name)),
            Some((name, EnvValue::Value(list))) => match NoProxy::parse(list, false) {
                Ok(no_proxy) => no_proxy,
                Err(_) => NoProxy::Refused(no_proxy_refusal(name)),
            },
        };
        ProxySettings {
            http,
            https,
            no_proxy,
        }
    }

    /// Use the `http://` proxy `proxy_url` for http and https destinations,
    /// except loopback ones and those `no_proxy` exempts (same syntax as
    /// `NO_PROXY`; may be empty). Unlike the environment, every problem is an
    /// error here, including a `no_proxy` entry that cannot be parsed.
    pub fn explicit(proxy_url: &str, no_proxy: &str) -> Result<ProxySettings, ProxyError> {
        if proxy_url.len() > MAX_PROXY_URL {
            return Err(ProxyError::ProxyUrlTooLong {
                limit: MAX_PROXY_URL,
            });
        }
        let proxy = parse_proxy_url(proxy_url.trim())?;
        let no_proxy = NoProxy::parse(no_proxy, true)?;
        Ok(ProxySettings {
            http: Some(Ok(proxy.clone())),
            https: Some(Ok(proxy)),
            no_proxy,
        })
    }

    /// What to do for the destination `uri` (the token endpoint or API URL
    /// about to be called).
    ///
    /// The destination's scheme, host and port are its [`Origin`] (the
    /// crate's one URL check). A destination that has none (not an absolute
    /// `http(s)` URL, user information, an invalid port) still goes direct
    /// when its host is loopback or when no proxy is configured, and is
    /// [`ProxyDecision::Unsupported`] otherwise: which port a proxy would
    /// tunnel to cannot be known.
    pub fn decide(&self, uri: &Uri) -> ProxyDecision<'_> {
        let never_proxies = self.http.is_none() && self.https.is_none();
        let destination = match Origin::of(uri) {
            Ok(origin) => origin,
            // Loopback stays direct whatever else is wrong with the URL.
            Err(_) if uri.host().is_some_and(is_loopback_host) => return ProxyDecision::Direct,
            Err(_) if never_proxies => return ProxyDecision::Direct,
            Err(error) => return ProxyDecision::Unsupported(unusable_destination(error)),
        };
        if destination.is_loopback() {
            return ProxyDecision::Direct;
        }
        let slot = match destination.scheme() {
            Scheme::Http => &self.http,
            Scheme::Https => &self.https,
        };
        let Some(slot) = slot else {
            return ProxyDecision::Direct;
        };
        match &self.no_proxy {
            NoProxy::Refused(reason) => return ProxyDecision::Unsupported(reason),
            list if list.exempts(destination.host(), destination.port()) => {
                return ProxyDecision::Direct
            }
            _ => {}
        }
        match slot {
            Ok(proxy) => ProxyDecision::Tunnel(proxy),
            Err(reason) => ProxyDecision::Unsupported(reason),
        }
    }
}

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Slot<'a>(&'a Option<Result<Proxy, String>>);
        impl fmt::Debug for Slot<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    None => f.write_str("None"),
                    Some(Ok(proxy)) => proxy.fmt(f),
                    Some(Err(reason)) => f.debug_tuple("Unsupported").field(reason).finish(),
                }
            }
        }
        f.debug_struct("ProxySettings")
            .field("http", &Slot(&self.http))
            .field("https", &Slot(&self.https))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// The request head that opens a tunnel to `target_host:target_port` through
/// `proxy`: `CONNECT host:port HTTP/1.1`, `Host`, and `Proxy-Authorization`
/// when the proxy has credentials, then the blank line. An IPv6 target is
/// bracketed (with or without brackets given). Bytes that do not belong in a
/// host are percent-encoded, so the head is always exactly these lines.
///
/// The bytes contain the proxy credentials when there are any: write them and
/// drop them (or keep them in [`Zeroizing`]).
pub fn connect_request_head(proxy: &Proxy, target_host: &str, target_port: u16) -> Vec<u8> {
    let authority = target_authority(target_host, target_port);
    let mut head = Vec::with_capacity(96 + 2 * authority.len());
    head.extend_from_slice(b"CONNECT ");
    head.extend_from_slice(authority.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    head.extend_from_slice(authority.as_bytes());
    head.extend_from_slice(b"\r\n");
    if let Some(authorization) = proxy.authorization() {
        head.extend_from_slice(b"Proxy-Authorization: ");
        head.extend_from_slice(authorization.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// `host:port` for a CONNECT line, IPv6 bracketed, unsafe bytes percent-encoded.
fn target_authority(host: &str, port: u16) -> String {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // An IPv6 address, perhaps with a zone (`fe80::1%25eth0`).
    let ipv6 = bare
        .split('%')
        .next()
        .is_some_and(|address| address.parse::<Ipv6Addr>().is_ok());
    let mut out = String::with_capacity(bare.len() + 8);
    if ipv6 {
        out.push('[');
    }
    for &byte in bare.as_bytes() {
        if byte.is_ascii_alphanumeric()
            || b"-._~%!$&'()*+,;=".contains(&byte)
            || (ipv6 && byte == b':')
        {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if ipv6 {
        out.push(']');
    }
    out.push(':');
    out.push_str(&port.to_string());
    out
}

/// A proxy variable's value: the text, or "too long to look at".
enum EnvValue {
    Value(Zeroizing<String>),
    TooLong,
}

fn env_reason(name: &str, error: &ProxyError) -> String {
    match error {
        ProxyError::UnsupportedScheme { scheme, proxy } => format!(
            "{name} names {} {scheme} proxy ({proxy}); token-keeper tunnels through http proxies \
             only: set NO_PROXY for this host or use an http:// proxy",
            article(scheme)
        ),
        ProxyError::InvalidProxyUrl { problem } => format!(
            "{name} is not a usable proxy URL ({problem}); token-keeper neither ignores it nor \
             connects directly: fix it, or set NO_PROXY for this host"
        ),
        other => format!("{name}: {other}"),
    }
}

fn no_proxy_refusal(name: &str) -> String {
    format!(
        "{name} is longer than {MAX_NO_PROXY} bytes or has more than {MAX_NO_PROXY_ENTRIES} \
         entries; token-keeper will not guess which hosts it exempts: shorten it"
    )
}

fn article(word: &str) -> &'static str {
    match word.as_bytes().first() {
        Some(b'a' | b'e' | b'i' | b'o' | b'u' | b'h') => "an", // "an https", "an http"
        _ => "a",
    }
}

/// Parses `http://[user[:password]@]host[:port][/]` or `host[:port]`. Errors
/// never contain the user information.
fn parse_proxy_url(url: &str) -> Result<Proxy, ProxyError> {
    let invalid = |problem| ProxyError::InvalidProxyUrl { problem };
    if url.is_empty() {
        return Err(invalid("it is empty"));
    }
    let (scheme, rest) = match url.find("://") {
        Some(i) => {
            let scheme = &url[..i];
            let valid = scheme.len() <= 32
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
            if !valid {
                return Err(invalid("the scheme is malformed"));
            }
            (scheme.to_ascii_lowercase(), &url[i + 3..])
        }
        None => ("http".to_owned(), url),
    };
    // User information ends at the last '@'; a '/', '?' or '#' before it
    // would make the split ambiguous, so it must be percent-encoded.
    let (userinfo, after) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            if userinfo.contains(['/', '?', '#']) {
                return Err(invalid(
                    "the user information contains '/', '?' or '#'; percent-encode them",
                ));
            }
            (Some(userinfo), &rest[at + 1..])
        }
        None => (None, rest),
    };
    let end = after.find(['/', '?', '#']).unwrap_or(after.len());
    let (authority, path) = after.split_at(end);
    let (host, port) = parse_host_port(authority);
    if scheme != "http" {
        let proxy = match &host {
            Ok(host) if host.contains(':') => format!("{scheme}://[{host}]"),
            Ok(host) => format!("{scheme}://{host}"),
            Err(_) => format!("{scheme}://…"),
        };
        let proxy = match (&host, port) {
            (Ok(_), Ok(Some(port))) => format!("{proxy}:{port}"),
            _ => proxy,
        };
        return Err(ProxyError::UnsupportedScheme { scheme, proxy });
    }
    let host = host.map_err(invalid)?;
    let port = port.map_err(invalid)?.unwrap_or(DEFAULT_PROXY_PORT);
    if !matches!(path, "" | "/") {
        return Err(invalid("it has a path, query or fragment"));
    }
    let credentials = match userinfo {
        None => None,
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            let user = percent_decode(user)
                .ok_or(invalid("the user name is not valid percent-encoded UTF-8"))?;
            let password = percent_decode(password)
                .ok_or(invalid("the password is not valid percent-encoded UTF-8"))?;
            if user.is_empty() && password.is_empty() {
                None
            } else {
                // Sized up front so that no unwiped copy is left behind by a reallocation.
                let mut joined =
                    Zeroizing::new(String::with_capacity(user.len() + 1 + password.len()));
                joined.push_str(&user);
                joined.push(':');
                joined.push_str(&password);
                let mut encoded =
                    Zeroizing::new(String::with_capacity(6 + joined.len().div_ceil(3) * 4));
                encoded.push_str("Basic ");
                BASE64.encode_string(joined.as_bytes(), &mut encoded);
                let mut authorization = HeaderValue::from_str(&encoded)
                    .expect("base64 output is always a valid header value");
                authorization.set_sensitive(true);
                Some(ProxyCredentials {
                    user,
                    password,
                    authorization,
                })
            }
        }
    };
    Ok(Proxy {
        host,
        port,
        credentials,
    })
}

/// `host[:port]` or `[v6][:port]` of a proxy URL: the lowercase host without
/// brackets, and the port if one is given.
#[allow(clippy::type_complexity)]
fn parse_host_port(
    authority: &str,
) -> (
    Result<String, &'static str>,
    Result<Option<u16>, &'static str>,
) {
    let (host, port) = if let Some(inner) = authority.strip_prefix('[') {
        match inner.split_once(']') {
            Some((v6, rest)) => {
                let host = v6
                    .parse::<Ipv6Addr>()
                    .map(|_| v6.to_ascii_lowercase())
                    .map_err(|_| "the bracketed host is not an IPv6 address");
                let port = match rest {
                    "" => Ok(None),
                    _ => match rest.strip_prefix(':') {
                        Some(port) => parse_port(port).map(Some),
                        None => Err("unexpected text after the IPv6 address"),
                    },
                };
                return (host, port);
            }
            None => return (Err("unclosed '[' in the host"), Ok(None)),
        }
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, parse_port(port).map(Some)),
            None => (authority, Ok(None)),
        }
    };
    let host = if host.is_empty() {
        Err("it has no host")
    } else if host.len() > 255 {
        Err("the host is too long")
    } else if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        Err("the host contains characters a host name cannot have")
    } else {
        Ok(host.to_ascii_lowercase())
    };
    (host, port)
}

fn parse_port(text: &str) -> Result<u16, &'static str> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number from 1 to 65535");
    }
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err("the port is not a number from 1 to 65535"),
    }
}

/// Decodes `%XX` escapes (no `+` rule); `None` if an escape is malformed or
/// the result is not UTF-8.
fn percent_decode(text: &str) -> Option<Zeroizing<String>> {
    let bytes = text.as_bytes();
    let mut out = Zeroizing::new(Vec::with_capacity(bytes.len()));
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    match String::from_utf8(std::mem::take(&mut *out)) {
        Ok(text) => Some(Zeroizing::new(text)),
        Err(error) => {
            drop(Zeroizing::new(error.into_bytes()));
            None
        }
    }
}

/// The parsed no-proxy list.
#[derive(Clone, PartialEq, Eq)]
enum NoProxy {
    /// Exempt these (everything when `all`).
    List {
        all: bool,
        entries: Vec<NoProxyEntry>,
    },
    /// Too large to use; the reason for `Unsupported`.
    Refused(String),
}

impl Default for NoProxy {
    fn default() -> NoProxy {
        NoProxy::List {
            all: false,
            entries: Vec::new(),
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
struct NoProxyEntry {
    text: String,
    rule: NoProxyRule,
    port: Option<u16>,
}

#[derive(Clone, PartialEq, Eq)]
enum NoProxyRule {
    /// Lowercase, without leading `.`/`*.` or trailing `.`.
    Name(String),
    /// Canonical (IPv4-mapped IPv6 as IPv4).
    Ip(IpAddr),
    /// Network address (host bits cleared) and prefix length.
    Cidr(IpAddr, u8),
}

impl NoProxy {
    /// Parses a no-proxy list. With `strict`, an unusable entry is an error;
    /// otherwise it is skipped (it could never match anyway). Too long or too
    /// many entries is an error either way.
    fn parse(list: &str, strict: bool) -> Result<NoProxy, ProxyError> {
        if list.len() > MAX_NO_PROXY {
            return Err(ProxyError::NoProxyTooLong {
                limit: MAX_NO_PROXY,
            });
        }
        let mut all = false;
        let mut entries = Vec::new();
        let mut count = 0;
        for raw in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            count += 1;
            if count > MAX_NO_PROXY_ENTRIES {
                return Err(ProxyError::TooManyNoProxyEntries {
                    limit: MAX_NO_PROXY_ENTRIES,
                });
            }
            if raw == "*" {
                all = true;
                continue;
            }
            match NoProxyEntry::parse(raw) {
                Ok(entry) => entries.push(entry),
                Err(problem) if strict => {
                    let entry = (!raw.contains('@') && !raw.contains("://")).then(|| {
                        let mut entry: String = raw.chars().take(64).collect();
                        if entry.len() < raw.len() {
                            entry.push('…');
                        }
                        entry
                    });
                    return Err(ProxyError::InvalidNoProxyEntry {
                        position: count,
                        entry,
                        problem,
                    });
                }
                Err(_) => {}
            }
        }
        Ok(NoProxy::List { all, entries })
    }

    /// Whether the list exempts `host` (as in a URL) on `port`.
    fn exempts(&self, host: &str, port: u16) -> bool {
        let NoProxy::List { all, entries } = self else {
            return false;
        };
        if *all {
            return true;
        }
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip = parse_host_ip(bare);
        let name = if ip.is_none() {
            let name = bare.strip_suffix('.').unwrap_or(bare);
            Some(name.to_ascii_lowercase())
        } else {
            None
        };
        entries.iter().any(|entry| {
            if entry.port.is_some_and(|p| p != port) {
                return false;
            }
            match (&entry.rule, ip, &name) {
                (NoProxyRule::Name(suffix), None, Some(name)) => {
                    name == suffix
                        || (name.len() > suffix.len()
                            && name.ends_with(suffix.as_str())
                            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.')
                }
                (NoProxyRule::Ip(exact), Some(ip), _) => *exact == ip.to_canonical(),
                (NoProxyRule::Cidr(net, bits), Some(ip), _) => {
                    in_cidr(ip, *net, *bits) || in_cidr(ip.to_canonical(), *net, *bits)
                }
                _ => false,
            }
        })
    }
}

impl fmt::Debug for NoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoProxy::Refused(reason) => f.debug_tuple("Refused").field(reason).finish(),
            NoProxy::List { all, entries } => {
                let mut list = f.debug_list();
                if *all {
                    list.entry(&"*");
                }
                list.entries(entries.iter().map(|e| &e.text)).finish()
            }
        }
    }
}

impl NoProxyEntry {
    fn parse(raw: &str) -> Result<NoProxyEntry, &'static str> {
        const BAD_PORT: &str = "the port is not a number from 1 to 65535";
        let text = raw.to_owned();
        if let Some((address, bits)) = raw.split_once('/') {
            let address = address
                .strip_prefix('[')
                .and_then(|a| a.strip_suffix(']'))
                .unwrap_or(address);
            let address: IpAddr = address
                .parse()
                .map_err(|_| "a CIDR block needs an IP address before the '/'")?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            // Plain digits only: no sign, no leading zero.
            let canonical = bits.len() <= 3
                && bits.bytes().all(|b| b.is_ascii_digit())
                && (bits == "0" || !bits.starts_with('0'));
            let bits = match bits.parse::<u8>() {
                Ok(bits) if canonical && bits <= max => bits,
                _ => return Err("the CIDR prefix length is out of range"),
            };
            return Ok(NoProxyEntry {
                text,
                rule: NoProxyRule::Cidr(mask(address, bits), bits),
                port: None,
            });
        }
        let (host, port) = if let Some(inner) = raw.strip_prefix('[') {
            let (v6, rest) = inner.split_once(']').ok_or("unclosed '['")?;
            let port = match rest {
                "" => None,
                _ => Some(
                    rest.strip_prefix(':')
                        .ok_or("unexpected text after ']'")
                        .and_then(|p| parse_port(p).map_err(|_| BAD_PORT))?,
                ),
            };
            let ip: Ipv6Addr = v6.parse().map_err(|_| "not an IPv6 address in brackets")?;
            return Ok(NoProxyEntry {
                text,
                rule: NoProxyRule::Ip(IpAddr::V6(ip).to_canonical()),
                port,
            });
        } else if raw.matches(':').count() >= 2 {
            let ip: Ipv6Addr = raw
                .parse()
                .map_err(|_| "not an IPv6 address (write [address]:port for a port)")?;
            return Ok(NoProxyEntry {
                text,
                rule: NoProxyRule::Ip(IpAddr::V6(ip).to_canonical()),
                port: None,
            });
        } else {
            match raw.split_once(':') {
                Some((host, port)) => (host, Some(parse_port(port).map_err(|_| BAD_PORT)?)),
                None => (raw, None),
            }
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(NoProxyEntry {
                text,
                rule: NoProxyRule::Ip(IpAddr::V4(ip)),
                port,
            });
        }
        let name = host
            .strip_prefix("*.")
            .or_else(|| host.strip_prefix('.'))
            .unwrap_or(host);
        let valid = !name.is_empty()
            && !name.starts_with('.')
            && !name.contains("..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid {
            return Err("not a host name, IP address or CIDR block");
        }
        Ok(NoProxyEntry {
            text,
            rule: NoProxyRule::Name(name.to_ascii_lowercase()),
            port,
        })
    }
}

fn mask(address: IpAddr, bits: u8) -> IpAddr {
    match address {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => mask(ip, bits) == net,
        _ => false,
    }
}

/// The IP address a URL host (brackets already removed) stands for: an IPv6
/// address, or an IPv4 address in any form resolvers accept (`127.1`,
/// `0x7f.0.0.1`, `2130706433`, a trailing dot).
fn parse_host_ip(host: &str) -> Option<IpAddr> {
    if let Ok(v6) = host.parse::<Ipv6Addr>() {
        return Some(IpAddr::V6(v6));
    }
    parse_ipv4_lenient(host).map(IpAddr::V4)
}

/// IPv4 numbers-and-dots as in `inet_aton` and the WHATWG URL standard: one
/// to four parts, each decimal, octal (leading `0`) or hex (`0x`), the last
/// filling the remaining bytes.
fn parse_ipv4_lenient(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 64 {
        return None;
    }
    let mut parts = [0u64; 4];
    let mut count = 0;
    for part in host.split('.') {
        if count == 4 {
            return None;
        }
        parts[count] = parse_ipv4_part(part)?;
        count += 1;
    }
    let (last, leading) = (parts[count - 1], &parts[..count - 1]);
    if leading.iter().any(|&p| p > 255) || last >= 1u64 << (8 * (5 - count)) {
        return None;
    }
    let mut value = last;
    for (i, &part) in leading.iter().enumerate() {
        value |= part << (8 * (3 - i));
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

fn parse_ipv4_part(part: &str) -> Option<u64> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (part, 10)
        };
    if digits.is_empty() || digits.len() > 12 || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWORD: &str = "hunter2-SECRET";

    fn uri(text: &str) -> Uri {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn env(vars: &[(&str, &str)]) -> ProxySettings {
        ProxySettings::from_env_vars(vars.iter().copied())
    }

    /// "direct", "tunnel host:port" or "unsupported: reason".
    fn outcome(settings: &ProxySettings, destination: &str) -> String {
        match settings.decide(&uri(destination)) {
            ProxyDecision::Direct => "direct".to_owned(),
            ProxyDecision::Tunnel(proxy) => format!("tunnel {}", proxy.authority()),
            ProxyDecision::Unsupported(reason) => format!("unsupported: {reason}"),
        }
    }

    #[test]
    fn loopback_hosts_are_recognised() {
        for (host, loopback) in [
            ("localhost", true),
            ("LocalHost", true),
            ("localhost.", false),
            ("auth.localhost", false),
            ("a.b.LOCALHOST.", false),
            ("127.0.0.1", true),
            ("127.255.255.254", true),
            ("127.1", false),
            ("0x7f.0.0.1", false),
            ("2130706433", false),
            ("017700000001", false),
            ("127.0.0.1.", false),
            ("::1", true),
            ("[::1]", true),
            ("[0:0:0:0:0:0:0:1]", true),
            ("::ffff:127.0.0.1", true),
            ("[::ffff:127.9.8.7]", true),
            ("[::ffff:7f00:1]", true),
            ("localhost.example.com", false),
            ("notlocalhost", false),
            ("localhostx", false),
            ("127.example.com", false),
            ("128.0.0.1", false),
            ("10.0.0.1", false),
            ("0.0.0.0", false),
            ("::2", false),
            ("[::ffff:10.0.0.1]", false),
            ("example.com", false),
            ("", false),
            ("256.0.0.1", false),
            ("127.0.0.1.1", false),
        ] {
            assert_eq!(is_loopback_host(host), loopback, "{host}");
        }
    }

    fn every_kind_of_settings() -> Vec<(&'static str, ProxySettings)> {
        let proxy = format!("http://user:{PASSWORD}@proxy.corp:3128");
        let huge_no_proxy = "a.example,".repeat(10_000);
        vec![
            ("none", ProxySettings::none()),
            ("default", ProxySettings::default()),
            (
                "env, every variable",
                env(&[
                    ("http_proxy", &proxy),
                    ("HTTP_PROXY", &proxy),
                    ("https_proxy", &proxy),
                    ("HTTPS_PROXY", &proxy),
                    ("all_proxy", &proxy),
                    ("ALL_PROXY", &proxy),
                    ("no_proxy", "example.com,10.0.0.0/8"),
                ]),
            ),
            ("env, all_proxy only", env(&[("ALL_PROXY", &proxy)])),
            (
                "env, empty no_proxy",
                env(&[("all_proxy", &proxy), ("no_proxy", "")]),
            ),
            (
                "env, socks",
                env(&[("all_proxy", "socks5h://proxy.corp:1080")]),
            ),
            ("env, garbage", env(&[("all_proxy", "http://[oops")])),
            (
                "env, huge no_proxy",
                env(&[("all_proxy", &proxy), ("NO_PROXY", &huge_no_proxy)]),
            ),
            (
                "explicit",
                ProxySettings::explicit(&proxy, "example.com").unwrap(),
            ),
            (
                "explicit, no no_proxy",
                ProxySettings::explicit(&proxy, "").unwrap(),
            ),
        ]
    }

    #[test]
    fn loopback_is_never_proxied() {
        for (label, settings) in every_kind_of_settings() {
            for destination in [
                "http://127.0.0.1/token",
                "http://127.0.0.1:8080/token",
                "https://127.0.0.2:8443/token",
                "http://[::1]:8080/token",
                "https://[::1]/token",
                "http://[::ffff:127.0.0.1]/token",
                "http://localhost/token",
                "http://LOCALHOST:9000/token",
            ] {
                assert_eq!(
                    settings.decide(&uri(destination)),
                    ProxyDecision::Direct,
                    "{label}: {destination}"
                );
            }
        }
    }

    #[test]
    fn non_loopback_is_proxied_where_configured() {
        for (label, settings) in every_kind_of_settings() {
            let got = outcome(&settings, "https://api.example.net/v1");
            let expected = match label {
                "none" | "default" => "direct",
                l if l.contains("socks") || l.contains("garbage") || l.contains("huge") => {
                    "unsupported"
                }
                _ => "tunnel proxy.corp:3128",
            };
            assert!(got.starts_with(expected), "{label}: {got}");
        }
    }

    #[test]
    fn environment_precedence_follows_curl() {
        let http = "http://api.example.net/";
        let https = "https://api.example.net/";
        for (vars, for_http, for_https) in [
            // Uppercase HTTP_PROXY is ignored (httpoxy); lowercase counts.
            (vec![("HTTP_PROXY", "up:1")], "direct", "direct"),
            (vec![("http_proxy", "low:1")], "tunnel low:1", "direct"),
            (
                vec![("HTTP_PROXY", "up:1"), ("http_proxy", "low:1")],
                "tunnel low:1",
                "direct",
            ),
            // https: lowercase first, then uppercase.
            (vec![("HTTPS_PROXY", "up:2")], "direct", "tunnel up:2"),
            (
                vec![("HTTPS_PROXY", "up:2"), ("https_proxy", "low:2")],
                "direct",
                "tunnel low:2",
            ),
            // ALL_PROXY is the fallback, lowercase first.
            (
                vec![("ALL_PROXY", "allup:3")],
                "tunnel allup:3",
                "tunnel allup:3",
            ),
            (
                vec![("ALL_PROXY", "allup:3"), ("all_proxy", "alllow:3")],
                "tunnel alllow:3",
                "tunnel alllow:3",
            ),
            // Scheme-specific wins over ALL_PROXY, even the uppercase one.
            (
                vec![("all_proxy", "all:4"), ("HTTPS_PROXY", "up:4")],
                "tunnel all:4",
                "tunnel up:4",
            ),
            (
                vec![("all_proxy", "all:4"), ("http_proxy", "h:4")],
                "tunnel h:4",
                "tunnel all:4",
            ),
            // ...but ignored HTTP_PROXY does not hide ALL_PROXY.
            (
                vec![("all_proxy", "all:5"), ("HTTP_PROXY", "up:5")],
                "tunnel all:5",
                "tunnel all:5",
            ),
            // Empty and blank values count as unset.
            (
                vec![("https_proxy", ""), ("HTTPS_PROXY", "up:6")],
                "direct",
                "tunnel up:6",
            ),
            (
                vec![("http_proxy", "  "), ("all_proxy", "all:6")],
                "tunnel all:6",
                "tunnel all:6",
            ),
            (
                vec![("all_proxy", ""), ("ALL_PROXY", "")],
                "direct",
                "direct",
            ),
            // Mixed-case names are not proxy variables.
            (
                vec![("Http_Proxy", "x:1"), ("All_Proxy", "x:1")],
                "direct",
                "direct",
            ),
            // A later duplicate replaces an earlier one.
            (
                vec![("https_proxy", "first:1"), ("https_proxy", "second:1")],
                "direct",
                "tunnel second:1",
            ),
            (
                vec![("https_proxy", "first:1"), ("https_proxy", "")],
                "direct",
                "direct",
            ),
            // Unrelated variables are skipped.
            (
                vec![("PATH", "/usr/bin"), ("HOME", "/root")],
                "direct",
                "direct",
            ),
        ] {
            let settings = env(&vars);
            assert_eq!(outcome(&settings, http), for_http, "{vars:?} http");
            assert_eq!(outcome(&settings, https), for_https, "{vars:?} https");
        }
    }

    #[test]
    fn no_proxy_lowercase_wins_and_empty_is_unset() {
        for (vars, expected) in [
            (
                vec![("no_proxy", "example.net"), ("NO_PROXY", "other")],
                "direct",
            ),
            (
                vec![("no_proxy", "other"), ("NO_PROXY", "example.net")],
                "tunnel p:1",
            ),
            (
                vec![("no_proxy", ""), ("NO_PROXY", "example.net")],
                "direct",
            ),
            (vec![("NO_PROXY", "example.net")], "direct"),
            (vec![("No_Proxy", "example.net")], "tunnel p:1"),
        ] {
            let mut vars = vars;
            vars.push(("all_proxy", "p:1"));
            assert_eq!(
                outcome(&env(&vars), "https://api.example.net/"),
                expected,
                "{vars:?}"
            );
        }
    }

    /// `(no_proxy, destination, exempted)`, checked through both the
    /// environment and `explicit`.
    fn no_proxy_table() -> Vec<(&'static str, &'static str, bool)> {
        vec![
            // Host names: itself and subdomains, at a label boundary.
            ("example.com", "https://example.com/", true),
            ("example.com", "https://a.example.com/", true),
            ("example.com", "https://a.b.example.com/", true),
            ("example.com", "https://badexample.com/", false),
            ("example.com", "https://example.com.evil.net/", false),
            ("example.com", "https://example.co/", false),
            ("a.example.com", "https://example.com/", false),
            (".example.com", "https://example.com/", true),
            (".example.com", "https://a.example.com/", true),
            (".example.com", "https://badexample.com/", false),
            ("*.example.com", "https://example.com/", true),
            ("*.example.com", "https://x.example.com/", true),
            ("*.example.com", "https://xexample.com/", false),
            // Case, whitespace, trailing dots, empty entries.
            ("EXAMPLE.Com", "https://api.Example.COM/", true),
            (
                "  other.net ,\t example.com  ",
                "https://example.com/",
                true,
            ),
            (",,example.com,,", "https://example.com/", true),
            ("example.com.", "https://example.com/", true),
            ("example.com", "https://example.com./", true),
            // '*' alone, and as one entry of several.
            ("*", "https://anything.example/", true),
            ("*", "http://10.1.2.3/", true),
            ("other.net, *", "https://anything.example/", true),
            // IPv4 exact.
            ("10.1.2.3", "http://10.1.2.3/", true),
            ("10.1.2.3", "http://10.1.2.4/", false),
            ("10.1.2.3", "http://10.1.2.30/", false),
            ("1.2.3", "http://10.1.2.3/", false),
            ("2.3", "http://10.1.2.3/", false),
            // IPv6 exact, with or without brackets.
            ("fd00::1", "http://[fd00::1]/", true),
            ("[fd00::1]", "http://[fd00::1]/", true),
            ("fd00:0:0::1", "http://[fd00::1]/", true),
            ("fd00::1", "http://[fd00::2]/", false),
            ("::ffff:10.1.2.3", "http://10.1.2.3/", true),
            ("10.1.2.3", "http://[::ffff:10.1.2.3]/", true),
            // CIDR.
            ("10.0.0.0/8", "http://10.200.3.4/", true),
            ("10.0.0.0/8", "http://11.0.0.1/", false),
            ("10.1.0.0/16", "http://10.1.255.255/", true),
            ("10.1.0.0/16", "http://10.2.0.0/", false),
            ("10.1.2.3/8", "http://10.9.9.9/", true),
            ("0.0.0.0/0", "http://203.0.113.9/", true),
            ("192.0.2.7/32", "http://192.0.2.7/", true),
            ("192.0.2.7/32", "http://192.0.2.8/", false),
            ("10.0.0.0/8", "http://[::ffff:10.0.0.1]/", true),
            ("fd00::/8", "http://[fd12:3456::1]/", true),
            ("fd00::/8", "http://[fe80::1]/", false),
            ("[fd00::]/8", "http://[fd12::1]/", true),
            ("2001:db8::/32", "http://[2001:db8:ffff::1]/", true),
            ("2001:db8::/32", "http://[2001:db9::1]/", false),
            ("::/0", "http://[2001:db8::1]/", true),
            ("fd00::/8", "http://10.0.0.1/", false),
            // IP rules never match names, name rules never match IPs.
            ("10.0.0.0/8", "http://ten.example/", false),
            ("0.1", "http://10.0.0.1/", false),
            ("example.com", "http://10.0.0.1/", false),
            // Ports: only the same effective port, defaults included.
            ("example.com:443", "https://example.com/", true),
            ("example.com:443", "https://example.com:443/", true),
            ("example.com:443", "https://example.com:8443/", false),
            ("example.com:443", "http://example.com/", false),
            ("example.com:80", "http://api.example.com/", true),
            ("example.com:8080", "http://example.com:8080/", true),
            ("10.1.2.3:8443", "https://10.1.2.3:8443/", true),
            ("10.1.2.3:8443", "https://10.1.2.3/", false),
            ("[fd00::1]:443", "https://[fd00::1]/", true),
            ("[fd00::1]:443", "https://[fd00::1]:444/", false),
            // Not a match for anything.
            ("", "https://example.com/", false),
            ("other.net", "https://example.com/", false),
        ]
    }

    #[test]
    fn no_proxy_matching() {
        for (no_proxy, destination, exempted) in no_proxy_table() {
            let from_env = env(&[("all_proxy", "proxy:3128"), ("NO_PROXY", no_proxy)]);
            let explicit = ProxySettings::explicit("proxy:3128", no_proxy)
                .unwrap_or_else(|e| panic!("{no_proxy}: {e}"));
            for settings in [&from_env, &explicit] {
                let decision = settings.decide(&uri(destination));
                let expected = if exempted {
                    ProxyDecision::Direct
                } else {
                    ProxyDecision::Tunnel(match &settings.https {
                        Some(Ok(proxy)) => proxy,
                        _ => unreachable!(),
                    })
                };
                assert_eq!(decision, expected, "NO_PROXY={no_proxy:?} {destination}");
            }
        }
    }

    #[test]
    fn unusable_no_proxy_entries() {
        for entry in [
            "10.0.0.0/33",
            "fd00::/129",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/08",
            "ten/8",
            "example.com:0",
            "example.com:65536",
            "example.com:http",
            "[fd00::1",
            "[fd00::1]x",
            "[nope]",
            "a::b::c",
            "exa mple.com",
            "a.*.com",
            "*example.com",
            "a..com",
            ".",
            "*.",
            "bad/host/name",
        ] {
            // Strict in `explicit`...
            let err = ProxySettings::explicit("proxy:3128", entry).unwrap_err();
            assert!(
                matches!(err, ProxyError::InvalidNoProxyEntry { .. }),
                "{entry}: {err:?}"
            );
            assert!(!err.to_string().contains('\n'), "{err}");
            // ...skipped in the environment, where it never matches.
            let settings = env(&[("all_proxy", "proxy:3128"), ("no_proxy", entry)]);
            assert_eq!(
                outcome(&settings, "https://example.com/"),
                "tunnel proxy:3128",
                "{entry}"
            );
        }
        let long = format!("{}!", "x".repeat(500));
        let err = ProxySettings::explicit("proxy:3128", &long).unwrap_err();
        assert!(err.to_string().len() < 200, "{err}");
        assert_eq!(
            ProxySettings::explicit("proxy:3128", "ok.example, a..b")
                .unwrap_err()
                .to_string(),
            "no-proxy entry 2 (\"a..b\") is not usable: not a host name, IP address or CIDR block"
        );
        // Arguments swapped by mistake: the proxy URL is not echoed.
        let swapped = format!("http://alice:{PASSWORD}@proxy.corp:3128");
        let err = ProxySettings::explicit("proxy:3128", &swapped).unwrap_err();
        assert!(
            matches!(
                err,
                ProxyError::InvalidNoProxyEntry {
                    position: 1,
                    entry: None,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(!format!("{err} {err:?}").contains(PASSWORD), "{err}");
    }

    #[test]
    fn proxy_url_forms() {
        for (url, host, port, authority, credentials) in [
            (
                "http://proxy.corp:3128",
                "proxy.corp",
                3128,
                "proxy.corp:3128",
                None,
            ),
            (
                "http://proxy.corp:3128/",
                "proxy.corp",
                3128,
                "proxy.corp:3128",
                None,
            ),
            (
                "HTTP://Proxy.Corp",
                "proxy.corp",
                1080,
                "proxy.corp:1080",
                None,
            ),
            (
                "proxy.corp:8080",
                "proxy.corp",
                8080,
                "proxy.corp:8080",
                None,
            ),
            ("proxy.corp", "proxy.corp", 1080, "proxy.corp:1080", None),
            (
                "  http://proxy.corp:1  ",
                "proxy.corp",
                1,
                "proxy.corp:1",
                None,
            ),
            (
                "http://10.0.0.1:3128",
                "10.0.0.1",
                3128,
                "10.0.0.1:3128",
                None,
            ),
            (
                "http://[fd00::1]:3128",
                "fd00::1",
                3128,
                "[fd00::1]:3128",
                None,
            ),
            ("http://[FD00::1]", "fd00::1", 1080, "[fd00::1]:1080", None),
            ("[fd00::1]:3", "fd00::1", 3, "[fd00::1]:3", None),
            (
                "http://u:p@proxy:1",
                "proxy",
                1,
                "proxy:1",
                Some(("u", "p")),
            ),
            ("u:p@proxy:1", "proxy", 1, "proxy:1", Some(("u", "p"))),
            ("http://u@proxy:1", "proxy", 1, "proxy:1", Some(("u", ""))),
            ("http://:p@proxy:1", "proxy", 1, "proxy:1", Some(("", "p"))),
            ("http://:@proxy:1", "proxy", 1, "proxy:1", None),
            ("http://@proxy:1", "proxy", 1, "proxy:1", None),
            (
                "http://do%6Dain%5Cuser:p%40ss%3Aw%2Fo%25rd@proxy:1",
                "proxy",
                1,
                "proxy:1",
                Some(("domain\\user", "p@ss:w/o%rd")),
            ),
            (
                "http://u:p@ss@proxy:1",
                "proxy",
                1,
                "proxy:1",
                Some(("u", "p@ss")),
            ),
            (
                "http://%C3%A9l%C3%A8ve:%E2%82%AC@proxy:1",
                "proxy",
                1,
                "proxy:1",
                Some(("élève", "€")),
            ),
        ] {
            let settings =
                ProxySettings::explicit(url, "").unwrap_or_else(|e| panic!("{url}: {e}"));
            let ProxyDecision::Tunnel(proxy) = settings.decide(&uri("https://api.example/")) else {
                panic!("{url}: not tunnelled")
            };
            assert_eq!(proxy.host(), host, "{url}");
            assert_eq!(proxy.port(), port, "{url}");
            assert_eq!(proxy.authority(), authority, "{url}");
            assert_eq!(
                proxy.url_without_credentials(),
                format!("http://{authority}"),
                "{url}"
            );
            assert_eq!(proxy.credentials(), credentials, "{url}");
            assert_eq!(
                proxy.authorization().is_some(),
                credentials.is_some(),
                "{url}"
            );
            // The environment parses the same way.
            let from_env = env(&[("https_proxy", url)]);
            assert_eq!(
                from_env.decide(&uri("https://api.example/")),
                ProxyDecision::Tunnel(proxy)
            );
        }
    }

    #[test]
    fn basic_authorization_is_correct_and_sensitive() {
        let settings = ProxySettings::explicit("http://Aladdin:open%20sesame@proxy:1", "").unwrap();
        let ProxyDecision::Tunnel(proxy) = settings.decide(&uri("https://api.example/")) else {
            panic!()
        };
        let value = proxy.authorization().unwrap();
        // RFC 7617's example: base64("Aladdin:open sesame").
        assert_eq!(value, "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==");
        assert!(value.is_sensitive());
        assert_eq!(proxy.credentials(), Some(("Aladdin", "open sesame")));
    }

    #[test]
    fn unsupported_proxies_from_the_environment() {
        let https = "https://api.example/";
        for (name, value, starts) in [
            (
                "HTTPS_PROXY",
                format!("socks5://user:{PASSWORD}@proxy.corp:1080"),
                "HTTPS_PROXY names a socks5 proxy (socks5://proxy.corp:1080); token-keeper \
                 tunnels through http proxies only: set NO_PROXY for this host or use an \
                 http:// proxy",
            ),
            (
                "https_proxy",
                format!("SOCKS5H://{PASSWORD}@proxy.corp"),
                "https_proxy names a socks5h proxy (socks5h://proxy.corp);",
            ),
            (
                "all_proxy",
                "socks4://proxy.corp:1080".to_owned(),
                "all_proxy names a socks4 proxy (socks4://proxy.corp:1080);",
            ),
            (
                "ALL_PROXY",
                "socks4a://[fd00::1]:9".to_owned(),
                "ALL_PROXY names a socks4a proxy (socks4a://[fd00::1]:9);",
            ),
            (
                "https_proxy",
                format!("https://user:{PASSWORD}@proxy.corp:443"),
                "https_proxy names an https proxy (https://proxy.corp:443);",
            ),
            (
                "https_proxy",
                format!("ftp://user:{PASSWORD}@proxy.corp"),
                "https_proxy names a ftp proxy (ftp://proxy.corp);",
            ),
            (
                "https_proxy",
                format!("socks5://user:{PASSWORD}@bad host"),
                "https_proxy names a socks5 proxy (socks5://…);",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}@proxy.corp:99999"),
                "https_proxy is not a usable proxy URL (the port is not a number from 1 to \
                 65535); token-keeper neither ignores it nor connects directly",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}@"),
                "https_proxy is not a usable proxy URL (it has no host)",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}@proxy/path"),
                "https_proxy is not a usable proxy URL (it has a path, query or fragment)",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}/x@proxy:1"),
                "https_proxy is not a usable proxy URL (the user information contains",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}%zz@proxy:1"),
                "https_proxy is not a usable proxy URL (the password is not valid",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}%ff@proxy:1"),
                "https_proxy is not a usable proxy URL (the password is not valid",
            ),
            (
                "https_proxy",
                format!("user:{PASSWORD}://proxy"),
                "https_proxy is not a usable proxy URL (the scheme is malformed)",
            ),
            (
                "https_proxy",
                format!("{PASSWORD} x"),
                "https_proxy is not a usable proxy URL (the host contains",
            ),
            (
                "https_proxy",
                format!("http://[::1:{PASSWORD}]:1"),
                "https_proxy is not a usable proxy URL (the bracketed host is not",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}@[::1"),
                "https_proxy is not a usable proxy URL (unclosed '['",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}@proxy:1:2"),
                "https_proxy is not a usable proxy URL (the port",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}@proxy.\u{fffd}:1"),
                "https_proxy is not a usable proxy URL (the host contains",
            ),
            (
                "https_proxy",
                format!("http://user:{PASSWORD}@{}", "p".repeat(3000)),
                "https_proxy is longer than 2048 bytes; token-keeper neither ignores it",
            ),
        ] {
            let settings = env(&[(name, value.as_str())]);
            let ProxyDecision::Unsupported(reason) = settings.decide(&uri(https)) else {
                panic!("{value}: not unsupported")
            };
            assert!(reason.starts_with(starts), "{value}:\n{reason}\n{starts}");
            assert!(!reason.contains(PASSWORD), "{reason}");
            assert!(!reason.contains('\n'), "{reason}");
            assert!(!format!("{settings:?}").contains(PASSWORD), "{settings:?}");
            // A NO_PROXY exemption still applies, and so does loopback.
            let exempt = env(&[(name, value.as_str()), ("no_proxy", "api.example")]);
            assert_eq!(exempt.decide(&uri(https)), ProxyDecision::Direct);
            assert_eq!(
                settings.decide(&uri("https://[::1]/")),
                ProxyDecision::Direct
            );
        }
    }

    #[test]
    fn explicit_errors_are_typed() {
        let socks = format!("socks5://user:{PASSWORD}@proxy.corp:1080");
        let long = "p".repeat(MAX_PROXY_URL + 1);
        let many = "a,".repeat(MAX_NO_PROXY_ENTRIES + 1);
        let huge = "a".repeat(MAX_NO_PROXY + 1);
        for (proxy, no_proxy, expected) in [
            (
                socks.as_str(),
                "",
                ProxyError::UnsupportedScheme {
                    scheme: "socks5".into(),
                    proxy: "socks5://proxy.corp:1080".into(),
                },
            ),
            (
                "https://proxy.corp",
                "",
                ProxyError::UnsupportedScheme {
                    scheme: "https".into(),
                    proxy: "https://proxy.corp".into(),
                },
            ),
            (
                "",
                "",
                ProxyError::InvalidProxyUrl {
                    problem: "it is empty",
                },
            ),
            (
                "http://proxy:0",
                "",
                ProxyError::InvalidProxyUrl {
                    problem: "the port is not a number from 1 to 65535",
                },
            ),
            (
                long.as_str(),
                "",
                ProxyError::ProxyUrlTooLong {
                    limit: MAX_PROXY_URL,
                },
            ),
            (
                "proxy:1",
                many.as_str(),
                ProxyError::TooManyNoProxyEntries {
                    limit: MAX_NO_PROXY_ENTRIES,
                },
            ),
            (
                "proxy:1",
                huge.as_str(),
                ProxyError::NoProxyTooLong {
                    limit: MAX_NO_PROXY,
                },
            ),
        ] {
            let err = ProxySettings::explicit(proxy, no_proxy).unwrap_err();
            assert_eq!(err, expected);
            let shown = format!("{err} {err:?}");
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(!err.to_string().contains('\n'), "{err}");
            let _: &dyn std::error::Error = &err;
        }
        assert_eq!(
            ProxySettings::explicit(&socks, "").unwrap_err().to_string(),
            "the proxy URL names a socks5 proxy (socks5://proxy.corp:1080); token-keeper \
             tunnels through http proxies only: use an http:// proxy"
        );
        // Exactly at the limits is fine.
        let at_limit = "a,".repeat(MAX_NO_PROXY_ENTRIES);
        assert!(ProxySettings::explicit("proxy:1", &at_limit).is_ok());
    }

    #[test]
    fn secrets_never_shown() {
        let url = format!("http://alice:{PASSWORD}@proxy.corp:3128");
        let explicit = ProxySettings::explicit(&url, ".corp,10.0.0.0/8").unwrap();
        let from_env = env(&[("all_proxy", &url), ("https_proxy", &url)]);
        for settings in [&explicit, &from_env] {
            let debug = format!("{settings:?} {settings:#?}");
            assert!(!debug.contains(PASSWORD), "{debug}");
            assert!(!debug.contains("alice"), "{debug}");
            assert!(debug.contains("http://***@proxy.corp:3128"), "{debug}");
            let ProxyDecision::Tunnel(proxy) = settings.decide(&uri("https://api.example/")) else {
                panic!()
            };
            let shown = format!(
                "{proxy:?} {:?} {} {} {:?}",
                settings.decide(&uri("https://api.example/")),
                proxy.url_without_credentials(),
                proxy.authority(),
                proxy.authorization().unwrap(),
            );
            assert!(!shown.contains(PASSWORD), "{shown}");
            assert!(!shown.contains("alice"), "{shown}");
            assert_eq!(format!("{proxy:?}"), "Proxy(http://***@proxy.corp:3128)");
            assert_eq!(proxy.credentials(), Some(("alice", PASSWORD)));
        }
        let plain = ProxySettings::explicit("proxy.corp:3128", "").unwrap();
        assert_eq!(
            format!("{plain:?}"),
            "ProxySettings { http: Proxy(http://proxy.corp:3128), \
             https: Proxy(http://proxy.corp:3128), no_proxy: [] }"
        );
        assert_eq!(
            format!("{:?}", ProxySettings::none()),
            "ProxySettings { http: None, https: None, no_proxy: [] }"
        );
    }

    #[test]
    fn connect_request_heads() {
        let plain = ProxySettings::explicit("proxy:3128", "").unwrap();
        let authed =
            ProxySettings::explicit("http://Aladdin:open%20sesame@proxy:3128", "").unwrap();
        let proxy_of = |s: &ProxySettings| match s.https.as_ref() {
            Some(Ok(proxy)) => proxy.clone(),
            _ => unreachable!(),
        };
        let (plain, authed) = (proxy_of(&plain), proxy_of(&authed));
        for (proxy, host, port, expected) in [
            (
                &plain,
                "api.example.com",
                443,
                "CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n",
            ),
            (
                &authed,
                "api.example.com",
                8443,
                "CONNECT api.example.com:8443 HTTP/1.1\r\nHost: api.example.com:8443\r\n\
                 Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n",
            ),
            (
                &plain,
                "fd00::1",
                443,
                "CONNECT [fd00::1]:443 HTTP/1.1\r\nHost: [fd00::1]:443\r\n\r\n",
            ),
            (
                &plain,
                "[fd00::1]",
                80,
                "CONNECT [fd00::1]:80 HTTP/1.1\r\nHost: [fd00::1]:80\r\n\r\n",
            ),
            (
                &plain,
                "10.0.0.1",
                80,
                "CONNECT 10.0.0.1:80 HTTP/1.1\r\nHost: 10.0.0.1:80\r\n\r\n",
            ),
            // No header injection through the host.
            (
                &plain,
                "evil\r\nX-Injected: 1",
                443,
                "CONNECT evil%0D%0AX-Injected%3A%201:443 HTTP/1.1\r\n\
                 Host: evil%0D%0AX-Injected%3A%201:443\r\n\r\n",
            ),
        ] {
            let head = connect_request_head(proxy, host, port);
            assert_eq!(String::from_utf8(head).unwrap(), expected, "{host}");
        }
        // Built from a destination URI's host as transports do.
        let destination = uri("https://[2001:db8::7]:8443/token");
        let head = connect_request_head(
            &plain,
            destination.host().unwrap(),
            destination.port_u16().unwrap(),
        );
        assert!(head
            .starts_with(b"CONNECT [2001:db8::7]:8443 HTTP/1.1\r\nHost: [2001:db8::7]:8443\r\n"));
    }

    #[test]
    fn destinations_that_are_not_http_urls() {
        let proxied = ProxySettings::explicit("proxy:1", "").unwrap();
        for destination in ["/relative/path", "ftp://files.example/x", "example.com:443"] {
            let destination = uri(destination);
            assert_eq!(
                ProxySettings::none().decide(&destination),
                ProxyDecision::Direct
            );
            assert_eq!(
                env(&[("NO_PROXY", "*")]).decide(&destination),
                ProxyDecision::Direct
            );
            assert_eq!(
                proxied.decide(&destination),
                ProxyDecision::Unsupported(NOT_HTTP_DESTINATION)
            );
        }
        // Loopback stays direct whatever the scheme.
        assert_eq!(
            proxied.decide(&uri("ftp://localhost/x")),
            ProxyDecision::Direct
        );
        // Scheme is case-insensitive.
        assert_eq!(outcome(&proxied, "HTTPS://api.example/"), "tunnel proxy:1");
    }

    #[test]
    fn destinations_without_an_origin_are_never_tunnelled_to_a_guess() {
        let proxied = ProxySettings::explicit("proxy:1", "").unwrap();
        let exempt_all = ProxySettings::explicit("proxy:1", "*").unwrap();
        for (destination, why) in [
            ("https://api.example:99999/x", "invalid port"),
            ("https://api.example:0/x", "invalid port"),
            ("https://api.example:x/x", "invalid port"),
            ("https://user:hunter2@api.example/x", "user information"),
            ("https://[v1.x]/x", "invalid host"),
        ] {
            let destination = uri(destination);
            // Before: tunnelled (to port 443 for `:99999`), or exempted by `*`.
            for settings in [&proxied, &exempt_all] {
                let ProxyDecision::Unsupported(reason) = settings.decide(&destination) else {
                    panic!("{destination}: not refused");
                };
                assert!(reason.contains(why), "{destination}: {reason}");
                assert!(!reason.contains("hunter2"), "{reason}");
            }
            // No proxy configured: direct, as before (the transport refuses it).
            assert_eq!(
                ProxySettings::none().decide(&destination),
                ProxyDecision::Direct
            );
        }
        // Loopback stays direct, whatever else is wrong with the URL.
        for destination in [
            "http://user:pw@127.0.0.1/x",
            "http://localhost:99999/x",
            "https://[::1]:0/x",
        ] {
            assert_eq!(proxied.decide(&uri(destination)), ProxyDecision::Direct);
        }
        // Equal origins decide alike: explicit default port, case, IPv6 brackets.
        let settings = ProxySettings::explicit("proxy:1", "api.example:443, fd00::1").unwrap();
        for (destination, expected) in [
            ("https://API.example/x", "direct"),
            ("https://api.example:443/x", "direct"),
            ("https://api.example:/x", "direct"),
            ("https://api.example:8443/x", "tunnel proxy:1"),
            ("http://api.example/x", "tunnel proxy:1"),
            ("http://[FD00::1]:8080/x", "direct"),
        ] {
            assert_eq!(outcome(&settings, destination), expected, "{destination}");
        }
    }

    #[test]
    fn huge_inputs_are_bounded() {
        let started = std::time::Instant::now();
        // NO_PROXY over 64 KiB, or over 4096 entries: refused, not guessed.
        let long = format!("example.com,{}", "x".repeat(MAX_NO_PROXY));
        let many = format!("example.com,{}", "a.b,".repeat(MAX_NO_PROXY_ENTRIES));
        for no_proxy in [&long, &many] {
            let settings = env(&[("all_proxy", "proxy:1"), ("no_proxy", no_proxy)]);
            let got = outcome(&settings, "https://example.com/");
            assert!(
                got.starts_with("unsupported: no_proxy is longer than 65536 bytes or has more"),
                "{got}"
            );
            // No proxy in play: the list does not matter.
            let unproxied = env(&[("no_proxy", no_proxy)]);
            assert_eq!(outcome(&unproxied, "https://example.com/"), "direct");
            assert_eq!(outcome(&settings, "http://127.0.0.1/"), "direct");
        }
        // The largest accepted list still decides quickly.
        let biggest = (0..MAX_NO_PROXY_ENTRIES)
            .map(|i| format!("h{i}.example"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(biggest.len() <= MAX_NO_PROXY);
        let settings = env(&[("all_proxy", "proxy:1"), ("no_proxy", &biggest)]);
        let long_host = format!("https://{}.example.org/", "a".repeat(200));
        for _ in 0..100 {
            assert_eq!(outcome(&settings, &long_host), "tunnel proxy:1");
        }
        assert_eq!(outcome(&settings, "https://x.h4095.example/"), "direct");
        // Millions of unrelated variables and huge values are skipped cheaply.
        let giant = "v".repeat(1 << 20);
        let vars = (0..200_000)
            .map(|i| (format!("VAR{i}"), "x"))
            .chain([("https_proxy".to_owned(), giant.as_str())]);
        let settings = ProxySettings::from_env_vars(vars);
        assert!(outcome(&settings, "https://api.example/")
            .starts_with("unsupported: https_proxy is longer"));
        // Odd hosts do not trip the lenient IPv4 parser.
        for host in [
            "1.2.3.4.5",
            "0x",
            "00000000000000000000000000001",
            "4294967296",
            "1.16777216",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const NAMES: [&str; 9] = [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
            "no_proxy",
            "NO_PROXY",
            "OTHER",
        ];

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                ".{0,40}",
                "(http|https|socks5|HTTP)?(://)?([a-z:%@]{0,8}@)?[a-z0-9.\\[\\]:]{0,20}(:[0-9]{1,6})?/?",
                "([ .*]{0,2}[a-z0-9.:/\\[\\]]{0,16},){0,6}",
                Just("*".to_owned()),
                Just("http://u:p@proxy:3128".to_owned()),
                ("(http|https|socks5|ftp|)", "(://)?", "[a-z0-9.:%@\\[\\]/ ]{0,12}")
                    .prop_map(|(s, sep, h)| format!("{s}{sep}u:{PASSWORD}@{h}")),
            ]
        }

        fn loopback() -> impl Strategy<Value = String> {
            prop_oneof![
                (any::<u8>(), any::<u8>(), any::<u8>())
                    .prop_map(|(a, b, c)| format!("127.{a}.{b}.{c}")),
                any::<u8>().prop_map(|c| format!("[::ffff:127.0.0.{c}]")),
                Just("[::1]".to_owned()),
                Just("localhost".to_owned()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn decide_never_panics_nor_proxies_loopback(
                vars in proptest::collection::vec((0..NAMES.len(), value()), 0..8),
                host in loopback(),
                other in "[a-z0-9.-]{1,20}",
                port in proptest::option::of(1u16..),
                https in any::<bool>(),
                explicit_url in value(),
                explicit_no_proxy in value(),
            ) {
                let settings =
                    ProxySettings::from_env_vars(vars.iter().map(|(i, v)| (NAMES[*i], v)));
                let explicit = ProxySettings::explicit(&explicit_url, &explicit_no_proxy);
                if let Err(error) = &explicit {
                    let shown = format!("{error} {error:?}");
                    prop_assert!(!shown.contains(PASSWORD));
                }
                let scheme = if https { "https" } else { "http" };
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let local = uri(&format!("{scheme}://{host}{port}/token"));
                prop_assert_eq!(settings.decide(&local), ProxyDecision::Direct);
                let shown = format!("{settings:?}");
                prop_assert!(!shown.contains(PASSWORD));
                if let Ok(explicit) = &explicit {
                    prop_assert_eq!(explicit.decide(&local), ProxyDecision::Direct);
                }
                if let Ok(remote) = format!("{scheme}://{other}{port}/").parse::<Uri>() {
                    let decision = settings.decide(&remote);
                    if let ProxyDecision::Unsupported(reason) = decision {
                        prop_assert!(!reason.contains('\n'));
                        prop_assert!(!reason.contains(PASSWORD));
                    }
                    if let Ok(explicit) = &explicit {
                        let _ = explicit.decide(&remote);
                        let shown = format!("{explicit:?}");
                        prop_assert!(!shown.contains(PASSWORD));
                    }
                }
            }
        }
    }
}
