//! Token responses (RFC 6749 §5.1 and §5.2): from bytes to a token or a typed error.
//!
//! The parser trusts nothing. Every field is read loosely first (any JSON
//! type) and then checked, so that a wrong type is reported by field name
//! rather than as a parse position; strings are borrowed from the body where
//! they need no unescaping. Nothing here panics, whatever the input: the
//! `fuzz/` targets hold it to that.

use std::borrow::Cow;
use std::fmt;

use http::StatusCode;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::error::{clean_text, InvalidResponse, OAuthError, ResponseProblem, TokenError};

/// An access token. Its `Debug` output is redacted and its memory is wiped on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(pub(crate) Zeroizing<String>);

impl AccessToken {
    /// The token itself. Named so that every use stands out in review.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// The `token_type` of a response, compared case-insensitively.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenType {
    /// `Bearer` (RFC 6750): attached as `Authorization: Bearer <token>`.
    Bearer,
    /// `DPoP` (RFC 9449): bound to a key; attached as `Authorization: DPoP <token>` with a proof.
    DPoP,
}

impl TokenType {
    /// The scheme to put before the token in `Authorization`.
    pub fn scheme(self) -> &'static str {
        match self {
            TokenType::Bearer => "Bearer",
            TokenType::DPoP => "DPoP",
        }
    }
}

/// A successful token response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenResponse {
    pub(crate) access_token: AccessToken,
    pub(crate) token_type: TokenType,
    pub(crate) expires_in: Option<i64>,
    pub(crate) scope: Option<String>,
}

impl TokenResponse {
    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The token type.
    pub fn token_type(&self) -> TokenType {
        self.token_type
    }

    /// `expires_in` in seconds as the server sent it (a number or a numeric
    /// string), saturated to the `i64` range; `None` when absent or `null`.
    pub fn expires_in(&self) -> Option<i64> {
        self.expires_in
    }

    /// The granted `scope`, when the server sent one.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }
}

/// Parses a token endpoint response.
///
/// `sensitive` lists strings that must never appear in an error excerpt (the
/// client secret and its encodings); an excerpt is also withheld whenever the
/// body mentions `access_token`.
///
/// ```
/// use http::StatusCode;
/// use token_keeper::response::{parse_token_response, TokenType};
///
/// let body = br#"{"access_token":"abc","token_type":"bearer","expires_in":"3600"}"#;
/// let token = parse_token_response(StatusCode::OK, body, 1 << 20, &[]).unwrap();
/// assert_eq!(token.token_type(), TokenType::Bearer);
/// assert_eq!(token.expires_in(), Some(3600));
///
/// let body = br#"{"error":"invalid_client","error_description":"unknown client"}"#;
/// let err = parse_token_response(StatusCode::UNAUTHORIZED, body, 1 << 20, &[]).unwrap_err();
/// assert!(err.is_oauth());
/// ```
pub fn parse_token_response(
    status: StatusCode,
    body: &[u8],
    max_body: usize,
    sensitive: &[&str],
) -> Result<TokenResponse, TokenError> {
    let invalid = |problem: ResponseProblem| {
        TokenError::InvalidResponse(InvalidResponse {
            status,
            problem,
            excerpt: excerpt(body, sensitive),
        })
    };
    if body.len() > max_body {
        return Err(TokenError::InvalidResponse(InvalidResponse {
            status,
            problem: ResponseProblem::BodyTooLarge { limit: max_body },
            excerpt: None,
        }));
    }
    let is_success = status.is_success();
    let may_be_oauth_error =
        status == StatusCode::BAD_REQUEST || status == StatusCode::UNAUTHORIZED;
    if !is_success && !may_be_oauth_error {
        return Err(invalid(ResponseProblem::UnexpectedStatus));
    }
    // Only a JSON object will do: serde would also map an array onto the struct.
    let is_object = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let parsed = if is_object {
        serde_json::from_slice::<RawResponse<'_>>(body)
    } else {
        Err(serde::de::Error::custom("not an object"))
    };
    let raw = match parsed {
        Ok(raw) => raw,
        Err(_) if is_success => return Err(invalid(ResponseProblem::NotJson)),
        Err(_) => return Err(invalid(ResponseProblem::UnexpectedStatus)),
    };
    let has_token = !matches!(raw.access_token, Loose::Absent | Loose::Null);
    if !has_token {
        if let Loose::Str(code) = &raw.error {
            return Err(TokenError::OAuth(OAuthError {
                status,
                code: clean_text(&scrub(code, sensitive), 64),
                description: raw
                    .error_description
                    .as_str()
                    .map(|d| clean_text(&scrub(d, sensitive), 256)),
                uri: raw
                    .error_uri
                    .as_str()
                    .map(|u| clean_text(&scrub(u, sensitive), 256)),
            }));
        }
    }
    if !is_success {
        return Err(invalid(ResponseProblem::UnexpectedStatus));
    }

    let access_token = match &raw.access_token {
        Loose::Absent | Loose::Null => {
            return Err(invalid(ResponseProblem::MissingField("access_token")))
        }
        Loose::Str(token) => token,
        _ => return Err(invalid(ResponseProblem::InvalidField("access_token"))),
    };
    if access_token.is_empty() {
        return Err(invalid(ResponseProblem::EmptyToken));
    }
    if !access_token.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(invalid(ResponseProblem::TokenNotHeaderSafe));
    }
    let token_type = match &raw.token_type {
        Loose::Absent | Loose::Null => {
            return Err(invalid(ResponseProblem::MissingField("token_type")))
        }
        Loose::Str(t) if t.eq_ignore_ascii_case("bearer") => TokenType::Bearer,
        Loose::Str(t) if t.eq_ignore_ascii_case("dpop") => TokenType::DPoP,
        Loose::Str(t) => {
            return Err(invalid(ResponseProblem::UnsupportedTokenType(clean_text(
                &scrub(t, sensitive),
                32,
            ))))
        }
        _ => return Err(invalid(ResponseProblem::InvalidField("token_type"))),
    };
    let expires_in = match &raw.expires_in {
        Loose::Absent | Loose::Null => None,
        Loose::Int(n) => Some(*n),
        Loose::Float(x) => Some(saturate_float(*x)),
        Loose::Str(s) => Some(
            parse_numeric_string(s)
                .ok_or_else(|| invalid(ResponseProblem::InvalidField("expires_in")))?,
        ),
        Loose::Other => return Err(invalid(ResponseProblem::InvalidField("expires_in"))),
    };
    let scope = match &raw.scope {
        Loose::Absent | Loose::Null => None,
        Loose::Str(s) => Some(s.to_string()),
        _ => return Err(invalid(ResponseProblem::InvalidField("scope"))),
    };
    Ok(TokenResponse {
        access_token: AccessToken(Zeroizing::new(access_token.to_string())),
        token_type,
        expires_in,
        scope,
    })
}

