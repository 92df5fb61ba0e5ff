//! The two routes: `GET /records` (the seed's call to the protected API,
//! through the token middleware) and `GET /healthz` (the token's health).
//!
//! Every answer the service makes itself is short JSON: no stack trace, no
//! token, no secret, no DPoP proof.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::{ACCEPT, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use reqwest::Url;
use reqwest_middleware::ClientWithMiddleware;
use serde_json::{json, Value};
use token_keeper::{HealthState, KeyHealth};
use token_keeper_reqwest::{token_failure, ReqwestTokenClient};

/// The name of the token client, as `CreateClient("m2m")` names the seed's.
pub const CLIENT: &str = "m2m";

/// The largest API answer passed on: a bigger one is a 502, read no further.
pub const MAX_API_BODY: usize = 1024 * 1024;

/// The longest error message put in an answer (the messages are short; this
/// keeps every error answer well under 1 KiB whatever a server said).
const MAX_DETAIL: usize = 400;

/// What the handlers share.
pub struct App {
    /// The protected API's health-records URL (`--api`).
    pub api_url: Url,
    /// The reqwest client with the token middleware in its chain: the
    /// counterpart of `IHttpClientFactory.CreateClient("m2m")`.
    pub api: ClientWithMiddleware,
    /// The same reqwest client (the same connection pool) without the
    /// middleware: used only with `fixed_authorization` (the bench's mode A).
    pub bare: ClientWithMiddleware,
    /// The hidden `--fixed-authorization-env` header (sensitive: never logged).
    pub fixed_authorization: Option<HeaderValue>,
    /// The token client, for `/healthz`.
    pub tokens: ReqwestTokenClient,
}

/// The service's routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/records", get(records))
        .route("/healthz", get(healthz))
        .fallback(|| async { json_answer(StatusCode::NOT_FOUND, &json!({"error": "not_found"})) })
        .method_not_allowed_fallback(|| async {
            json_answer(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "method_not_allowed", "detail": "only GET"}),
            )
        })
        .with_state(app)
}

/// A JSON answer that no cache keeps.
fn json_answer(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, body.to_string()).into_response();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// An empty answer with `status` that no cache keeps.
fn empty_answer(status: StatusCode) -> Response {
    let mut response = status.into_response();
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A short JSON error: `{"error": code, "detail": …}`.
fn error_answer(status: StatusCode, code: &str, detail: &str) -> Response {
    json_answer(status, &json!({"error": code, "detail": bounded(detail)}))
}

/// `text` on one line, at most [`MAX_DETAIL`] characters.
fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL)
        .collect();
    if text.chars().count() > MAX_DETAIL {
        out.push('…');
    }
    out
}

/// `GET /records`: the API's status and JSON body, or a short JSON error.
async fn records(State(app): State<Arc<App>>) -> Response {
    let request = match &app.fixed_authorization {
        // Mode A of the bench: a fixed header, no middleware.
        Some(value) => app
            .bare
            .get(app.api_url.clone())
            .header(AUTHORIZATION, value.clone()),
        None => app.api.get(app.api_url.clone()),
    };
    let response = match request.header(ACCEPT, "application/json").send().await {
        Ok(response) => response,
        Err(error) => return send_failed(&error),
    };
    let status = response.status();
    if !status.is_success() {
        // Its status, not its body: an error page may hold what the caller
        // must not see (a stack trace, an echoed header).
        log::warn!("the API answered {status}");
        return json_answer(
            status,
            &json!({
                "error": "api_error",
                "detail": format!("the API answered {}", status.as_u16()),
                "api_status": status.as_u16(),
            }),
        );
    }
    let body = match read_bounded(response).await {
        Ok(body) => body,
        Err(answer) => return answer,
    };
    if body.is_empty() {
        // 204 and other empty successes: nothing to check or pass on.
        return empty_answer(status);
    }
    if serde_json::from_slice::<Value>(&body).is_err() {
        log::warn!("the API answered {status} with a body that is not JSON");
        return json_answer(
            StatusCode::BAD_GATEWAY,
            &json!({
                "error": "bad_api_answer",
                "detail": "the API's answer is not JSON",
                "api_status": status.as_u16(),
            }),
        );
    }
    let mut answer = (status, body).into_response();
    let headers = answer.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // Health records: no cache between the caller and this service keeps them.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    answer
}

