//! API tokens (their hashes), and the audit log every mutation writes to.

use async_trait::async_trait;

use super::sql::{Dialect, Done, SqlStore};
use super::{now_ms, StoreError};
use pigeon_core::token::Role;

/// A token to store: its hash, never its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewToken {
    /// Unique name; it names the actor in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the value, hex.
    pub hash: String,
}

/// A stored token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    /// Name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// When it was created (unix ms).
    pub created_at: i64,
    /// Who created it.
    pub created_by: String,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// One recorded mutation: the store's row, and what `GET /api/v1/audit` lists.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = AuditView)]
pub struct AuditEntry {
    /// Increasing id.
    pub id: i64,
    /// When (unix ms).
    pub at: i64,
    /// Who: a token name, or the local tool that acted.
    pub actor: String,
    /// What, e.g. `pigeon.update`.
    pub action: String,
    /// On what, e.g. `pigeon/gift-progress`.
    pub target: String,
    /// The thing before, if it existed.
    pub before: Option<serde_json::Value>,
    /// The thing after, if it still exists.
    pub after: Option<serde_json::Value>,
}

/// Tokens and the audit log. Token changes are audited in their transaction.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new token; a name is never reused.
    async fn create_token(&self, token: &NewToken, actor: &str) -> Result<(), StoreError>;

    /// The unrevoked token with this hash.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError>;

    /// Every token, revoked ones included, by name.
    async fn tokens(&self) -> Result<Vec<Token>, StoreError>;

    /// Revokes a token; returns whether an active one had that name.
    async fn revoke_token(&self, name: &str, actor: &str) -> Result<bool, StoreError>;

    /// Audit entries older than `before_id` (all when `None`), newest first.
    async fn audit(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;

    /// Records a decision that is not itself a change (an override, say) in the audit log.
    async fn audit_note(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        note: &serde_json::Value,
    ) -> Result<(), StoreError>;
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    name: String,
    role: String,
    created_at: i64,
    created_by: String,
    revoked_at: Option<i64>,
}

impl TryFrom<TokenRow> for Token {
    type Error = StoreError;
    fn try_from(row: TokenRow) -> Result<Self, StoreError> {
        let role = row.role.parse().map_err(StoreError::Corrupt)?;
        Ok(Token {
            name: row.name,
            role,
            created_at: row.created_at,
            created_by: row.created_by,
            revoked_at: row.revoked_at,
        })
    }
}

const SELECT_TOKEN_BY_HASH: &str = "SELECT name, role, created_at, created_by, revoked_at FROM tokens \
    WHERE hash = ? AND revoked_at IS NULL";
const SELECT_TOKENS: &str = "SELECT name, role, created_at, created_by, revoked_at FROM tokens ORDER BY name";

#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    at: i64,
    actor: String,
    action: String,
    target: String,
    before_json: Option<String>,
    after_json: Option<String>,
}

impl TryFrom<AuditRow> for AuditEntry {
    type Error = StoreError;
    fn try_from(row: AuditRow) -> Result<Self, StoreError> {
        let parse = |text: Option<String>| {
            text.map(|t| serde_json::from_str(&t))
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("audit {}: {e}", row.id)))
        };
        Ok(AuditEntry {
            id: row.id,
            at: row.at,
            before: parse(row.before_json)?,
            after: parse(row.after_json)?,
            actor: row.actor,
            action: row.action,
            target: row.target,
        })
    }
}

#[async_trait]
impl<DB: Dialect> TokenStore for SqlStore<DB> {
    async fn create_token(&self, token: &NewToken, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let existing: Option<(String,)> = sqlx::query_as("SELECT name FROM tokens WHERE name = ?")
            .bind(&token.name)
            .fetch_optional(&mut *tx)
            .await?;
        if existing.is_some() {
            return Err(StoreError::Conflict(format!(
                "a token named {:?} exists (names are never reused)",
                token.name
            )));
        }
        sqlx::query("INSERT INTO tokens (name, role, hash, created_at, created_by) VALUES (?, ?, ?, ?, ?)")
            .bind(&token.name)
            .bind(token.role.as_str())
            .bind(&token.hash)
            .bind(now_ms())
            .bind(actor)
            .execute(&mut *tx)
            .await?;
        let after = serde_json::json!({ "name": token.name, "role": token.role });
        Self::audit_entry(
            now_ms(),
            actor,
            "token.create",
            format!("token/{}", token.name),
            None,
            Some(after.to_string()),
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<Token>, StoreError> {
        let row: Option<TokenRow> =
            sqlx::query_as(SELECT_TOKEN_BY_HASH).bind(hash).fetch_optional(&self.pool).await?;
        row.map(TryInto::try_into).transpose()
    }

    async fn tokens(&self) -> Result<Vec<Token>, StoreError> {
        let rows: Vec<TokenRow> = sqlx::query_as(SELECT_TOKENS).fetch_all(&self.pool).await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn revoke_token(&self, name: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query("UPDATE tokens SET revoked_at = ? WHERE name = ? AND revoked_at IS NULL")
            .bind(now_ms())
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let revoked = done.rows_affected() > 0;
        if revoked {
            Self::audit_entry(now_ms(), actor, "token.revoke", format!("token/{name}"), None, None)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    async fn audit(&self, before_id: Option<i64>, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "SELECT id, at, actor, action, target, before_json, after_json FROM audit \
             WHERE id < ? ORDER BY id DESC LIMIT ?",
        )
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    async fn audit_note(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        note: &serde_json::Value,
    ) -> Result<(), StoreError> {
        Self::audit_entry(now_ms(), actor, action, target.to_owned(), None, Some(note.to_string()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
