//! Durable file steps (fsync a file, rename, fsync its directory) and the numbered fault
//! points tests use to crash the process between them.

use std::fs::File;
use std::path::Path;

use crate::error::{Result, StoreError};

/// The steps of an import, in order. A test process configured with `crash_at = Some(n)`
/// aborts (as a power cut or `kill -9` would stop it) when it reaches step `n`. Points 1 and 2
/// are hit by media imports (the copy into `tmp/`) and by uploads (the first write of a chunk,
/// and the last chunk before its fsync); 3 to 7 by both when the file is committed. `hearthd`
/// sets this from the test-only `HEARTH_TEST_CRASH_AT` environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum FaultPoint {
    /// Some bytes of the partial file are written, not all.
    MidWrite = 1,
    /// All bytes written, not yet fsynced.
    Written = 2,
    /// The partial file is fsynced.
    PartialSynced = 3,
    /// The file is validated; about to rename it into `blobs/`.
    BeforeRename = 4,
    /// Renamed; the directory is not yet fsynced.
    Renamed = 5,
    /// The directory is fsynced; the catalogue row is not yet written.
    DirSynced = 6,
    /// The catalogue row is committed.
    Catalogued = 7,
}

/// The last fault point.
pub const LAST_FAULT_POINT: u32 = FaultPoint::Catalogued as u32;

/// Aborts the process at `point` when the store was configured to (tests only).
pub(crate) fn fault(crash_at: Option<u32>, point: FaultPoint) {
    if crash_at == Some(point as u32) {
        log::error!(point:? = point; "crashing at a configured fault point");
        std::process::abort();
    }
}

/// fsyncs a file's data and metadata.
pub(crate) fn sync_file(file: &File, path: &Path) -> Result<()> {
    file.sync_all().map_err(StoreError::io(path))
}

/// fsyncs a directory, so renames and unlinks in it survive a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io(dir))
}

/// Writes `bytes` to `path` durably: temp file, fsync, rename, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let result = (|| {
        let mut f = File::create(&tmp).map_err(StoreError::io(&tmp))?;
        f.write_all(bytes).map_err(StoreError::io(&tmp))?;
        sync_file(&f, &tmp)?;
        std::fs::rename(&tmp, path).map_err(StoreError::io(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes a file if it is there; a missing file is not an error.
pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(path)(e)),
    }
}
