//! The tower adapter on a tonic channel, against tonic's health service on
//! 127.0.0.1: gRPC `UNAUTHENTICATED` (`grpc-status: 16`) plays the role of
//! `401`, in a trailers-only answer's headers (tonic-health's own service
//! behind an interceptor) and in the trailers after a streamed answer (a
//! `Health` service of this file's whose `watch` fails after its headers).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use token_keeper::{ClientAuth, ClientConfig, ClientSecret};
use token_keeper_testkit::{LocalAuthServer, ServerConfig};
use token_keeper_tower::{token_failure, ReqwestTokenClient, TokenLayer, TokenService};
use tonic::codegen::tokio_stream::{self, Stream};
use tonic::metadata::MetadataMap;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// What the gRPC server accepts: any `Authorization` it has not been told
/// to refuse; it records every one it sees.
#[derive(Default)]
struct Keeper {
    seen: Mutex<Vec<String>>,
    refused: Mutex<HashSet<String>>,
}

impl Keeper {
    fn admit(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let Some(sent) = metadata.get("authorization").and_then(|v| v.to_str().ok()) else {
            return Err(Status::unauthenticated("no token"));
        };
        self.seen.lock().unwrap().push(sent.to_owned());
        if self.refused.lock().unwrap().contains(sent) {
            return Err(Status::unauthenticated("token refused"));
        }
        Ok(())
    }

    fn refuse(&self, authorization: &str) {
        self.refused
            .lock()
            .unwrap()
            .insert(authorization.to_owned());
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A health service whose `watch` always sends its headers, then either
/// one SERVING message or, for a refused token, `UNAUTHENTICATED` in the
/// trailers.
struct StreamingHealth(Arc<Keeper>);

#[tonic::async_trait]
impl Health for StreamingHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.0.admit(request.metadata())?;
        Ok(Response::new(serving()))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let item = self.0.admit(request.metadata()).map(|()| serving());
        Ok(Response::new(Box::pin(tokio_stream::iter(vec![item]))))
    }
}

fn serving() -> HealthCheckResponse {
    HealthCheckResponse {
        status: ServingStatus::Serving as i32,
    }
}

struct World {
    runtime: tokio::runtime::Runtime,
    auth: LocalAuthServer,
    keeper: Arc<Keeper>,
    /// tonic-health's own service, behind an interceptor.
    reporter_addr: SocketAddr,
    /// [`StreamingHealth`].
    streaming_addr: SocketAddr,
}

impl World {
    fn start(secret: &str) -> World {
        let auth = LocalAuthServer::start(ServerConfig {
            clients: vec![("m2m".to_owned(), secret.to_owned())],
            ..ServerConfig::default()
        })
        .unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let keeper = Arc::new(Keeper::default());
        let (reporter_addr, streaming_addr) = runtime.block_on(async {
            let (reporter, service) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            let interceptor_keeper = keeper.clone();
            let guarded = tonic::service::interceptor::InterceptedService::new(
                service,
                move |request: Request<()>| {
                    interceptor_keeper.admit(request.metadata())?;
                    Ok(request)
                },
            );
            let reporter_addr = serve(Server::builder().add_service(guarded)).await;
            let streaming = HealthServer::new(StreamingHealth(keeper.clone()));
            let streaming_addr = serve(Server::builder().add_service(streaming)).await;
            (reporter_addr, streaming_addr)
        });
        World {
            runtime,
            auth,
            keeper,
            reporter_addr,
            streaming_addr,
        }
    }

    /// A health client over a channel to `addr` with the token layer.
    fn client(
        &self,
        addr: SocketAddr,
        secret: &str,
        replay: bool,
    ) -> HealthClient<TokenService<Channel>> {
        let tokens = ReqwestTokenClient::new();
        let config = ClientConfig::new(
            &self.auth.token_url(),
            "m2m",
            ClientAuth::Basic(ClientSecret::new(secret)),
        )
        .unwrap();
        tokens.add_client("m2m", config).unwrap();
        let origin = format!("http://{addr}");
        let layer = TokenLayer::new(&tokens)
            .route(&origin, "m2m")
            .unwrap()
            .relative_to(&origin)
            .unwrap()
            .replay_unsized_bodies(replay);
        let channel = self.runtime.block_on(async {
            tonic::transport::Endpoint::from_shared(origin.clone())
                .unwrap()
                .connect()
                .await
                .unwrap()
        });
        HealthClient::new(tower::ServiceBuilder::new().layer(layer).service(channel))
    }