/// A short, safe view of a body for error messages, or `None` when the body
/// might hold a credential.
fn excerpt(body: &[u8], sensitive: &[&str]) -> Option<String> {
    if body.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(body);
    if text.contains("access_token") || mentions(&text, sensitive) {
        return None;
    }
    Some(clean_text(&text, 160))
}

/// Text from the server with anything that reveals a sensitive string
/// replaced as a whole: a server that echoes a request must not be able to
/// carry the client secret into an error message.
fn scrub(text: &str, sensitive: &[&str]) -> String {
    if mentions(text, sensitive) {
        "[withheld: the server echoed a credential]".to_owned()
    } else {
        text.to_owned()
    }
}

/// Whether `text` contains a sensitive string as it is, or once JSON
/// `\uXXXX` escapes and `%XX` escapes are decoded (the forms an echo can take).
fn mentions(text: &str, sensitive: &[&str]) -> bool {
    let needles: Vec<&str> = sensitive
        .iter()
        .copied()
        .filter(|s| !s.is_empty())
        .collect();
    if needles.is_empty() {
        return false;
    }
    let found = |haystack: &str| needles.iter().any(|n| haystack.contains(n));
    if found(text) {
        return true;
    }
    if !(text.contains('\\') || text.contains('%') || text.contains('+') || text.contains('&')) {
        return false;
    }
    let decoded = decode_escapes(text);
    found(&decoded) || found(&decoded.replace('+', " "))
}

