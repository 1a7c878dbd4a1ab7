//! The store against real files: every bad input and fault the model-library issue names.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use common::*;
use hearth_store::{ImportState, LAST_FAULT_POINT, Source, Store, StoreError};

fn import(
    store: &Store,
    bytes: &[u8],
    name: &str,
) -> Result<(hearth_store::Entry, bool), StoreError> {
    store.import_reader(
        &mut &bytes[..],
        bytes.len() as u64,
        name,
        Source::Upload,
        &AtomicU64::new(0),
        &AtomicBool::new(false),
    )
}

fn assert_clean(root: &Path) {
    assert_eq!(
        files(&root.join("tmp")),
        Vec::<String>::new(),
        "tmp/ not empty"
    );
}

#[test]
fn an_import_is_listed_with_its_facts_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = tiny_gguf(64, 1);
    let (entry, new) = import(&store, &bytes, "tiny").unwrap();
    assert!(new);
    assert_eq!(entry.digest, sha256_hex(&bytes));
    assert_eq!(entry.size, bytes.len() as u64);
    assert_eq!(entry.architecture, "llama");
    assert_eq!(entry.parameters, 64);
    assert_eq!(entry.quantization, "F32");
    assert_eq!(entry.context_length, 2048);
    assert_eq!(entry.license.as_deref(), Some("apache-2.0"));
    assert!(!entry.has_chat_template);
    assert_eq!(entry.source, Source::Upload);
    // weights + 2 * layers(2) * ctx(512, the configured cap) * kv heads(2) * head dim(16) * 2
    assert_eq!(
        store.needs_bytes(&entry.facts),
        bytes.len() as u64 + 2 * 2 * 512 * 2 * 16 * 2
    );
    let blob = dir.path().join("blobs").join(&entry.digest);
    assert_eq!(std::fs::read(&blob).unwrap(), bytes);
    assert_clean(dir.path());
    // The same bytes again are the same model, not a second copy.
    let (again, new) = import(&store, &bytes, "other-name").unwrap();
    assert!(!new);
    assert_eq!(again.name, "tiny");
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.list().unwrap(), vec![entry.clone()]);
    assert_eq!(store.loadable().unwrap(), vec![("tiny".into(), blob)]);
    assert!(store.catalogue_ok().unwrap());
}

#[test]
fn bad_files_are_refused_with_what_is_wrong_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let good = tiny_gguf(64, 2);
    let mut wrong_arch = good.clone();
    // "llama" -> "llamb": same length, an architecture the engine does not know.
    let at = wrong_arch.windows(5).position(|w| w == b"llama").unwrap();
    wrong_arch[at + 4] = b'b';
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        ("empty", vec![], "invalid_model", "empty"),
        (
            "garbage",
            b"not a model at all".repeat(10),
            "invalid_model",
            "magic",
        ),
        (
            "cut-header",
            good[..40].to_vec(),
            "invalid_model",
            "left in the file",
        ),
        (
            "past-eof",
            good[..good.len() - 8].to_vec(),
            "invalid_model",
            "runs past the end of the file",
        ),
        ("arch", wrong_arch, "unsupported_architecture", "llamb"),
    ];
    for (name, bytes, code, needle) in cases {
        let err = import(&store, &bytes, name).unwrap_err();
        assert_eq!(err.code(), code, "{name}: {err}");
        let msg = err.to_string();
        assert!(msg.contains(needle), "{name}: {msg}");
        // The temporary path means nothing to a person and must not leak.
        assert!(!msg.contains("/tmp/"), "{name}: {msg}");
    }
    assert!(store.list().unwrap().is_empty());
    assert_eq!(files(&dir.path().join("blobs")), Vec::<String>::new());
    assert_clean(dir.path());
}

