//! One round of "ask the core for a header", and the owned answer a caller
//! signs after the core's lock is released.
//!
//! The [`Client`](crate::Client)'s slow path is a loop: apply [`step`] to
//! the core ([`Engine::input`](crate::Engine::input), which also sends the
//! token requests the round queued), then either return or wait for the
//! request the [`Step`] names to end, and go round again. A caller never
//! sends a token request itself: one that gives up waiting (a dropped
//! future, a timeout) strands nobody, since the request and the wake-up of
//! every waiter belong to the engine.
//!
//! Nothing is signed under the lock: a round's answer for a DPoP-bound token
//! carries its proof unsigned ([`Attached`]), and the caller signs it
//! ([`Attached::sign`]) after unlocking, so a slow signer (an HSM, a KMS)
//! holds up only its own call. Token requests are signed by the engine, on
//! the thread that sends them.

use http::{HeaderValue, Method, Uri};
use token_keeper::jose::UnsignedJwt;
use token_keeper::{
    Attach, Authorization, ForcedRefresh, KeyId, Now, RequestId, TokenError, TokenManager,
};

use crate::error::Error;

/// What the caller must do after a round with the core.
#[derive(Debug)]
pub enum Step {
    /// The call is decided: the header to attach, or an error.
    Done(Result<Attached, Error>),
    /// No valid token: wait until request `id` ends (the engine sends it),
    /// then go round again.
    Wait(RequestId),
}

/// Asks the core for `key`'s header at `now`.
///
/// `waited` says whether this caller already waited for a request in this
/// call: if so, a failure is reported as the error itself (the caller saw it
/// happen); if not, as [`Error::Unavailable`] (the key was already backing off).
/// The answer is owned ([`Attached`]): the caller signs its DPoP proof, if
/// any, and runs its own code on it after the core's lock is released, so
/// that a slow signer holds up no other caller, and that code may call the
/// client again (a closure under the lock would deadlock on a cold cache).
pub fn step(
    core: &mut TokenManager,
    key: KeyId,
    request: Option<(&Method, &Uri)>,
    now: Now,
    waited: bool,
) -> Step {
    let authorization = match request {
        Some((method, uri)) => core.authorize_request(key, method, uri, now),
        None => core.authorize(key, now),
    };
    match authorization {
        Authorization::Attach(attach) => Step::Done(Attached::from_attach(attach)),
        Authorization::Unavailable { error, retry_at } => Step::Done(Err(if waited {
            Error::from_token_error(error)
        } else {
            Error::Unavailable {
                cause: error.clone(),
                retry_in: retry_at.saturating_duration_since(now.monotonic()),
            }
        })),
        // This caller's request or another's: the engine sends it either way.
        Authorization::Fetch(id) | Authorization::Wait(id) => Step::Wait(id),
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
    /// Puts these headers on a request's: `Authorization`, and `DPoP` for a
    /// bound token (any other `DPoP` removed: a proof is made for one
    /// request and one token). Every middleware on `http` headers calls it.
    pub fn apply_to(&self, headers: &mut http::HeaderMap) {
        headers.insert(http::header::AUTHORIZATION, self.authorization.clone());
        let dpop = http::HeaderName::from_static("dpop");
        match &self.dpop {
            Some(proof) => {
                headers.insert(dpop, proof.clone());
            }
            None => {
                headers.remove(dpop);
            }
        }
    }
}

/// The core's answer for an API request, owned and not yet signed:
/// `Authorization`, and for a DPoP-bound token the proof to sign. Sign it
/// with [`Attached::sign`] once the core's lock is released.
#[derive(Debug)]
pub struct Attached {
    /// The `Authorization` header value.
    pub authorization: HeaderValue,
    /// The DPoP proof to sign, for a DPoP-bound token.
    pub dpop: Option<UnsignedJwt>,
}

impl Attached {
    /// The header and unsigned proof of an [`Attach`]; fails if no proof can
    /// be made for the request (the request must then not be sent: a DPoP
    /// token is never sent as Bearer).
    pub fn from_attach(attach: Attach<'_>) -> Result<Attached, Error> {
        let authorization = attach.header().clone();
        let dpop = attach.dpop_proof_to_sign().map_err(Error::Signing)?;
        Ok(Attached {
            authorization,
            dpop,
        })
    }

    /// Signs the DPoP proof, if any: the headers to send. Call it with the
    /// core's lock released (the signer may be an HSM or a KMS, and slow).
    /// Fails with [`Error::Signing`] if the signer does: the request must
    /// then not be sent (a DPoP token is never sent as Bearer).
    pub fn sign(self) -> Result<Authorized, Error> {
        let dpop = self
            .dpop
            .map(UnsignedJwt::sign_header_value)
            .transpose()
            .map_err(Error::Signing)?;
        Ok(Authorized {
            authorization: self.authorization,
            dpop,
        })
    }
}

/// Starts a forced refresh of `key`: the id of the request to wait for;
/// or, during a backoff, the error to return.
pub fn start_forced_refresh(
    core: &mut TokenManager,
    key: KeyId,
    now: Now,
) -> Result<RequestId, Error> {
    match core.force_refresh(key, now) {
        ForcedRefresh::Started(id) | ForcedRefresh::InFlight(id) => Ok(id),
        ForcedRefresh::BackingOff { retry_at } => {
            let retry_in = retry_at.saturating_duration_since(now.monotonic());
            // The failure that started the backoff, whether or not a valid
            // token is still served meanwhile: never one made up here.
            let cause = match core.backoff_error(key) {
                Some(error) => error.clone(),
                None => TokenError::Transport(token_keeper::TransportError::new(
                    token_keeper::TransportErrorKind::Other,
                    "backing off after a failed token request",
                )),
            };
            Err(Error::Unavailable { cause, retry_in })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
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
    fn wait_then_done() {
        let (mut core, registry, key) = setup();
        let now = Now::from_secs(0);
        let Step::Wait(first) = step(&mut core, key, None, now, false) else {
            panic!()
        };
        // The caller's own request is queued for the engine, not sent by the caller.
        let requests = registry.drain(&mut core).requests;
        assert_eq!(requests.len(), 1);
        let own = requests.into_iter().next().unwrap();
        assert_eq!(own.id(), first);
        let Step::Wait(id) = step(&mut core, key, None, now, false) else {
            panic!()
        };
        assert_eq!(id, own.id());
        let response = http::Response::builder().status(500).body("").unwrap();
        core.handle_response(own.id(), response, now).unwrap();
        // The caller who waited sees the failure itself; a newcomer sees the backoff.
        let Step::Done(Err(seen)) = step(&mut core, key, None, now, true) else {
            panic!()
        };
        assert!(matches!(seen, Error::InvalidResponse(_)), "{seen:?}");
        let Step::Done(Err(late)) = step(&mut core, key, None, now, false) else {
            panic!()
        };
        assert!(matches!(late, Error::Unavailable { .. }), "{late:?}");
        let forced = start_forced_refresh(&mut core, key, now);
        assert!(matches!(forced, Err(Error::Unavailable { .. })));
    }
}
