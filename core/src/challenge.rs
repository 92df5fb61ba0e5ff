//! Parsing of HTTP `WWW-Authenticate` challenges.
//!
//! A resource server that rejects a token says why in one or more
//! `WWW-Authenticate` header fields (RFC 9110 §11.6.1). Each field value is a
//! comma-separated list of challenges (RFC 9110 §11.2 and §5.6.1), where each
//! challenge is an auth-scheme followed either by a single `token68` or by a
//! comma-separated list of `name=value` auth-params whose values are tokens or
//! quoted strings (RFC 9110 §5.6.2 and §5.6.4). This is how a server signals
//! `Bearer` errors (RFC 6750 §3) and `DPoP` errors such as `use_dpop_nonce`
//! (RFC 9449 §7.1 and §8).
//!
//! The parser is strict about the grammar but tolerant of list noise: empty
//! list elements (`, ,`) and surrounding whitespace are skipped, and bad
//! whitespace (BWS) around `=` is accepted. It never panics, runs in time
//! linear in the input, and refuses values with more than 64 challenges or
//! more than 64 auth-params in one challenge, so a hostile header cannot make
//! it allocate much more than a small multiple of the header's size.
//!
//! ```
//! use token_keeper::challenge::parse_challenges;
//!
//! let value = r#"Bearer realm="example", DPoP error="use_dpop_nonce", algs="ES256 PS256""#;
//! let challenges = parse_challenges(value)?;
//! assert_eq!(challenges.len(), 2);
//! assert!(challenges[0].is_scheme("bearer"));
//! assert_eq!(challenges[0].param("realm"), Some("example"));
//! assert!(challenges[1].is_scheme("DPoP"));
//! assert_eq!(challenges[1].param("ERROR"), Some("use_dpop_nonce"));
//! assert_eq!(challenges[1].param("algs"), Some("ES256 PS256"));
//! # Ok::<(), token_keeper::challenge::ChallengeError>(())
//! ```
//!
//! Several header fields are read in order with [`parse_www_authenticate`]:
//!
//! ```
//! use http::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};
//! use token_keeper::challenge::parse_www_authenticate;
//!
//! let mut headers = HeaderMap::new();
//! headers.append(WWW_AUTHENTICATE, HeaderValue::from_static("Basic dXNlcjpwYXNz=="));
//! headers.append(WWW_AUTHENTICATE, HeaderValue::from_static("Negotiate"));
//! let challenges = parse_www_authenticate(&headers)?;
//! assert_eq!(challenges[0].token68(), Some("dXNlcjpwYXNz=="));
//! assert_eq!(challenges[1].scheme(), "Negotiate");
//! # Ok::<(), token_keeper::challenge::ChallengeError>(())
//! ```

use std::fmt;

/// Most challenges accepted from one header value (or one header map).
const MAX_CHALLENGES: usize = 64;

/// Most auth-params accepted in one challenge.
const MAX_PARAMS: usize = 64;

/// One parsed challenge: an auth-scheme plus either a token68 or auth-params.
///
/// Callers use it to find out which scheme the server wants (`Bearer`, `DPoP`,
/// ...) and what it reported (`error`, `error_description`, `algs`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    scheme: String,
    token68: Option<String>,
    params: Vec<(String, String)>,
}

impl Challenge {
    /// The auth-scheme exactly as the server wrote it (e.g. `Bearer`).
    #[must_use]
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// Whether this challenge uses `scheme`; auth-schemes are compared
    /// ASCII case-insensitively, as RFC 9110 §11.1 requires.
    #[must_use]
    pub fn is_scheme(&self, scheme: &str) -> bool {
        self.scheme.eq_ignore_ascii_case(scheme)
    }

    /// The token68 that followed the scheme (e.g. `Basic dXNlcjpwYXNz==`),
    /// including any `=` padding; `None` when the challenge has auth-params
    /// or nothing after the scheme.
    #[must_use]
    pub fn token68(&self) -> Option<&str> {
        self.token68.as_deref()
    }