#[test]
fn the_real_model_imports_and_its_truncations_do_not() {
    let Some(model) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = std::fs::read(&model).unwrap();
    for (cut, needle) in [
        (1000, "left in the file"),
        (bytes.len() / 2, "runs past the end of the file"),
        (bytes.len() - 1, "runs past the end of the file"),
    ] {
        let err = import(&store, &bytes[..cut], "cut").unwrap_err();
        assert_eq!(err.code(), "invalid_model");
        assert!(err.to_string().contains(needle), "{cut}: {err}");
    }
    let (entry, _) = import(&store, &bytes, "SmolLM2").unwrap();
    assert_eq!(entry.architecture, "llama");
    assert_eq!(entry.quantization, "Q4_1");
    assert!(
        (130_000_000..140_000_000).contains(&entry.parameters),
        "{}",
        entry.parameters
    );
    assert_eq!(entry.context_length, 8192);
    assert!(entry.has_chat_template);
    assert_eq!(
        entry.digest,
        "sha256-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert_clean(dir.path());
}

#[test]
fn traversal_names_and_ids_are_refused_before_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bytes = tiny_gguf(16, 3);
    import(&store, &bytes, "ok").unwrap();
    for bad in [
        "../x",
        "..",
        "%2e%2e",
        "%252e%252e",
        "..\\x",
        "a\\b",
        "/etc/passwd",
        "a/b",
        "x\0y",
        "",
    ] {
        assert_eq!(
            import(&store, &bytes, bad).unwrap_err().code(),
            "invalid_name",
            "{bad:?}"
        );
        assert_eq!(
            store.get(bad).unwrap_err().code(),
            "invalid_name",
            "{bad:?}"
        );
        assert_eq!(store.rename("ok", bad).unwrap_err().code(), "invalid_name");
        assert_eq!(store.delete(bad).unwrap_err().code(), "invalid_name");
        assert!(store.upload(bad).is_err());
        assert!(store.import_status(bad).is_err());
    }
    for bad in [
        "../x.gguf",
        "a/b.gguf",
        "a\\b.gguf",
        "/abs.gguf",
        "x\0.gguf",
        "..",
    ] {
        assert_eq!(
            store.create_upload(bad, 10).unwrap_err().code(),
            "invalid_name"
        );
    }
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(files(&dir.path().join("uploads")), Vec::<String>::new());
}

#[test]
fn fit_and_disk_checks_refuse_with_the_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.memory.fixed = Some(1000);
    let store = Store::open(config).unwrap();
    let err = import(&store, &tiny_gguf(16, 4), "big").unwrap_err();
    assert_eq!(err.code(), "does_not_fit");
    let msg = err.to_string();
    assert!(msg.contains("needs ") && msg.contains("available"), "{msg}");
    assert_clean(dir.path());
    let err = store.create_upload("huge.gguf", 1 << 60).unwrap_err();
    assert_eq!(err.code(), "insufficient_storage");
    assert!(err.to_string().contains("needs 1073741824.0 GiB"), "{err}");
}

