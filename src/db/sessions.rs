//! Queries of admin browser sessions and OIDC sign-ins in progress (`admin_sessions`,
//! `login_flows`; see `crate::sessions`).

use chrono::{DateTime, Utc};

use super::{Db, DbError};
use crate::on_pool;

/// A stored session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id_hash: String,
    pub subject: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// JSON array of role names.
    pub roles: String,
    pub method: String,
    pub credential_hash: Option<String>,
    pub csrf_token: String,
    pub id_token: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

pub async fn insert_session(db: &Db, row: &SessionRow) -> Result<(), DbError> {
    on_pool!(db, |p| sqlx::query(
        "INSERT INTO admin_sessions (id_hash, subject, name, email, roles, method, credential_hash,
             csrf_token, id_token, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
    )
    .bind(&row.id_hash)
    .bind(&row.subject)
    .bind(&row.name)
    .bind(&row.email)
    .bind(&row.roles)
    .bind(&row.method)
    .bind(&row.credential_hash)
    .bind(&row.csrf_token)
    .bind(&row.id_token)
    .bind(row.created_at)
    .bind(row.expires_at)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// The session named by `id_hash` if it has not expired at `now`.
pub async fn find_session(
    db: &Db,
    id_hash: &str,
    now: DateTime<Utc>,
) -> Result<Option<SessionRow>, DbError> {
    Ok(on_pool!(db, |p| {
        sqlx::query_as::<_, SessionRow>(
        "SELECT id_hash, subject, name, email, roles, method, credential_hash, csrf_token, id_token,
                created_at, expires_at
         FROM admin_sessions WHERE id_hash = $1 AND expires_at > $2"
    )
    .bind(id_hash)
    .bind(now)
    .fetch_optional(p)
    .await
    })?)
}

/// Ends a session; returns its row if there was one.
pub async fn delete_session(db: &Db, id_hash: &str) -> Result<Option<SessionRow>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, SessionRow>(
        "DELETE FROM admin_sessions WHERE id_hash = $1
         RETURNING id_hash, subject, name, email, roles, method, credential_hash, csrf_token,
                   id_token, created_at, expires_at"
    )
    .bind(id_hash)
    .fetch_optional(p)
    .await)?)
}

/// Forgets sessions that expired and sign-ins started before `flows_before`.
pub async fn purge(
    db: &Db,
    now: DateTime<Utc>,
    flows_before: DateTime<Utc>,
) -> Result<u64, DbError> {
    let sessions = on_pool!(db, |p| sqlx::query(
        "DELETE FROM admin_sessions WHERE expires_at <= $1"
    )
    .bind(now)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(sessions + purge_flows(db, flows_before).await?)
}

/// Forgets sign-ins started before `before`; how many.
pub async fn purge_flows(db: &Db, before: DateTime<Utc>) -> Result<u64, DbError> {
    Ok(on_pool!(db, |p| sqlx::query(
        "DELETE FROM login_flows WHERE created_at < $1"
    )
    .bind(before)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?)
}

/// Sign-ins waiting for their callback (expired ones included until purged).
pub async fn count_flows(db: &Db) -> Result<i64, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM login_flows"
    )
    .fetch_one(p)
    .await)?)
}

/// Sign-ins waiting for their callback that `client_scope` started (expired ones included until
/// purged).
pub async fn count_flows_from(db: &Db, client_scope: &str) -> Result<i64, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM login_flows WHERE client_scope = $1"
    )
    .bind(client_scope)
    .fetch_one(p)
    .await)?)
}

/// Forgets the `count` oldest sign-ins in progress; how many.
pub async fn drop_oldest_flows(db: &Db, count: i64) -> Result<u64, DbError> {
    Ok(on_pool!(db, |p| sqlx::query(
        "DELETE FROM login_flows WHERE state_hash IN
             (SELECT state_hash FROM login_flows ORDER BY created_at, state_hash LIMIT $1)"
    )
    .bind(count)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?)
}

/// Forgets the `count` oldest sign-ins in progress that `client_scope` started; how many.
pub async fn drop_oldest_flows_from(
    db: &Db,
    client_scope: &str,
    count: i64,
) -> Result<u64, DbError> {
    Ok(on_pool!(db, |p| sqlx::query(
        "DELETE FROM login_flows WHERE state_hash IN
             (SELECT state_hash FROM login_flows WHERE client_scope = $1
              ORDER BY created_at, state_hash LIMIT $2)"
    )
    .bind(client_scope)
    .bind(count)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?)
}

/// An OIDC sign-in waiting for its callback.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LoginFlowRow {
    pub state_hash: String,
    pub pkce_verifier: String,
    pub nonce: String,
    pub redirect_uri: String,
    pub return_to: String,
    pub created_at: DateTime<Utc>,
    /// Who started it (`crate::http::client_addr::ClientScope`).
    pub client_scope: String,
}

pub async fn insert_flow(db: &Db, row: &LoginFlowRow) -> Result<(), DbError> {
    on_pool!(db, |p| sqlx::query(
        "INSERT INTO login_flows (state_hash, pkce_verifier, nonce, redirect_uri, return_to,
             created_at, client_scope)
         VALUES ($1, $2, $3, $4, $5, $6, $7)"
    )
    .bind(&row.state_hash)
    .bind(&row.pkce_verifier)
    .bind(&row.nonce)
    .bind(&row.redirect_uri)
    .bind(&row.return_to)
    .bind(row.created_at)
    .bind(&row.client_scope)
    .execute(p)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Takes (deletes and returns) the sign-in named by `state_hash`: a state works once.
pub async fn take_flow(db: &Db, state_hash: &str) -> Result<Option<LoginFlowRow>, DbError> {
    Ok(on_pool!(db, |p| sqlx::query_as::<_, LoginFlowRow>(
        "DELETE FROM login_flows WHERE state_hash = $1
         RETURNING state_hash, pkce_verifier, nonce, redirect_uri, return_to, created_at,
                   client_scope"
    )
    .bind(state_hash)
    .fetch_optional(p)
    .await)?)
}
