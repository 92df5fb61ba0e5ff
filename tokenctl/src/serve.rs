//! `tokenctl serve`: the embedded local token server (the testkit's
//! `LocalAuthServer`, the one `demo` and the tests use) with its protected
//! API, in the foreground, so that a service under development (such as
//! `examples/health-records-service`) can be pointed at a real token endpoint
//! without an identity provider.
//!
//! It is a development fixture: one client, whose secret the developer
//! exports; loopback only; DPoP proofs checked for shape, key binding and
//! `ath` but not for their signatures (tokenctl has no verifier to give the
//! server). It runs until killed: std has no signal handling and tokenctl
//! takes no unsafe code, so Ctrl-C ends it by the default signal action.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use token_keeper_testkit::server::{Endpoint, RecordedCall};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

use crate::args::ServeFlags;
use crate::Failure;

/// How long one wait for new calls lasts before waiting again (any bound
/// will do: it only keeps the wait finite).
const LOG_WAIT: Duration = Duration::from_secs(3600);

/// The longest path or reason a log line shows, in characters.
const MAX_LOGGED: usize = 160;

/// Starts the server, prints where it is, then logs every token request and
/// API call until the process is killed.
pub fn serve(flags: &ServeFlags) -> Result<ExitCode, Failure> {
    let secret = read_secret(&flags.secret_env)?;
    let server = LocalAuthServer::start(ServerConfig {
        // Only this client: the testkit's default client (a fixed, well-known
        // secret) must not be accepted here.
        clients: vec![(flags.client_id.clone(), secret)],
        ttl_secs: flags.ttl_secs,
        listen: Some(flags.listen),
        ..ServerConfig::default()
    })
    .map_err(|e| listen_failure(flags, &e))?;
    // Written even when stdout is gone (the server is still useful), but
    // never with a panic on a closed pipe.
    let _ = write!(std::io::stdout().lock(), "{}", banner(&server, flags));
    let _ = std::io::stdout().flush();
    let mut seen = 0;
    loop {
        let (calls, total) = server.calls_after(seen, LOG_WAIT);
        seen = total;
        let mut err = std::io::stderr().lock();
        for call in &calls {
            let _ = writeln!(err, "{}", log_line(call));
        }
    }
}

/// The client secret from its variable: required, since a default secret
/// would be one every reader of the source knows.
fn read_secret(var: &str) -> Result<String, Failure> {
    match std::env::var_os(var) {
        None => Err(Failure::Usage(format!(
            "environment variable {var} is not set: serve accepts the client secret it \
             holds (for example `export {var}=$(openssl rand -hex 16)`)"
        ))),
        Some(value) if value.is_empty() => Err(Failure::Usage(format!(
            "environment variable {var} is empty: serve needs a client secret in it"
        ))),
        Some(value) => value
            .into_string()
            .map_err(|_| Failure::Usage(format!("environment variable {var} is not UTF-8"))),
    }
}

/// Why the server could not start, with what to do about a port in use.
fn listen_failure(flags: &ServeFlags, error: &std::io::Error) -> Failure {
    let addr = flags.listen;
    match error.kind() {
        std::io::ErrorKind::InvalidInput => Failure::Usage(format!("--listen: {error}")),
        std::io::ErrorKind::AddrInUse => Failure::Other(format!(
            "cannot listen on {addr}: {error} (is another server on that port? choose \
             another with --listen)"
        )),
        _ => Failure::Other(format!("cannot listen on {addr}: {error}")),
    }
}

/// What serve prints on stdout once it listens: its URLs and the client,
/// naming the variable the secret came from, never the secret.
fn banner(server: &LocalAuthServer, flags: &ServeFlags) -> String {
    format!(
        "tokenctl serve: local token server on {} (development only; tokens last {} s)\n\
         \x20 token endpoint  {}\n\
         \x20 protected API   {}\n\
         \x20 client id       {}  (secret from ${})\n",
        server.base_url(),
        flags.ttl_secs,
        server.token_url(),
        server.health_records_url(),
        flags.client_id,
        flags.secret_env,
    )
}

/// One stderr line for a recorded call: method, path, status, and for a
/// refusal the error code and the server's reason. The query is left out (a
/// client may put anything there, a token included), and whatever the client
/// sent is stripped of control characters, so a request cannot write escape
/// sequences to the developer's terminal.
fn log_line(call: &RecordedCall) -> String {
    let mut line = format!(
        "{} {} ",
        printable(&call.method, 16),
        printable(path_of(&call.url), MAX_LOGGED)
    );
    match call.status {
        0 => line.push_str("closed without an answer"),
        status => line.push_str(&status.to_string()),
    }
    if let Some(error) = &call.error {
        line.push(' ');
        line.push_str(&printable(error, 40));
    }
    if let Some(reason) = &call.reason {
        line.push_str(&format!(" ({})", printable(reason, MAX_LOGGED)));
    }
    if call.endpoint == Endpoint::Token && call.token_type.as_deref() == Some("DPoP") {
        line.push_str(" DPoP-bound");
    }
    line
}

/// The path of a recorded URL (`http://host/path?query`), without query or
/// fragment.
fn path_of(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let path = rest.find('/').map_or("", |at| &rest[at..]);
    path.split(['?', '#']).next().unwrap_or_default()
}

/// `text` with control characters replaced and cut to `max` characters.
fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(endpoint: Endpoint, method: &str, url: &str, status: u16) -> RecordedCall {
        RecordedCall {
            endpoint,
            method: method.into(),
            url: url.into(),
            authorization: Some("Bearer lt-0-secret".into()),
            body_len: 0,
            dpop: None,
            client_id: None,
            client_assertion_type: None,
            client_assertion: None,
            status,
            error: Some("invalid_token".into()),
            reason: Some("unknown token".into()),
            nonce_sent: None,
            token_type: None,
            access_token: Some("lt-0-secret".into()),
            jkt: None,
        }
    }

    #[test]
    fn log_lines_show_method_path_status_and_never_the_query() {
        let mut api = call(
            Endpoint::Api,
            "GET",
            "http://127.0.0.1:8443/api/v1/integration/health-records?access_token=lt-0-secret",
            401,
        );
        assert_eq!(
            log_line(&api),
            "GET /api/v1/integration/health-records 401 invalid_token (unknown token)"
        );
        api.error = None;
        api.reason = None;
        api.status = 200;
        api.method = "G\u{1b}[2J".into();
        api.url = format!("http://h/api/{}\u{7}", "x".repeat(300));
        let line = log_line(&api);
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(line.starts_with("G?[2J /api/xxx"), "{line}");
        assert!(line.ends_with("… 200"), "{line}");
        let mut token = call(Endpoint::Token, "POST", "http://127.0.0.1:1/token", 0);
        (token.error, token.reason) = (None, None);
        assert_eq!(log_line(&token), "POST /token closed without an answer");
        token.status = 200;
        token.token_type = Some("DPoP".into());
        assert_eq!(log_line(&token), "POST /token 200 DPoP-bound");
        assert!(!log_line(&token).contains("lt-0-secret"));
    }

    #[test]
    fn paths_of_recorded_urls() {
        assert_eq!(path_of("http://127.0.0.1:1/token"), "/token");
        assert_eq!(path_of("http://[::1]:1/api/x?y=1#z"), "/api/x");
        assert_eq!(path_of("http://host"), "");
        assert_eq!(printable("abc", 3), "abc");
        assert_eq!(printable("abcd", 3), "abc…");
    }
}