/// The answer to a call that got no response: 503 when no token could be
/// had (the request was not sent), 502 for every other failure.
fn send_failed(error: &reqwest_middleware::Error) -> Response {
    if let Some(no_token) = token_failure(error) {
        // The Error's Display never holds a secret or a token.
        log::warn!("no token for the API: {no_token}");
        let mut answer = error_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            "token_unavailable",
            &no_token.to_string(),
        );
        if let Some(wait) = no_token.retry_in() {
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            answer
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        return answer;
    }
    let detail = match error {
        reqwest_middleware::Error::Reqwest(e) if e.is_timeout() => "the API did not answer in time",
        reqwest_middleware::Error::Reqwest(e) if e.is_connect() => "could not connect to the API",
        _ => "the request to the API failed",
    };
    log::warn!("calling the API: {}", chain(error));
    error_answer(StatusCode::BAD_GATEWAY, "api_unreachable", detail)
}

/// An error and its causes on one line (for the log, not for answers).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    bounded(&text)
}

/// The response body, at most [`MAX_API_BODY`] bytes; a longer one, or a
/// read that fails, is a 502 answer.
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, Response> {
    let too_large = || {
        log::warn!("the API's answer exceeds {MAX_API_BODY} bytes");
        error_answer(
            StatusCode::BAD_GATEWAY,
            "bad_api_answer",
            "the API's answer exceeds 1 MiB",
        )
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_API_BODY as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0) as usize);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_API_BODY {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => {
                log::warn!("reading the API's answer: {}", chain(&error));
                return Err(error_answer(
                    StatusCode::BAD_GATEWAY,
                    "api_unreachable",
                    "reading the API's answer failed",
                ));
            }
        }
    }
}

/// `GET /healthz`: the m2m client's health. 200 when a call would get a
/// token (one is usable, or none has been asked for and nothing failed),
/// 503 when it would not (no usable token and the last token request
/// failed). See [`verdict`].
async fn healthz(State(app): State<Arc<App>>) -> Response {
    let health = app
        .tokens
        .health()
        .into_iter()
        .find(|client| client.name == CLIENT && client.overrides.is_none());
    let Some(client) = health else {
        return json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"status": "unavailable", "client": CLIENT, "state": null}),
        );
    };
    let (code, status) = verdict(&client.health);
    if needs_a_new_attempt(&client.health) {
        // A token request failed, its backoff is over, and nothing will try
        // again until a call comes: a readiness probe that took this
        // service out of rotation would wait for ever. Start the attempt in
        // the background (one for all, like any call's; during a backoff
        // the client refuses at once without a request), and answer what
        // is true now.
        let tokens = app.tokens.clone();
        tokio::spawn(async move {
            let _ = tokens.header(CLIENT).await;
        });
    }
    json_answer(code, &health_json(status, &client.health))
}

/// Whether `/healthz` starts a token request: no usable token, the last
/// request failed, and none is under way or backing off.
fn needs_a_new_attempt(health: &KeyHealth) -> bool {
    health.usable_for.is_none()
        && health.last_error.is_some()
        && !matches!(
            health.state,
            HealthState::BackingOff | HealthState::Fetching
        )
}

