//! Resumable uploads: a session per file, chunks written at an explicit offset into
//! `uploads/<id>.partial`, hashed as they stream. Each chunk is fsynced before it is
//! acknowledged, so `received` survives a power cut; after a restart the hash is recomputed
//! from the partial file when the upload finishes.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use sha2::{Digest as _, Sha256};

use crate::error::{Result, StoreError};
use crate::names::{self, Digest};
use crate::{Entry, FaultPoint, Source, Store, durable, lock, now};

/// Sessions untouched this long are removed when the store opens.
const STALE_SECS: u64 = 24 * 3600;

/// An upload session, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Upload {
    pub id: String,
    pub filename: String,
    pub size: u64,
    #[serde(default)]
    pub received: u64,
    pub created_at: i64,
}

pub(crate) struct Session {
    upload: Upload,
    /// The running hash and how many bytes it covers (`None` after a restart).
    hasher: Option<(Sha256, u64)>,
    busy: bool,
}

impl Store {
    fn upload_paths(&self, id: &str) -> (PathBuf, PathBuf) {
        let dir = self.dir("uploads");
        (
            dir.join(format!("{id}.partial")),
            dir.join(format!("{id}.json")),
        )
    }

    /// Starts an upload of `size` bytes; refuses a bad file name or a disk without room.
    pub fn create_upload(&self, filename: &str, size: u64) -> Result<Upload> {
        names::name_from_filename(filename)?;
        self.check_disk(size)?;
        let upload = Upload {
            id: names::new_id(),
            filename: filename.to_owned(),
            size,
            received: 0,
            created_at: now(),
        };
        let (partial, meta) = self.upload_paths(&upload.id);
        File::create(&partial).map_err(StoreError::io(&partial))?;
        let json = serde_json::to_vec(&upload).map_err(|e| StoreError::Io {
            path: meta.clone(),
            source: e.into(),
        })?;
        durable::write_atomic(&meta, &json)?;
        lock(&self.inner.uploads).insert(
            upload.id.clone(),
            Session {
                upload: upload.clone(),
                hasher: Some((Sha256::new(), 0)),
                busy: false,
            },
        );
        Ok(upload)
    }

    pub fn uploads(&self) -> Vec<Upload> {
        let mut v: Vec<Upload> = lock(&self.inner.uploads)
            .values()
            .map(|s| s.upload.clone())
            .collect();
        v.sort_by_key(|u| u.created_at);
        v
    }

    pub fn upload(&self, id: &str) -> Result<Upload> {
        names::validate_id(id)?;
        lock(&self.inner.uploads)
            .get(id)
            .map(|s| s.upload.clone())
            .ok_or_else(|| StoreError::UnknownUpload { id: id.to_owned() })
    }

    /// Opens a chunk at `offset`, which must equal what was received so far.
    pub fn chunk(&self, id: &str, offset: u64) -> Result<ChunkWriter> {
        names::validate_id(id)?;
        let mut uploads = lock(&self.inner.uploads);
        let session = uploads
            .get_mut(id)
            .ok_or_else(|| StoreError::UnknownUpload { id: id.to_owned() })?;
        if session.busy {
            return Err(StoreError::Busy { id: id.to_owned() });
        }
        if offset != session.upload.received {
            return Err(StoreError::OffsetMismatch {
                expected: session.upload.received,
                offset,
            });
        }
        let (partial, _) = self.upload_paths(id);
        let mut file = OpenOptions::new()
            .write(true)
            .open(&partial)
            .map_err(StoreError::io(&partial))?;
        file.set_len(offset).map_err(StoreError::io(&partial))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(StoreError::io(&partial))?;
        let hasher = match session.hasher.take() {
            Some((h, pos)) if pos == offset => Some(h),
            _ => None,
        };
        session.busy = true;
        Ok(ChunkWriter {
            store: self.clone(),
            id: id.to_owned(),
            path: partial,
            file,
            hasher,
            offset,
            written: 0,
            size: session.upload.size,
            done: false,
        })
    }

