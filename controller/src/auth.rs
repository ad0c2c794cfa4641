//! API tokens and who is calling.
//!
//! Tokens look like `pdk_<token_id>_<secret>`; only the SHA-256 of the whole
//! token is stored, so a store dump never reveals a usable credential.

use chrono::Utc;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;

use crate::model::{Role, TokenRecord};
use crate::store::{Store, StoreError};

/// A request extension set by the RPC layer once it authenticated the caller's token, so the
/// handler does not look the token up a second time.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Principal);

/// The authenticated caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Admin { token_id: String },
    Tenant { tenant: String, token_id: String },
    Billing { token_id: String },
}

impl Principal {
    /// A short description for logs and the audit trail.
    pub fn actor(&self) -> String {
        match self {
            Self::Admin { token_id } => format!("admin:{token_id}"),
            Self::Tenant { tenant, token_id } => format!("tenant:{tenant}:{token_id}"),
            Self::Billing { token_id } => format!("billing:{token_id}"),
        }
    }
}

/// Why a caller was not let in.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send metadata `authorization: Bearer <token>`")]
    Missing,
    #[error("malformed authorization metadata: expected `Bearer <token>`")]
    Malformed,
    #[error("invalid token")]
    Invalid,
    #[error("token has been revoked")]
    Revoked,
    #[error("token has expired")]
    Expired,
    #[error("node authentication failed: {0}")]
    NodeCertificate(&'static str),
    #[error(
        "the certificate of node {node} was revoked when the node was removed at {removed_at}; \
         enrol the node again with the join token (delete the agent's tls directory first)"
    )]
    NodeRevoked { node: String, removed_at: String },
    #[error("this operation needs {needed}; the token is for {actual}")]
    Forbidden {
        needed: &'static str,
        actual: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A freshly minted token: the secret (shown once) and what to store.
pub struct NewToken {
    pub secret: String,
    pub hash: String,
    pub record: TokenRecord,
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

/// SHA-256 of a token, hex encoded: the store key.
pub fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Mints a token for `role` (and `tenant` for tenant tokens).
pub fn mint(
    role: Role,
    tenant: Option<String>,
    description: String,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> NewToken {
    let token_id = random_hex(4);
    let secret = format!("pdk_{token_id}_{}", random_hex(24));
    NewToken {
        hash: hash_token(&secret),
        record: TokenRecord {
            token_id,
            role,
            tenant,
            description,
            created_at: Utc::now(),
            expires_at,
            revoked: false,
        },
        secret,
    }
}

/// A random shared secret for node enrolment.
pub fn mint_join_token() -> String {
    format!("pdk_join_{}", random_hex(24))
}

/// Extracts the bearer token from request metadata.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
    let value = value.to_str().map_err(|_| AuthError::Malformed)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::Malformed)?;
    Ok(token.trim())
}

/// Resolves the caller of a request from its bearer token.
pub fn authenticate(store: &dyn Store, metadata: &MetadataMap) -> Result<Principal, AuthError> {
    let token = bearer(metadata)?;
    let record = store
        .get_token(&hash_token(token))?
        .ok_or(AuthError::Invalid)?;
    if record.revoked {
        return Err(AuthError::Revoked);
    }
    if record.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err(AuthError::Expired);
    }
    let token_id = record.token_id;
    Ok(match record.role {
        Role::Admin => Principal::Admin { token_id },
        Role::Billing => Principal::Billing { token_id },
        Role::Tenant => Principal::Tenant {
            tenant: record.tenant.ok_or(AuthError::Invalid)?,
            token_id,
        },
    })
}

/// Constant-time comparison, for the node join token.
pub fn secrets_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_hash_to_their_key_and_differ() {
        let a = mint(Role::Admin, None, String::new(), None);
        let b = mint(Role::Admin, None, String::new(), None);
        assert_ne!(a.secret, b.secret);
        assert_eq!(hash_token(&a.secret), a.hash);
        assert!(a.secret.starts_with(&format!("pdk_{}_", a.record.token_id)));
        assert!(!a.hash.contains(&a.secret));
    }

    #[test]
    fn bearer_parsing() {
        let mut metadata = MetadataMap::new();
        assert!(matches!(bearer(&metadata), Err(AuthError::Missing)));
        metadata.insert("authorization", "Basic abc".parse().expect("ascii"));
        assert!(matches!(bearer(&metadata), Err(AuthError::Malformed)));
        metadata.insert("authorization", "Bearer pdk_x".parse().expect("ascii"));
        assert_eq!(bearer(&metadata).expect("bearer"), "pdk_x");
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("abc", "abc"));
        assert!(!secrets_equal("abc", "abd"));
        assert!(!secrets_equal("abc", "abcd"));
    }
}
