//! API keys and tenants. A tenant id is the first 16 hex characters of sha256(API key), as in
//! the Python API. Keys come from a mounted Secret file or an environment variable; with none
//! configured the API refuses to start.

use std::collections::HashSet;
use std::path::Path;

use sha2::{Digest, Sha256};

pub(crate) const ENV_KEYS: &str = "DEDUP2D_API_KEYS";
pub(crate) const ENV_KEYS_FILE: &str = "DEDUP2D_API_KEYS_FILE";

#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("cannot read API keys file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no API keys configured: set {ENV_KEYS_FILE} (a file with one key per line, e.g. a mounted Secret) or {ENV_KEYS} (comma-separated)")]
    NoKeys,
}

/// The accepted keys, held as sha256 digests (the plain keys are not kept in memory).
#[derive(Debug, Clone)]
pub struct ApiKeys {
    digests: HashSet<[u8; 32]>,
}

pub fn tenant_id(api_key: &str) -> String {
    hex::encode(Sha256::digest(api_key.as_bytes()))[..16].to_string()
}

impl ApiKeys {
    pub(crate) fn from_keys<I: IntoIterator<Item = String>>(
        keys: I,
    ) -> Result<Self, AuthConfigError> {
        let digests: HashSet<[u8; 32]> = keys
            .into_iter()
            .map(|k| k.trim().to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('#'))
            .map(|k| Sha256::digest(k.as_bytes()).into())
            .collect();
        if digests.is_empty() {
            return Err(AuthConfigError::NoKeys);
        }
        Ok(ApiKeys { digests })
    }

    /// Keys from `DEDUP2D_API_KEYS_FILE` (one per line, `#` comments) and `DEDUP2D_API_KEYS`.
    pub fn from_env() -> Result<Self, AuthConfigError> {
        let mut keys = Vec::new();
        if let Some(path) = std::env::var_os(ENV_KEYS_FILE) {
            let path = Path::new(&path);
            let text = std::fs::read_to_string(path).map_err(|source| AuthConfigError::File {
                path: path.display().to_string(),
                source,
            })?;
            keys.extend(text.lines().map(str::to_string));
        }
        if let Ok(v) = std::env::var(ENV_KEYS) {
            keys.extend(v.split(',').map(str::to_string));
        }
        Self::from_keys(keys)
    }

    /// The tenant of a presented key, if the key is accepted.
    pub(crate) fn tenant_of(&self, presented: &str) -> Option<String> {
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        self.digests
            .contains(&digest)
            .then(|| hex::encode(digest)[..16].to_string())
    }
}

/// `ADMIN_TOKEN` (the Python API's variable): the `X-Admin-Token` that may change tenant
/// configs. Held as a digest; with none configured, changes are refused (fail closed).
#[derive(Debug, Clone, Default)]
pub struct AdminToken(Option<[u8; 32]>);

pub const ENV_ADMIN_TOKEN: &str = "ADMIN_TOKEN";

/// Why an admin request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminRefusal {
    Missing,
    Invalid,
    NotConfigured,
}

impl AdminToken {
    pub fn new(token: Option<&str>) -> Self {
        AdminToken(
            token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
        )
    }

    pub fn from_env() -> Self {
        Self::new(std::env::var(ENV_ADMIN_TOKEN).ok().as_deref())
    }

    pub fn check(&self, presented: Option<&str>) -> Result<(), AdminRefusal> {
        let presented = presented.map(str::trim).filter(|p| !p.is_empty());
        let Some(expected) = self.0 else {
            return Err(AdminRefusal::NotConfigured);
        };
        let presented = presented.ok_or(AdminRefusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        (digest == expected)
            .then_some(())
            .ok_or(AdminRefusal::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_is_sha256_prefix() {
        // sha256("test") = 9f86d081884c7d65...
        assert_eq!(tenant_id("test"), "9f86d081884c7d65");
        let keys = ApiKeys::from_keys(["test".to_string(), "# comment".into(), "".into()]).unwrap();
        assert_eq!(keys.tenant_of("test").as_deref(), Some("9f86d081884c7d65"));
        assert_eq!(keys.tenant_of("nope"), None);
    }

    #[test]
    fn admin_token_checks() {
        let t = AdminToken::new(Some("s3cret"));
        assert_eq!(t.check(Some("s3cret")), Ok(()));
        assert_eq!(t.check(Some("other")), Err(AdminRefusal::Invalid));
        assert_eq!(t.check(None), Err(AdminRefusal::Missing));
        assert_eq!(
            AdminToken::new(Some(" ")).check(Some(" ")),
            Err(AdminRefusal::NotConfigured)
        );
    }

    #[test]
    fn no_keys_is_an_error() {
        let err = ApiKeys::from_keys(["  ".to_string(), "#x".into()]).unwrap_err();
        assert!(err.to_string().contains("DEDUP2D_API_KEYS_FILE"));
    }
}