    /// Cancels an upload and removes its files.
    pub fn cancel_upload(&self, id: &str) -> Result<()> {
        names::validate_id(id)?;
        let removed = lock(&self.inner.uploads).remove(id);
        if removed.is_none() {
            return Err(StoreError::UnknownUpload { id: id.to_owned() });
        }
        self.remove_upload_files(id)
    }

    fn remove_upload_files(&self, id: &str) -> Result<()> {
        let (partial, meta) = self.upload_paths(id);
        durable::remove_if_exists(&partial)?;
        durable::remove_if_exists(&meta)?;
        durable::sync_dir(&self.dir("uploads"))
    }

    /// Completes an upload: hash (from the running state, or the file after a restart),
    /// validate, check the fit and commit. The session is gone afterwards unless the upload
    /// was incomplete or the name was unusable (so the person can pick another).
    pub fn finish_upload(&self, id: &str, name: Option<&str>) -> Result<(Entry, bool)> {
        names::validate_id(id)?;
        let (upload, hasher) = {
            let mut uploads = lock(&self.inner.uploads);
            let session = uploads
                .get_mut(id)
                .ok_or_else(|| StoreError::UnknownUpload { id: id.to_owned() })?;
            if session.busy {
                return Err(StoreError::Busy { id: id.to_owned() });
            }
            if session.upload.received != session.upload.size {
                return Err(StoreError::Incomplete {
                    received: session.upload.received,
                    size: session.upload.size,
                });
            }
            let name = match name {
                Some(n) => n.to_owned(),
                None => names::name_from_filename(&session.upload.filename)?,
            };
            self.check_new_name(&name)?;
            if lock(&self.inner.catalogue).get(&name)?.is_some() {
                return Err(StoreError::NameTaken { name });
            }
            session.busy = true;
            (
                Upload {
                    filename: name,
                    ..session.upload.clone()
                },
                session.hasher.take(),
            )
        };
        let name = upload.filename;
        let (partial, meta) = self.upload_paths(id);
        let digest = match hasher {
            Some((h, pos)) if pos == upload.size => Some(Digest(h.finalize().into())),
            _ => None,
        };
        let result = (|| {
            let digest = match digest {
                Some(d) => d,
                None => {
                    let cancel = AtomicBool::new(false);
                    crate::hash_file(&partial, &|| {
                        cancel.load(std::sync::atomic::Ordering::Relaxed)
                    })?
                    .ok_or(StoreError::Cancelled)?
                }
            };
            let file = File::open(&partial).map_err(StoreError::io(&partial))?;
            durable::sync_file(&file, &partial)?;
            self.commit_partial(&partial, &digest, &name, Source::Upload)
        })();
        lock(&self.inner.uploads).remove(id);
        let _ = durable::remove_if_exists(&partial);
        let _ = durable::remove_if_exists(&meta);
        let _ = durable::sync_dir(&self.dir("uploads"));
        result
    }
}

/// Reloads upload sessions after a restart; `received` is the partial file's length.
pub(crate) fn load_sessions(store: &Store) -> Result<()> {
    let dir = store.dir("uploads");
    let mut sessions = lock(&store.inner.uploads);
    for entry in std::fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
        let entry = entry.map_err(StoreError::io(&dir))?;
        let path = entry.path();
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            let _ = durable::remove_if_exists(&path);
            continue;
        };
        let Some(id) = file_name.strip_suffix(".json") else {
            // A .partial without its .json, or a leftover .tmp: removed unless its json exists.
            let id = file_name.split('.').next().unwrap_or_default();
            if !dir.join(format!("{id}.json")).exists() {
                let _ = durable::remove_if_exists(&path);
            }
            continue;
        };
        let (partial, meta) = store.upload_paths(id);
        let upload: Option<Upload> = std::fs::read(&meta)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|u: &Upload| u.id == id && names::validate_id(id).is_ok());
        let received = std::fs::metadata(&partial).ok();
        let stale = received
            .as_ref()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age.as_secs() > STALE_SECS);
        match (upload, received) {
            (Some(mut upload), Some(m)) if !stale && m.len() <= upload.size => {
                upload.received = m.len();
                sessions.insert(
                    id.to_owned(),
                    Session {
                        upload,
                        hasher: None,
                        busy: false,
                    },
                );
            }
            _ => {
                log::info!(upload = id; "removing a stale or broken upload");
                let _ = durable::remove_if_exists(&partial);
                let _ = durable::remove_if_exists(&meta);
            }
        }
    }
    Ok(())
}

