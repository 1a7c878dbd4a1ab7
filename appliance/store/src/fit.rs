//! Will it fit? Memory available to the inference service and free disk.

use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// Where memory figures come from.
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    /// The inference service's cgroup directory (with `memory.max`, `memory.current`); when
    /// it sets a limit, the headroom under it counts as well as MemAvailable.
    pub cgroup: Option<PathBuf>,
    /// Overrides everything (tests).
    pub fixed: Option<u64>,
}

impl MemorySource {
    /// Bytes the inference service can still use: MemAvailable, or less when its cgroup's
    /// `memory.max` leaves less headroom.
    pub fn available(&self) -> Option<u64> {
        if let Some(fixed) = self.fixed {
            return Some(fixed);
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        let mut available = meminfo.as_deref().and_then(mem_available);
        if let Some(cg) = &self.cgroup
            && let Some(headroom) = cgroup_headroom(cg)
        {
            available = Some(available.map_or(headroom, |a| a.min(headroom)));
        }
        available
    }
}

fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb.saturating_mul(1024))
    })
}

fn cgroup_headroom(dir: &Path) -> Option<u64> {
    let max = std::fs::read_to_string(dir.join("memory.max")).ok()?;
    let max: u64 = max.trim().parse().ok()?; // "max" = no limit
    let current: u64 = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    Some(max.saturating_sub(current))
}

/// Free and total bytes of the filesystem holding `path`.
pub fn disk_space(path: &Path) -> Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(path).map_err(|e| StoreError::Io {
        path: path.to_owned(),
        source: std::io::Error::from(e),
    })?;
    let frag = st.fragment_size() as u64;
    let free = (st.blocks_available() as u64).saturating_mul(frag);
    let total = (st.blocks() as u64).saturating_mul(frag);
    Ok((free, total))
}

/// Refuses with the numbers when `needed` bytes of disk are not free under `path`.
pub fn check_disk(path: &Path, needed: u64, reserve: u64) -> Result<()> {
    let (free, _) = disk_space(path)?;
    let usable = free.saturating_sub(reserve);
    if needed > usable {
        return Err(StoreError::InsufficientStorage {
            needed,
            available: usable,
        });
    }
    Ok(())
}

/// Refuses with the numbers when `needed` bytes of memory are not available.
pub fn check_memory(source: &MemorySource, needed: u64) -> Result<()> {
    match source.available() {
        Some(available) if needed > available => Err(StoreError::DoesNotFit { needed, available }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_cgroup_are_read() {
        let text = "MemTotal: 100 kB\nMemAvailable:    2048 kB\n";
        assert_eq!(mem_available(text), Some(2 * 1024 * 1024));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.max"), "1000\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "400\n").unwrap();
        let src = MemorySource {
            cgroup: Some(dir.path().to_owned()),
            fixed: None,
        };
        assert_eq!(src.available(), Some(600));
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert!(src.available().unwrap() > 600);
    }

    #[test]
    fn refusals_carry_the_numbers() {
        let src = MemorySource {
            cgroup: None,
            fixed: Some(1_288_490_189),
        };
        let err = check_memory(&src, 3_328_599_654).unwrap_err().to_string();
        assert!(err.contains("needs 3.1 GiB, 1.2 GiB available"), "{err}");
        check_memory(&src, 1000).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let err = check_disk(dir.path(), u64::MAX / 2, 0).unwrap_err();
        assert_eq!(err.code(), "insufficient_storage");
        check_disk(dir.path(), 1, 0).unwrap();
    }
}
