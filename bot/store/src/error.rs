//! The store's one error type: what went wrong, and whether trying again may help.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is in the message, not a `source`, so chains print it once.
    #[error("the database could not be reached or refused a statement: {0}")]
    Database(sqlx::Error),
    #[error("the database schema could not be brought up to date: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("`{0}` is not a store URL: use sqlite://PATH or postgres://HOST/DATABASE")]
    BadUrl(String),
    #[error("stored data is damaged: {0}")]
    Corrupt(String),
    /// A fault in Wavelet itself; the transaction it happened in does not commit.
    #[error("a fault in Wavelet (please report it): {0}")]
    Internal(String),
    /// Refused for a reason a person can act on.
    #[error("{0}")]
    Refused(String),
    /// Held back because the store was unavailable for an event before it.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A transaction carried on from another ([`Tx::commit_and_continue`]) found, when it
    /// took the lock, that the other did not commit or that something else committed in
    /// between: what it read may be out of date, so its work must be done again.
    #[error("the store changed under a batch handled ahead of its turn; it must be handled again")]
    Superseded,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Migrate(e)
    }
}

impl Error {
    /// Whether retrying later may succeed (the database went away), as opposed to a
    /// statement the database will always refuse.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(e) => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || e.as_database_error().is_some_and(|d| {
                    // SQLITE_BUSY / locked; PostgreSQL serialization, deadlock, shutdown, connection.
                    matches!(d.code().as_deref(), Some("5" | "6" | "40001" | "40P01" | "57P01" | "57P02" | "57P03"))
                        || d.code().is_some_and(|c| c.starts_with("08"))
                })
            }
            Error::Unavailable(_) => true,
            _ => false,
        }
    }
}