/// Writes one chunk of an upload. Call [`ChunkWriter::finish`] when the body ends (also when it
/// was cut off: what arrived is kept). A full disk cancels the whole upload.
pub struct ChunkWriter {
    store: Store,
    id: String,
    path: PathBuf,
    file: File,
    hasher: Option<Sha256>,
    offset: u64,
    written: u64,
    size: u64,
    done: bool,
}

impl std::fmt::Debug for ChunkWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkWriter")
            .field("id", &self.id)
            .field("offset", &self.offset)
            .field("written", &self.written)
            .finish()
    }
}

impl ChunkWriter {
    /// Appends bytes. `TooLarge` past the declared size; `DiskFull` cancels the upload.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        if self.done {
            return Err(StoreError::UnknownUpload {
                id: self.id.clone(),
            });
        }
        if self.offset + self.written + data.len() as u64 > self.size {
            return Err(StoreError::TooLarge { size: self.size });
        }
        if let Err(e) = self.file.write_all(data) {
            let e = StoreError::io(&self.path)(e);
            if matches!(e, StoreError::DiskFull { .. }) {
                self.abandon();
            } else {
                // Forget what this failed write may have left half-written.
                let _ = self.file.set_len(self.offset + self.written);
            }
            return Err(e);
        }
        if let Some(h) = &mut self.hasher {
            h.update(data);
        }
        if self.written == 0 {
            durable::fault(self.store.inner.config.crash_at, FaultPoint::MidWrite);
        }
        self.written += data.len() as u64;
        Ok(())
    }

    /// Disk full: the upload is cancelled and its partial removed.
    fn abandon(&mut self) {
        self.done = true;
        lock(&self.store.inner.uploads).remove(&self.id);
        let _ = self.store.remove_upload_files(&self.id);
        log::warn!(upload:% = self.id; "disk full during an upload; it was removed");
    }

    /// fsyncs what arrived and records it; returns the session.
    pub fn finish(mut self) -> Result<Upload> {
        if self.done {
            return Err(StoreError::DiskFull {
                path: self.path.clone(),
            });
        }
        self.done = true;
        if self.offset + self.written == self.size {
            durable::fault(self.store.inner.config.crash_at, FaultPoint::Written);
        }
        let synced = durable::sync_file(&self.file, &self.path);
        let mut uploads = lock(&self.store.inner.uploads);
        let session = uploads
            .get_mut(&self.id)
            .ok_or_else(|| StoreError::UnknownUpload {
                id: self.id.clone(),
            })?;
        session.busy = false;
        if let Err(e) = synced {
            // Nothing of this chunk counts.
            let _ = self.file.set_len(self.offset);
            session.hasher = None;
            drop(uploads);
            if matches!(e, StoreError::DiskFull { .. }) {
                self.done = false;
                self.abandon();
            }
            return Err(e);
        }
        let end = self.offset + self.written;
        session.upload.received = end;
        session.hasher = self.hasher.take().map(|h| (h, end));
        Ok(session.upload.clone())
    }
}

impl Drop for ChunkWriter {
    fn drop(&mut self) {
        if !self.done {
            // Dropped without finish (a panic or a bug): what reached the file is not counted.
            let _ = self.file.set_len(self.offset);
            if let Some(s) = lock(&self.store.inner.uploads).get_mut(&self.id) {
                s.busy = false;
                s.hasher = None;
            }
        }
    }
}
