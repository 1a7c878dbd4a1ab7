//! The catalogue: `models/catalogue.db`, SQLite in WAL mode with synchronous=FULL. The only
//! SQL of the store lives here. Migrations are numbered, additive only, and a catalogue newer
//! than this build still opens (after a rollback the previous release reads it).

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Result, StoreError};
use crate::facts::ModelFacts;
use crate::names::Digest;

const MIGRATIONS: &[&str] = &[include_str!("../migrations/0001_models.sql")];

/// Where a model came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Upload,
    Usb,
    /// `hearthd --model FILE` (dev mode); never in the catalogue.
    Path,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Upload => "upload",
            Source::Usb => "usb",
            Source::Path => "path",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "usb" => Source::Usb,
            "path" => Source::Path,
            _ => Source::Upload,
        }
    }
}

/// One catalogue row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub architecture: String,
    pub parameters: u64,
    pub quantization: String,
    pub context_length: u64,
    pub has_chat_template: bool,
    pub license: Option<String>,
    pub added_at: i64,
    pub source: Source,
    /// `false` once a scrub found the blob damaged.
    pub damaged: bool,
    #[serde(skip)]
    pub facts: ModelFacts,
}

pub(crate) struct Catalogue {
    conn: Connection,
    path: PathBuf,
}

impl Catalogue {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let err = |source| StoreError::Catalogue {
            path: path.to_owned(),
            source,
        };
        let mut conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            let tx = conn.transaction().map_err(err)?;
            tx.execute_batch(sql).map_err(err)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)
                .map_err(err)?;
            tx.commit().map_err(err)?;
        }
        Ok(Self {
            conn,
            path: path.to_owned(),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Catalogue {
            path: self.path.clone(),
            source,
        }
    }

    pub(crate) fn list(&self) -> Result<Vec<Entry>> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT name, digest, size, architecture, parameters, quantization, \
                 context_length, has_chat_template, license, added_at, source, state, \
                 n_layer, n_kv_head, head_dim FROM models ORDER BY name",
            )
            .map_err(self.err())?;
        let rows = stmt
            .query_map([], |r| {
                let size: i64 = r.get(2)?;
                let facts = ModelFacts {
                    architecture: r.get(3)?,
                    parameters: r.get::<_, i64>(4)? as u64,
                    quantization: r.get(5)?,
                    context_length: r.get::<_, i64>(6)? as u64,
                    has_chat_template: r.get(7)?,
                    license: r.get(8)?,
                    n_layer: r.get::<_, i64>(12)? as u64,
                    n_kv_head: r.get::<_, i64>(13)? as u64,
                    head_dim: r.get::<_, i64>(14)? as u64,
                    file_size: size as u64,
                };
                Ok(Entry {
                    name: r.get(0)?,
                    digest: r.get(1)?,
                    size: size as u64,
                    architecture: facts.architecture.clone(),
                    parameters: facts.parameters,
                    quantization: facts.quantization.clone(),
                    context_length: facts.context_length,
                    has_chat_template: facts.has_chat_template,
                    license: facts.license.clone(),
                    added_at: r.get(9)?,
                    source: Source::parse(&r.get::<_, String>(10)?),
                    damaged: r.get::<_, String>(11)? != "ok",
                    facts,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<Vec<_>, _>>().map_err(self.err())
    }

    pub(crate) fn get(&self, name: &str) -> Result<Option<Entry>> {
        Ok(self.list()?.into_iter().find(|e| e.name == name))
    }

    pub(crate) fn by_digest(&self, digest: &Digest) -> Result<Option<Entry>> {
        let d = digest.to_string();
        Ok(self.list()?.into_iter().find(|e| e.digest == d))
    }

    /// Adds a row; `NameTaken` when the name is in use.
    pub(crate) fn insert(
        &self,
        name: &str,
        digest: &Digest,
        facts: &ModelFacts,
        source: Source,
        added_at: i64,
    ) -> Result<()> {
        let taken: bool = self
            .conn
            .query_row("SELECT 1 FROM models WHERE name = ?1", [name], |_| Ok(()))
            .optional()
            .map_err(self.err())?
            .is_some();
        if taken {
            return Err(StoreError::NameTaken {
                name: name.to_owned(),
            });
        }
        self.conn
            .execute(
                "INSERT INTO models (name, digest, size, architecture, parameters, quantization, \
                 context_length, has_chat_template, license, added_at, source, state, n_layer, \
                 n_kv_head, head_dim) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'ok', ?12, ?13, ?14)",
                params![
                    name,
                    digest.to_string(),
                    facts.file_size as i64,
                    facts.architecture,
                    facts.parameters as i64,
                    facts.quantization,
                    facts.context_length as i64,
                    facts.has_chat_template,
                    facts.license,
                    added_at,
                    source.as_str(),
                    facts.n_layer as i64,
                    facts.n_kv_head as i64,
                    facts.head_dim as i64,
                ],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub(crate) fn delete(&self, name: &str) -> Result<bool> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        let n = tx
            .execute("DELETE FROM models WHERE name = ?1", [name])
            .map_err(self.err())?;
        tx.execute(
            "DELETE FROM settings WHERE key = 'default_model' AND value = ?1",
            [name],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        Ok(n > 0)
    }

    pub(crate) fn rename(&self, from: &str, to: &str) -> Result<()> {
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        let taken = tx
            .query_row("SELECT 1 FROM models WHERE name = ?1", [to], |_| Ok(()))
            .optional()
            .map_err(self.err())?
            .is_some();
        if taken {
            return Err(StoreError::NameTaken {
                name: to.to_owned(),
            });
        }
        let n = tx
            .execute("UPDATE models SET name = ?2 WHERE name = ?1", [from, to])
            .map_err(self.err())?;
        if n == 0 {
            return Err(StoreError::UnknownModel {
                name: from.to_owned(),
            });
        }
        tx.execute(
            "UPDATE settings SET value = ?2 WHERE key = 'default_model' AND value = ?1",
            [from, to],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())
    }

    pub(crate) fn mark_damaged(&self, digest: &str) -> Result<()> {
        self.conn
            .execute(
                "UPDATE models SET state = 'damaged' WHERE digest = ?1",
                [digest],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub(crate) fn default_model(&self) -> Result<Option<String>> {
        self.conn
            .query_row(
                "SELECT value FROM settings WHERE key = 'default_model'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    pub(crate) fn set_default(&self, name: &str) -> Result<()> {
        self.conn
            .execute(
                "INSERT INTO settings (key, value) VALUES ('default_model', ?1) \
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [name],
            )
            .map_err(self.err())?;
        Ok(())
    }

    pub(crate) fn integrity_ok(&self) -> Result<bool> {
        let s: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(self.err())?;
        Ok(s == "ok")
    }
}
