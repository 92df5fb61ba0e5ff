//! The scenario table, run on the blocking ureq adapter.

use std::sync::Arc;

use token_keeper::{ClientAuth, ClientConfig, ClientSecret, ManagerConfig};
use token_keeper_testkit::scenarios::{
    captured_logs, report_unauthorized_to, Adapter, AdapterError, AdapterFactory, Setup,
};
use token_keeper_ureq::{ClientOptions, Error, TokenClient, TokenMiddleware};

struct UreqFactory;

struct UreqAdapter {
    client: TokenClient,
    agent: ureq::Agent,
}

fn flatten_ureq(error: ureq::Error) -> AdapterError {
    match error {
        ureq::Error::Other(inner) => match inner.downcast::<Error>() {
            Ok(e) => AdapterError::from_error(&e),
            Err(other) => AdapterError::other(other.to_string()),
        },
        other => AdapterError::other(other.to_string()),
    }
}

impl AdapterFactory for UreqFactory {
    fn build(&self, setup: Setup) -> Box<dyn Adapter> {
        captured_logs();
        let options = ClientOptions {
            manager: ManagerConfig::default(),
            timeout: setup.timeout,
            connect_timeout: setup.timeout,
            clock: Arc::new(setup.clock.clone()),
            seed: 7,
            ..Default::default()
        };
        let client = TokenClient::with_options(options).unwrap();
        let config = ClientConfig::new(
            &setup.token_url,
            &setup.client_id,
            ClientAuth::Basic(ClientSecret::new(setup.secret)),
        )
        .unwrap()
        .scope("api");
        client.add_client("m2m", config).unwrap();
        let agent = TokenMiddleware::new(client.clone())
            .route(&setup.api_origin, "m2m")
            .unwrap()
            .max_replay_body(setup.max_replay_body)
            .build_agent(|| ureq::Agent::config_builder().http_status_as_error(false));
        Box::new(UreqAdapter { client, agent })
    }

    fn captured_logs(&self) -> String {
        captured_logs()
    }
}

impl Adapter for UreqAdapter {
    fn header(&self) -> Result<String, AdapterError> {
        self.client
            .header("m2m")
            .map(|h| h.to_str().unwrap().to_owned())
            .map_err(|e| AdapterError::from_error(&e))
    }

    fn get(&self, url: &str) -> Result<u16, AdapterError> {
        self.agent
            .get(url)
            .call()
            .map(|r| r.status().as_u16())
            .map_err(flatten_ureq)
    }

    fn get_with_header(&self, url: &str, name: &str, value: &str) -> Result<u16, AdapterError> {
        self.agent
            .get(url)
            .header(name, value)
            .call()
            .map(|r| r.status().as_u16())
            .map_err(flatten_ureq)
    }

    fn post(&self, url: &str, body: Vec<u8>) -> Result<u16, AdapterError> {
        self.agent
            .post(url)
            .send(&body[..])
            .map(|r| r.status().as_u16())
            .map_err(flatten_ureq)
    }

    fn report_unauthorized(&self, sent: &str) -> bool {
        report_unauthorized_to(&self.client, sent)
    }

    fn force_refresh(&self) -> Result<(), AdapterError> {
        self.client
            .force_refresh("m2m")
            .map_err(|e| AdapterError::from_error(&e))
    }

    fn debug_text(&self) -> String {
        format!("{:?} {:?}", self.client, self.agent)
    }
}

token_keeper_testkit::scenario_tests!(UreqFactory);
