//! A client's life: its last clone may be dropped anywhere, inside the
//! application's tokio runtime too.

use token_keeper_reqwest::ReqwestTokenClient;
use token_keeper_testkit::fixtures::secret_client;
use token_keeper_testkit::{LocalAuthServer, ServerConfig};

/// The last clone of a client may be dropped inside the application's
/// runtime: the transport's own runtime is shut down without blocking there.
#[test]
fn the_last_clone_may_be_dropped_inside_a_tokio_task() {
    let idp = LocalAuthServer::start(ServerConfig::default()).unwrap();
    let tokens = ReqwestTokenClient::new();
    tokens
        .add_client("m2m", secret_client(&idp.token_url()))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let task = tokio::spawn(async move {
            tokens.header("m2m").await.unwrap();
            drop(tokens);
        });
        task.await.unwrap();
    });
    assert_eq!(idp.token_requests(), 1);
}
