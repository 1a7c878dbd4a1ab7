//! `hearth-store`: the model library.
//!
//! Owns `<data_dir>/models/`: content-addressed blobs (`blobs/sha256-<hex>`), upload sessions
//! (`uploads/<id>.partial` + `<id>.json`), imports in flight (`tmp/`), damaged blobs
//! (`quarantine/`) and the catalogue (`catalogue.db`, SQLite; the only SQL of this crate is in
//! [`catalogue`]).
//!
//! Design: every byte of a model is written to a `.partial` file while it is hashed, the file is
//! fsynced, validated as a GGUF the engine can load ([`facts`]), checked against the memory the
//! inference service has ([`fit`]), then renamed into `blobs/` and the directory fsynced; only
//! then does the catalogue row appear. Opening the store cleans up after a crash at any of those
//! steps: a blob without a row is removed, `tmp/` is emptied, so the store holds either the whole
//! verified model or nothing of it. Digests, names and ids from requests are validated
//! ([`names`]) before any path is built; media files are opened one component at a time with
//! `O_NOFOLLOW`.
//!
//! It must never run model math, talk HTTP or touch hearthd's own database. Its calls block
//! (disk and hashing); async callers run them with `spawn_blocking`.
//!
//! Current limits: one name per blob (no aliases); the fit check looks at one model at a time.

pub mod catalogue;
mod durable;
pub mod error;
pub mod facts;
pub mod fit;
mod media;
pub mod names;
mod scrub;
mod upload;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

pub use catalogue::{Entry, Source};
pub use durable::{FaultPoint, LAST_FAULT_POINT};
pub use error::{Result, StoreError, gib};
pub use facts::ModelFacts;
pub use fit::MemorySource;
pub use media::{ImportState, ImportStatus, MediaFile, MediaView};
pub use names::{Digest, validate_name};
pub use scrub::ScrubStatus;
pub use upload::{ChunkWriter, Upload};

use catalogue::Catalogue;

/// How the store is set up. One struct, filled in by hearthd from its `Config`.
#[derive(Debug, Clone, Default)]
pub struct StoreConfig {
    /// The store's directory, `<data_dir>/models`.
    pub root: PathBuf,
    /// The configured context cap; the fit check sizes the KV cache for
    /// `min(max_context, model's context)`.
    pub max_context: Option<u64>,
    /// The inference worker's KV cache type, which sizes the cache in the fit check.
    pub kv_cache: hearth_engine::KvCacheType,
    /// Where "memory available to the inference service" comes from.
    pub memory: MemorySource,
    /// Bytes of disk always left free (for the database and logs).
    pub disk_reserve: u64,
    /// Where removable media are mounted (`/media` on the box).
    pub media_dir: Option<PathBuf>,
    /// Names used by `--model` path models; imports may not take them.
    pub reserved_names: Vec<String>,
    /// Tests only: abort the process at this [`FaultPoint`] (hearthd takes it from the
    /// `HEARTH_TEST_CRASH_AT` environment variable; never set on a real box).
    pub crash_at: Option<u32>,
}

/// Copy buffer size.
const BUF: usize = 1 << 20;

/// The model library. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.config.root)
            .finish()
    }
}

struct Inner {
    config: StoreConfig,
    catalogue: Mutex<Catalogue>,
    uploads: Mutex<HashMap<String, upload::Session>>,
    imports: Mutex<HashMap<String, Arc<media::ImportJob>>>,
    media: Mutex<MediaView>,
    scrub: Mutex<ScrubStatus>,
    /// Serializes the rename-into-blobs + catalogue-insert step.
    commit: Mutex<()>,
    changed: watch::Sender<u64>,
    stopping: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

impl Store {
    /// Opens (creating) the store and cleans up after any crash: `tmp/` is emptied, blobs
    /// without a catalogue row are removed, rows whose blob is missing are marked damaged,
    /// upload sessions are reloaded (stale ones, untouched for a day, removed).
    pub fn open(config: StoreConfig) -> Result<Self> {
        let root = &config.root;
        for dir in ["blobs", "tmp", "uploads", "quarantine"] {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(StoreError::io(&path))?;
        }
        let catalogue = Catalogue::open(&root.join("catalogue.db"))?;
        let (changed, _) = watch::channel(0);
        let store = Self {
            inner: Arc::new(Inner {
                config,
                catalogue: Mutex::new(catalogue),
                uploads: Mutex::new(HashMap::new()),
                imports: Mutex::new(HashMap::new()),
                media: Mutex::new(MediaView::default()),
                scrub: Mutex::new(ScrubStatus::default()),
                commit: Mutex::new(()),
                changed,
                stopping: AtomicBool::new(false),
            }),
        };
        store.recover()?;
        Ok(store)
    }

