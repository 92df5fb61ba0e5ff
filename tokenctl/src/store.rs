//! The store flags (`--store`, `--store-key-env`, …) as a [`FleetStore`] on
//! Redis, and a small logger that shows the client's warnings (a store that
//! does not answer) when a store is in use.
//!
//! tokenctl is often a short-lived process: `token` exits as soon as it has
//! its token, while the engine's store thread may still be writing that
//! token to the store (which also releases the lease). A write lost at exit
//! would leave the lease to lapse on its own, and every other process to
//! wait for it. So before it exits tokenctl settles the client's store
//! ([`Client::settle_store`](token_keeper_driver::Client::settle_store): its
//! leases released, its writes done, within [`SETTLE_WAIT`]).

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use token_keeper_driver::FleetStore;
use token_keeper_redis::{RedisStore, RedisStoreOptions, StoreKeys, KEY_LEN};
use zeroize::Zeroizing;

use crate::args::{ClientFlags, StoreUrl};

/// Why the store flags do not make a store. Every message names the flag
/// and the environment variable involved, never a value (a URL may hold a
/// password, a key is a key).
#[derive(Debug, PartialEq, Eq)]
pub enum StoreFlagError {
    /// `--store` without `--store-key-env`.
    NoKey,
    /// The variable a flag names is not set (or not UTF-8).
    MissingVar { flag: &'static str, var: String },
    /// A key variable does not hold standard base64.
    NotBase64 { flag: &'static str, var: String },
    /// A key variable holds base64 of another length than 32 bytes.
    WrongLength {
        flag: &'static str,
        var: String,
        len: usize,
    },
    /// The store refused the URL or an option (its message is secret-free).
    Store(String),
}

impl fmt::Display for StoreFlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreFlagError::NoKey => f.write_str(
                "--store needs --store-key-env VAR, a variable holding 32 random bytes in \
                 base64: tokens never sit in Redis in clear",
            ),
            StoreFlagError::MissingVar { flag, var } => {
                write!(
                    f,
                    "{flag}: environment variable {var} is not set (or not UTF-8)"
                )
            }
            StoreFlagError::NotBase64 { flag, var } => write!(
                f,
                "{flag}: {var} is not standard base64 (make a key with `openssl rand -base64 32`)"
            ),
            StoreFlagError::WrongLength { flag, var, len } => write!(
                f,
                "{flag}: {var} decodes to {len} bytes; a store key is exactly {KEY_LEN} bytes \
                 (make one with `openssl rand -base64 32`)"
            ),
            StoreFlagError::Store(message) => write!(f, "--store: {message}"),
        }
    }
}

fn env_var(flag: &'static str, var: &str) -> Result<Zeroizing<String>, StoreFlagError> {
    std::env::var(var)
        .map(Zeroizing::new)
        .map_err(|_| StoreFlagError::MissingVar {
            flag,
            var: var.to_owned(),
        })
}

/// The 32 bytes of a key in `var`.
fn key_from_env(flag: &'static str, var: &str) -> Result<[u8; KEY_LEN], StoreFlagError> {
    let text = env_var(flag, var)?;
    let decoded = Zeroizing::new(STANDARD.decode(text.trim_ascii().as_bytes()).map_err(|_| {
        StoreFlagError::NotBase64 {
            flag,
            var: var.to_owned(),
        }
    })?);
    if decoded.len() != KEY_LEN {
        return Err(StoreFlagError::WrongLength {
            flag,
            var: var.to_owned(),
            len: decoded.len(),
        });
    }
    let mut key = [0u8; KEY_LEN];
    key.copy_from_slice(&decoded);
    Ok(key)
}

/// How long tokenctl waits, before it exits, for the store to receive the
/// token it fetched and the release of any lease it still holds
/// ([`Client::settle_store`](token_keeper_driver::Client::settle_store)).
pub const SETTLE_WAIT: Duration = Duration::from_secs(1);

/// The fleet store the flags describe, or `None` without `--store`.
///
/// Both keys get id 1: an entry is opened with the current key, then with
/// the old one, so a rotation needs no id bookkeeping on the command line.
/// Nothing connects here: Redis may be down, and the client then works
/// without it.
pub fn fleet_store(flags: &ClientFlags) -> Result<Option<FleetStore>, StoreFlagError> {
    let Some(url) = &flags.store else {
        return Ok(None);
    };
    let url = match url {
        StoreUrl::Given(url) => Zeroizing::new(url.clone()),
        StoreUrl::Env(var) => env_var("--store-env", var)?,
    };
    let key_var = flags
        .store_key_env
        .as_deref()
        .ok_or(StoreFlagError::NoKey)?;
    let mut keys = StoreKeys::new(1, key_from_env("--store-key-env", key_var)?);
    if let Some(var) = &flags.store_old_key_env {
        keys = keys.with_old(1, key_from_env("--store-old-key-env", var)?);
    }
    let mut options = RedisStoreOptions::new(url.as_str(), keys);
    if let Some(namespace) = &flags.store_namespace {
        options = options.namespace(namespace.clone());
    }
    let store = RedisStore::new(options).map_err(|e| StoreFlagError::Store(e.to_string()))?;
    Ok(Some(FleetStore::new(store)))
}

