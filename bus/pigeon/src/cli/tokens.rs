//! `pigeon tokens`: create, list and revoke API tokens directly in the store.

use anyhow::bail;

use pigeon_bus::store::{NewToken, Store};
use pigeon_bus::token::{self, Role};

/// Creates a token and returns its secret value.
pub async fn create(store: &dyn Store, name: &str, role: Role, actor: &str) -> anyhow::Result<String> {
    if let Err(e) = token::validate_name(name) {
        bail!(e);
    }
    let value = token::generate();
    store.create_token(&NewToken { name: name.into(), role, hash: token::hash(&value) }, actor).await?;
    Ok(value)
}

/// Lists tokens, one per line.
pub async fn list(store: &dyn Store) -> anyhow::Result<String> {
    let mut out = format!("{:<24} {:<9} {}\n", "NAME", "ROLE", "STATE");
    for t in store.tokens().await? {
        let state = if t.revoked_at.is_some() { "revoked" } else { "active" };
        out.push_str(&format!("{:<24} {:<9} {state}\n", t.name, t.role.as_str()));
    }
    Ok(out)
}

/// Revokes a token.
pub async fn revoke(store: &dyn Store, name: &str, actor: &str) -> anyhow::Result<()> {
    if !store.revoke_token(name, actor).await? {
        bail!("no active token named {name:?}");
    }
    Ok(())
}
