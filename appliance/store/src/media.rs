//! Removable media: listing `.gguf` files under `media_dir` without following links, and
//! importing one in a background thread with progress and cancel.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::{OFlag, open, openat};
use nix::sys::stat::Mode;

use crate::error::{Result, StoreError};
use crate::names;
use crate::{Entry, Source, Store, lock, now};

/// How deep below `media_dir` files are looked for (`/media/<user>/<stick>/<dir>/x.gguf`).
const MAX_DEPTH: usize = 5;
/// Most files listed, so a hostile stick cannot make the listing huge.
const MAX_FILES: usize = 1000;
/// Most directory entries looked at per listing, so a stick full of photos stays cheap to
/// poll.
const MAX_VISITED: usize = 20_000;

/// A model file on removable media; `path` is relative to `media_dir`, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MediaFile {
    pub path: String,
    pub size: u64,
}

/// What the media watcher last saw under `media_dir` ([`Store::poll_media`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MediaView {
    pub files: Vec<MediaFile>,
    /// Goes up by one each time the listing changes (a stick plugged in or pulled out).
    pub generation: u64,
    /// When the listing last changed (unix seconds).
    pub changed_at: Option<i64>,
    /// When `media_dir` was last looked at (unix seconds).
    pub checked_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    Copying,
    Verifying,
    Done,
    Failed,
    Cancelled,
}

/// An import's progress, as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImportStatus {
    pub id: String,
    pub path: String,
    pub size: u64,
    pub copied: u64,
    pub state: ImportState,
    /// `{code, message}` when it failed.
    pub error: Option<serde_json::Value>,
    pub model: Option<Entry>,
}

pub(crate) struct ImportJob {
    id: String,
    path: String,
    size: u64,
    copied: AtomicU64,
    pub(crate) cancel: AtomicBool,
    outcome: Mutex<Option<Result<Entry>>>,
}

impl ImportJob {
    fn status(&self) -> ImportStatus {
        let copied = self.copied.load(Ordering::Relaxed);
        let outcome = lock(&self.outcome);
        let (state, error, model) = match &*outcome {
            None if copied >= self.size => (ImportState::Verifying, None, None),
            None => (ImportState::Copying, None, None),
            Some(Ok(entry)) => (ImportState::Done, None, Some(entry.clone())),
            Some(Err(StoreError::Cancelled)) => (ImportState::Cancelled, None, None),
            Some(Err(e)) => (
                ImportState::Failed,
                Some(serde_json::json!({"code": e.code(), "message": e.to_string()})),
                None,
            ),
        };
        ImportStatus {
            id: self.id.clone(),
            path: self.path.clone(),
            size: self.size,
            copied,
            state,
            error,
            model,
        }
    }
}

/// Lists regular `*.gguf` files under `root`: symlinks, FIFOs, sockets and devices are
/// skipped and never followed (`symlink_metadata`), so nothing outside `root` is read.
pub fn list_media(root: &Path) -> Vec<MediaFile> {
    let mut out = Vec::new();
    let mut visited = 0;
    walk(root, "", 0, &mut out, &mut visited);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn walk(dir: &Path, prefix: &str, depth: usize, out: &mut Vec<MediaFile>, visited: &mut usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        *visited += 1;
        if out.len() >= MAX_FILES || *visited > MAX_VISITED {
            return;
        }
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with('.') || name.contains(['\\', '\n', '\r']) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let ft = meta.file_type();
        if ft.is_dir() && depth + 1 < MAX_DEPTH {
            walk(&entry.path(), &rel, depth + 1, out, visited);
        } else if ft.is_file() && name.to_ascii_lowercase().ends_with(".gguf") {
            out.push(MediaFile {
                path: rel,
                size: meta.len(),
            });
        }
    }
}

/// Opens `rel` under `root` one component at a time with `O_NOFOLLOW`, so a link swapped in
/// after the listing still cannot lead outside; only a regular file is accepted.
fn open_beneath(root: &Path, rel: &str) -> Result<File> {
    let bad = || StoreError::InvalidMediaPath {
        path: rel.chars().take(200).collect(),
    };
    let parts: Vec<&str> = rel.split('/').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == "." || *p == ".." || p.contains(['\0', '\\']))
    {
        return Err(bad());
    }
    let io = |e: nix::Error| StoreError::io(root)(std::io::Error::from(e));
    let flags_dir = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let mut dir: OwnedFd = open(root, flags_dir, Mode::empty()).map_err(io)?;
    let (last, dirs) = parts.split_last().ok_or_else(bad)?;
    for part in dirs {
        dir = openat(&dir, *part, flags_dir | OFlag::O_NOFOLLOW, Mode::empty()).map_err(|e| {
            if e == nix::Error::ELOOP || e == nix::Error::ENOTDIR {
                bad()
            } else {
                io(e)
            }
        })?;
    }
    let fd = openat(
        &dir,
        *last,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| if e == nix::Error::ELOOP { bad() } else { io(e) })?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(StoreError::io(root))?;
    if !meta.file_type().is_file() {
        return Err(bad());
    }
    Ok(file)
}