    /// The value of the first auth-param named `name` (compared ASCII
    /// case-insensitively), with quoted-string escapes already removed.
    #[must_use]
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every auth-param as `(name, value)` in the order written; names keep
    /// their original case, values are unescaped, duplicates are kept.
    pub fn params(&self) -> impl Iterator<Item = (&str, &str)> {
        self.params.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

/// Why a `WWW-Authenticate` value could not be parsed.
///
/// It carries only a byte offset and a short fixed reason, never the input
/// itself, so it is safe to log even when the header holds secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChallengeError {
    offset: usize,
    reason: &'static str,
}

impl ChallengeError {
    fn new(offset: usize, reason: &'static str) -> Self {
        Self { offset, reason }
    }

    /// Byte offset of the problem within the offending header value (for
    /// [`parse_www_authenticate`], within that one field value).
    #[must_use]
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Short, fixed description of what was wrong at [`offset`](Self::offset).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for ChallengeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed WWW-Authenticate value at byte {}: {}",
            self.offset, self.reason
        )
    }
}

impl std::error::Error for ChallengeError {}

/// Parses one `WWW-Authenticate` field value, which may hold several
/// challenges; an empty or all-whitespace value yields no challenges.
///
/// # Errors
///
/// Returns a [`ChallengeError`] when the value does not follow the
/// RFC 9110 challenge grammar (for example an unterminated quoted string,
/// an auth-param with no name or no value, an auth-param before any
/// auth-scheme, or a non-ASCII character outside a quoted string) or holds
/// more than 64 challenges or more than 64 auth-params in one challenge.
pub fn parse_challenges(value: &str) -> Result<Vec<Challenge>, ChallengeError> {
    let mut out = Vec::new();
    parse_into(value, &mut out)?;
    Ok(out)
}

/// Parses every `WWW-Authenticate` field in `headers`, in order, and
/// concatenates their challenges (at most 64 in total).
///
/// A field value that is not visible ASCII text (one that
/// [`http::HeaderValue::to_str`] rejects) fails with the reason
/// `"header value is not text"` at the first offending byte.
///
/// # Errors
///
/// Returns a [`ChallengeError`] for the first field value that is not text
/// or that [`parse_challenges`] rejects (its offset is within that field
/// value), or when all fields together hold more than 64 challenges.
pub fn parse_www_authenticate(headers: &http::HeaderMap) -> Result<Vec<Challenge>, ChallengeError> {
    let mut out = Vec::new();
    for value in headers.get_all(http::header::WWW_AUTHENTICATE) {
        let text = value.to_str().map_err(|_| {
            let bytes = value.as_bytes();
            let offset = bytes
                .iter()
                .position(|&b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
                .unwrap_or(bytes.len());
            ChallengeError::new(offset, "header value is not text")
        })?;
        parse_into(text, &mut out)?;
    }
    Ok(out)
}

/// `tchar` from RFC 9110 §5.6.2.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}

/// Characters of a token68 before its `=` padding (RFC 9110 §11.2).
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
}