/// Decodes JSON `\uXXXX` (and the short JSON escapes), URL `%XX` escapes and
/// HTML character references (`&#47;`, `&#x2F;`, `&amp;` …),
/// leaving anything malformed as it is.
fn decode_escapes(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let hex = |b: u8| (b as char).to_digit(16);
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'\\' if i + 5 < bytes.len() && bytes[i + 1] == b'u' => {
                let code = bytes[i + 2..i + 6]
                    .iter()
                    .try_fold(0u32, |acc, &b| Some(acc * 16 + hex(b)?));
                match code.and_then(char::from_u32) {
                    Some(c) => {
                        let mut buf = [0; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                        i += 6;
                        continue;
                    }
                    None => out.push(b'\\'),
                }
            }
            b'&' => match html_reference(&bytes[i..]) {
                Some((c, used)) => {
                    let mut buf = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += used;
                    continue;
                }
                None => out.push(b'&'),
            },
            b'\\' if i + 1 < bytes.len() && matches!(bytes[i + 1], b'/' | b'\\' | b'"') => {
                out.push(bytes[i + 1]);
                i += 2;
                continue;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTML character reference at the start of `bytes`: the character and the bytes it spans.
fn html_reference(bytes: &[u8]) -> Option<(char, usize)> {
    let end = bytes.iter().take(12).position(|&b| b == b';')?;
    let name = std::str::from_utf8(&bytes[1..end]).ok()?;
    let c = match name {
        "amp" => '&',
        "lt" => '<',
        "gt" => '>',
        "quot" => '"',
        "apos" => '\'',
        "sol" => '/',
        "colon" => ':',
        "equals" => '=',
        "plus" => '+',
        "percnt" => '%',
        _ => {
            let number = name.strip_prefix('#')?;
            let code = match number.strip_prefix(['x', 'X']) {
                Some(hex) => u32::from_str_radix(hex, 16).ok()?,
                None => number.parse().ok()?,
            };
            char::from_u32(code)?
        }
    };
    Some((c, end + 1))
}

fn saturate_float(x: f64) -> i64 {
    // `as` saturates at the i64 bounds and maps NaN to 0; JSON has no NaN.
    x.floor() as i64
}

fn parse_numeric_string(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    if s.starts_with(|c: char| c.is_ascii_digit()) && s.bytes().all(|b| b.is_ascii_digit()) {
        return Some(i64::MAX); // an integer too large for i64
    }
    match s.parse::<f64>() {
        Ok(x) if x.is_finite() => Some(saturate_float(x)),
        _ => None,
    }
}

/// The fields of both response shapes, each read as any JSON type.
#[derive(Deserialize)]
struct RawResponse<'a> {
    #[serde(default, borrow)]
    access_token: Loose<'a>,
    #[serde(default, borrow)]
    token_type: Loose<'a>,
    #[serde(default, borrow)]
    expires_in: Loose<'a>,
    #[serde(default, borrow)]
    scope: Loose<'a>,
    #[serde(default, borrow)]
    error: Loose<'a>,
    #[serde(default, borrow)]
    error_description: Loose<'a>,
    #[serde(default, borrow)]
    error_uri: Loose<'a>,
}

/// A JSON value read without insisting on its type.
#[derive(Default)]
enum Loose<'a> {
    #[default]
    Absent,
    Null,
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    /// A boolean, array or object.
    Other,
}

impl Loose<'_> {
    fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Loose<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LooseVisitor(std::marker::PhantomData))
    }
}

