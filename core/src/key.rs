//! Cache keys: which token a request needs.
//!
//! Two calls share a token only when they agree on the client, the scope, the
//! resources (RFC 8707), the audience and the extra parameters. Leaving the
//! scope out of the key is a classic bug (a token for `read` served to a call
//! that needs `write`), so every part that changes the token is in the key.
//!
//! Keys are interned: [`TokenManager::key`](crate::TokenManager::key) turns a
//! description into a small copyable [`KeyId`], which adapters keep and use as
//! an index on the hot path.

use std::fmt;

use crate::error::ConfigError;

/// A cache key, interned by the manager. Cheap to copy and compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeyId(pub(crate) u32);

impl KeyId {
    /// The key's index, dense from zero: adapters may use it to index their own tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key#{}", self.0)
    }
}

/// A set of scopes: parsed from a space-separated string, deduplicated and
/// sorted, so that `"b a"` and `"a b a"` name the same token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(Vec<String>);

impl Scope {
    /// Parses a space-separated scope string (RFC 6749 §3.3). No length limit.
    pub fn parse(scope: &str) -> Scope {
        let mut items: Vec<String> = scope.split_ascii_whitespace().map(str::to_owned).collect();
        items.sort();
        items.dedup();
        Scope(items)
    }

    /// Whether no scope is requested.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The scopes, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }

    /// The scope as sent in a request: space-separated.
    pub fn to_request_string(&self) -> String {
        self.0.join(" ")
    }
}

/// Per-call changes to a client's configured request.
///
/// ```
/// use token_keeper::KeyOverrides;
/// let overrides = KeyOverrides::new()
///     .scope("reports.read")
///     .resource("https://reports.example.com/")?
///     .param("tenant", "acme")?;
/// # Ok::<(), token_keeper::ConfigError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct KeyOverrides {
    pub(crate) scope: Option<Scope>,
    pub(crate) resources: Option<Vec<String>>,
    pub(crate) audience: Option<String>,
    pub(crate) params: Vec<(String, String)>,
}

impl KeyOverrides {
    /// No overrides: the client's configured request.
    pub fn new() -> KeyOverrides {
        KeyOverrides::default()
    }

    /// Replaces the configured scope.
    pub fn scope(mut self, scope: &str) -> KeyOverrides {
        self.scope = Some(Scope::parse(scope));
        self
    }

    /// Replaces the configured resources with this one, plus any added by further calls.
    pub fn resource(mut self, resource: &str) -> Result<KeyOverrides, ConfigError> {
        validate_resource(resource)?;
        self.resources
            .get_or_insert_with(Vec::new)
            .push(resource.to_owned());
        Ok(self)
    }

    /// Replaces the configured audience.
    pub fn audience(mut self, audience: impl Into<String>) -> KeyOverrides {
        self.audience = Some(audience.into());
        self
    }

    /// Adds a form parameter, replacing a configured one of the same name.
    pub fn param(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<KeyOverrides, ConfigError> {
        let name = name.into();
        validate_param_name(&name)?;
        self.params.push((name, value.into()));
        Ok(self)
    }
}

/// Everything that makes one token differ from another.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct KeyDescriptor {
    pub(crate) client: u32,
    pub(crate) scope: Scope,
    pub(crate) resources: Vec<String>,
    pub(crate) audience: Option<String>,
    pub(crate) params: Vec<(String, String)>,
    /// The RFC 7638 thumbprint of the DPoP key tokens are bound to.
    pub(crate) dpop_jkt: Option<String>,
}

impl KeyDescriptor {
    /// The descriptor of `client`'s configured request changed by `overrides`,
    /// in canonical order so that equal requests get equal keys.
    pub(crate) fn new(
        client: u32,
        scope: &Scope,
        resources: &[String],
        audience: Option<&String>,
        params: &[(String, String)],
        overrides: &KeyOverrides,
    ) -> KeyDescriptor {
        let scope = overrides.scope.clone().unwrap_or_else(|| scope.clone());
        let mut resources = overrides
            .resources
            .clone()
            .unwrap_or_else(|| resources.to_vec());
        resources.sort();
        resources.dedup();
        let audience = overrides.audience.clone().or_else(|| audience.cloned());
        let mut merged: Vec<(String, String)> = params
            .iter()
            .filter(|(name, _)| !overrides.params.iter().any(|(n, _)| n == name))
            .cloned()
            .collect();
        merged.extend(overrides.params.iter().cloned());
        merged.sort();
        merged.dedup();
        KeyDescriptor {
            client,
            scope,
            resources,
            audience,
            params: merged,
            dpop_jkt: None,
        }
    }
}

/// Form parameters the protocol owns; user parameters may not set them.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
    "resource",
    "audience",
];

pub(crate) fn validate_param_name(name: &str) -> Result<(), ConfigError> {
    if name.is_empty() {
        return Err(ConfigError::new("parameter name is empty"));
    }
    if RESERVED_PARAMS.contains(&name) {
        return Err(ConfigError::new(
            "parameter name is reserved by the protocol; use the dedicated setting",
        ));
    }
    Ok(())
}

/// RFC 8707 §2: an absolute URI (scheme ":" …) without a fragment.
pub(crate) fn validate_resource(resource: &str) -> Result<(), ConfigError> {
    let Some((scheme, rest)) = resource.split_once(':') else {
        return Err(ConfigError::new("resource must be an absolute URI"));
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok || rest.is_empty() {
        return Err(ConfigError::new("resource must be an absolute URI"));
    }
    if resource.contains('#') {
        return Err(ConfigError::new("resource must not contain a fragment"));
    }
    if resource
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(ConfigError::new(
            "resource contains whitespace or control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_is_a_set() {
        assert_eq!(Scope::parse("b a  a"), Scope::parse("a b"));
        assert_eq!(Scope::parse(" a\tb ").to_request_string(), "a b");
        assert!(Scope::parse("  ").is_empty());
        let long: String = (0..2000).map(|i| format!("s{i} ")).collect();
        assert_eq!(Scope::parse(&long).iter().count(), 2000);
    }

    #[test]
    fn resources_follow_rfc_8707() {
        assert!(validate_resource("https://api.example.com/").is_ok());
        assert!(validate_resource("urn:example:api").is_ok());
        assert!(validate_resource("https://api.example.com/#frag").is_err());
        assert!(validate_resource("/relative").is_err());
        assert!(validate_resource("api.example.com").is_err());
        assert!(validate_resource("1http://x").is_err());
        assert!(validate_resource("https://a b").is_err());
        assert!(validate_resource("https:").is_err());
    }

    #[test]
    fn descriptors_are_canonical() {
        let base = |o: &KeyOverrides| {
            KeyDescriptor::new(
                0,
                &Scope::parse("a b"),
                &["https://r2/".into(), "https://r1/".into()],
                None,
                &[("x".into(), "1".into()), ("y".into(), "2".into())],
                o,
            )
        };
        let plain = base(&KeyOverrides::new());
        assert_eq!(plain.resources, vec!["https://r1/", "https://r2/"]);
        assert_eq!(plain, base(&KeyOverrides::new().scope("b a")));
        let other_scope = base(&KeyOverrides::new().scope("a"));
        assert_ne!(plain, other_scope);
        let replaced = base(&KeyOverrides::new().param("x", "9").unwrap());
        assert_eq!(
            replaced.params,
            vec![
                ("x".to_owned(), "9".to_owned()),
                ("y".to_owned(), "2".to_owned())
            ]
        );
        let resource = base(&KeyOverrides::new().resource("https://r3/").unwrap());
        assert_eq!(resource.resources, vec!["https://r3/"]);
    }
}
