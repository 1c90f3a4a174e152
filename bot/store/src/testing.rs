//! Hooks for tests and benchmarks (feature `testing`): the pools behind the store, for
//! tests that act around it (tampering), and the storage floor the steps benchmark
//! compares a step with.

use crate::{Pool, Result, Store};
use sqlx::{PgPool, SqlitePool};

impl Store {
    /// Creates the scratch table [`Store::bare_insert_commit`] writes to.
    pub async fn bare_insert_setup(&self) -> Result<()> {
        on_pool!(self, p => sqlx::query("CREATE TABLE IF NOT EXISTS bench_floor (k BIGINT NOT NULL, v TEXT NOT NULL)").execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// The underlying SQLite pool, for tests that must reach past the store (tampering).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(p) => Some(p),
            Pool::Postgres(_) => None,
        }
    }

    /// The underlying PostgreSQL pool, for tests that must reach past the store.
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Postgres(p) => Some(p),
            Pool::Sqlite(_) => None,
        }
    }

    /// The storage floor for benchmarks: one transaction of three small inserts into a
    /// scratch table, committed.
    pub async fn bare_insert_commit(&self, i: i64) -> Result<()> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for j in 0..3 {
                sqlx::query("INSERT INTO bench_floor (k, v) VALUES ($1, $2)").bind(i * 3 + j).bind("floor").execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }
}