    fn recover(&self) -> Result<()> {
        let root = &self.inner.config.root;
        let tmp = root.join("tmp");
        for entry in std::fs::read_dir(&tmp).map_err(StoreError::io(&tmp))? {
            let entry = entry.map_err(StoreError::io(&tmp))?;
            log::info!(file:? = entry.path(); "removing an unfinished import");
            durable::remove_if_exists(&entry.path())?;
        }
        let entries = lock(&self.inner.catalogue).list()?;
        let blobs = root.join("blobs");
        let mut removed = false;
        for entry in std::fs::read_dir(&blobs).map_err(StoreError::io(&blobs))? {
            let entry = entry.map_err(StoreError::io(&blobs))?;
            let name = entry.file_name();
            let known = name
                .to_str()
                .is_some_and(|n| entries.iter().any(|e| e.digest == n));
            if !known {
                log::warn!(file:? = entry.path(); "removing a blob the catalogue does not list");
                durable::remove_if_exists(&entry.path())?;
                removed = true;
            }
        }
        if removed {
            durable::sync_dir(&blobs)?;
        }
        for e in entries.iter().filter(|e| !e.damaged) {
            if !blobs.join(&e.digest).is_file() {
                log::error!(model:% = e.name; "the model's blob is missing; marking it damaged");
                lock(&self.inner.catalogue).mark_damaged(&e.digest)?;
            }
        }
        upload::load_sessions(self)?;
        Ok(())
    }

    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.inner.config.root.join(name)
    }