    fn check(&self, client: &mut HealthClient<TokenService<Channel>>) -> Result<i32, Status> {
        self.runtime.block_on(async {
            let answer = client.check(HealthCheckRequest::default()).await?;
            Ok(answer.into_inner().status)
        })
    }

    /// The first message of a `watch`.
    fn watch(&self, client: &mut HealthClient<TokenService<Channel>>) -> Result<i32, Status> {
        self.runtime.block_on(async {
            let mut stream = client
                .watch(HealthCheckRequest::default())
                .await?
                .into_inner();
            let first = stream.message().await?;
            Ok(first.map_or(-1, |m| m.status))
        })
    }

    /// The `n`th token the server issued (counted from 0), as sent.
    fn bearer(&self, n: usize) -> String {
        let prefix = format!("lt-{n}-");
        let token = self
            .auth
            .issued_tokens()
            .into_iter()
            .find(|t| t.starts_with(&prefix));
        format!("Bearer {}", token.expect("issued"))
    }
}

/// Serves on a fresh 127.0.0.1 port until the runtime is dropped.
async fn serve(router: tonic::transport::server::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(router.serve_with_incoming(incoming));
    addr
}

const SERVING: i32 = ServingStatus::Serving as i32;

#[test]
fn a_health_check_carries_the_managed_token() {
    let w = World::start("s3cret");
    let mut client = w.client(w.reporter_addr, "s3cret", false);
    assert_eq!(w.check(&mut client).unwrap(), SERVING);
    assert_eq!(w.check(&mut client).unwrap(), SERVING);
    assert_eq!(w.auth.token_requests(), 1);
    assert_eq!(w.keeper.seen(), vec![w.bearer(0), w.bearer(0)]);
}

#[test]
fn unauthenticated_in_the_headers_invalidates_and_retries_a_buffered_unary_call() {
    let w = World::start("s3cret");
    let mut client = w.client(w.reporter_addr, "s3cret", true);
    assert_eq!(w.check(&mut client).unwrap(), SERVING);
    w.keeper.refuse(&w.bearer(0));
    // Refused, invalidated, fetched anew and sent again: the caller sees none of it.
    assert_eq!(w.check(&mut client).unwrap(), SERVING);
    assert_eq!(w.auth.token_requests(), 2);
    assert_eq!(w.keeper.seen(), vec![w.bearer(0), w.bearer(0), w.bearer(1)]);
}

#[test]
fn an_unbuffered_call_is_not_retried_but_the_next_one_gets_a_new_token() {
    let w = World::start("s3cret");
    let mut client = w.client(w.reporter_addr, "s3cret", false);
    assert_eq!(w.check(&mut client).unwrap(), SERVING);
    w.keeper.refuse(&w.bearer(0));
    let refused = w.check(&mut client).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(w.check(&mut client).unwrap(), SERVING);
    assert_eq!(w.auth.token_requests(), 2);
    assert_eq!(w.keeper.seen(), vec![w.bearer(0), w.bearer(0), w.bearer(1)]);
}

#[test]
fn unauthenticated_in_the_trailers_invalidates_the_token_for_the_next_call() {
    let w = World::start("s3cret");
    let mut client = w.client(w.streaming_addr, "s3cret", true);
    assert_eq!(w.watch(&mut client).unwrap(), SERVING);
    w.keeper.refuse(&w.bearer(0));
    // The answer's headers said nothing: the status comes after them, too
    // late to retry; it reaches the caller, and the token is invalidated.
    let refused = w.watch(&mut client).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert_eq!(w.watch(&mut client).unwrap(), SERVING);
    assert_eq!(w.auth.token_requests(), 2);
    assert_eq!(w.keeper.seen(), vec![w.bearer(0), w.bearer(0), w.bearer(1)]);
}

#[test]
fn a_token_failure_reaches_the_grpc_caller_typed_and_the_server_is_never_asked() {
    let w = World::start("s3cret");
    let mut client = w.client(w.reporter_addr, "wrong-secret-value", true);
    let status = w.check(&mut client).unwrap_err();
    let no_token = token_failure(&status).expect("a token failure under the status");
    assert_eq!(no_token.oauth_code(), Some("invalid_client"));
    assert!(
        status
            .message()
            .starts_with("no token, so the request was not sent"),
        "{status:?}"
    );
    assert!(!format!("{status:?}").contains("wrong-secret-value"));
    assert!(
        w.keeper.seen().is_empty(),
        "the gRPC server was never asked"
    );
}
