//! The scenario table, run on the reqwest adapter (blocking on a tokio
//! runtime at the edge of each call, as a synchronous test must).

use std::sync::Arc;

use token_keeper::{ClientAuth, ClientConfig, ClientSecret, ManagerConfig};
use token_keeper_reqwest::{token_failure, ClientOptions, ReqwestTokenClient, TokenMiddleware};
use token_keeper_testkit::scenarios::{
    captured_logs, report_unauthorized_to, Adapter, AdapterError, AdapterFactory, Setup,
};

struct ReqwestFactory;

struct ReqwestAdapter {
    tokens: ReqwestTokenClient,
    api: reqwest_middleware::ClientWithMiddleware,
    /// The application's runtime: API calls run on it, token requests never do.
    runtime: tokio::runtime::Runtime,
}

fn flatten(error: reqwest_middleware::Error) -> AdapterError {
    match token_failure(&error) {
        Some(e) => AdapterError::from_error(e),
        None => AdapterError::other(error.to_string()),
    }
}

impl AdapterFactory for ReqwestFactory {
    fn build(&self, setup: Setup) -> Box<dyn Adapter> {
        captured_logs();
        let options = ClientOptions {
            manager: ManagerConfig::default(),
            timeout: setup.timeout,
            clock: Arc::new(setup.clock.clone()),
            seed: 7,
            ..Default::default()
        };
        let tokens = ReqwestTokenClient::with_options(options).unwrap();
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
        let http = TokenMiddleware::client_builder()
            .no_proxy()
            .build()
            .unwrap();
        let api = reqwest_middleware::ClientBuilder::new(http)
            .with(middleware)
            .build();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        Box::new(ReqwestAdapter {
            tokens,
            api,
            runtime,
        })
    }

    fn captured_logs(&self) -> String {
        captured_logs()
    }
}

impl ReqwestAdapter {
    fn status(&self, request: reqwest_middleware::RequestBuilder) -> Result<u16, AdapterError> {
        self.runtime
            .block_on(request.send())
            .map(|r| r.status().as_u16())
            .map_err(flatten)
    }
}

impl Adapter for ReqwestAdapter {
    fn header(&self) -> Result<String, AdapterError> {
        self.runtime
            .block_on(self.tokens.header("m2m"))
            .map(|h| h.to_str().unwrap().to_owned())
            .map_err(|e| AdapterError::from_error(&e))
    }

    fn get(&self, url: &str) -> Result<u16, AdapterError> {
        self.status(self.api.get(url))
    }

    fn get_with_header(&self, url: &str, name: &str, value: &str) -> Result<u16, AdapterError> {
        self.status(self.api.get(url).header(name, value))
    }

    fn post(&self, url: &str, body: Vec<u8>) -> Result<u16, AdapterError> {
        self.status(self.api.post(url).body(body))
    }

    fn report_unauthorized(&self, sent: &str) -> bool {
        report_unauthorized_to(&self.tokens, sent)
    }

    fn force_refresh(&self) -> Result<(), AdapterError> {
        self.runtime
            .block_on(self.tokens.force_refresh("m2m"))
            .map_err(|e| AdapterError::from_error(&e))
    }

    fn debug_text(&self) -> String {
        format!("{:?}", self.tokens)
    }
}

token_keeper_testkit::scenario_tests!(ReqwestFactory);
