//! Scrub: re-hash every stored blob; one whose bytes no longer match its digest is moved to
//! `quarantine/` and its model marked damaged (never loaded again).

use std::sync::atomic::Ordering;

use crate::error::Result;
use crate::names::Digest;
use crate::{Store, durable, lock, now};

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScrubStatus {
    pub running: bool,
    pub checked: u64,
    /// Names of the models found damaged by the last scrub.
    pub damaged: Vec<String>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl Store {
    pub fn scrub_status(&self) -> ScrubStatus {
        lock(&self.inner.scrub).clone()
    }

    /// Starts a scrub in a background thread unless one is running.
    pub fn start_scrub(&self) -> ScrubStatus {
        {
            let mut status = lock(&self.inner.scrub);
            if status.running {
                return status.clone();
            }
            *status = ScrubStatus {
                running: true,
                started_at: Some(now()),
                ..ScrubStatus::default()
            };
        }
        let store = self.clone();
        let spawned = std::thread::Builder::new()
            .name("model-scrub".into())
            .spawn(move || {
                if let Err(e) = store.scrub_now() {
                    log::error!(error:% = e; "scrub failed");
                }
            });
        if spawned.is_err() {
            lock(&self.inner.scrub).running = false;
        }
        self.scrub_status()
    }

    /// Scrubs every model now (blocking). Returns the names found damaged.
    pub fn scrub_now(&self) -> Result<Vec<String>> {
        {
            let mut status = lock(&self.inner.scrub);
            status.running = true;
            status.started_at.get_or_insert(now());
        }
        let result = self.scrub_all();
        let mut status = lock(&self.inner.scrub);
        status.running = false;
        status.finished_at = Some(now());
        result
    }

    fn scrub_all(&self) -> Result<Vec<String>> {
        let mut damaged = Vec::new();
        for entry in self.list()? {
            if self.stopping() {
                break;
            }
            if entry.damaged {
                continue;
            }
            let Ok(digest) = Digest::parse(&entry.digest) else {
                continue;
            };
            let blob = self.blob_path(&digest);
            let stopping = || self.inner.stopping.load(Ordering::Relaxed);
            let good = match crate::hash_file(&blob, &stopping) {
                Ok(Some(actual)) => actual == digest,
                Ok(None) => break, // stopping
                Err(e) => {
                    log::error!(model:% = entry.name, error:% = e; "cannot read the blob");
                    false
                }
            };
            lock(&self.inner.scrub).checked += 1;
            if !good {
                self.quarantine(&entry.name, &digest)?;
                damaged.push(entry.name.clone());
                lock(&self.inner.scrub).damaged.push(entry.name);
            }
        }
        Ok(damaged)
    }

    fn quarantine(&self, name: &str, digest: &Digest) -> Result<()> {
        log::error!(model = name, digest:% = digest;
                    "the model's bytes do not match its digest; quarantining it");
        let _commit = lock(&self.inner.commit);
        let blob = self.blob_path(digest);
        let target = self.dir("quarantine").join(digest.file_name());
        // Mark first: a crash between the two leaves a damaged model with its blob in place,
        // which is never loaded, rather than a listed model without a blob.
        lock(&self.inner.catalogue).mark_damaged(&digest.to_string())?;
        self.bump();
        if blob.exists() {
            std::fs::rename(&blob, &target).map_err(crate::StoreError::io(&target))?;
            durable::sync_dir(&self.dir("quarantine"))?;
            durable::sync_dir(&self.dir("blobs"))?;
        }
        Ok(())
    }
}
