//! Opening a store: the SQLite file's settings, PostgreSQL's migrations (only when the
//! database does not hold exactly this build's), the grants that let a role run Wavelet
//! without the right to change the ledger, and the schedules table kept in line with the
//! configuration. Also: store URLs made fit for logs.

use crate::{Error, Pool, Result, Store};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use std::str::FromStr;
use std::time::Duration;
use wavelet_core::Millis;

/// The page size of a SQLite file Wavelet creates. A group commit changes rows all over a
/// few tables (each run, and the indexes keyed by run, event and message), and writes every
/// page it changed to the write-ahead log once per commit: with larger pages it changes
/// fewer of them, and makes fewer writes. 16 KiB measured +3.5 to +9 % steps/s over 4 KiB
/// (32 KiB the same as 16, 64 KiB no better than 4; BENCHMARKS.md, 2026-12-06, third
/// section). A file made before keeps its page size (see README.md to change it).
const SQLITE_PAGE_SIZE: u32 = 16_384;

/// The size, in bytes, the SQLite write-ahead log is cut back to after it has grown past it
/// (`journal_size_limit`).
pub const SQLITE_LOG_LIMIT: u64 = 64 * 1024 * 1024;

impl Store {
    /// Opens (creating a SQLite file if needed) and migrates the store at `url`.
    pub async fn open(url: &str) -> Result<Store> {
        let store = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|_| Error::BadUrl(url.to_string()))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // A commit is on disk before it returns (the WAL is synced), so what a
                // platform was told is taken survives a power cut as well as a crash.
                // NORMAL would not sync at commit, and a power cut could lose the last
                // commits. Group commit makes the cost small (BENCHMARKS.md).
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
                // 64 MiB of page cache: group commits touch many pages of a few tables.
                .pragma("cache_size", "-65536")
                // After the write-ahead log has grown large (a migration's transaction, or
                // readers holding checkpoints back), the first commit that starts it again
                // once it has been checkpointed cuts it back to this, instead of it keeping
                // its largest size until Wavelet stops. Above what it reaches in normal
                // running: 1,000 pages between automatic checkpoints (16 MiB at 16 KiB
                // pages), plus the last commit's pages.
                .pragma("journal_size_limit", SQLITE_LOG_LIMIT.to_string())
                .page_size(SQLITE_PAGE_SIZE);
            // One connection for an in-memory database (each would be its own database);
            // a few for a file, of which one writes at a time (BEGIN IMMEDIATE).
            let max = if url.contains(":memory:") || url.contains("mode=memory") { 1 } else { 4 };
            let file = opts.get_filename().to_path_buf();
            let pool = SqlitePoolOptions::new().max_connections(max).connect_with(opts).await?;
            sqlx::migrate!("../../migrations/sqlite").run(&pool).await?;
            // What is in it is about children: readable by its owner only.
            #[cfg(unix)]
            for suffix in ["", "-wal", "-shm"] {
                use std::os::unix::fs::PermissionsExt;
                let mut f = file.clone().into_os_string();
                f.push(suffix);
                if std::path::Path::new(&f).exists() {
                    let _ = std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600));
                }
            }
            Store::on(Pool::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url).map_err(|_| Error::BadUrl(redact(url)))?;
            let pool = PgPoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(opts)
                .await?;
            // Migrating needs the right to change the schema, which an application role
            // should not have (see [`Store::grant`]): skipped when there is nothing to do.
            let migrator = sqlx::migrate!("../../migrations/postgres");
            match pg_schema(&pool, &migrator).await {
                Schema::UpToDate => {}
                // Old and new must not run side by side (README, upgrading).
                Schema::Newer(v) => {
                    return Err(Error::Refused(format!(
                        "the database holds migration {v}, which this Wavelet does not know (a newer Wavelet \
                         migrated it?); run that version, or a later one"
                    )));
                }
                Schema::Other => migrator.run(&pool).await.map_err(|e| match &e {
                    sqlx::migrate::MigrateError::Execute(d) | sqlx::migrate::MigrateError::ExecuteMigration(d, _)
                        if insufficient_privilege(d) =>
                    {
                        Error::Refused(
                            "the database's schema is not (yet) the one this Wavelet needs, and this database role \
                             may not change it: run `wavelet store grant ROLE` once as the database's owner, which \
                             brings the schema up to date (README, \"PostgreSQL roles\")"
                                .into(),
                        )
                    }
                    _ => Error::Migrate(e),
                })?,
            }
            Store::on(Pool::Postgres(pool))
        } else {
            return Err(Error::BadUrl(redact(url)));
        };
        Ok(store)
    }

    /// PostgreSQL: lets `role` run Wavelet on this store without the rights to change what
    /// the ledger holds. Run as the database's owner (who has already migrated it, in
    /// [`Store::open`]). The role may read and write the working tables (runs, outbox,
    /// timers…); on the chain it may only read and append (`ledger`), read, append and
    /// erase content (`ledger_content`: the erasure's three columns only, and the trigger
    /// still allows nothing but an erasure) and move the head (`ledger_head`). It may not
    /// UPDATE, DELETE or TRUNCATE the chain, nor disable its triggers (only an owner can).
    /// Returns the statements run.
    pub async fn grant(&self, role: &str) -> Result<Vec<String>> {
        let Pool::Postgres(pool) = &self.pool else {
            return Err(Error::Refused(
                "grants are for PostgreSQL; a SQLite store is a file, readable and writable by its owner only".into(),
            ));
        };
        if role.is_empty() || !role.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
            return Err(Error::Refused(format!(
                "`{role}` is not a role name Wavelet grants to; use lowercase letters, digits and `_` (e.g. wavelet_app)"
            )));
        }
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_roles WHERE rolname = $1").bind(role).fetch_optional(pool).await?;
        if exists.is_none() {
            return Err(Error::Refused(format!(
                "there is no database role `{role}`; create it first (CREATE ROLE {role} LOGIN PASSWORD '…')"
            )));
        }
        // Wavelet's tables are where this connection finds its ledger; their owner, and
        // what the role could do beyond any grant.
        type Facts = (String, String, bool, bool, bool, bool, bool, bool);
        let facts: Option<Facts> = sqlx::query_as(
            "SELECT n.nspname::text, pg_get_userbyid(c.relowner)::text, \
                    pg_has_role(current_user, c.relowner, 'USAGE'), $1 = current_user::text, \
                    r.rolsuper, r.rolcreaterole, pg_has_role($1, c.relowner, 'MEMBER'), \
                    has_schema_privilege($1, n.oid, 'CREATE') \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, pg_roles r \
             WHERE c.oid = to_regclass('ledger') AND r.rolname = $1",
        )
        .bind(role)
        .fetch_optional(pool)
        .await?;
        let Some((schema, owner, granter_owns, is_owner, superuser, creates_roles, member, creates)) = facts else {
            return Err(Error::Refused(
                "no Wavelet ledger on this connection's search path; connect to Wavelet's database (as its owner) \
                 with the search path it was migrated with"
                    .into(),
            ));
        };
        if !granter_owns {
            return Err(Error::Refused(format!(
                "Wavelet's tables belong to `{owner}`; run `wavelet store grant {role}` connected as `{owner}`"
            )));
        }
        let too_strong = if is_owner {
            Some("it is the role running this command, which owns the tables")
        } else if superuser {
            Some("it is a superuser, which no grant limits")
        } else if member {
            Some("it is a member of the role that owns the tables")
        } else if creates_roles {
            Some("it may create roles, and so make itself a member of the owner's")
        } else if creates {
            Some(
                "it may create tables in the schema (on PostgreSQL 14 and older everyone may: REVOKE CREATE ON SCHEMA public FROM PUBLIC)",
            )
        } else {
            None
        };
        if let Some(why) = too_strong {
            return Err(Error::Refused(format!(
                "`{role}` cannot be held to what the grants allow: {why}; grant to a role of its own (CREATE ROLE \
                 wavelet_app LOGIN PASSWORD '…')"
            )));
        }
        let statements = grant_sql(&format!("\"{role}\""), &format!("\"{}\"", schema.replace('"', "\"\"")));
        let mut tx = pool.begin().await?;
        for sql in &statements {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone())).execute(&mut *tx).await.map_err(|e| {
                if insufficient_privilege(&e) {
                    Error::Refused(format!(
                        "this database role may not grant on Wavelet's tables; run `wavelet store grant {role}` as \
                         the role that owns them (the one that created the schema)"
                    ))
                } else {
                    Error::Database(e)
                }
            })?;
        }
        tx.commit().await?;
        Ok(statements)
    }

    /// Brings the schedules table in line with the configuration: new schedules (and ones
    /// whose expression, workflow or group changed) are next due at their first time after
    /// `now`; unchanged ones keep their due time, so a restart neither skips nor repeats
    /// one; schedules no longer configured are removed.
    pub async fn sync_schedules(&self, schedules: &[wavelet_core::config::Schedule], now: Millis) -> Result<()> {
        let ids: Vec<String> = schedules.iter().map(|s| s.id.clone()).collect();
        let existing: Vec<String> =
            on_pool!(self, p => sqlx::query_scalar("SELECT id FROM schedules").fetch_all(p).await)?;
        for gone in existing.iter().filter(|id| !ids.contains(id)) {
            on_pool!(self, p => sqlx::query("DELETE FROM schedules WHERE id = $1").bind(gone).execute(p).await.map(|r| r.rows_affected()))?;
        }
        for s in schedules {
            let next = s.cron.next_after(now).map(|m| m.0);
            on_pool!(self, p => sqlx::query(
                "INSERT INTO schedules (id, cron, workflow, group_id, next_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (id) DO UPDATE SET cron = excluded.cron, workflow = excluded.workflow, \
                 group_id = excluded.group_id, next_at = excluded.next_at \
                 WHERE schedules.cron <> excluded.cron OR schedules.workflow <> excluded.workflow \
                 OR schedules.group_id <> excluded.group_id")
                .bind(&s.id).bind(s.cron.to_string()).bind(&s.workflow).bind(&s.group).bind(next)
                .execute(p).await.map(|r| r.rows_affected()))?;
        }
        Ok(())
    }
}

