//! The scenario table, run on the async surf adapter (blocking on async-std
//! at the edge of each call, as a synchronous test must).

use std::sync::Arc;

use token_keeper::{ClientAuth, ClientConfig, ClientSecret, ManagerConfig};
use token_keeper_surf::{AsyncTokenClient, ClientOptions, Error, TokenMiddleware};
use token_keeper_testkit::scenarios::{
    captured_logs, report_unauthorized_to, Adapter, AdapterError, AdapterFactory, Setup,
};

struct SurfFactory;

struct SurfAdapter {
    tokens: AsyncTokenClient,
    api: surf::Client,
}

fn flatten_surf(error: surf::Error) -> AdapterError {
    match error.downcast_ref::<Error>() {
        Some(e) => AdapterError::from_error(e),
        None => AdapterError::other(error.to_string()),
    }
}

impl AdapterFactory for SurfFactory {
    fn build(&self, setup: Setup) -> Box<dyn Adapter> {
        captured_logs();
        let options = ClientOptions {
            manager: ManagerConfig::default(),
            timeout: setup.timeout,
            clock: Arc::new(setup.clock.clone()),
            seed: 7,
            ..Default::default()
        };
        let tokens =
            AsyncTokenClient::with_options(token_keeper_surf::DirectHttp::new(), options).unwrap();
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
        captured_logs()
    }
}

impl Adapter for SurfAdapter {
    fn header(&self) -> Result<String, AdapterError> {
        async_std::task::block_on(self.tokens.header("m2m"))
            .map(|h| h.to_str().unwrap().to_owned())
            .map_err(|e| AdapterError::from_error(&e))
    }

    fn get(&self, url: &str) -> Result<u16, AdapterError> {
        async_std::task::block_on(self.api.get(url))
            .map(|r| u16::from(r.status()))
            .map_err(flatten_surf)
    }

    fn get_with_header(&self, url: &str, name: &str, value: &str) -> Result<u16, AdapterError> {
        async_std::task::block_on(self.api.get(url).header(name, value))
            .map(|r| u16::from(r.status()))
            .map_err(flatten_surf)
    }

    fn post(&self, url: &str, body: Vec<u8>) -> Result<u16, AdapterError> {
        async_std::task::block_on(self.api.post(url).body_bytes(body))
            .map(|r| u16::from(r.status()))
            .map_err(flatten_surf)
    }

    fn report_unauthorized(&self, sent: &str) -> bool {
        report_unauthorized_to(&self.tokens, sent)
    }

    fn force_refresh(&self) -> Result<(), AdapterError> {
        async_std::task::block_on(self.tokens.force_refresh("m2m"))
            .map_err(|e| AdapterError::from_error(&e))
    }

    fn debug_text(&self) -> String {
        format!("{:?}", self.tokens)
    }
}

token_keeper_testkit::scenario_tests!(SurfFactory);