struct LooseVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for LooseVisitor<'a> {
    type Value = Loose<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Loose::Null)
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Loose::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Loose::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Loose::Int(i64::try_from(v).unwrap_or(i64::MAX)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Loose::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Loose::Str(Cow::Owned(v)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Loose::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn ok(body: &str) -> TokenResponse {
        parse_token_response(StatusCode::OK, body.as_bytes(), MAX, &[]).unwrap()
    }

    fn problem(status: u16, body: &str) -> ResponseProblem {
        match parse_token_response(
            StatusCode::from_u16(status).unwrap(),
            body.as_bytes(),
            MAX,
            &[],
        ) {
            Err(TokenError::InvalidResponse(e)) => e.problem,
            other => panic!("expected an invalid response, got {other:?}"),
        }
    }

    #[test]
    fn minimal_success() {
        let t = ok(r#"{"access_token":"t0k","token_type":"Bearer"}"#);
        assert_eq!(t.access_token().expose_secret(), "t0k");
        assert_eq!(t.token_type(), TokenType::Bearer);
        assert_eq!(t.expires_in(), None);
        assert_eq!(t.scope(), None);
    }

    #[test]
    fn token_type_is_case_insensitive() {
        for tt in ["bearer", "BEARER", "Bearer", "bEaReR"] {
            let t = ok(&format!(r#"{{"access_token":"x","token_type":"{tt}"}}"#));
            assert_eq!(t.token_type(), TokenType::Bearer);
        }
        let t = ok(r#"{"access_token":"x","token_type":"dpop"}"#);
        assert_eq!(t.token_type(), TokenType::DPoP);
    }

    #[test]
    fn expires_in_forms() {
        let cases = [
            (r#"3600"#, Some(3600)),
            (r#""3600""#, Some(3600)),
            (r#"" 60 ""#, Some(60)),
            (r#"59.9"#, Some(59)),
            (r#""59.9""#, Some(59)),
            (r#"0"#, Some(0)),
            (r#"-5"#, Some(-5)),
            (r#""-5""#, Some(-5)),
            (r#"null"#, None),
            (r#"18446744073709551615"#, Some(i64::MAX)),
            (r#""99999999999999999999999""#, Some(i64::MAX)),
            (r#"1e300"#, Some(i64::MAX)),
            (r#"-1e300"#, Some(i64::MIN)),
        ];
        for (json, expected) in cases {
            let t = ok(&format!(
                r#"{{"access_token":"x","token_type":"Bearer","expires_in":{json}}}"#
            ));
            assert_eq!(t.expires_in(), expected, "{json}");
        }
        for json in [
            r#""soon""#,
            r#"true"#,
            r#"[3600]"#,
            r#"{"s":1}"#,
            r#""""#,
            r#""NaN""#,
            r#""inf""#,
        ] {
            let body =
                format!(r#"{{"access_token":"x","token_type":"Bearer","expires_in":{json}}}"#);
            assert_eq!(
                problem(200, &body),
                ResponseProblem::InvalidField("expires_in"),
                "{json}"
            );
        }
    }

    #[test]
    fn scope_and_unknown_fields() {
        let t = ok(
            r#"{"access_token":"x","token_type":"Bearer","scope":"a b","extra":{"deep":[1,2,{"x":null}]},"refresh_token":"r"}"#,
        );
        assert_eq!(t.scope(), Some("a b"));
        assert_eq!(
            problem(
                200,
                r#"{"access_token":"x","token_type":"Bearer","scope":7}"#
            ),
            ResponseProblem::InvalidField("scope")
        );
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let t = ok(r#"{"access_token":"a\/b\u0041","token_type":"Bearer"}"#);
        assert_eq!(t.access_token().expose_secret(), "a/bA");
    }

    #[test]
    fn missing_and_wrong_fields() {
        assert_eq!(
            problem(200, r#"{"token_type":"Bearer"}"#),
            ResponseProblem::MissingField("access_token")
        );
        assert_eq!(
            problem(200, r#"{"access_token":null,"token_type":"Bearer"}"#),
            ResponseProblem::MissingField("access_token")
        );
        assert_eq!(
            problem(200, r#"{"access_token":"x"}"#),
            ResponseProblem::MissingField("token_type")
        );
        assert_eq!(
            problem(200, r#"{"access_token":5,"token_type":"Bearer"}"#),
            ResponseProblem::InvalidField("access_token")
        );
        assert_eq!(
            problem(200, r#"{"access_token":"x","token_type":["Bearer"]}"#),
            ResponseProblem::InvalidField("token_type")
        );
        assert_eq!(
            problem(200, r#"{"access_token":"","token_type":"Bearer"}"#),
            ResponseProblem::EmptyToken
        );
        assert_eq!(
            problem(200, r#"{"access_token":"x","token_type":"mac"}"#),
            ResponseProblem::UnsupportedTokenType("mac".into())
        );
    }

    #[test]
    fn tokens_that_would_break_a_header_are_refused() {
        for token in [
            r"a\r\nX-Injected: 1",
            r"a b",
            r"caf\u00e9",
            r"a\u0000",
            r"tab\t",
            r"\u007f",
        ] {
            let body = format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#);
            assert_eq!(
                problem(200, &body),
                ResponseProblem::TokenNotHeaderSafe,
                "{token}"
            );
        }
    }

    #[test]
    fn not_json() {
        for body in [
            "",
            "<html><body>Service down</body></html>",
            "{",
            r#"{"access_token":"x""#,
            "[]",
            "\"x\"",
            "null",
            "\u{0}\u{1}",
        ] {
            assert_eq!(problem(200, body), ResponseProblem::NotJson, "{body:?}");
        }
        assert_eq!(
            problem(
                200,
                r#"{"access_token":"a","access_token":"b","token_type":"Bearer"}"#
            ),
            ResponseProblem::NotJson
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        // Unknown fields are skipped without recursion, however deep.
        let body = format!(
            r#"{{"access_token":"x","token_type":"Bearer","n":{}}}"#,
            deep(100_000)
        );
        assert!(parse_token_response(StatusCode::OK, body.as_bytes(), MAX, &[]).is_ok());
        let body = format!(
            r#"{{"access_token":"x","token_type":"Bearer","expires_in":{}}}"#,
            deep(100_000)
        );
        assert_eq!(
            problem(200, &body),
            ResponseProblem::InvalidField("expires_in")
        );
        let body = format!(r#"{{"access_token":{}"#, "{\"a\":".repeat(100_000));
        assert_eq!(problem(200, &body), ResponseProblem::NotJson);
        assert_eq!(problem(200, &deep(100_000)), ResponseProblem::NotJson);
    }

    #[test]
    fn oauth_errors() {
        let body = r#"{"error":"invalid_client","error_description":"Client\nauthentication failed","error_uri":"https://as/doc"}"#;
        let err =
            parse_token_response(StatusCode::UNAUTHORIZED, body.as_bytes(), MAX, &[]).unwrap_err();
        let TokenError::OAuth(e) = err else {
            panic!("{err:?}")
        };
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(e.code(), "invalid_client");
        assert_eq!(e.description(), Some("Client\u{FFFD}authentication failed"));
        assert_eq!(e.uri(), Some("https://as/doc"));

        let err = parse_token_response(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_target"}"#,
            MAX,
            &[],
        )
        .unwrap_err();
        assert!(
            matches!(&err, TokenError::OAuth(e) if e.code() == "invalid_target" && e.description().is_none())
        );
        // A success status carrying only an error is still an error.
        let err = parse_token_response(StatusCode::OK, br#"{"error":"invalid_scope"}"#, MAX, &[])
            .unwrap_err();
        assert!(err.is_oauth());
    }

    #[test]
    fn other_statuses_keep_status_and_excerpt() {
        let err = parse_token_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"<html>\r\nOops</html>",
            MAX,
            &[],
        )
        .unwrap_err();
        let TokenError::InvalidResponse(e) = &err else {
            panic!()
        };
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.problem(), &ResponseProblem::UnexpectedStatus);
        assert_eq!(e.excerpt(), Some("<html>\u{FFFD}\u{FFFD}Oops</html>"));
        assert!(err.to_string().contains("500"), "{err}");
        // An OAuth-looking body on a 500 is still a server failure.
        assert_eq!(
            problem(500, r#"{"error":"server_error"}"#),
            ResponseProblem::UnexpectedStatus
        );
        assert_eq!(problem(429, "slow down"), ResponseProblem::UnexpectedStatus);
        // A 400 without a JSON error is not an OAuth error.
        assert_eq!(
            problem(400, "<html>Bad Request</html>"),
            ResponseProblem::UnexpectedStatus
        );
        assert_eq!(
            problem(400, r#"{"message":"bad"}"#),
            ResponseProblem::UnexpectedStatus
        );
        assert_eq!(problem(302, ""), ResponseProblem::UnexpectedStatus);
    }

    /// Bidi overrides and isolates (RLO, LRI) and invisible format characters
    /// (ZWJ) from a server could reorder or hide text in a log line: they
    /// come back as `\u{…}` escapes, in the description, the excerpt and Display.
    #[test]
    fn bidi_and_format_characters_are_escaped() {
        // JSON escapes for RLO, LRI, PDI, ZWJ and a tag character.
        let body = r#"{"error":"invalid_client","error_description":"ok \u202Egnp.exe\u2066x\u2069 a\u200Db \udb40\udc41"}"#;
        let err =
            parse_token_response(StatusCode::UNAUTHORIZED, body.as_bytes(), MAX, &[]).unwrap_err();
        let TokenError::OAuth(e) = &err else {
            panic!("{err:?}")
        };
        let expected = r"ok \u{202e}gnp.exe\u{2066}x\u{2069} a\u{200d}b \u{e0041}";
        assert_eq!(e.description(), Some(expected));
        let display = err.to_string();
        assert!(display.contains(expected), "{display}");
        for c in ['\u{202E}', '\u{2066}', '\u{2069}', '\u{200D}', '\u{E0041}'] {
            assert!(!display.contains(c), "{c:?} in {display}");
        }

        let html = "<html>\u{202E}\u{2067}evil\u{200D}\u{FEFF}\u{00AD}</html>";
        let err =
            parse_token_response(StatusCode::BAD_GATEWAY, html.as_bytes(), MAX, &[]).unwrap_err();
        let TokenError::InvalidResponse(e) = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            e.excerpt(),
            Some(r"<html>\u{202e}\u{2067}evil\u{200d}\u{feff}\u{ad}</html>")
        );
        let display = err.to_string();
        assert!(
            !display.contains(['\u{202E}', '\u{2067}', '\u{200D}', '\u{FEFF}', '\u{00AD}']),
            "{display}"
        );
        assert!(display.contains("evil"), "{display}");

        // An unsupported token_type is server text too.
        let err = parse_token_response(
            StatusCode::OK,
            r#"{"access_token":"x","token_type":"m\u202Eac"}"#.as_bytes(),
            MAX,
            &[],
        )
        .unwrap_err();
        assert!(!err.to_string().contains('\u{202E}'), "{err}");
    }

    #[test]
    fn excerpts_never_carry_credentials() {
        let body = r#"{"access_token":"SECRET-TOKEN","token_type":"mac"}"#;
        let err = parse_token_response(StatusCode::OK, body.as_bytes(), MAX, &[]).unwrap_err();
        assert!(!format!("{err} {err:?}").contains("SECRET-TOKEN"));
        let err = parse_token_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"echo: client_secret=hunter2",
            MAX,
            &["hunter2"],
        )
        .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
        let long = "x".repeat(10_000);
        let err =
            parse_token_response(StatusCode::BAD_GATEWAY, long.as_bytes(), MAX, &[]).unwrap_err();
        assert!(err.to_string().len() < 400);
    }

    #[test]
    fn echoed_secrets_are_withheld_from_every_field() {
        let s = ["hunter2"];
        let cases: [(u16, &str); 8] = [
            (400, r#"{"error":"hunter2"}"#),
            (
                401,
                r#"{"error":"invalid_client","error_description":"bad secret hunter2"}"#,
            ),
            (
                400,
                r#"{"error":"invalid_request","error_uri":"https://as/hunter2"}"#,
            ),
            (200, r#"{"access_token":"x","token_type":"hunter2"}"#),
            (
                401,
                r#"{"error":"invalid_client","error_description":"bad secret hunter\u0032"}"#,
            ),
            (500, r#"{"message":"you sent hunter\u0032"}"#),
            (502, "echo: client_secret=hunte%72%32"),
            (500, "<p>client_secret=hunter&#50;</p>"),
        ];
        for (status, body) in cases {
            let err = parse_token_response(
                StatusCode::from_u16(status).unwrap(),
                body.as_bytes(),
                MAX,
                &s,
            )
            .unwrap_err();
            let text = format!("{err} {err:?}");
            assert!(
                !text.contains("hunter2")
                    && !text.contains("hunter\\u0032")
                    && !text.contains("%72%32")
                    && !text.contains("&#50;"),
                "{body}: {text}"
            );
        }
        // Innocent text passes through untouched.
        let err = parse_token_response(
            StatusCode::BAD_REQUEST,
            br#"{"error":"invalid_scope","error_description":"100% wrong \/ scope"}"#,
            MAX,
            &s,
        )
        .unwrap_err();
        assert!(err.to_string().contains("100% wrong / scope"), "{err}");
        assert_eq!(decode_escapes(r"a\u00e9b%41%zz%4\u12"), "aébA%zz%4\\u12");
    }

    #[test]
    fn html_escaped_echoes_are_recognised() {
        assert_eq!(
            decode_escapes("a&#x2F;b&amp;&#47;&bogus;&#xZZ;&"),
            "a/b&/&bogus;&#xZZ;&"
        );
        let err = parse_token_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            b"<p>client_secret=hunter2&#x2F;x</p>",
            MAX,
            &["hunter2/x"],
        )
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err}");
    }

    #[test]
    fn body_size_cap() {
        let body = format!(
            r#"{{"access_token":"x","token_type":"Bearer","pad":"{}"}}"#,
            "p".repeat(100)
        );
        assert!(parse_token_response(StatusCode::OK, body.as_bytes(), body.len(), &[]).is_ok());
        let err =
            parse_token_response(StatusCode::OK, body.as_bytes(), body.len() - 1, &[]).unwrap_err();
        assert!(matches!(
            err,
            TokenError::InvalidResponse(InvalidResponse {
                problem: ResponseProblem::BodyTooLarge { .. },
                excerpt: None,
                ..
            })
        ));
    }

    #[test]
    fn debug_redacts_the_token() {
        let t = ok(r#"{"access_token":"very-secret","token_type":"Bearer"}"#);
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