/// Shows the warnings of token-keeper's crates (a store that does not
/// answer, an entry that does not open) on stderr, one line each. Their
/// messages name no secret.
struct WarningsToStderr;

impl log::Log for WarningsToStderr {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn && metadata.target().starts_with("token_keeper")
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = record.args().to_string();
            // One bounded line, whatever the message.
            let line: String = line
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .take(400)
                .collect();
            eprintln!("tokenctl: warning: {line}");
        }
    }

    fn flush(&self) {}
}

/// Installs [`WarningsToStderr`] (once; later calls do nothing).
pub fn show_warnings() {
    static LOGGER: WarningsToStderr = WarningsToStderr;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Warn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(url: &str, key_var: &str) -> ClientFlags {
        ClientFlags {
            store: Some(StoreUrl::Given(url.to_owned())),
            store_key_env: Some(key_var.to_owned()),
            ..ClientFlags::default()
        }
    }

    #[test]
    fn each_bad_value_has_its_error_and_none_shows_a_secret() {
        // Each test variable has a name of its own: tests run in parallel.
        std::env::set_var("TK_UNIT_KEY_OK", STANDARD.encode([7u8; 32]));
        std::env::set_var("TK_UNIT_KEY_SHORT", STANDARD.encode([7u8; 16]));
        std::env::set_var("TK_UNIT_KEY_BAD", "not base64 at all!");
        let ok = "redis://:pw-unit-9@127.0.0.1:6379/0";
        assert!(fleet_store(&flags(ok, "TK_UNIT_KEY_OK")).unwrap().is_some());
        assert!(fleet_store(&ClientFlags::default()).unwrap().is_none());
        let cases = [
            (
                flags(ok, "TK_UNIT_KEY_UNSET"),
                StoreFlagError::MissingVar {
                    flag: "--store-key-env",
                    var: "TK_UNIT_KEY_UNSET".into(),
                },
            ),
            (
                flags(ok, "TK_UNIT_KEY_BAD"),
                StoreFlagError::NotBase64 {
                    flag: "--store-key-env",
                    var: "TK_UNIT_KEY_BAD".into(),
                },
            ),
            (
                flags(ok, "TK_UNIT_KEY_SHORT"),
                StoreFlagError::WrongLength {
                    flag: "--store-key-env",
                    var: "TK_UNIT_KEY_SHORT".into(),
                    len: 16,
                },
            ),
            (
                ClientFlags {
                    store_old_key_env: Some("TK_UNIT_KEY_SHORT".into()),
                    ..flags(ok, "TK_UNIT_KEY_OK")
                },
                StoreFlagError::WrongLength {
                    flag: "--store-old-key-env",
                    var: "TK_UNIT_KEY_SHORT".into(),
                    len: 16,
                },
            ),
            (
                ClientFlags {
                    store_key_env: None,
                    ..flags(ok, "TK_UNIT_KEY_OK")
                },
                StoreFlagError::NoKey,
            ),
        ];
        for (flags, expected) in cases {
            assert_eq!(fleet_store(&flags).unwrap_err(), expected);
        }
        for url in [
            "rediss://:pw-unit-9@127.0.0.1:6379",
            "redis://:pw-unit-9@",
            "redis://:pw-unit-9@h:1/db",
            "pw-unit-9",
        ] {
            let error = fleet_store(&flags(url, "TK_UNIT_KEY_OK")).unwrap_err();
            assert!(matches!(error, StoreFlagError::Store(_)), "{url}");
            let shown = format!("{error} {error:?}");
            assert!(shown.starts_with("--store: redis token store: "), "{shown}");
            assert!(!shown.contains("pw-unit-9"), "{shown}");
        }
        let missing = ClientFlags {
            store: Some(StoreUrl::Env("TK_UNIT_URL_UNSET".into())),
            ..flags(ok, "TK_UNIT_KEY_OK")
        };
        assert_eq!(
            fleet_store(&missing).unwrap_err().to_string(),
            "--store-env: environment variable TK_UNIT_URL_UNSET is not set (or not UTF-8)"
        );
        assert!(!format!("{:?}", flags(ok, "K")).contains("pw-unit-9"));
    }
}