/// Control characters other than HTAB, which may not appear anywhere.
fn is_ctl(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// Appends the challenges of one field value to `out`.
///
/// Challenges already in `out` (from earlier fields) count towards the
/// challenge limit but never receive auth-params from this value.
fn parse_into(value: &str, out: &mut Vec<Challenge>) -> Result<(), ChallengeError> {
    let base = out.len();
    let mut p = Parser {
        src: value,
        bytes: value.as_bytes(),
        pos: 0,
    };
    loop {
        p.skip_ows();
        match p.peek() {
            None => break,
            Some(b',') => {
                // Empty list element.
                p.pos += 1;
                continue;
            }
            Some(_) => {}
        }

        // Every list element starts with a token: either the auth-scheme of
        // a new challenge or the name of an auth-param that continues the
        // current challenge (the name is then followed by BWS "=").
        let start = p.pos;
        let name = p.token();
        if name.is_empty() {
            let reason = if p.peek() == Some(b'=') {
                "auth-param without a name"
            } else {
                "expected auth-scheme or auth-param"
            };
            return Err(p.unexpected(reason));
        }
        let after_name = p.pos;
        p.skip_ows();

        if p.peek() == Some(b'=') {
            p.pos += 1;
            if out.len() <= base {
                return Err(ChallengeError::new(
                    start,
                    "auth-param before any auth-scheme",
                ));
            }
            let Some(current) = out.last_mut() else {
                return Err(ChallengeError::new(
                    start,
                    "auth-param before any auth-scheme",
                ));
            };
            if current.token68.is_some() {
                return Err(ChallengeError::new(start, "auth-param after token68"));
            }
            if current.params.len() >= MAX_PARAMS {
                return Err(ChallengeError::new(start, "too many auth-params"));
            }
            let param_value = p.param_value()?;
            current.params.push((name.to_owned(), param_value));
        } else {
            p.pos = after_name;
            if out.len() >= MAX_CHALLENGES {
                return Err(ChallengeError::new(start, "too many challenges"));
            }
            let mut challenge = Challenge {
                scheme: name.to_owned(),
                token68: None,
                params: Vec::new(),
            };
            let spaces = p.skip_ows();
            match p.peek() {
                // Scheme alone, e.g. `Negotiate`.
                None | Some(b',') => {}
                Some(_) if spaces == 0 => {
                    return Err(p.unexpected("invalid character after auth-scheme"));
                }
                Some(_) => {
                    if let Some(token68) = p.token68() {
                        challenge.token68 = Some(token68.to_owned());
                    } else {
                        let param_name = p.token();
                        if param_name.is_empty() {
                            return Err(p.unexpected("expected token68 or auth-param"));
                        }
                        p.skip_ows();
                        if p.peek() != Some(b'=') {
                            return Err(p.unexpected("expected '=' after auth-param name"));
                        }
                        p.pos += 1;
                        let param_value = p.param_value()?;
                        challenge.params.push((param_name.to_owned(), param_value));
                    }
                }
            }
            out.push(challenge);
        }

        // An element must be followed by the end of the list or a comma.
        p.skip_ows();
        match p.peek() {
            None => break,
            Some(b',') => {}
            Some(_) => return Err(p.unexpected("expected ',' between list elements")),
        }
    }
    Ok(())
}

/// Cursor over one field value.
///
/// Invariant: `src` is only sliced at offsets that are the end of input or
/// whose byte (or whose preceding byte) is ASCII, which are always char
/// boundaries, so slicing cannot panic.
struct Parser<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Skips SP / HTAB and returns how many were skipped.
    fn skip_ows(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Reads a (possibly empty) run of `tchar`.
    fn token(&mut self) -> &'a str {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        &self.src[start..self.pos]
    }

    /// Reads a token68 if one starts here and is the whole rest of the
    /// challenge (only OWS then `,` or the end may follow); otherwise leaves
    /// the cursor alone so the caller can parse an auth-param instead.
    fn token68(&mut self) -> Option<&'a str> {
        let start = self.pos;
        let mut end = start;
        while self.bytes.get(end).copied().is_some_and(is_token68_char) {
            end += 1;
        }
        if end == start {
            return None;
        }
        while self.bytes.get(end) == Some(&b'=') {
            end += 1;
        }
        let mut next = end;
        while matches!(self.bytes.get(next), Some(b' ' | b'\t')) {
            next += 1;
        }
        match self.bytes.get(next) {
            None | Some(b',') => {
                self.pos = end;
                Some(&self.src[start..end])
            }
            Some(_) => None,
        }
    }

    /// Reads BWS then a token or quoted-string value after an `=`.
    fn param_value(&mut self) -> Result<String, ChallengeError> {
        self.skip_ows();
        match self.peek() {
            Some(b'"') => self.quoted_string(),
            None | Some(b',') => Err(ChallengeError::new(self.pos, "missing auth-param value")),
            Some(_) => {
                let value = self.token();
                if value.is_empty() {
                    Err(self.unexpected("invalid character in auth-param value"))
                } else {
                    Ok(value.to_owned())
                }
            }
        }
    }

    /// Reads a quoted-string starting at the opening `"`, unescaping
    /// quoted-pairs; non-ASCII text inside is kept as is.
    fn quoted_string(&mut self) -> Result<String, ChallengeError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        let mut segment = self.pos;
        loop {
            let Some(b) = self.peek() else {
                return Err(ChallengeError::new(open, "unterminated quoted string"));
            };
            match b {
                b'"' => {
                    out.push_str(&self.src[segment..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                b'\\' => {
                    out.push_str(&self.src[segment..self.pos]);
                    match self.bytes.get(self.pos + 1) {
                        None => {
                            return Err(ChallengeError::new(open, "unterminated quoted string"));
                        }
                        Some(&c) if is_ctl(c) => {
                            return Err(ChallengeError::new(
                                self.pos + 1,
                                "control character in quoted string",
                            ));
                        }
                        Some(_) => {
                            // The escaped character starts right after the
                            // ASCII backslash; a multi-byte one continues
                            // as obs-text bytes.
                            segment = self.pos + 1;
                            self.pos += 2;
                        }
                    }
                }
                c if is_ctl(c) => {
                    return Err(ChallengeError::new(
                        self.pos,
                        "control character in quoted string",
                    ));
                }
                _ => self.pos += 1,
            }
        }
    }

    /// Error for the byte at the cursor, with a more specific reason than
    /// `default` for the end of input, non-ASCII and control characters.
    fn unexpected(&self, default: &'static str) -> ChallengeError {
        let reason = match self.peek() {
            None => "unexpected end of input",
            Some(b) if !b.is_ascii() => "non-ASCII character outside quoted string",
            Some(b) if is_ctl(b) => "control character outside quoted string",
            Some(_) => default,
        };
        ChallengeError::new(self.pos, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{HeaderMap, HeaderValue, WWW_AUTHENTICATE};

    fn parse(value: &str) -> Vec<Challenge> {
        match parse_challenges(value) {
            Ok(c) => c,
            Err(e) => panic!("{value:?} failed: {e}"),
        }
    }

    fn parse_err(value: &str) -> ChallengeError {
        match parse_challenges(value) {
            Ok(c) => panic!("{value:?} unexpectedly parsed: {c:?}"),
            Err(e) => e,
        }
    }

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params().collect()
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("x/y"));
        for v in values {
            map.append(WWW_AUTHENTICATE, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn rfc9110_example() {
        let c = parse(
            r#"Newauth realm="apps", type=1, title="Login to \"apps\"", Basic realm="simple""#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme(), "Newauth");
        assert_eq!(c[0].token68(), None);
        assert_eq!(
            params(&c[0]),
            [
                ("realm", "apps"),
                ("type", "1"),
                ("title", r#"Login to "apps""#)
            ]
        );
        assert_eq!(c[1].scheme(), "Basic");
        assert_eq!(params(&c[1]), [("realm", "simple")]);
    }

    #[test]
    fn rfc6750_examples() {
        let c = parse(r#"Bearer realm="example""#);
        assert_eq!(c.len(), 1);
        assert!(c[0].is_scheme("Bearer"));
        assert_eq!(params(&c[0]), [("realm", "example")]);

        let c = parse(
            r#"Bearer realm="example", error="invalid_token", error_description="The access token expired""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].param("realm"), Some("example"));
        assert_eq!(c[0].param("error"), Some("invalid_token"));
        assert_eq!(
            c[0].param("error_description"),
            Some("The access token expired")
        );
        assert_eq!(c[0].param("scope"), None);
    }

    #[test]
    fn rfc9449_dpop_example() {
        let c = parse(
            r#"DPoP error="use_dpop_nonce", error_description="Resource server requires nonce in DPoP proof""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme(), "DPoP");
        assert_eq!(
            params(&c[0]),
            [
                ("error", "use_dpop_nonce"),
                (
                    "error_description",
                    "Resource server requires nonce in DPoP proof"
                )
            ]
        );

        let c = parse(r#"DPoP algs="ES256 PS256""#);
        assert_eq!(c[0].param("algs"), Some("ES256 PS256"));
    }

    #[test]
    fn bearer_and_dpop_in_one_header() {
        let c = parse(
            r#"Bearer realm="api", error="invalid_token", DPoP algs="ES256 PS256", error="use_dpop_nonce""#,
        );
        assert_eq!(c.len(), 2);
        assert!(c[0].is_scheme("bearer"));
        assert_eq!(
            params(&c[0]),
            [("realm", "api"), ("error", "invalid_token")]
        );
        assert!(c[1].is_scheme("dpop"));
        assert_eq!(
            params(&c[1]),
            [("algs", "ES256 PS256"), ("error", "use_dpop_nonce")]
        );
    }

    #[test]
    fn bearer_and_dpop_in_two_headers() {
        let map = headers(&[
            br#"Bearer realm="api", error="invalid_token""#,
            br#"DPoP algs="ES256", error="use_dpop_nonce""#,
        ]);
        let c = parse_www_authenticate(&map).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme(), "Bearer");
        assert_eq!(c[0].param("error"), Some("invalid_token"));
        assert_eq!(c[1].scheme(), "DPoP");
        assert_eq!(c[1].param("algs"), Some("ES256"));
        assert_eq!(c[1].param("error"), Some("use_dpop_nonce"));
        assert_eq!(
            c,
            parse(
                r#"Bearer realm="api", error="invalid_token", DPoP algs="ES256", error="use_dpop_nonce""#
            )
        );
    }

    #[test]
    fn header_map_without_challenges() {
        assert_eq!(parse_www_authenticate(&HeaderMap::new()), Ok(vec![]));
        assert_eq!(parse_www_authenticate(&headers(&[b"", b" , "])), Ok(vec![]));
    }

    #[test]
    fn params_do_not_continue_previous_header() {
        let map = headers(&[b"Bearer", b"realm=\"x\""]);
        let e = parse_www_authenticate(&map).unwrap_err();
        assert_eq!(e.offset(), 0);
        assert_eq!(e.reason(), "auth-param before any auth-scheme");
    }

    #[test]
    fn token68_with_and_without_padding() {
        let c = parse("Basic dXNlcjpwYXNz==");
        assert_eq!(c[0].scheme(), "Basic");
        assert_eq!(c[0].token68(), Some("dXNlcjpwYXNz=="));
        assert_eq!(params(&c[0]), []);

        let c = parse("Foo abc=");
        assert_eq!(c[0].token68(), Some("abc="));

        let c = parse("Foo a-b.c_d~e+f/g");
        assert_eq!(c[0].token68(), Some("a-b.c_d~e+f/g"));
        assert_eq!(c[0].param("a-b.c_d~e+f/g"), None);

        let c = parse("Foo abc==  , Newauth realm=\"x\",Bar xyz");
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].token68(), Some("abc=="));
        assert_eq!(c[1].token68(), None);
        assert_eq!(c[1].param("realm"), Some("x"));
        assert_eq!(c[2].token68(), Some("xyz"));
    }

    #[test]
    fn token68_versus_param() {
        // `name=value` is a param, `name=` alone is a padded token68.
        let c = parse("Foo abc=def");
        assert_eq!(c[0].token68(), None);
        assert_eq!(params(&c[0]), [("abc", "def")]);

        let c = parse("Foo abc=\"\"");
        assert_eq!(params(&c[0]), [("abc", "")]);

        let e = parse_err("Foo abc = ");
        assert_eq!(e.reason(), "missing auth-param value");
        assert_eq!(e.offset(), 10);

        let e = parse_err("Foo abc==x");
        assert_eq!(e.offset(), 8);

        // A lone `name=` after the scheme is a token68 by the grammar.
        let c = parse("Bearer realm=");
        assert_eq!(c[0].token68(), Some("realm="));
        assert_eq!(c[0].param("realm"), None);

        let e = parse_err("Foo abc, realm=x");
        assert_eq!(e.reason(), "auth-param after token68");
        assert_eq!(e.offset(), 9);
    }

    #[test]
    fn scheme_alone() {
        let c = parse("Basic");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme(), "Basic");
        assert_eq!(c[0].token68(), None);
        assert_eq!(c[0].params().count(), 0);

        let c = parse("Negotiate, NTLM ,Basic realm=\"r\"");
        let schemes: Vec<_> = c.iter().map(Challenge::scheme).collect();
        assert_eq!(schemes, ["Negotiate", "NTLM", "Basic"]);
        assert_eq!(c[2].param("realm"), Some("r"));
    }

    #[test]
    fn param_after_comma_continues_bare_scheme() {
        // Per the #auth-param list rule `Negotiate , realm=x` has an empty
        // first element; we accept the comma without the space too.
        for value in ["Negotiate , realm=x", "Negotiate, realm=x"] {
            let c = parse(value);
            assert_eq!(c.len(), 1, "{value}");
            assert_eq!(params(&c[0]), [("realm", "x")]);
        }
    }

    #[test]
    fn empty_elements_and_whitespace() {
        assert_eq!(parse(""), []);
        assert_eq!(parse(" \t "), []);
        assert_eq!(parse(", ,,\t,"), []);

        let c = parse(" ,, Bearer realm=\"a\" , , error=x ,, , DPoP ,\t");
        assert_eq!(c.len(), 2);
        assert_eq!(params(&c[0]), [("realm", "a"), ("error", "x")]);
        assert_eq!(c[1].scheme(), "DPoP");
        assert_eq!(c[1].params().count(), 0);

        let c = parse("Bearer\trealm=\"a\"");
        assert_eq!(c[0].param("realm"), Some("a"));
    }

    #[test]
    fn bws_around_equals() {
        let c = parse("Bearer realm = \"a\", error\t=\tinvalid_token,scope =x");
        assert_eq!(
            params(&c[0]),
            [("realm", "a"), ("error", "invalid_token"), ("scope", "x")]
        );
        // After a comma, `Name =` is a param even with BWS, not a scheme.
        let c = parse("Bearer realm=a, Realm2 = b");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].param("realm2"), Some("b"));
    }

    #[test]
    fn case_insensitive_lookup() {
        let c = parse("bEaReR ReAlM=\"x\", Error=y");
        assert_eq!(c[0].scheme(), "bEaReR");
        assert!(c[0].is_scheme("Bearer"));
        assert!(c[0].is_scheme("BEARER"));
        assert!(!c[0].is_scheme("Bear"));
        assert!(!c[0].is_scheme("DPoP"));
        assert_eq!(c[0].param("realm"), Some("x"));
        assert_eq!(c[0].param("ERROR"), Some("y"));
        // Names are kept as written.
        assert_eq!(params(&c[0]), [("ReAlM", "x"), ("Error", "y")]);
    }

    #[test]
    fn duplicate_params_first_wins() {
        let c = parse("Bearer error=a, ERROR=b");
        assert_eq!(c[0].param("error"), Some("a"));
        assert_eq!(c[0].params().count(), 2);
    }

    #[test]
    fn escapes() {
        let c = parse(r#"Bearer a="x\"y", b="back\\slash", c="\a\b", d="\\", e="\"""#);
        assert_eq!(
            params(&c[0]),
            [
                ("a", "x\"y"),
                ("b", "back\\slash"),
                ("c", "ab"),
                ("d", "\\"),
                ("e", "\"")
            ]
        );
        // Commas, equals and tabs inside quotes are data.
        let c = parse("Bearer a=\"1, b=2\tx\", c=3");
        assert_eq!(params(&c[0]), [("a", "1, b=2\tx"), ("c", "3")]);
    }

    #[test]
    fn non_ascii_inside_quotes_is_kept() {
        let c = parse("Bearer realm=\"caf\u{e9}\", x=\"\\\u{e9}\u{1F600}\"");
        assert_eq!(c[0].param("realm"), Some("caf\u{e9}"));
        assert_eq!(c[0].param("x"), Some("\u{e9}\u{1F600}"));
    }

    #[test]
    fn non_ascii_outside_quotes_is_an_error() {
        for (value, offset) in [
            ("B\u{e9}arer", 1),
            ("\u{e9}", 0),
            ("Bearer realm=caf\u{e9}", 16),
            ("Bearer r\u{e9}alm=x", 8),
            ("Foo abc\u{e9}", 7),
        ] {
            let e = parse_err(value);
            assert_eq!(e.offset(), offset, "{value}");
            assert_eq!(
                e.reason(),
                "non-ASCII character outside quoted string",
                "{value}"
            );
        }
    }

    #[test]
    fn unterminated_quote() {
        let e = parse_err("Bearer realm=\"abc");
        assert_eq!(e.offset(), 13);
        assert_eq!(e.reason(), "unterminated quoted string");

        let e = parse_err("Bearer realm=\"abc\\\"");
        assert_eq!(e.offset(), 13);
        assert_eq!(e.reason(), "unterminated quoted string");

        let e = parse_err("Bearer a=b, realm=\"abc\\");
        assert_eq!(e.offset(), 18);
        assert_eq!(e.reason(), "unterminated quoted string");
    }

    #[test]
    fn param_without_name_or_scheme() {
        let e = parse_err("=value");
        assert_eq!(e.offset(), 0);
        assert_eq!(e.reason(), "auth-param without a name");

        let e = parse_err("Bearer realm=x, =value");
        assert_eq!(e.offset(), 16);
        assert_eq!(e.reason(), "auth-param without a name");

        let e = parse_err("realm=\"x\", Bearer");
        assert_eq!(e.offset(), 0);
        assert_eq!(e.reason(), "auth-param before any auth-scheme");

        let e = parse_err(" , realm = x");
        assert_eq!(e.offset(), 3);
        assert_eq!(e.reason(), "auth-param before any auth-scheme");
    }

    #[test]
    fn missing_value() {
        for (value, offset) in [
            ("Bearer x=y, realm=", 18),
            ("Bearer x=y,realm= ,x=y", 18),
            ("Bearer a=b, realm=", 18),
            ("Bearer a=b, realm =  ", 21),
        ] {
            let e = parse_err(value);
            assert_eq!(e.offset(), offset, "{value}");
            assert_eq!(e.reason(), "missing auth-param value", "{value}");
        }
    }

    #[test]
    fn garbage() {
        for (value, offset) in [
            ("\"Bearer\"", 0),
            ("Bearer realm=\"a\" error=b", 17),
            ("Bearer realm=\"a\"\"b\"", 16),
            ("Bearer realm x", 13),
            ("Bearer/1", 6),
            ("Bearer \"x\"", 7),
            ("Bearer a=b=c", 10),
            ("Bearer a=/", 9),
            ("Bearer ;", 7),
            ("Bearer a=b;c", 10),
            ("Bearer\r\n realm=x", 6),
            ("Bearer realm=\"a\u{7f}\"", 15),
            ("Bearer realm=\"a\\\u{1}\"", 16),
            ("Bearer realm=\"a\nb\"", 15),
            ("Foo abc==x", 8),
            ("Foo a/b=c", 5),
        ] {
            let e = parse_err(value);
            assert_eq!(e.offset(), offset, "{value}: {e}");
        }
    }

    #[test]
    fn non_text_header_value() {
        let map = headers(&[b"Bearer realm=\"x\"", b"Bearer realm=\"caf\xe9\""]);
        let e = parse_www_authenticate(&map).unwrap_err();
        assert_eq!(e.reason(), "header value is not text");
        assert_eq!(e.offset(), 17);
    }

    #[test]
    fn error_offset_is_per_field_value() {
        let map = headers(&[b"Bearer realm=\"x\"", b"DPoP x=1, algs="]);
        let e = parse_www_authenticate(&map).unwrap_err();
        assert_eq!(e.reason(), "missing auth-param value");
        assert_eq!(e.offset(), 15);
    }

    #[test]
    fn challenge_limit() {
        let ok = vec!["A"; MAX_CHALLENGES].join(", ");
        assert_eq!(parse(&ok).len(), MAX_CHALLENGES);

        let too_many = vec!["A"; MAX_CHALLENGES + 1].join(", ");
        let e = parse_err(&too_many);
        assert_eq!(e.reason(), "too many challenges");
        assert_eq!(e.offset(), MAX_CHALLENGES * 3);

        // The limit also applies across several header fields.
        let mut map = HeaderMap::new();
        for _ in 0..=MAX_CHALLENGES {
            map.append(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        let e = parse_www_authenticate(&map).unwrap_err();
        assert_eq!(e.reason(), "too many challenges");
        assert_eq!(e.offset(), 0);
    }

    #[test]
    fn param_limit() {
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("p{i}=v"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let c = parse(&format!("Bearer {}", list(MAX_PARAMS)));
        assert_eq!(c[0].params().count(), MAX_PARAMS);

        let value = format!("Bearer {}", list(MAX_PARAMS + 1));
        let e = parse_err(&value);
        assert_eq!(e.reason(), "too many auth-params");
        assert_eq!(e.offset(), value.rfind(',').unwrap() + 1);

        // The limit is per challenge.
        let value = format!("A {}, B {}", list(MAX_PARAMS), list(MAX_PARAMS));
        let c = parse(&value);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].params().count(), MAX_PARAMS);
    }

    #[test]
    fn error_display_does_not_echo_input() {
        let e = parse_err("Bearer secret-token-value=\"abc");
        let shown = e.to_string();
        assert_eq!(
            shown,
            "malformed WWW-Authenticate value at byte 26: unterminated quoted string"
        );
        assert!(!shown.contains("secret"));
    }

    /// Writes challenges back in canonical form, quoting every param value.
    fn serialize(challenges: &[Challenge]) -> String {
        let mut out = String::new();
        for (i, c) in challenges.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(c.scheme());
            if let Some(t) = c.token68() {
                out.push(' ');
                out.push_str(t);
            }
            for (j, (name, value)) in c.params().enumerate() {
                out.push_str(if j == 0 { " " } else { ", " });
                out.push_str(name);
                out.push_str("=\"");
                for ch in value.chars() {
                    if ch == '"' || ch == '\\' {
                        out.push('\\');
                    }
                    out.push(ch);
                }
                out.push('"');
            }
        }
        out
    }

    fn check_no_panic(value: &str) {
        match std::panic::catch_unwind(|| parse_challenges(value)) {
            Err(_) => panic!("parser panicked on {value:?}"),
            Ok(Err(e)) => {
                assert!(e.offset() <= value.len(), "{value:?}: {e:?}");
                assert!(value.is_char_boundary(e.offset()), "{value:?}: {e:?}");
            }
            Ok(Ok(challenges)) => {
                assert!(challenges.len() <= MAX_CHALLENGES);
                let again = parse_challenges(&serialize(&challenges));
                assert_eq!(again.as_ref(), Ok(&challenges), "{value:?}");
            }
        }
    }

    #[test]
    fn generated_inputs_never_panic() {
        const ALPHABET: [char; 11] = [' ', ',', '=', '"', '\\', 'a', 'B', '9', '/', '\t', '\u{e9}'];
        // Every string of length 0..=4 over the alphabet (16105 inputs).
        let mut value = String::new();
        for len in 0..=4u32 {
            for mut n in 0..ALPHABET.len().pow(len) {
                value.clear();
                for _ in 0..len {
                    value.push(ALPHABET[n % ALPHABET.len()]);
                    n /= ALPHABET.len();
                }
                check_no_panic(&value);
            }
        }
        // Longer deterministic pseudo-random strings, with a scheme prefix
        // so that more of them reach the param and token68 paths.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for i in 0..4000 {
            value.clear();
            if i % 2 == 0 {
                value.push_str("Bearer ");
            }
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = 5 + (state % 40) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                value.push(ALPHABET[(state % ALPHABET.len() as u64) as usize]);
            }
            check_no_panic(&value);
        }
    }

    #[test]
    fn long_input_is_linear() {
        // A large hostile value must be rejected quickly and without
        // building a huge result.
        let value = "a=b,".repeat(100_000);
        let e = parse_err(&format!("X {value}"));
        assert_eq!(e.reason(), "too many auth-params");
        let value = format!("X a=\"{}", "\\\\".repeat(200_000));
        assert_eq!(parse_err(&value).reason(), "unterminated quoted string");
        let value = format!("X{}", " ".repeat(200_000));
        assert_eq!(parse(&value).len(), 1);
        let value = ",".repeat(200_000);
        assert_eq!(parse(&value), []);
    }
}