#[test]
fn an_upload_cut_halfway_resumes_after_a_restart_and_is_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = tiny_gguf(4096, 5);
    let half = bytes.len() / 2;
    let id = {
        let store = open(dir.path());
        let up = store
            .create_upload("My Model.gguf", bytes.len() as u64)
            .unwrap();
        let mut chunk = store.chunk(&up.id, 0).unwrap();
        chunk.write(&bytes[..half]).unwrap();
        // The connection drops here: what arrived is kept.
        let up = chunk.finish().unwrap();
        assert_eq!(up.received, half as u64);
        assert!(store.list().unwrap().is_empty());
        assert_eq!(
            store.finish_upload(&up.id, None).unwrap_err().code(),
            "incomplete"
        );
        up.id
    };
    // hearthd restarts.
    let store = open(dir.path());
    assert!(store.list().unwrap().is_empty());
    let up = store.upload(&id).unwrap();
    assert_eq!(up.received, half as u64);
    assert_eq!(store.chunk(&id, 0).unwrap_err().code(), "offset_mismatch");
    let mut chunk = store.chunk(&id, up.received).unwrap();
    assert_eq!(
        store.chunk(&id, up.received).unwrap_err().code(),
        "upload_busy"
    );
    assert_eq!(chunk.write(&[0; 1 << 20]).unwrap_err().code(), "too_large");
    chunk.write(&bytes[half..]).unwrap();
    chunk.finish().unwrap();
    let (entry, _) = store.finish_upload(&id, None).unwrap();
    assert_eq!(entry.name, "My-Model");
    assert_eq!(entry.digest, sha256_hex(&bytes));
    assert_eq!(files(&dir.path().join("uploads")), Vec::<String>::new());
    assert!(store.upload(&id).is_err());

    // A cancelled upload leaves nothing.
    let up = store.create_upload("x.gguf", 100).unwrap();
    let mut chunk = store.chunk(&up.id, 0).unwrap();
    chunk.write(&[1; 50]).unwrap();
    chunk.finish().unwrap();
    store.cancel_upload(&up.id).unwrap();
    assert_eq!(files(&dir.path().join("uploads")), Vec::<String>::new());

    // A finished upload of a broken file is refused and cleaned up.
    let up = store.create_upload("broken.gguf", 100).unwrap();
    let mut chunk = store.chunk(&up.id, 0).unwrap();
    chunk.write(&[7; 100]).unwrap();
    chunk.finish().unwrap();
    assert_eq!(
        store.finish_upload(&up.id, None).unwrap_err().code(),
        "invalid_model"
    );
    assert_eq!(files(&dir.path().join("uploads")), Vec::<String>::new());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn a_flipped_bit_is_quarantined_by_the_scrub_and_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (good, _) = import(&store, &tiny_gguf(1024, 6), "good").unwrap();
    let (bad, _) = import(&store, &tiny_gguf(1024, 7), "flipped").unwrap();
    let blob = dir.path().join("blobs").join(&bad.digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 10;
    bytes[last] ^= 0x04;
    std::fs::write(&blob, &bytes).unwrap();
    let changes = store.subscribe();
    assert_eq!(store.scrub_now().unwrap(), vec!["flipped".to_owned()]);
    assert!(changes.has_changed().unwrap());
    let status = store.scrub_status();
    assert_eq!((status.checked, status.running), (2, false));
    let listed = store.list().unwrap();
    assert!(listed.iter().any(|e| e.name == "flipped" && e.damaged));
    assert!(listed.iter().any(|e| e.name == "good" && !e.damaged));
    let loadable: Vec<String> = store.loadable().unwrap().into_iter().map(|l| l.0).collect();
    assert_eq!(loadable, ["good"]);
    assert!(!blob.exists());
    assert!(dir.path().join("quarantine").join(&bad.digest).exists());
    drop(store);
    let store = open(dir.path());
    assert!(store.get("flipped").unwrap().damaged);
    assert_eq!(store.scrub_now().unwrap(), Vec::<String>::new());
    assert!(!store.get(&good.name).unwrap().damaged);
    // A damaged model can be deleted, quarantined blob and all.
    store.delete("flipped").unwrap();
    assert_eq!(files(&dir.path().join("quarantine")), Vec::<String>::new());
}

#[test]
fn rename_default_and_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, _) = import(&store, &tiny_gguf(16, 8), "a").unwrap();
    import(&store, &tiny_gguf(16, 9), "b").unwrap();
    store.set_default("a").unwrap();
    assert_eq!(store.rename("a", "b").unwrap_err().code(), "name_taken");
    assert_eq!(
        store.rename("a", "dev-model").unwrap_err().code(),
        "name_taken"
    );
    assert_eq!(
        store.rename("dev-model", "z").unwrap_err().code(),
        "path_model"
    );
    assert_eq!(store.delete("dev-model").unwrap_err().code(), "path_model");
    store.rename("a", "c").unwrap();
    assert_eq!(store.default_model().unwrap().as_deref(), Some("c"));
    assert_eq!(store.set_default("nope").unwrap_err().code(), "not_found");
    store.set_default("dev-model").unwrap();
    store.set_default("c").unwrap();
    store.delete("c").unwrap();
    assert_eq!(store.default_model().unwrap(), None);
    assert!(!dir.path().join("blobs").join(&a.digest).exists());
    assert_eq!(store.delete("c").unwrap_err().code(), "not_found");
    assert_eq!(store.list().unwrap().len(), 1);
}