/// A store URL fit for a log or an error: the password, if any, replaced.
pub fn redact(url: &str) -> String {
    let (url, query) = match url.split_once('?') {
        Some((u, q)) => (u, Some(q)),
        None => (url, None),
    };
    let base = redact_credentials(url);
    match query {
        None => base,
        Some(q) => {
            let kept: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.to_ascii_lowercase().contains("password") => format!("{k}=***"),
                    _ => kv.to_string(),
                })
                .collect();
            format!("{base}?{}", kept.join("&"))
        }
    }
}

/// What the database's migrations table says of its schema, against this build's.
enum Schema {
    /// Exactly this build's migrations, each applied whole and unchanged: opening the
    /// store needs no right to change the schema.
    UpToDate,
    /// A migration this build does not know: a newer Wavelet migrated it.
    Newer(i64),
    /// Behind, a failed or edited migration, or nothing readable: for the migrator, which
    /// applies what is missing or says what is wrong.
    Other,
}

async fn pg_schema(pool: &PgPool, migrator: &sqlx::migrate::Migrator) -> Schema {
    let Ok(applied) =
        sqlx::query_as::<_, (i64, Vec<u8>, bool)>("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(pool)
            .await
    else {
        return Schema::Other;
    };
    let known: Vec<&sqlx::migrate::Migration> =
        migrator.iter().filter(|m| !m.migration_type.is_down_migration()).collect();
    if let Some((v, _, _)) = applied.iter().find(|(v, _, _)| !known.iter().any(|m| m.version == *v)) {
        return Schema::Newer(*v);
    }
    let whole = applied.len() == known.len()
        && known.iter().all(|m| applied.iter().any(|(v, c, ok)| *ok && *v == m.version && c[..] == m.checksum[..]));
    if whole { Schema::UpToDate } else { Schema::Other }
}

/// PostgreSQL's "insufficient privilege" (42501).
fn insufficient_privilege(e: &sqlx::Error) -> bool {
    e.as_database_error().and_then(|d| d.code()).as_deref() == Some("42501")
}

/// The working tables: the application reads and writes them freely.
const WORKING_TABLES: &[&str] = &[
    "inbox",
    "scripts",
    "runs",
    "cases",
    "timers",
    "outbox",
    "counters",
    "escalations",
    "schedules",
    "ack_waits",
    "direct_rooms",
];

/// What [`Store::grant`] runs for `role` and on the tables in `schema` (both quoted
/// identifiers). Revokes first, so granting again after an upgrade leaves exactly
/// this.
fn grant_sql(role: &str, schema: &str) -> Vec<String> {
    let q = |tables: &[&str]| tables.iter().map(|t| format!("{schema}.{t}")).collect::<Vec<_>>().join(", ");
    let working = q(WORKING_TABLES);
    let (ledger, content, head, migrations) =
        (q(&["ledger"]), q(&["ledger_content"]), q(&["ledger_head"]), q(&["_sqlx_migrations"]));
    vec![
        format!("REVOKE ALL ON {working}, {ledger}, {content}, {head}, {migrations} FROM {role}"),
        format!("GRANT USAGE ON SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {working} TO {role}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"),
        format!("GRANT SELECT, INSERT ON {ledger}, {content} TO {role}"),
        format!("GRANT UPDATE (content, erased_at, erasure_reason) ON {content} TO {role}"),
        format!("GRANT SELECT, UPDATE ON {head} TO {role}"),
        format!("GRANT SELECT ON {migrations} TO {role}"),
    ]
}

fn redact_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***@{}", &url[..s], &url[at + 1..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_passwords_wherever_they_are() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact("postgres://u@h/db?password=hunter2&sslmode=require"),
            "postgres://u@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact("postgres://h/db?sslpassword=x"), "postgres://h/db?sslpassword=***");
        assert_eq!(redact("sqlite://wavelet.db"), "sqlite://wavelet.db");
    }
}
