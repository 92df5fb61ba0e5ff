//! The scenario table, run on the tower adapter: a `TokenLayer` over
//! hyper-util's client (blocking on a tokio runtime at the edge of each
//! call, as a synchronous test must).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use token_keeper::{ClientAuth, ClientConfig, ClientSecret, ManagerConfig};
use token_keeper_testkit::scenarios::{
    captured_logs, report_unauthorized_to, Adapter, AdapterError, AdapterFactory, Setup,
};
use token_keeper_tower::{
    token_failure, ClientOptions, ReqwestTokenClient, TokenLayer, TokenService,
};
use tower::ServiceExt;

type Http = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

struct TowerFactory;

struct TowerAdapter {
    tokens: ReqwestTokenClient,
    api: TokenService<Http>,
    /// The application's runtime: API calls run on it, token requests never do.
    runtime: tokio::runtime::Runtime,
}

impl AdapterFactory for TowerFactory {
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
        let layer = TokenLayer::new(&tokens)
            .route(&setup.api_origin, "m2m")
            .unwrap()
            .max_replay_body(setup.max_replay_body);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let http = {
            let _entered = runtime.enter();
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
        };
        let api = tower::ServiceBuilder::new().layer(layer).service(http);
        Box::new(TowerAdapter {
            tokens,
            api,
            runtime,
        })
    }

    fn captured_logs(&self) -> String {
        captured_logs()
    }
}

impl TowerAdapter {
    fn status(&self, request: http::Request<Full<Bytes>>) -> Result<u16, AdapterError> {
        self.runtime.block_on(async {
            match self.api.clone().oneshot(request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // Read the answer whole, as a caller would.
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| AdapterError::other(e.to_string()))?;
                    Ok(status)
                }
                Err(error) => Err(match token_failure(&*error) {
                    Some(e) => AdapterError::from_error(e),
                    None => AdapterError::other(error.to_string()),
                }),
            }
        })
    }
}

fn get(url: &str) -> http::request::Builder {
    http::Request::get(url)
}

impl Adapter for TowerAdapter {
    fn header(&self) -> Result<String, AdapterError> {
        self.runtime
            .block_on(self.tokens.header("m2m"))
            .map(|h| h.to_str().unwrap().to_owned())
            .map_err(|e| AdapterError::from_error(&e))
    }

    fn get(&self, url: &str) -> Result<u16, AdapterError> {
        self.status(get(url).body(Full::default()).unwrap())
    }

    fn get_with_header(&self, url: &str, name: &str, value: &str) -> Result<u16, AdapterError> {
        let request = get(url).header(name, value);
        self.status(request.body(Full::default()).unwrap())
    }

    fn post(&self, url: &str, body: Vec<u8>) -> Result<u16, AdapterError> {
        let request = http::Request::post(url).body(Full::new(Bytes::from(body)));
        self.status(request.unwrap())
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
        format!("{:?} {:?}", self.tokens, self.api)
    }
}

token_keeper_testkit::scenario_tests!(TowerFactory);