/// Runs in a child process: imports a tiny model and aborts at the fault point in
/// `HEARTH_STORE_CRASH_AT`. Does nothing in a normal test run.
#[test]
fn crash_child() {
    let (Some(dir), Some(at)) = (
        std::env::var_os("HEARTH_STORE_CRASH_DIR"),
        std::env::var("HEARTH_STORE_CRASH_AT").ok(),
    ) else {
        return;
    };
    let mut config = config(Path::new(&dir));
    config.crash_at = Some(at.parse().unwrap());
    let store = Store::open(config).unwrap();
    let bytes = tiny_gguf(1 << 19, 10); // 2 MiB: several copy buffers
    let _ = import(&store, &bytes, "crashy");
    // Reaching here means the fault point was never hit.
    std::process::exit(3);
}

#[test]
fn a_crash_at_every_step_of_an_import_leaves_nothing_or_the_whole_model() {
    let bytes = tiny_gguf(1 << 19, 10);
    let exe = std::env::current_exe().unwrap();
    for point in 1..=LAST_FAULT_POINT {
        let dir = tempfile::tempdir().unwrap();
        // An older, complete model must survive every crash.
        {
            let store = open(dir.path());
            import(&store, &tiny_gguf(64, 11), "old").unwrap();
        }
        let status = std::process::Command::new(&exe)
            .args([
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("HEARTH_STORE_CRASH_DIR", dir.path())
            .env("HEARTH_STORE_CRASH_AT", point.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "point {point}: the child did not crash");
        assert_ne!(status.code(), Some(3), "point {point} was never reached");
        let store = open(dir.path());
        assert!(store.catalogue_ok().unwrap());
        assert_clean(dir.path());
        let listed = store.list().unwrap();
        assert!(
            listed.iter().any(|e| e.name == "old" && !e.damaged),
            "point {point}"
        );
        let crashy = listed.iter().find(|e| e.name == "crashy");
        // Up to the catalogue commit the model is absent; from then on it is whole.
        assert_eq!(crashy.is_some(), point >= LAST_FAULT_POINT, "point {point}");
        if let Some(e) = crashy {
            assert_eq!(e.digest, sha256_hex(&bytes));
            let blob = std::fs::read(dir.path().join("blobs").join(&e.digest)).unwrap();
            assert_eq!(sha256_hex(&blob), e.digest);
        }
        let mut blobs = files(&dir.path().join("blobs"));
        let mut want: Vec<String> = listed.iter().map(|e| e.digest.clone()).collect();
        blobs.sort();
        want.sort();
        assert_eq!(
            blobs, want,
            "point {point}: blobs without a row (or rows without a blob)"
        );
        assert_eq!(store.scrub_now().unwrap(), Vec::<String>::new());
    }
}

#[test]
fn media_listing_reads_only_regular_files_and_never_follows_links() {
    let dir = tempfile::tempdir().unwrap();
    let media = tempfile::tempdir().unwrap();
    let m = media.path();
    let model = tiny_gguf(256, 12);
    std::fs::create_dir_all(m.join("stick/sub")).unwrap();
    std::fs::write(m.join("stick/a.gguf"), &model).unwrap();
    std::fs::write(m.join("stick/sub/b.GGUF"), &model).unwrap();
    std::fs::write(m.join("stick/notes.txt"), b"hi").unwrap();
    std::fs::write(m.join("stick/.hidden.gguf"), &model).unwrap();
    std::os::unix::fs::symlink(m.join("stick/a.gguf"), m.join("stick/link.gguf")).unwrap();
    std::os::unix::fs::symlink("/", m.join("stick/root")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", m.join("stick/passwd.gguf")).unwrap();
    nix::unistd::mkfifo(&m.join("stick/fifo.gguf"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    // A sparse 2 TiB file: listed, refused up front for disk space, never read.
    let sparse = std::fs::File::create(m.join("stick/huge.gguf")).unwrap();
    sparse.set_len(2 << 40).unwrap();
    drop(sparse);

    let mut cfg = config(dir.path());
    cfg.media_dir = Some(m.to_owned());
    let store = Store::open(cfg).unwrap();
    let listed: Vec<String> = store.media_files().into_iter().map(|f| f.path).collect();
    assert_eq!(
        listed,
        ["stick/a.gguf", "stick/huge.gguf", "stick/sub/b.GGUF"]
    );

    for bad in [
        "stick/link.gguf",
        "stick/fifo.gguf",
        "stick/passwd.gguf",
        "stick/root/etc/passwd",
        "../etc/passwd",
        "/etc/passwd",
        "stick/../stick/a.gguf",
        "stick/notes.txt",
    ] {
        let err = store.start_media_import(bad, None).unwrap_err();
        assert_eq!(err.code(), "invalid_path", "{bad}");
    }
    let start = Instant::now();
    let err = store
        .start_media_import("stick/huge.gguf", None)
        .unwrap_err();
    assert_eq!(err.code(), "insufficient_storage");
    assert!(start.elapsed() < Duration::from_secs(2));

    let job = store.start_media_import("stick/sub/b.GGUF", None).unwrap();
    let done = loop {
        let s = store.import_status(&job.id).unwrap();
        if !matches!(s.state, ImportState::Copying | ImportState::Verifying) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(done.state, ImportState::Done, "{done:?}");
    assert_eq!(done.copied, model.len() as u64);
    let entry = done.model.unwrap();
    assert_eq!((entry.name.as_str(), entry.source), ("b", Source::Usb));
    assert_eq!(entry.digest, sha256_hex(&model));
    assert_clean(dir.path());
}

#[test]
fn the_media_view_moves_its_generation_only_when_the_listing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let media = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.media_dir = Some(media.path().to_owned());
    let store = Store::open(cfg).unwrap();
    let first = store.media();
    assert_eq!((first.generation, first.files.len()), (1, 0));
    assert!(first.changed_at.is_some() && first.checked_at.is_some());
    assert_eq!(store.poll_media(), None, "nothing changed");
    std::fs::create_dir(media.path().join("stick")).unwrap();
    std::fs::write(media.path().join("stick/m.gguf"), tiny_gguf(64, 1)).unwrap();
    let plugged = store.poll_media().expect("a new stick is a change");
    assert_eq!(plugged.generation, 2);
    assert_eq!(plugged.files[0].path, "stick/m.gguf");
    assert_eq!(store.poll_media(), None);
    assert_eq!(store.media(), plugged);
    // A file growing while it is copied onto the stick is a change too.
    std::fs::write(media.path().join("stick/m.gguf"), tiny_gguf(128, 1)).unwrap();
    assert_eq!(store.poll_media().map(|v| v.generation), Some(3));
    std::fs::remove_dir_all(media.path().join("stick")).unwrap();
    let gone = store.poll_media().expect("a pulled stick is a change");
    assert_eq!((gone.generation, gone.files.len()), (4, 0));
}

/// Mounts a small tmpfs (needs root; skipped otherwise) so the disk really fills.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        if std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here");
            return None;
        }
        Some(Self(dir))
    }

    /// Fills the filesystem with a file until the disk is full.
    fn fill(&self) -> std::path::PathBuf {
        let path = self.0.path().join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0]);
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// A reader that fills the disk after handing out its first chunk.
struct FillingReader<'a> {
    data: &'a [u8],
    pos: usize,
    tmpfs: &'a Tmpfs,
    filled: bool,
}

impl Read for FillingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos > 0 && !self.filled {
            self.tmpfs.fill();
            self.filled = true;
        }
        let n = buf.len().min(self.data.len() - self.pos).min(256 * 1024);
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn a_full_disk_gives_a_clear_error_removes_the_partial_and_recovers() {
    let Some(tmpfs) = Tmpfs::mount("6m") else {
        return;
    };
    let root = tmpfs.0.path().join("models");
    let store = open(&root);
    let bytes = tiny_gguf(1 << 20, 13); // 4 MiB
    let mut reader = FillingReader {
        data: &bytes,
        pos: 0,
        tmpfs: &tmpfs,
        filled: false,
    };
    let err = store
        .import_reader(
            &mut reader,
            bytes.len() as u64,
            "full",
            Source::Usb,
            &AtomicU64::new(0),
            &AtomicBool::new(false),
        )
        .unwrap_err();
    assert_eq!(err.code(), "disk_full", "{err}");
    assert!(err.to_string().contains("disk is full"), "{err}");
    assert_clean(&root);
    assert!(store.list().unwrap().is_empty());
    // Up-front check from the declared size while the disk is still full.
    assert_eq!(
        store.create_upload("x.gguf", 1 << 20).unwrap_err().code(),
        "insufficient_storage"
    );
    // Space returns: the same store imports without a restart.
    std::fs::remove_file(tmpfs.0.path().join("filler")).unwrap();
    import(&store, &bytes, "fine").unwrap();

    // An upload that meets a full disk is cancelled and its partial removed.
    let small = tiny_gguf(1 << 18, 14); // 1 MiB
    let up = store.create_upload("up.gguf", small.len() as u64).unwrap();
    let mut chunk = store.chunk(&up.id, 0).unwrap();
    chunk.write(&small[..4096]).unwrap();
    tmpfs.fill();
    let mut result = Ok(());
    for piece in small[4096..].chunks(64 * 1024) {
        result = chunk.write(piece);
        if result.is_err() {
            break;
        }
    }
    let err = result
        .err()
        .or_else(|| chunk.finish().err())
        .expect("the disk filled");
    assert_eq!(err.code(), "disk_full", "{err}");
    assert!(store.upload(&up.id).is_err());
    assert_eq!(files(&root.join("uploads")), Vec::<String>::new());
    assert_eq!(store.list().unwrap().len(), 1);
}

/// Import throughput against a plain copy of the same file on the same disk, alternating so
/// both see the same load. Run by hand: `cargo test --release -p hearth-store --test store
/// -- --ignored --nocapture measure`.
#[test]
#[ignore]
fn measure_import_throughput_against_cp() {
    let dir = std::env::var_os("HEARTH_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/hearth/models")
        });
    let src = dir.join("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf");
    let size = std::fs::metadata(&src).unwrap().len() as f64 / 1e6;
    let work = tempfile::tempdir_in(dir.parent().unwrap()).unwrap();
    for round in 0..3 {
        let dst = work.path().join("copy.gguf");
        let t = Instant::now();
        let status = std::process::Command::new("cp")
            .arg(&src)
            .arg(&dst)
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::File::open(&dst).unwrap().sync_all().unwrap();
        let cp = t.elapsed().as_secs_f64();
        std::fs::remove_file(&dst).unwrap();
        let root = work.path().join(format!("store{round}"));
        let store = open(&root);
        let t = Instant::now();
        let mut f = std::fs::File::open(&src).unwrap();
        store
            .import_reader(
                &mut f,
                std::fs::metadata(&src).unwrap().len(),
                "q",
                Source::Usb,
                &AtomicU64::new(0),
                &AtomicBool::new(false),
            )
            .unwrap();
        let import = t.elapsed().as_secs_f64();
        eprintln!(
            "round {round}: cp + fsync {:.0} MB/s, store import (hash, fsync, validate, rename) {:.0} MB/s",
            size / cp,
            size / import
        );
        drop(store);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
