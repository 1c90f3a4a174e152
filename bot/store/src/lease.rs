//! Leases: one process at a time holds a chat connection.

use crate::{Pool, Result, Store};

/// A lease on something only one process may do at a time, such as holding a chat
/// connection. On PostgreSQL it is a session advisory lock on a connection of its own: when
/// the holder dies, its connection ends and the lock is free for another process at once.
/// SQLite stores serve one process, which always holds every lease.
pub struct Lease {
    name: String,
    conn: Option<sqlx::PgConnection>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("name", &self.name).finish()
    }
}

impl Lease {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the lease is still held (its connection is alive).
    pub async fn check(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
        }
    }
}

/// The advisory lock key for a lease name: stable across processes and versions.
fn lease_key(name: &str) -> i64 {
    let hex = wavelet_core::engine::source_hash(&format!("wavelet:lease:{name}"));
    u64::from_str_radix(&hex[..16], 16).unwrap_or(0) as i64
}

impl Store {
    /// Takes the lease `name` if no other process holds it.
    pub async fn try_lease(&self, name: &str) -> Result<Option<Lease>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(Some(Lease { name: name.to_string(), conn: None }));
        };
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options()).await?;
        let got: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(lease_key(name)).fetch_one(&mut conn).await?;
        if got {
            Ok(Some(Lease { name: name.to_string(), conn: Some(conn) }))
        } else {
            let _ = conn.close().await;
            Ok(None)
        }
    }
}
