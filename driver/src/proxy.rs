//! Reading the proxy environment once, for the core's proxy decision.
//!
//! The rules (curl's, with loopback never proxied) live in the core
//! ([`token_keeper::proxy`]); the core reads no environment, so the driver
//! reads it here, once per client, into a value tests can replace.

use token_keeper::ProxySettings;

/// The proxy settings the process environment asks for (`http_proxy`,
/// `https_proxy`/`HTTPS_PROXY`, `all_proxy`/`ALL_PROXY`, `no_proxy`/`NO_PROXY`),
/// read now. Values that are not UTF-8 are read lossily, so a garbled proxy
/// variable makes the destinations it covers fail with a clear error rather
/// than go direct.
pub fn proxy_from_env() -> ProxySettings {
    ProxySettings::from_env_vars(std::env::vars_os().map(|(name, value)| {
        (
            name.to_string_lossy().into_owned(),
            value.to_string_lossy().into_owned(),
        )
    }))
}