/// The HTTP status and the `status` word of a key's health:
///
/// | state | token usable | last request failed | answer |
/// |---|---|---|---|
/// | `fresh`, `stale` | yes | – | 200 `ok` |
/// | `backing_off` | yes (the old token is still served) | yes | 200 `degraded` |
/// | `backing_off` | no | yes | 503 `unavailable` |
/// | `empty`, `fetching`, `expired` | no | no | 200 `ok` (the next call fetches one) |
/// | `empty`, `fetching`, `expired` | no | yes | 503 `unavailable` |
///
/// "The last request failed" is read from `last_error`, which the core keeps
/// after later successes; with no usable token it still means the last
/// attempt failed, since a token that was fetched is refreshed ahead of its
/// expiry (the one exception, a token invalidated after a 401, is replaced
/// by the very call that saw the 401). Once such a failure's backoff is
/// over, nothing would try again before the next `/records`, so `/healthz`
/// itself starts the next attempt ([`needs_a_new_attempt`]): a probe that
/// took the service out of rotation brings it back when the token endpoint
/// recovers.
pub fn verdict(health: &KeyHealth) -> (StatusCode, &'static str) {
    let usable = health.usable_for.is_some();
    match (health.state, usable) {
        (HealthState::BackingOff, true) => (StatusCode::OK, "degraded"),
        (_, true) => (StatusCode::OK, "ok"),
        (HealthState::BackingOff, false) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        (_, false) if health.last_error.is_some() => {
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
        (_, false) => (StatusCode::OK, "ok"),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The JSON of `/healthz`: what [`KeyHealth`] says, which holds no token,
/// secret or proof.
pub fn health_json(status: &str, health: &KeyHealth) -> Value {
    json!({
        "status": status,
        "client": CLIENT,
        "state": health.state.as_str(),
        "usable_for_ms": health.usable_for.map(millis),
        "refresh_in_ms": health.refresh_in.map(millis),
        "token_requests": health.token_requests,
        "last_error": health.last_error.as_ref().map(|e| json!({
            "message": bounded(&e.message),
            "ago_ms": millis(e.ago),
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key's health as the core makes it (`KeyHealth` is non-exhaustive):
    /// a client that has asked for nothing yet.
    fn empty_health() -> KeyHealth {
        let tokens = ReqwestTokenClient::new();
        let config = token_keeper::ClientConfig::new(
            "https://as.example/token",
            "m2m",
            token_keeper::ClientAuth::Basic(token_keeper::ClientSecret::new("unit-s3cret")),
        )
        .unwrap();
        tokens.add_client(CLIENT, config).unwrap();
        tokens.health().remove(0).health
    }

    /// The cases without a failed request (the ones with one need a real
    /// failure: `tests/service.rs` makes them against a closed port).
    #[test]
    fn usable_tokens_and_untouched_keys_are_healthy_a_backoff_without_token_is_not() {
        let empty = empty_health();
        assert_eq!(empty.state, HealthState::Empty);
        assert_eq!(verdict(&empty), (StatusCode::OK, "ok"));
        let json = health_json("ok", &empty);
        assert_eq!(json["state"], "empty");
        assert_eq!(json["usable_for_ms"], Value::Null);
        assert_eq!(json["token_requests"], 0);

        let mut h = empty.clone();
        h.usable_for = Some(Duration::from_secs(5));
        for (state, expected) in [
            (HealthState::Fresh, (StatusCode::OK, "ok")),
            (HealthState::Stale, (StatusCode::OK, "ok")),
            (HealthState::BackingOff, (StatusCode::OK, "degraded")),
        ] {
            h.state = state;
            assert_eq!(verdict(&h), expected, "{state}");
        }
        h.usable_for = None;
        assert_eq!(
            verdict(&h),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        );
        assert_eq!(health_json("unavailable", &h)["usable_for_ms"], Value::Null);
    }

    #[test]
    fn details_are_one_bounded_line() {
        let long = "x\n".repeat(1000);
        let detail = bounded(&long);
        assert!(!detail.contains('\n'));
        assert_eq!(detail.chars().count(), MAX_DETAIL + 1);
    }
}
