//! The SQLite database: opening it durably and migrating it. Only this module holds SQL.
//!
//! Migrations are numbered files in `migrations/`, applied in order inside one transaction
//! each, with `PRAGMA user_version` recording how far the file got. They are additive only
//! (new tables and columns), because after a rollback the previous release opens a database
//! the next release migrated: a database newer than this build is opened, not refused.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;

use crate::Error;

mod accounts;
mod conversations;

pub use accounts::{Created, Role, SessionRow, TokenRow, User, UserRow};
pub use conversations::{Conversation, ConversationPatch, Message};

/// The migrations, in order; the position + 1 is the schema version after applying it.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_settings",
        include_str!("../../migrations/0001_settings.sql"),
    ),
    (
        "0002_accounts",
        include_str!("../../migrations/0002_accounts.sql"),
    ),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// A shared handle on the database. Queries are short; callers run them off the async
/// threads with `spawn_blocking` where they could wait on the disk.
#[derive(Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl Db {
    /// Opens (creating if needed) the database in WAL mode with synchronous=FULL, then
    /// migrates it to [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Self, Error> {
        let err = |source| Error::Database {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        migrate(&mut conn).map_err(err)?;
        conn.execute(
            "INSERT INTO boots (version) VALUES (?1)",
            [env!("CARGO_PKG_VERSION")],
        )
        .map_err(err)?;
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
        })
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<usize, Error> {
        self.with(|c| c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0)))
            .map(|v| v.max(0) as usize)
    }

    /// A cheap query that fails when the database is unusable (readiness).
    pub fn check(&self) -> Result<(), Error> {
        self.with(|c| c.query_row("SELECT count(*) FROM settings", [], |_| Ok(())))
    }

    pub fn setting(&self, key: &str) -> Result<Option<String>, Error> {
        self.with(|c| {
            match c.query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            }) {
                Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
                other => other.map(Some),
            }
        })
    }

    pub fn set_setting(&self, key: &str, value: &str) -> Result<(), Error> {
        self.with(|c| {
            c.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = unixepoch()",
                [key, value],
            )
            .map(|_| ())
        })
    }

    /// Runs `f` inside one transaction: all of it is committed, or none of it.
    pub(crate) fn transaction<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        let run = |conn: &mut Connection| {
            let tx = conn.transaction()?;
            let value = f(&tx)?;
            tx.commit()?;
            Ok(value)
        };
        run(&mut conn).map_err(|source| Error::Database {
            path: self.path.clone(),
            source,
        })
    }

    pub(crate) fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Error> {
        let conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        f(&conn).map_err(|source| Error::Database {
            path: self.path.clone(),
            source,
        })
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let current = current.max(0) as usize;
    if current > SCHEMA_VERSION {
        log::warn!(file_version = current, build_version = SCHEMA_VERSION;
                   "database is newer than this build (rollback?); opening it as it is");
        return Ok(());
    }
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (index + 1) as i64)?;
        tx.commit()?;
        log::info!(migration = *name; "database migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_database_is_migrated_to_the_latest_version_in_wal() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("hearth.db")).unwrap();
        assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
        let mode: String = db
            .with(|c| c.pragma_query_value(None, "journal_mode", |r| r.get(0)))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = db
            .with(|c| c.pragma_query_value(None, "synchronous", |r| r.get(0)))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        db.check().unwrap();
    }

    #[test]
    fn reopening_keeps_data_and_does_not_rerun_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        Db::open(&path)
            .unwrap()
            .set_setting("box_name", "kitchen")
            .unwrap();
        let db = Db::open(&path).unwrap();
        assert_eq!(db.setting("box_name").unwrap().as_deref(), Some("kitchen"));
        assert_eq!(db.setting("missing").unwrap(), None);
        let boots: i64 = db
            .with(|c| c.query_row("SELECT count(*) FROM boots", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(boots, 2);
    }

    #[test]
    fn a_database_from_a_newer_release_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        drop(Db::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE future (x INTEGER); PRAGMA user_version = 99;")
            .unwrap();
        drop(conn);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.schema_version().unwrap(), 99);
        db.set_setting("k", "v").unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hearth.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Db::open(&path).err().unwrap().to_string();
        assert!(err.contains("hearth.db"), "{err}");
    }
}
