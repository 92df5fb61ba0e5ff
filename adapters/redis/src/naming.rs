//! The Redis names of a key's entry and lease: a keyed hash of the
//! namespace and the [`StoreKey`], so that neither the client id nor the
//! scopes (which the store key holds) appear in Redis.
//!
//! `H` = lowercase hex of HMAC-SHA-256(naming key, namespace || 0x00 ||
//! store key bytes); the entry is `tk:{H}:e`, the lease `tk:{H}:l`. Both
//! carry the hash tag `{H}`, so Redis Cluster keeps them in one slot (the
//! write script touches both).
//!
//! The naming key is derived from the namespace
//! ([`derive_naming_key`]) unless the options give one. It never rotates:
//! another naming key makes other names, and every process of a fleet must
//! use the same one.

use std::fmt::Write as _;

use ring::hmac;
use token_keeper::StoreKey;
use zeroize::Zeroizing;

/// The label that keys the derivation of a naming key from a namespace.
pub const NAMING_LABEL: &[u8] = b"token-keeper store naming v1";

/// The default naming key of `namespace`: HMAC-SHA-256 keyed with
/// [`NAMING_LABEL`] over the namespace's bytes.
pub fn derive_naming_key(namespace: &str) -> Zeroizing<[u8; 32]> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, NAMING_LABEL);
    let tag = hmac::sign(&key, namespace.as_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(tag.as_ref());
    out
}

/// The Redis names of one store key's entry and lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// The entry's name: `tk:{H}:e`.
    pub entry: String,
    /// The lease's name: `tk:{H}:l`.
    pub lease: String,
}

/// The names of `key`'s entry and lease in `namespace`, under `naming_key`.
pub fn names(naming_key: &[u8; 32], namespace: &str, key: &StoreKey) -> Names {
    let hmac_key = hmac::Key::new(hmac::HMAC_SHA256, naming_key);
    let mut context = hmac::Context::with_key(&hmac_key);
    context.update(namespace.as_bytes());
    context.update(&[0]);
    context.update(key.as_bytes());
    let tag = context.sign();
    let mut hash = String::with_capacity(64);
    for byte in tag.as_ref() {
        // Writing to a String cannot fail.
        let _ = write!(hash, "{byte:02x}");
    }
    Names {
        entry: format!("tk:{{{hash}}}:e"),
        lease: format!("tk:{{{hash}}}:l"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bytes: &[u8]) -> StoreKey {
        StoreKey::from_bytes(bytes)
    }

    #[test]
    fn names_share_a_hash_tag_and_hide_the_store_key() {
        let naming_key = derive_naming_key("fleet-a");
        let names = names(
            &naming_key,
            "fleet-a",
            &key(b"\x01client-id-1234 orders.read"),
        );
        assert!(names.entry.starts_with("tk:{") && names.entry.ends_with("}:e"));
        assert!(names.lease.starts_with("tk:{") && names.lease.ends_with("}:l"));
        assert_eq!(names.entry.len(), "tk:{}:e".len() + 64);
        assert_eq!(
            names.entry.trim_end_matches(":e"),
            names.lease.trim_end_matches(":l")
        );
        let hash = &names.entry[4..68];
        assert!(hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(!names.entry.contains("client") && !names.entry.contains("orders"));
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let k = derive_naming_key("ns");
        let a = names(&k, "ns", &key(b"a"));
        assert_eq!(a, names(&derive_naming_key("ns"), "ns", &key(b"a")));
        assert_ne!(a, names(&k, "ns", &key(b"b")));
        // Another namespace: another naming key and other names.
        assert_ne!(a, names(&derive_naming_key("ns2"), "ns2", &key(b"a")));
        // The same naming key, another namespace: still other names.
        assert_ne!(a, names(&k, "ns2", &key(b"a")));
        // The separator keeps (namespace, key) pairs apart.
        assert_ne!(names(&k, "n", &key(b"sa")), names(&k, "ns", &key(b"a")));
        // An explicit naming key makes other names.
        assert_ne!(a, names(&[7u8; 32], "ns", &key(b"a")));
    }

    #[test]
    fn naming_key_is_hmac_of_the_namespace_under_the_label() {
        let expected = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"token-keeper store naming v1"),
            b"prod",
        );
        assert_eq!(&derive_naming_key("prod")[..], expected.as_ref());
        assert_ne!(derive_naming_key("prod"), derive_naming_key("prod2"));
    }
}
