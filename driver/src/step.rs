//! One round of "ask the core for a header", as both adapters run it.
//!
//! An adapter's slow path is a loop: lock the core, call [`step`], unlock,
//! then do what the [`Step`] says (send a request and feed the answer back,
//! or wait for someone else's request to end) and go round again. Only the
//! sending and the waiting differ between blocking and async adapters.

use http::{HeaderValue, Method, Uri};
use token_keeper::{
    Attach, Authorization, ForcedRefresh, KeyId, Now, RequestId, TokenError, TokenManager,
    TokenRequest,
};

use crate::error::Error;
use crate::registry::Registry;

/// What the adapter must do after a round with the core.
#[derive(Debug)]
pub enum Step<T> {
    /// The call is decided: a value computed from the header, or an error.
    /// Send `others` off the caller's path (refreshes the round queued).
    Done(Result<T, Error>, Vec<TokenRequest>),
    /// No valid token: send `own` on this task (the caller waits for it
    /// anyway) and `others` off the caller's path, then go round again.
    Send {
        /// The request this caller triggered.
        own: TokenRequest,
        /// Other queued requests.
        others: Vec<TokenRequest>,
    },
    /// Another caller's request is in flight: send `others` off the caller's
    /// path, wait until request `id` ends, then go round again.
    Wait {
        /// The request to wait for.
        id: RequestId,
        /// Other queued requests.
        others: Vec<TokenRequest>,
    },
}

/// Asks the core for `key`'s header at `now` and drains its outputs.
///
/// `waited` says whether this caller already waited for a request in this
/// call: if so, a failure is reported as the error itself (the caller saw it
/// happen); if not, as [`Error::Unavailable`] (the key was already backing off).
/// `f` computes the result from the header and is called at most once.
pub fn step<T, F: FnOnce(&Attach<'_>) -> T>(
    core: &mut TokenManager,
    registry: &Registry,
    key: KeyId,
    request: Option<(&Method, &Uri)>,
    now: Now,
    waited: bool,
    f: &mut Option<F>,
) -> Step<T> {
    enum Decision<T> {
        Done(Result<T, Error>),
        Send(RequestId),
        Wait(RequestId),
    }
    let authorization = match request {
        Some((method, uri)) => core.authorize_request(key, method, uri, now),
        None => core.authorize(key, now),
    };
    let decision = match authorization {
        Authorization::Attach(attach) => {
            Decision::Done(Ok((f.take().expect("called once"))(&attach)))
        }
        Authorization::Unavailable { error, retry_at } => Decision::Done(Err(if waited {
            Error::from_token_error(error)
        } else {
            Error::Unavailable {
                cause: error.clone(),
                retry_in: retry_at.saturating_duration_since(now.monotonic()),
            }
        })),
        Authorization::Fetch(id) => Decision::Send(id),
        Authorization::Wait(id) => Decision::Wait(id),
    };
    let mut requests = registry.drain(core);
    match decision {
        Decision::Done(result) => Step::Done(result, requests),
        Decision::Send(id) => match requests.iter().position(|r| r.id() == id) {
            Some(index) => {
                let own = requests.swap_remove(index);
                Step::Send {
                    own,
                    others: requests,
                }
            }
            // Drained already by someone else: wait for it like any other.
            None => Step::Wait {
                id,
                others: requests,
            },
        },
        Decision::Wait(id) => Step::Wait {
            id,
            others: requests,
        },
    }
}

/// What to put on an API request: `Authorization`, and `DPoP` for a
/// DPoP-bound token.
#[derive(Clone, Debug)]
pub struct Authorized {
    /// The `Authorization` header value.
    pub authorization: HeaderValue,
    /// The `DPoP` proof header value, for a DPoP-bound token.
    pub dpop: Option<HeaderValue>,
}

impl Authorized {
    /// The headers of an [`Attach`]; fails if its DPoP proof could not be signed
    /// (the request must then not be sent: a DPoP token is never sent as Bearer).
    pub fn from_attach(attach: &Attach<'_>) -> Result<Authorized, Error> {
        let dpop = attach
            .dpop_proof()
            .map_err(|e| Error::Signing(e.clone()))?
            .cloned();
        Ok(Authorized {
            authorization: attach.header().clone(),
            dpop,
        })
    }
}

/// Starts a forced refresh of `key`: the id of the request to wait for, and
/// the requests to send; or, during a backoff, the error to return.
pub fn start_forced_refresh(
    core: &mut TokenManager,
    registry: &Registry,
    key: KeyId,
    now: Now,
) -> (Result<RequestId, Error>, Vec<TokenRequest>) {
    let result = match core.force_refresh(key, now) {
        ForcedRefresh::Started(id) | ForcedRefresh::InFlight(id) => Ok(id),
        ForcedRefresh::BackingOff { retry_at } => {
            let retry_in = retry_at.saturating_duration_since(now.monotonic());
            let cause = match core.authorize(key, now) {
                Authorization::Unavailable { error, .. } => error.clone(),
                // A valid token is still served: report the refresh as backing off.
                _ => TokenError::Transport(token_keeper::TransportError::new(
                    token_keeper::TransportErrorKind::Other,
                    "backing off after a failed token request",
                )),
            };
            Err(Error::Unavailable { cause, retry_in })
        }
    };
    (result, registry.drain(core))
}

#[cfg(test)]
mod tests {
    use super::*;
    use token_keeper::{ClientAuth, ClientConfig, ClientSecret, ManagerConfig};

    fn setup() -> (TokenManager, Registry, KeyId) {
        let registry = Registry::new(4);
        let mut core = TokenManager::new(ManagerConfig::default(), 1);
        let config = ClientConfig::new(
            "https://as.example/t",
            "c",
            ClientAuth::Basic(ClientSecret::new("s")),
        )
        .unwrap();
        registry.add_client(&mut core, "m2m", config).unwrap();
        let key = registry.lookup("m2m").unwrap().1;
        (core, registry, key)
    }

    #[test]
    fn send_then_wait_then_done() {
        let (mut core, registry, key) = setup();
        let now = Now::from_secs(0);
        let Step::Send { own, others } = step(
            &mut core,
            &registry,
            key,
            None,
            now,
            false,
            &mut Some(|a: &Attach<'_>| a.header().clone()),
        ) else {
            panic!()
        };
        assert!(others.is_empty());
        let Step::Wait { id, .. } = step(
            &mut core,
            &registry,
            key,
            None,
            now,
            false,
            &mut Some(|a: &Attach<'_>| a.header().clone()),
        ) else {
            panic!()
        };
        assert_eq!(id, own.id());
        let response = http::Response::builder().status(500).body("").unwrap();
        core.handle_response(own.id(), response, now).unwrap();
        // The caller who waited sees the failure itself; a newcomer sees the backoff.
        let Step::Done(Err(seen), _) = step(
            &mut core,
            &registry,
            key,
            None,
            now,
            true,
            &mut Some(|a: &Attach<'_>| a.header().clone()),
        ) else {
            panic!()
        };
        assert!(matches!(seen, Error::InvalidResponse(_)), "{seen:?}");
        let Step::Done(Err(late), _) = step(
            &mut core,
            &registry,
            key,
            None,
            now,
            false,
            &mut Some(|a: &Attach<'_>| a.header().clone()),
        ) else {
            panic!()
        };
        assert!(matches!(late, Error::Unavailable { .. }), "{late:?}");
        let (forced, _) = start_forced_refresh(&mut core, &registry, key, now);
        assert!(matches!(forced, Err(Error::Unavailable { .. })));
    }
}
