//! SPIFFE identities (<https://github.com/spiffe/spiffe/blob/main/standards/SPIFFE-ID.md>).
//! A Weft workload's identity is its service account:
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// The SPIFFE standard caps an ID at 2048 bytes so it fits in a URI SAN everywhere.
const MAX_ID_LEN: usize = 2048;
/// Trust domains are DNS-like names; the standard caps them at 255 bytes.
const MAX_TRUST_DOMAIN_LEN: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("SPIFFE ID {0:?} does not start with spiffe://")]
    Scheme(String),
    #[error("SPIFFE ID {id:?} has an invalid trust domain: {reason}")]
    TrustDomain { id: String, reason: &'static str },
    #[error("SPIFFE ID {id:?} has an invalid path: {reason}")]
    Path { id: String, reason: &'static str },
    #[error("SPIFFE ID is {0} bytes long; the maximum is 2048")]
    TooLong(usize),
}

/// A validated SPIFFE ID. Compared and hashed by its text, which is canonical once valid.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    text: String,
    /// Where the path starts in `text` (after the trust domain).
    path_start: usize,
}

impl SpiffeId {
    /// The identity of a Kubernetes service account.
    pub fn for_service_account(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn trust_domain(&self) -> &str {
        &self.text["spiffe://".len()..self.path_start]
    }

    /// The path, starting with `/`, or empty.
    pub fn path(&self) -> &str {
        &self.text[self.path_start..]
    }

    /// `(namespace, service account)` when the ID has Weft's `/ns/<ns>/sa/<sa>` form.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let mut segments = self.path().strip_prefix('/')?.split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }
}

impl FromStr for SpiffeId {
    type Err = IdentityError;

    fn from_str(text: &str) -> Result<Self, IdentityError> {
        if text.len() > MAX_ID_LEN {
            return Err(IdentityError::TooLong(text.len()));
        }
        let rest = text
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::Scheme(text.to_owned()))?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let trust_domain = &rest[..td_len];
        let td_err = |reason| IdentityError::TrustDomain {
            id: text.to_owned(),
            reason,
        };
        if trust_domain.is_empty() {
            return Err(td_err("it is empty"));
        }
        if trust_domain.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(td_err("it is longer than 255 bytes"));
        }
        if !trust_domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(td_err(
                "only lowercase letters, digits, '-', '.' and '_' are allowed",
            ));
        }
        let path = &rest[td_len..];
        let path_err = |reason| IdentityError::Path {
            id: text.to_owned(),
            reason,
        };
        if !path.is_empty() {
            for segment in path[1..].split('/') {
                match segment {
                    "" => return Err(path_err("it has an empty segment or a trailing '/'")),
                    "." | ".." => return Err(path_err("'.' and '..' segments are not allowed")),
                    s if !s
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) =>
                    {
                        return Err(path_err(
                            "only letters, digits, '-', '.' and '_' are allowed in segments",
                        ))
                    }
                    _ => {}
                }
            }
        }
        Ok(SpiffeId {
            text: text.to_owned(),
            path_start: "spiffe://".len() + td_len,
        })
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_round_trip() {
        let id = SpiffeId::for_service_account("cluster.local", "shop", "orders").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/orders");
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.path(), "/ns/shop/sa/orders");
        assert_eq!(id.service_account(), Some(("shop", "orders")));
        assert_eq!(id.to_string().parse::<SpiffeId>().unwrap(), id);
    }

    #[test]
    fn other_shapes_are_valid_but_not_service_accounts() {
        let td_only: SpiffeId = "spiffe://example.org".parse().unwrap();
        assert_eq!(td_only.path(), "");
        assert_eq!(td_only.service_account(), None);
        let other: SpiffeId = "spiffe://example.org/ns/a/sa/b/extra".parse().unwrap();
        assert_eq!(other.service_account(), None);
    }

    #[test]
    fn invalid_ids_say_why() {
        let cases = [
            ("http://example.org/ns/a/sa/b", "spiffe://"),
            ("spiffe:///ns/a/sa/b", "empty"),
            ("spiffe://Example.org/ns/a", "lowercase"),
            ("spiffe://example.org/ns//sa/b", "empty segment"),
            ("spiffe://example.org/ns/a/", "trailing"),
            ("spiffe://example.org/ns/../sa/b", "'..'"),
            ("spiffe://example.org/ns/a b", "segments"),
            ("spiffe://user@example.org/x", "lowercase"),
        ];
        for (text, reason) in cases {
            let err = text.parse::<SpiffeId>().unwrap_err().to_string();
            assert!(err.contains(reason), "{text}: {err}");
        }
        let long = format!("spiffe://a/{}", "x".repeat(MAX_ID_LEN));
        assert!(matches!(
            long.parse::<SpiffeId>(),
            Err(IdentityError::TooLong(_))
        ));
    }

    #[test]
    fn serde_validates() {
        let ok: SpiffeId = serde_json::from_str("\"spiffe://td/ns/a/sa/b\"").unwrap();
        assert_eq!(ok.service_account(), Some(("a", "b")));
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://TD/x\"").is_err());
    }
}
