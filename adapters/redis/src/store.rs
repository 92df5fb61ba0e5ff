//! [`RedisStore`] and its [`RedisStoreOptions`].

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redis::{Connection, RedisError, Script, Value};
use token_keeper::{StoreError, StoreErrorKind, StoreKey, StoreOp, StoreReply};
use token_keeper_driver::Store;
use zeroize::Zeroizing;

use crate::entry;
use crate::error::{RedisStoreError, RedisStoreErrorKind};
use crate::keys::StoreKeys;
use crate::naming::{self, Names};

/// The longest time to live the store asks Redis for (30 days): longer ones
/// are shortened (an entry that lives less only costs a token request).
pub const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "token-keeper";

const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(200);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(100);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
const MAX_NAMESPACE: usize = 256;

/// Reads the entry's value and its remaining time to live together.
/// Replies `{value, pttl}`; `{nil, -2}` when there is no entry, `{nil, -3}`
/// when the name holds another type, `{nil, -4}` when the value is larger
/// than ARGV[1] bytes (it is not sent).
const READ_SCRIPT: &str = r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then return {false, -2} end
if redis.call('TYPE', KEYS[1]).ok ~= 'string' then return {false, -3} end
if redis.call('STRLEN', KEYS[1]) > tonumber(ARGV[1]) then return {false, -4} end
return {redis.call('GET', KEYS[1]), ttl}
";