    /// The path of a blob. Only ever built from a parsed [`Digest`].
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.dir("blobs").join(digest.file_name())
    }

    /// Turns true-ish (changes value) whenever the set of models changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }

    fn bump(&self) {
        self.inner.changed.send_modify(|v| *v += 1);
    }

    /// Stops background work (imports, scrub) at its next step.
    pub fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        for job in lock(&self.inner.imports).values() {
            job.cancel.store(true, Ordering::Relaxed);
        }
    }

    fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }

    /// Every catalogued model, by name.
    pub fn list(&self) -> Result<Vec<Entry>> {
        lock(&self.inner.catalogue).list()
    }

    pub fn get(&self, name: &str) -> Result<Entry> {
        validate_name(name)?;
        lock(&self.inner.catalogue)
            .get(name)?
            .ok_or_else(|| StoreError::UnknownModel {
                name: name.to_owned(),
            })
    }

    /// The models the inference service should load: (name, blob path), damaged ones left out.
    pub fn loadable(&self) -> Result<Vec<(String, PathBuf)>> {
        Ok(self
            .list()?
            .into_iter()
            .filter(|e| !e.damaged)
            .filter_map(|e| {
                let digest = Digest::parse(&e.digest).ok()?;
                Some((e.name, self.blob_path(&digest)))
            })
            .collect())
    }

    pub fn default_model(&self) -> Result<Option<String>> {
        lock(&self.inner.catalogue).default_model()
    }

    /// Makes `name` the default model (a catalogued or a path model).
    pub fn set_default(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let known = self.inner.config.reserved_names.iter().any(|n| n == name)
            || lock(&self.inner.catalogue).get(name)?.is_some();
        if !known {
            return Err(StoreError::UnknownModel {
                name: name.to_owned(),
            });
        }
        lock(&self.inner.catalogue).set_default(name)?;
        self.bump();
        Ok(())
    }

    fn check_new_name(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        if self.inner.config.reserved_names.iter().any(|n| n == name) {
            return Err(StoreError::NameTaken {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    fn refuse_path_model(&self, name: &str) -> Result<()> {
        if self.inner.config.reserved_names.iter().any(|n| n == name) {
            return Err(StoreError::PathModel {
                name: name.to_owned(),
            });
        }
        Ok(())
    }

    pub fn rename(&self, from: &str, to: &str) -> Result<Entry> {
        validate_name(from)?;
        self.refuse_path_model(from)?;
        self.check_new_name(to)?;
        lock(&self.inner.catalogue).rename(from, to)?;
        self.bump();
        self.get(to)
    }

    /// Removes a model: the row first (so it is never listed without its blob), then the blob.
    pub fn delete(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        self.refuse_path_model(name)?;
        let _commit = lock(&self.inner.commit);
        let entry = self.get(name)?;
        lock(&self.inner.catalogue).delete(name)?;
        self.bump();
        if let Ok(digest) = Digest::parse(&entry.digest) {
            let blobs = self.dir("blobs");
            durable::remove_if_exists(&self.blob_path(&digest))?;
            durable::remove_if_exists(&self.dir("quarantine").join(digest.file_name()))?;
            durable::sync_dir(&blobs)?;
        }
        log::info!(model = name; "model deleted");
        Ok(())
    }

    /// Bytes the model needs in memory at the configured context.
    pub fn needs_bytes(&self, facts: &ModelFacts) -> u64 {
        let ctx = self
            .inner
            .config
            .max_context
            .map_or(facts.context_length, |cap| cap.min(facts.context_length));
        facts.needs_bytes(ctx, self.inner.config.kv_cache)
    }

    /// (free, total) bytes of the disk holding the store.
    pub fn disk(&self) -> Result<(u64, u64)> {
        fit::disk_space(&self.inner.config.root)
    }

    pub fn memory_available(&self) -> Option<u64> {
        self.inner.config.memory.available()
    }

    /// Checks that `size` more bytes fit on the disk (keeping the reserve free).
    pub fn check_disk(&self, size: u64) -> Result<()> {
        fit::check_disk(
            &self.inner.config.root,
            size,
            self.inner.config.disk_reserve,
        )
    }

    /// Validates a `--model` file and reads its facts (it stays where it is).
    pub fn path_model_facts(path: &Path) -> Result<ModelFacts> {
        ModelFacts::read(path)
    }

    /// Copies `reader` (`size` bytes) into the store as model `name`: hashed while streamed,
    /// fsynced, validated, fit-checked, renamed into place. `copied` counts progress; setting
    /// `cancel` stops it. Returns the model and whether it is new (false: same bytes were
    /// already stored).
    pub fn import_reader(
        &self,
        reader: &mut dyn Read,
        size: u64,
        name: &str,
        source: Source,
        copied: &AtomicU64,
        cancel: &AtomicBool,
    ) -> Result<(Entry, bool)> {
        self.check_new_name(name)?;
        self.check_disk(size)?;
        let partial = self.dir("tmp").join(format!("{}.partial", names::new_id()));
        let result = (|| {
            let mut file = File::create(&partial).map_err(StoreError::io(&partial))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; BUF];
            let mut total = 0u64;
            let mut first = true;
            loop {
                if cancel.load(Ordering::Relaxed) || self.stopping() {
                    return Err(StoreError::Cancelled);
                }
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(StoreError::io("the source file")(e)),
                };
                total += n as u64;
                if total > size {
                    return Err(StoreError::TooLarge { size });
                }
                file.write_all(&buf[..n])
                    .map_err(StoreError::io(&partial))?;
                hasher.update(&buf[..n]);
                copied.store(total, Ordering::Relaxed);
                if first {
                    durable::fault(self.inner.config.crash_at, FaultPoint::MidWrite);
                    first = false;
                }
            }
            if total != size {
                return Err(StoreError::Incomplete {
                    received: total,
                    size,
                });
            }
            durable::fault(self.inner.config.crash_at, FaultPoint::Written);
            durable::sync_file(&file, &partial)?;
            Ok(Digest(hasher.finalize().into()))
        })();
        match result {
            Ok(digest) => self.commit_partial(&partial, &digest, name, source),
            Err(e) => {
                let _ = durable::remove_if_exists(&partial);
                Err(e)
            }
        }
    }

    /// The last steps of every import: validate, check the fit, rename into `blobs/`, fsync
    /// the directory, add the catalogue row. The partial file is gone afterwards either way.
    fn commit_partial(
        &self,
        partial: &Path,
        digest: &Digest,
        name: &str,
        source: Source,
    ) -> Result<(Entry, bool)> {
        let crash_at = self.inner.config.crash_at;
        durable::fault(crash_at, FaultPoint::PartialSynced);
        let result = (|| {
            let facts = ModelFacts::read(partial)?;
            fit::check_memory(&self.inner.config.memory, self.needs_bytes(&facts))?;
            let _commit = lock(&self.inner.commit);
            if let Some(existing) = lock(&self.inner.catalogue).by_digest(digest)? {
                durable::remove_if_exists(partial)?;
                return Ok((existing, false));
            }
            self.check_new_name(name)?;
            if lock(&self.inner.catalogue).get(name)?.is_some() {
                return Err(StoreError::NameTaken {
                    name: name.to_owned(),
                });
            }
            durable::fault(crash_at, FaultPoint::BeforeRename);
            let blob = self.blob_path(digest);
            let blobs = self.dir("blobs");
            std::fs::rename(partial, &blob).map_err(StoreError::io(&blob))?;
            durable::fault(crash_at, FaultPoint::Renamed);
            durable::sync_dir(&blobs)?;
            durable::fault(crash_at, FaultPoint::DirSynced);
            let inserted = lock(&self.inner.catalogue).insert(name, digest, &facts, source, now());
            if let Err(e) = inserted {
                let _ = durable::remove_if_exists(&blob);
                let _ = durable::sync_dir(&blobs);
                return Err(e);
            }
            durable::fault(crash_at, FaultPoint::Catalogued);
            Ok((self.get(name)?, true))
        })();
        let _ = durable::remove_if_exists(partial);
        if let Ok((entry, true)) = &result {
            log::info!(model:% = entry.name, digest:% = entry.digest, size = entry.size,
                       source:? = source; "model imported");
            self.bump();
        }
        result
    }

    /// Checks the catalogue database itself (`PRAGMA integrity_check`).
    pub fn catalogue_ok(&self) -> Result<bool> {
        lock(&self.inner.catalogue).integrity_ok()
    }
}

/// SHA-256 of a file, streamed; `cancel` stops it.
pub(crate) fn hash_file(path: &Path, cancel: &dyn Fn() -> bool) -> Result<Option<Digest>> {
    let mut file = File::open(path).map_err(StoreError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BUF];
    loop {
        if cancel() {
            return Ok(None);
        }
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(StoreError::io(path)(e)),
        };
        hasher.update(&buf[..n]);
    }
    Ok(Some(Digest(hasher.finalize().into())))
}