impl Store {
    fn media_root(&self) -> Option<&PathBuf> {
        self.inner.config.media_dir.as_ref()
    }

    /// The model files on removable media (empty when none is mounted), listed now.
    pub fn media_files(&self) -> Vec<MediaFile> {
        self.media_root().map(|r| list_media(r)).unwrap_or_default()
    }

    /// Lists `media_dir` again and keeps the result; returns the new view when it changed.
    /// hearthd's media watcher calls this every `media_poll_ms`.
    pub fn poll_media(&self) -> Option<MediaView> {
        let files = self.media_files();
        let now = now();
        let mut view = lock(&self.inner.media);
        view.checked_at = Some(now);
        if view.generation > 0 && view.files == files {
            return None;
        }
        view.files = files;
        view.generation += 1;
        view.changed_at = Some(now);
        Some(view.clone())
    }

    /// What the watcher last saw (listed now if nothing has looked yet). No disk access
    /// otherwise, so clients may poll it.
    pub fn media(&self) -> MediaView {
        let polled = lock(&self.inner.media).generation > 0;
        if !polled {
            self.poll_media();
        }
        lock(&self.inner.media).clone()
    }

    /// Starts importing `rel` (one of [`Self::media_files`]) in the background.
    pub fn start_media_import(&self, rel: &str, name: Option<&str>) -> Result<ImportStatus> {
        let bad = || StoreError::InvalidMediaPath {
            path: rel.chars().take(200).collect(),
        };
        let root = self.media_root().ok_or_else(bad)?.clone();
        let listed = list_media(&root)
            .into_iter()
            .find(|f| f.path == rel)
            .ok_or_else(bad)?;
        let name = match name {
            Some(n) => n.to_owned(),
            None => {
                let file_name = rel.rsplit('/').next().unwrap_or(rel);
                names::name_from_filename(file_name)?
            }
        };
        self.check_new_name(&name)?;
        if lock(&self.inner.catalogue).get(&name)?.is_some() {
            return Err(StoreError::NameTaken { name });
        }
        let mut file = open_beneath(&root, rel)?;
        let size = file.metadata().map_err(StoreError::io(&root))?.len();
        self.check_disk(size)?;
        let job = Arc::new(ImportJob {
            id: names::new_id(),
            path: listed.path,
            size,
            copied: AtomicU64::new(0),
            cancel: AtomicBool::new(false),
            outcome: Mutex::new(None),
        });
        lock(&self.inner.imports).insert(job.id.clone(), job.clone());
        let (store, thread_job) = (self.clone(), job.clone());
        let spawned = std::thread::Builder::new()
            .name("model-import".into())
            .spawn(move || {
                let result = store
                    .import_reader(
                        &mut file,
                        thread_job.size,
                        &name,
                        Source::Usb,
                        &thread_job.copied,
                        &thread_job.cancel,
                    )
                    .map(|(entry, _)| entry);
                if let Err(e) = &result {
                    log::warn!(path:% = thread_job.path, error:% = e; "import failed");
                }
                *lock(&thread_job.outcome) = Some(result);
            });
        if let Err(e) = spawned {
            *lock(&job.outcome) = Some(Err(StoreError::io("import thread")(e)));
        }
        Ok(job.status())
    }

    pub fn imports(&self) -> Vec<ImportStatus> {
        lock(&self.inner.imports)
            .values()
            .map(|j| j.status())
            .collect()
    }

    pub fn import_status(&self, id: &str) -> Result<ImportStatus> {
        names::validate_id(id)?;
        lock(&self.inner.imports)
            .get(id)
            .map(|j| j.status())
            .ok_or_else(|| StoreError::UnknownImport { id: id.to_owned() })
    }

    /// Cancels a running import (its partial is removed); a finished one is forgotten.
    pub fn cancel_import(&self, id: &str) -> Result<()> {
        names::validate_id(id)?;
        let mut imports = lock(&self.inner.imports);
        let job = imports
            .get(id)
            .ok_or_else(|| StoreError::UnknownImport { id: id.to_owned() })?;
        job.cancel.store(true, Ordering::Relaxed);
        if lock(&job.outcome).is_some() {
            imports.remove(id);
        }
        Ok(())
    }
}