/// Writes the entry (KEYS[1]) with its TTL, then deletes the lease (KEYS[2])
/// if ARGV[3] still holds it.
const WRITE_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.pcall('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
";

/// Takes the lease (KEYS[1]) for ARGV[1] with time to live ARGV[2] ms,
/// unless someone holds it; a lease with no time to live was not set by
/// token-keeper and would never lapse: it is replaced. (A longer one than
/// this process asks for may be another process's, configured otherwise: it
/// is left to lapse; the core gives up on a lease taken for too long.)
/// Replies 1 when taken, 0 when held by another.
const LEASE_SCRIPT: &str = r"
if redis.call('PTTL', KEYS[1]) == -1 then redis.call('DEL', KEYS[1]) end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
";

/// Deletes the lease (KEYS[1]) if ARGV[1] holds it.
const RELEASE_SCRIPT: &str = r"
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
";

/// How to reach Redis and how to seal and name entries: the options of
/// [`RedisStore::new`].
///
/// `Debug` shows the host, port, database and namespace only (no password,
/// no key).
#[derive(Clone)]
pub struct RedisStoreOptions {
    url: Zeroizing<String>,
    keys: StoreKeys,
    namespace: String,
    naming_key: Option<Zeroizing<[u8; 32]>>,
    command_timeout: Duration,
    connect_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl RedisStoreOptions {
    /// Options for the Redis at `url`,
    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]` (port 6379 and database 0
    /// by default; the password percent-encoded), sealing entries with
    /// `keys`. The URL is checked by [`RedisStore::new`].
    ///
    /// Defaults: namespace [`DEFAULT_NAMESPACE`], naming key derived from
    /// the namespace, command and connect timeouts of 200 ms, reconnection
    /// backoff from 100 ms doubling to 5 s.
    pub fn new(url: impl Into<String>, keys: StoreKeys) -> RedisStoreOptions {
        RedisStoreOptions {
            url: Zeroizing::new(url.into()),
            keys,
            namespace: DEFAULT_NAMESPACE.to_owned(),
            naming_key: None,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            backoff_initial: DEFAULT_BACKOFF_INITIAL,
            backoff_max: DEFAULT_BACKOFF_MAX,
        }
    }

    /// The namespace: fleets (or environments) sharing one Redis with
    /// different namespaces never see each other's entries. At most 256
    /// bytes, without NUL.
    pub fn namespace(mut self, namespace: impl Into<String>) -> RedisStoreOptions {
        self.namespace = namespace.into();
        self
    }

    /// An explicit naming key (32 bytes, secret, the same for the whole
    /// fleet) instead of the one derived from the namespace: then no one
    /// without it can tell which name belongs to which client even knowing
    /// the client ids. It must never change (other names, other entries).
    pub fn naming_key(mut self, key: [u8; 32]) -> RedisStoreOptions {
        self.naming_key = Some(Zeroizing::new(key));
        self
    }

    /// The bound on each command (each read and each write on the socket).
    /// Default 200 ms; must not be zero.
    pub fn command_timeout(mut self, timeout: Duration) -> RedisStoreOptions {
        self.command_timeout = timeout;
        self
    }

    /// The bound on connecting (TCP, then authentication and database
    /// selection). Default 200 ms; must not be zero. Host names are resolved
    /// by the system resolver, outside this bound: prefer an address.
    pub fn connect_timeout(mut self, timeout: Duration) -> RedisStoreOptions {
        self.connect_timeout = timeout;
        self
    }

    /// After a failure, no operation touches the network for `initial`;
    /// each further failure doubles the wait, up to `max`; a success resets
    /// it. Default 100 ms to 5 s; `initial` must not be zero nor exceed
    /// `max`, and `max` must be at most an hour.
    pub fn reconnect_backoff(mut self, initial: Duration, max: Duration) -> RedisStoreOptions {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }
}

impl fmt::Debug for RedisStoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("RedisStoreOptions");
        match parse_url(&self.url) {
            Ok(endpoint) => {
                s.field("host", &endpoint.host)
                    .field("port", &endpoint.port)
                    .field("db", &endpoint.db);
            }
            Err(_) => {
                s.field("url", &format_args!("<invalid>"));
            }
        }
        s.field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// Where the store connects, as the URL said (without its credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    host: String,
    port: u16,
    db: i64,
}

fn invalid_url(message: &str) -> RedisStoreError {
    RedisStoreError::new(RedisStoreErrorKind::InvalidUrl, message)
}

/// Checks `text` is `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`. No error
/// quotes the text: it may hold a password.
fn parse_url(text: &str) -> Result<Endpoint, RedisStoreError> {
    let url = url::Url::parse(text).map_err(|_| invalid_url("the Redis URL does not parse"))?;
    if url.scheme() != "redis" {
        return Err(RedisStoreError::new(
            RedisStoreErrorKind::UnsupportedScheme,
            "only redis:// URLs are supported (not rediss://, unix:// or others)",
        ));
    }
    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ => return Err(invalid_url("the Redis URL has no host")),
    };
    let port = url.port().unwrap_or(6379);
    if port == 0 {
        return Err(invalid_url("the Redis URL's port is 0"));
    }
    let db = match url.path() {
        "" | "/" => 0,
        path => {
            let digits = &path[1..];
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(invalid_url(
                    "the Redis URL's path must be a database number",
                ));
            }
            digits
                .parse::<i64>()
                .map_err(|_| invalid_url("the Redis URL's path must be a database number"))?
        }
    };
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid_url(
            "the Redis URL must have no query and no fragment",
        ));
    }
    Ok(Endpoint { host, port, db })
}

/// A [`Store`] on one Redis server: see the [crate documentation](crate).
///
/// One connection, behind a lock (store operations are rare), opened on the
/// first operation. Any failure drops it; the next attempt to reconnect
/// waits for the backoff, during which operations fail at once with
/// [`StoreErrorKind::Unavailable`].
///
/// Each operation: [`StoreOp::Read`] runs a script that reads the entry and
/// its remaining TTL together; [`StoreOp::Lease`] is a script around `SET
/// lease owner NX PX ttl` that first removes a lease that could never lapse
/// (one with no TTL); [`StoreOp::Write`] is a script that sets the sealed entry with its
/// TTL and deletes the lease if the owner still holds it; [`StoreOp::Release`]
/// is a compare-and-delete script. TTLs are whole milliseconds, at least 1
/// and at most [`MAX_TTL`]. Errors: Redis errors, timeouts and failed
/// connections are `Unavailable`; an entry that does not open, has no TTL or
/// is not a string is `Invalid`; a reply of an unexpected shape is `Other`.
/// No message names a secret.
pub struct RedisStore {
    client: redis::Client,
    endpoint: Endpoint,
    keys: StoreKeys,
    namespace: String,
    naming_key: Zeroizing<[u8; 32]>,
    command_timeout: Duration,
    connect_timeout: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    read_script: Script,
    write_script: Script,
    release_script: Script,
    lease_script: Script,
    state: Mutex<State>,
}

/// The connection, or when the next attempt to open one may be made.
struct State {
    connection: Option<Connection>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl RedisStore {
    /// A store with `options`, checked now (the URL's form, the timeouts,
    /// the namespace). Does not connect: Redis may be down, and the first
    /// operation connects.
    pub fn new(options: RedisStoreOptions) -> Result<RedisStore, RedisStoreError> {
        let endpoint = parse_url(&options.url)?;
        let invalid_option =
            |message: &str| RedisStoreError::new(RedisStoreErrorKind::InvalidOption, message);
        if options.command_timeout.is_zero() || options.connect_timeout.is_zero() {
            return Err(invalid_option("timeouts must not be zero"));
        }
        if options.backoff_initial.is_zero()
            || options.backoff_initial > options.backoff_max
            || options.backoff_max > MAX_BACKOFF
        {
            return Err(invalid_option(
                "the reconnection backoff must start above zero, not above its maximum, \
                 and its maximum must be at most an hour",
            ));
        }
        if options.namespace.len() > MAX_NAMESPACE || options.namespace.contains('\0') {
            return Err(invalid_option(
                "the namespace must be at most 256 bytes, without NUL",
            ));
        }
        // Parses the URL again, as the redis crate reads it; its error may
        // quote the URL, so it is not passed on.
        let client = redis::Client::open(options.url.as_str())
            .map_err(|_| invalid_url("the redis client refused the URL"))?;
        let naming_key = match options.naming_key {
            Some(key) => key,
            None => naming::derive_naming_key(&options.namespace),
        };
        Ok(RedisStore {
            client,
            endpoint,
            keys: options.keys,
            namespace: options.namespace,
            naming_key,
            command_timeout: options.command_timeout,
            connect_timeout: options.connect_timeout,
            backoff_initial: options.backoff_initial,
            backoff_max: options.backoff_max,
            read_script: Script::new(READ_SCRIPT),
            write_script: Script::new(WRITE_SCRIPT),
            release_script: Script::new(RELEASE_SCRIPT),
            lease_script: Script::new(LEASE_SCRIPT),
            state: Mutex::new(State {
                connection: None,
                retry_at: None,
                backoff: options.backoff_initial,
            }),
        })
    }

    /// What an entry is bound to: the namespace and the store key, so that
    /// an entry copied to another namespace sharing the sealing key does not
    /// open there either.
    fn bound(&self, key: &StoreKey) -> StoreKey {
        let mut bytes = Vec::with_capacity(self.namespace.len() + 1 + key.as_bytes().len());
        bytes.extend_from_slice(self.namespace.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(key.as_bytes());
        StoreKey::from_bytes(&bytes)
    }

    /// The Redis names of `key`'s entry and lease in this store.
    pub fn names(&self, key: &StoreKey) -> Names {
        naming::names(&self.naming_key, &self.namespace, key)
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Opens the connection unless it is open, or fails at once while the
    /// backoff lasts.
    fn connection<'a>(&self, state: &'a mut State) -> Result<&'a mut Connection, StoreError> {
        if state.connection.is_none() {
            if let Some(retry_at) = state.retry_at {
                if Instant::now() < retry_at {
                    return Err(StoreError::new(
                        StoreErrorKind::Unavailable,
                        "redis: not reconnecting yet after a failure (backing off)",
                    ));
                }
            }
            let connected = self
                .client
                .get_connection_with_timeout(self.connect_timeout)
                .and_then(|connection| {
                    connection.set_read_timeout(Some(self.command_timeout))?;
                    connection.set_write_timeout(Some(self.command_timeout))?;
                    Ok(connection)
                });
            match connected {
                Ok(connection) => state.connection = Some(connection),
                Err(error) => {
                    self.failed(state);
                    return Err(unavailable("connecting", &error));
                }
            }
        }
        match state.connection.as_mut() {
            Some(connection) => Ok(connection),
            None => Err(StoreError::new(
                StoreErrorKind::Other,
                "redis: no connection",
            )),
        }
    }

    /// Drops the connection and starts (or lengthens) the backoff.
    fn failed(&self, state: &mut State) {
        state.connection = None;
        let now = Instant::now();
        state.retry_at = Some(now.checked_add(state.backoff).unwrap_or(now));
        state.backoff = state
            .backoff
            .checked_mul(2)
            .unwrap_or(self.backoff_max)
            .min(self.backoff_max);
    }

    fn run(
        &self,
        what: &'static str,
        call: impl FnOnce(&mut Connection) -> Result<Value, RedisError>,
    ) -> Result<Value, StoreError> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let connection = self.connection(&mut state)?;
        match call(connection) {
            Ok(Value::ServerError(error)) => {
                // An error reply handed back as a value: Redis refused.
                self.failed(&mut state);
                Err(unavailable(what, &RedisError::from(error)))
            }
            Ok(value) => {
                state.retry_at = None;
                state.backoff = self.backoff_initial;
                Ok(value)
            }
            Err(error) => {
                self.failed(&mut state);
                Err(unavailable(what, &error))
            }
        }
    }

    fn read(&self, key: &StoreKey, names: &Names) -> Result<StoreReply, StoreError> {
        let reply = self.run("reading", |connection| {
            self.read_script
                .key(&names.entry)
                .arg(entry::MAX_ENTRY)
                .invoke::<Value>(connection)
        })?;
        let unexpected = || other("an unexpected reply to the read script");
        let Value::Array(items) = reply else {
            return Err(unexpected());
        };
        let [value, Value::Int(ttl)] = &items[..] else {
            return Err(unexpected());
        };
        match (*ttl, value) {
            (-2, _) => Ok(StoreReply::Entry(None)),
            (-1, _) => Err(StoreError::new(
                StoreErrorKind::Invalid,
                "the entry has no time to live (not written by this store)",
            )),
            (-3, _) => Err(StoreError::new(
                StoreErrorKind::Invalid,
                "the entry is not a string",
            )),
            (-4, _) => Err(StoreError::new(
                StoreErrorKind::Invalid,
                "the entry is too large",
            )),
            (ttl, Value::BulkString(bytes)) if ttl >= 0 => {
                let token = entry::open(&self.keys, &self.bound(key), bytes)?;
                Ok(StoreReply::Entry(Some((
                    token,
                    Duration::from_millis(ttl.unsigned_abs()),
                ))))
            }
            _ => Err(unexpected()),
        }
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    let max = MAX_TTL.as_millis() as u64;
    u64::try_from(ttl.as_millis()).unwrap_or(max).clamp(1, max)
}

fn other(message: &str) -> StoreError {
    StoreError::new(StoreErrorKind::Other, format!("redis: {message}"))
}

/// A secret-free description of a Redis failure: its class, and for an
/// error reply its code (`NOAUTH`, `WRONGPASS`, `OOM`, …), never its text or
/// the URL.
fn unavailable(what: &str, error: &RedisError) -> StoreError {
    let cause = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connection_refusal() {
        "connection refused".to_owned()
    } else if error.is_io_error() || error.is_connection_dropped() {
        "I/O error".to_owned()
    } else if error.kind() == redis::ErrorKind::AuthenticationFailed {
        "authentication failed".to_owned()
    } else {
        match error.code() {
            Some(code)
                if !code.is_empty()
                    && code.len() <= 32
                    && code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') =>
            {
                format!("error reply {code}")
            }
            _ => "error reply".to_owned(),
        }
    };
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("redis: {what} failed: {cause}"),
    )
}

impl Store for RedisStore {
    fn execute(&self, key: &StoreKey, op: &StoreOp) -> Result<StoreReply, StoreError> {
        let names = self.names(key);
        match op {
            StoreOp::Read => self.read(key, &names),
            StoreOp::Lease { owner, ttl } => {
                let reply = self.run("taking the lease", |connection| {
                    self.lease_script
                        .key(&names.lease)
                        .arg(&owner.as_bytes()[..])
                        .arg(ttl_ms(*ttl))
                        .invoke::<Value>(connection)
                })?;
                match reply {
                    Value::Int(1) => Ok(StoreReply::Lease(true)),
                    Value::Int(0) => Ok(StoreReply::Lease(false)),
                    _ => Err(other("an unexpected reply to the lease script")),
                }
            }
            StoreOp::Write { owner, token, ttl } => {
                let sealed = entry::seal(&self.keys, &self.bound(key), token)?;
                let reply = self.run("writing", |connection| {
                    self.write_script
                        .key(&names.entry)
                        .key(&names.lease)
                        .arg(&sealed[..])
                        .arg(ttl_ms(*ttl))
                        .arg(&owner.as_bytes()[..])
                        .invoke::<Value>(connection)
                })?;
                match reply {
                    Value::Int(_) => Ok(StoreReply::Done),
                    _ => Err(other("an unexpected reply to the write script")),
                }
            }
            StoreOp::Release { owner } => {
                let reply = self.run("releasing the lease", |connection| {
                    self.release_script
                        .key(&names.lease)
                        .arg(&owner.as_bytes()[..])
                        .invoke::<Value>(connection)
                })?;
                match reply {
                    Value::Int(_) => Ok(StoreReply::Done),
                    _ => Err(other("an unexpected reply to the release script")),
                }
            }
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("host", &self.endpoint.host)
            .field("port", &self.endpoint.port)
            .field("db", &self.endpoint.db)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> StoreKeys {
        StoreKeys::new(1, [7; 32])
    }

    #[test]
    fn urls_are_checked_eagerly() {
        let ok = |url: &str| parse_url(url).unwrap();
        assert_eq!(
            ok("redis://127.0.0.1:6380/2"),
            Endpoint {
                host: "127.0.0.1".into(),
                port: 6380,
                db: 2
            }
        );
        assert_eq!(ok("redis://localhost").port, 6379);
        assert_eq!(ok("redis://:pw@h:1/").db, 0);
        assert_eq!(ok("redis://user:pw@h:1/0").host, "h");
        for (url, kind) in [
            (
                "rediss://:secret-pw@h:1",
                RedisStoreErrorKind::UnsupportedScheme,
            ),
            (
                "unix:///tmp/redis.sock",
                RedisStoreErrorKind::UnsupportedScheme,
            ),
            ("http://h:1", RedisStoreErrorKind::UnsupportedScheme),
            ("secret-pw", RedisStoreErrorKind::InvalidUrl),
            ("redis://:secret-pw@", RedisStoreErrorKind::InvalidUrl),
            ("redis://:secret-pw@h:1/x", RedisStoreErrorKind::InvalidUrl),
            (
                "redis://:secret-pw@h:1/1/2",
                RedisStoreErrorKind::InvalidUrl,
            ),
            ("redis://:secret-pw@h:1/-1", RedisStoreErrorKind::InvalidUrl),
            (
                "redis://:secret-pw@h:99999",
                RedisStoreErrorKind::InvalidUrl,
            ),
            (
                "redis://:secret-pw@h:1?db=2",
                RedisStoreErrorKind::InvalidUrl,
            ),
            ("redis://:secret-pw@h:1#f", RedisStoreErrorKind::InvalidUrl),
        ] {
            let error = RedisStore::new(RedisStoreOptions::new(url, keys())).unwrap_err();
            assert_eq!(error.kind(), kind, "{url}");
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains("secret-pw"), "{shown}");
        }
    }

    #[test]
    fn construction_does_not_connect() {
        // Nothing listens on port 1; construction succeeds all the same.
        let store = RedisStore::new(
            RedisStoreOptions::new("redis://127.0.0.1:1", keys())
                .reconnect_backoff(Duration::from_secs(60), Duration::from_secs(60)),
        )
        .unwrap();
        let error = store
            .execute(&StoreKey::from_bytes(b"k"), &StoreOp::Read)
            .unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Unavailable);
        assert!(error.message().contains("connecting failed"), "{error}");
        // In backoff now: fails at once again, without connecting.
        let error = store
            .execute(&StoreKey::from_bytes(b"k"), &StoreOp::Read)
            .unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Unavailable);
        assert!(error.message().contains("backing off"), "{error}");
    }

    #[test]
    fn options_are_checked() {
        let url = "redis://127.0.0.1:6379";
        for options in [
            RedisStoreOptions::new(url, keys()).command_timeout(Duration::ZERO),
            RedisStoreOptions::new(url, keys()).connect_timeout(Duration::ZERO),
            RedisStoreOptions::new(url, keys())
                .reconnect_backoff(Duration::ZERO, Duration::from_secs(1)),
            RedisStoreOptions::new(url, keys())
                .reconnect_backoff(Duration::from_secs(2), Duration::from_secs(1)),
            RedisStoreOptions::new(url, keys())
                .reconnect_backoff(Duration::from_secs(1), Duration::from_secs(3601)),
            RedisStoreOptions::new(url, keys()).namespace("a\0b"),
            RedisStoreOptions::new(url, keys()).namespace("n".repeat(257)),
        ] {
            let error = RedisStore::new(options).unwrap_err();
            assert_eq!(error.kind(), RedisStoreErrorKind::InvalidOption);
        }
    }

    #[test]
    fn debug_shows_no_password_and_no_key() {
        let options = RedisStoreOptions::new("redis://user:hunter2-secret@10.0.0.5:6390/3", keys())
            .namespace("fleet")
            .naming_key([9; 32]);
        let store = RedisStore::new(options.clone()).unwrap();
        for shown in [
            format!("{options:?}"),
            format!("{store:?}"),
            format!("{options:#?}"),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(!shown.contains("user"), "{shown}");
            assert!(!shown.contains("7, 7"), "{shown}");
            assert!(!shown.contains("9, 9"), "{shown}");
            assert!(
                shown.contains("10.0.0.5") && shown.contains("6390"),
                "{shown}"
            );
            assert!(shown.contains("fleet"), "{shown}");
        }
        let bad = RedisStoreOptions::new("redis://:hunter2@h:1/x", keys());
        assert!(!format!("{bad:?}").contains("hunter2"));
    }

    #[test]
    fn ttls_are_whole_milliseconds_within_bounds() {
        assert_eq!(ttl_ms(Duration::ZERO), 1);
        assert_eq!(ttl_ms(Duration::from_micros(999)), 1);
        assert_eq!(ttl_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(ttl_ms(Duration::MAX), MAX_TTL.as_millis() as u64);
    }

    #[test]
    fn names_follow_the_naming_key() {
        let url = "redis://127.0.0.1:6379";
        let a = RedisStore::new(RedisStoreOptions::new(url, keys()).namespace("a")).unwrap();
        let key = StoreKey::from_bytes(b"\x01client");
        assert_eq!(
            a.names(&key),
            naming::names(&naming::derive_naming_key("a"), "a", &key)
        );
        let b = RedisStore::new(
            RedisStoreOptions::new(url, keys())
                .namespace("a")
                .naming_key([3; 32]),
        )
        .unwrap();
        assert_eq!(a.namespace(), b.namespace());
        assert_ne!(a.names(&key), b.names(&key));
    }
}
