//! The model library end to end: the real hearthd over HTTP, importing the real test models
//! by resumable upload and from a directory standing in for a USB stick, then chatting with
//! them; bad files, a cut connection, a flipped bit and a restart along the way.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hearth_e2e::{Box_, OWNER, OWNER_PASSWORD, QWEN2, SMOLLM2, chat, model};
use serde_json::{Value, json};

/// A browser-like client of the `/ui/*` routes: logged in with the session cookie, sending
/// the CSRF header on every state-changing request.
struct Ui {
    base: String,
    cookie: String,
    csrf: String,
    agent: ureq::Agent,
}

fn parse(mut res: ureq::http::Response<ureq::Body>) -> Result<(u16, Value)> {
    let status = res.status().as_u16();
    let text = res.body_mut().read_to_string()?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

impl Ui {
    fn login(b: &Box_) -> Result<Self> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let res = agent
            .post(format!("{}/ui/login", b.base))
            .send_json(json!({"name": OWNER, "password": OWNER_PASSWORD}))?;
        let cookie = res
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| v.split(';').next().filter(|c| c.contains("hearth_session")))
            .map(str::to_owned);
        let (status, body) = parse(res)?;
        let Some(cookie) = cookie else {
            bail!("login failed: {status} {body}");
        };
        Ok(Self {
            base: b.base.clone(),
            cookie,
            csrf: body["csrf"].as_str().unwrap_or_default().to_owned(),
            agent,
        })
    }

    fn get(&self, path: &str) -> Result<(u16, Value)> {
        parse(
            self.agent
                .get(format!("{}{path}", self.base))
                .header("Cookie", &self.cookie)
                .call()?,
        )
    }

    fn send(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let res = match method {
            "POST" => {
                let r = self.agent.post(url).header("Cookie", &self.cookie);
                r.header("X-CSRF-Token", &self.csrf)
                    .send_json(body.cloned().unwrap_or(json!({})))?
            }
            "PATCH" => {
                let r = self.agent.patch(url).header("Cookie", &self.cookie);
                r.header("X-CSRF-Token", &self.csrf)
                    .send_json(body.cloned().unwrap_or(json!({})))?
            }
            "DELETE" => self
                .agent
                .delete(url)
                .header("Cookie", &self.cookie)
                .header("X-CSRF-Token", &self.csrf)
                .call()?,
            _ => bail!("method {method}"),
        };
        parse(res)
    }

    fn put_chunk(&self, id: &str, offset: u64, bytes: &[u8]) -> Result<(u16, Value)> {
        parse(
            self.agent
                .put(format!(
                    "{}/ui/models/uploads/{id}?offset={offset}",
                    self.base
                ))
                .header("Cookie", &self.cookie)
                .header("X-CSRF-Token", &self.csrf)
                .header("Content-Type", "application/octet-stream")
                .send(bytes)?,
        )
    }

    /// Sends a chunk's headers and only `sent` of its `declared` bytes, then drops the
    /// connection, as a browser on a flaky network would.
    fn cut_chunk(&self, id: &str, offset: u64, bytes: &[u8], declared: usize) -> Result<()> {
        let addr = self.base.trim_start_matches("http://");
        let mut s = std::net::TcpStream::connect(addr)?;
        write!(
            s,
            "PUT /ui/models/uploads/{id}?offset={offset} HTTP/1.1\r\nHost: {addr}\r\n\
             Cookie: {}\r\nX-CSRF-Token: {}\r\nContent-Type: application/octet-stream\r\n\
             Content-Length: {declared}\r\n\r\n",
            self.cookie, self.csrf
        )?;
        s.write_all(bytes)?;
        s.flush()?;
        std::thread::sleep(Duration::from_millis(300));
        drop(s);
        Ok(())
    }

    /// Uploads `path` in 8 MiB chunks, cutting the connection once in the middle of the
    /// second chunk and resuming from what the box says it received. Returns the finish answer.
    fn upload(&self, path: &Path, name: Option<&str>) -> Result<(u16, Value)> {
        let bytes = std::fs::read(path)?;
        let filename = path.file_name().unwrap().to_string_lossy().into_owned();
        let (status, body) = self.send(
            "POST",
            "/ui/models/uploads",
            Some(&json!({"filename": filename, "size": bytes.len()})),
        )?;
        assert_eq!(status, 201, "{body}");
        let id = body["upload"]["id"].as_str().unwrap().to_owned();
        const CHUNK: usize = 8 << 20;
        let mut offset = 0usize;
        let mut cut_done = false;
        while offset < bytes.len() {
            let end = (offset + CHUNK).min(bytes.len());
            if offset > 0 && !cut_done && end - offset > 4096 {
                cut_done = true;
                self.cut_chunk(
                    &id,
                    offset as u64,
                    &bytes[offset..offset + 4096],
                    end - offset,
                )?;
                // The box keeps what arrived; ask it where to go on.
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let (_, up) = self.get(&format!("/ui/models/uploads/{id}"))?;
                    let received = up["upload"]["received"].as_u64().unwrap() as usize;
                    if received == offset + 4096 {
                        offset = received;
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "the cut chunk never landed: {up}"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                // A chunk at the old offset is refused.
                let (status, body) = self.put_chunk(&id, 0, &bytes[..10])?;
                assert_eq!(
                    (status, &body["error"]["code"]),
                    (409, &json!("offset_mismatch"))
                );
                continue;
            }
            let (status, body) = self.put_chunk(&id, offset as u64, &bytes[offset..end])?;
            assert_eq!(status, 200, "{body}");
            offset = end;
            assert_eq!(body["upload"]["received"], offset);
        }
        let finish = match name {
            Some(n) => json!({"name": n}),
            None => json!({}),
        };
        self.send(
            "POST",
            &format!("/ui/models/uploads/{id}/finish"),
            Some(&finish),
        )
    }

    fn wait_loaded(&self, b: &mut Box_, name: &str) -> Result<Value> {
        let mut last = Value::Null;
        b.wait_until(Duration::from_secs(120), |_| {
            let (_, list) = self.get("/ui/models")?;
            let m = list["models"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
                .unwrap_or_default();
            last = m.clone();
            Ok(m["loaded"] == "ready")
        })
        .map_err(|e| anyhow::anyhow!("{e}: {last}"))?;
        Ok(last)
    }
}

fn ask(b: &Box_, model: &str) -> String {
    let (status, body) = b
        .post(
            "/v1/chat/completions",
            &chat(
                model,
                "What is the capital of France?",
                json!({"max_tokens": 12, "temperature": 0}),
            ),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn upload_with_a_dropped_connection_then_chat_delete_and_refusals() {
    let Some(smol) = model(SMOLLM2) else { return };
    let mut b = Box_::start(&[]).unwrap();
    let ui = Ui::login(&b).unwrap();
    let (status, list) = ui.get("/ui/models").unwrap();
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["models"], json!([]));
    assert!(list["disk"]["free"].as_u64().unwrap() > 0);

    let size = std::fs::metadata(&smol).unwrap().len();
    let start = Instant::now();
    let (status, body) = ui.upload(&smol, Some("smol")).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(status, 201, "{body}");
    eprintln!(
        "upload + verify of {} MB over HTTP: {:.2} s, {:.0} MB/s",
        size / 1_000_000,
        secs,
        size as f64 / 1e6 / secs
    );
    let m = &body["model"];
    assert_eq!(
        m["digest"],
        "sha256-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    );
    assert_eq!(
        (m["architecture"].as_str(), m["quantization"].as_str()),
        (Some("llama"), Some("Q4_1"))
    );
    assert_eq!(m["source"], "upload");
    // Nothing is left of the upload session.
    assert_eq!(
        ui.get("/ui/models/uploads").unwrap().1["uploads"],
        json!([])
    );
    let blobs = b.data.path().join("models/blobs");
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 1);

    // The worker loads it without a restart and it answers.
    let pid = b.worker_pid();
    ui.wait_loaded(&mut b, "smol").unwrap();
    assert_eq!(
        b.worker_pid(),
        pid,
        "the worker was restarted instead of told"
    );
    let answer = ask(&b, "smol");
    assert!(!answer.trim().is_empty(), "{answer:?}");

    // Bad uploads: a truncated GGUF and garbage are refused with what is wrong.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&smol).unwrap();
    let cut = dir.path().join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let (status, body) = ui.upload(&cut, None).unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (422, &json!("invalid_model")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("past the end"),
        "{body}"
    );
    let (status, body) = ui
        .send(
            "POST",
            "/ui/models/uploads",
            Some(&json!({"filename": "../../etc/x.gguf", "size": 10})),
        )
        .unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (400, &json!("invalid_name"))
    );
    let (status, body) = ui
        .send(
            "POST",
            "/ui/models/uploads",
            Some(&json!({"filename": "huge.gguf", "size": 1u64 << 60})),
        )
        .unwrap();
    assert_eq!(
        (status, &body["error"]["code"]),
        (507, &json!("insufficient_storage"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GiB available"),
        "{body}"
    );
    for bad in ["%2e%2e", "..%2f..%2fetc", "%252e%252e", "a%5cb", "a%00b"] {
        let (status, _) = ui.get(&format!("/ui/models/{bad}")).unwrap();
        assert!(status == 400 || status == 404, "{bad}: {status}");
        let (status, _) = ui
            .send("DELETE", &format!("/ui/models/{bad}"), None)
            .unwrap();
        assert!(status == 400 || status == 404, "{bad}: {status}");
    }
    let (status, _) = ui.get("/ui/models/uploads/..%2f..%2fhearth.db").unwrap();
    assert_eq!(status, 400);
    // Without a session the routes are closed.
    let (status, _) = parse(
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent()
            .get(format!("{}/ui/models", b.base))
            .call()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(status, 401);

    // Default, rename (reloads under the new name), delete (unloads).
    let (status, body) = ui
        .send(
            "PATCH",
            "/ui/models/smol",
            Some(&json!({"name": "smol2", "default": true})),
        )
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"]["default"], true);
    ui.wait_loaded(&mut b, "smol2").unwrap();
    let (status, _) = ui.send("DELETE", "/ui/models/smol2", None).unwrap();
    assert_eq!(status, 204);
    assert_eq!(std::fs::read_dir(&blobs).unwrap().count(), 0);
    b.wait_until(Duration::from_secs(20), |b| {
        let (_, body) = b.post(
            "/v1/chat/completions",
            &chat("smol2", "hi", json!({"max_tokens": 2})),
        )?;
        Ok(body["error"]["code"] == "model_not_found")
    })
    .unwrap();
}

#[test]
fn import_from_a_directory_standing_in_for_a_usb_stick() {
    let Some(smol) = model(SMOLLM2) else { return };
    let stick = tempfile::tempdir().unwrap();
    let s = stick.path().join("STICK");
    std::fs::create_dir_all(s.join("models")).unwrap();
    std::fs::copy(&smol, s.join("models").join(SMOLLM2)).unwrap();
    if let Some(qwen) = model(QWEN2) {
        std::fs::copy(&qwen, s.join(QWEN2)).unwrap();
    }
    let gemma = model("gemma-3-270m-q4_k_m.gguf");
    if let Some(g) = &gemma {
        std::fs::copy(g, s.join("gemma.gguf")).unwrap();
    }
    std::os::unix::fs::symlink(&smol, s.join("link.gguf")).unwrap();
    std::os::unix::fs::symlink("/", s.join("root")).unwrap();
    std::fs::write(s.join("broken.gguf"), b"GGUF but not really").unwrap();
    let config = stick.path().join("hearth.toml");
    std::fs::write(&config, format!("media_dir = {:?}\n", stick.path())).unwrap();
    let mut b = Box_::start(&["--config".as_ref(), config.as_os_str()]).unwrap();
    let ui = Ui::login(&b).unwrap();

    let (status, media) = ui.get("/ui/models/media").unwrap();
    assert_eq!(status, 200, "{media}");
    let listed = media_paths(&media);
    assert!(
        listed.contains(&"STICK/models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "{media}"
    );
    assert!(
        !listed
            .iter()
            .any(|p| p.contains("link") || p.contains("root")),
        "{media}"
    );

    let import = |path: &str| -> Value {
        let (status, body) = ui
            .send(
                "POST",
                "/ui/models/media/import",
                Some(&json!({"path": path})),
            )
            .unwrap();
        assert_eq!(status, 202, "{body}");
        let id = body["import"]["id"].as_str().unwrap().to_owned();
        let start = Instant::now();
        loop {
            let (_, s) = ui.get(&format!("/ui/models/imports/{id}")).unwrap();
            let state = s["import"]["state"].as_str().unwrap_or_default().to_owned();
            if state != "copying" && state != "verifying" {
                let size = s["import"]["size"].as_f64().unwrap();
                eprintln!(
                    "import of {path}: {state} in {:.2} s ({:.0} MB/s)",
                    start.elapsed().as_secs_f64(),
                    size / 1e6 / start.elapsed().as_secs_f64()
                );
                return s["import"].clone();
            }
            assert!(start.elapsed() < Duration::from_secs(120));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for bad in [
        "STICK/link.gguf",
        "STICK/root/etc/passwd",
        "../etc/passwd",
        "/etc/passwd",
    ] {
        let (status, body) = ui
            .send(
                "POST",
                "/ui/models/media/import",
                Some(&json!({"path": bad})),
            )
            .unwrap();
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_path")),
            "{bad}"
        );
    }
    let done = import("STICK/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["model"]["source"], "usb");
    let broken = import("STICK/broken.gguf");
    assert_eq!(
        (broken["state"].as_str(), broken["error"]["code"].as_str()),
        (Some("failed"), Some("invalid_model")),
        "{broken}"
    );
    if gemma.is_some() {
        // The engine runs gemma3: the library takes it and it answers.
        let g = import("STICK/gemma.gguf");
        assert_eq!(g["state"], "done", "{g}");
        let name = g["model"]["name"].as_str().unwrap().to_owned();
        assert_eq!(g["model"]["architecture"], "gemma3", "{g}");
        ui.wait_loaded(&mut b, &name).unwrap();
        assert!(!ask(&b, &name).trim().is_empty());
    }
    if model(QWEN2).is_some() {
        let q = import(&format!("STICK/{QWEN2}"));
        assert_eq!(q["state"], "done", "{q}");
        let name = q["model"]["name"].as_str().unwrap().to_owned();
        ui.wait_loaded(&mut b, &name).unwrap();
        assert!(!ask(&b, &name).is_empty());
    }
    let name = "SmolLM2-135M-Instruct.Q4_1";
    ui.wait_loaded(&mut b, name).unwrap();
    assert!(!ask(&b, name).trim().is_empty());

    // A bit flips at rest: the scrub quarantines it, the box keeps serving, and a restart
    // keeps it out.
    let digest = done["model"]["digest"].as_str().unwrap();
    let blob = b.data.path().join("models/blobs").join(digest);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&blob)
        .unwrap();
    let mut byte = [0u8; 1];
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(50_000_000)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(50_000_000)).unwrap();
    f.write_all(&[byte[0] ^ 1]).unwrap();
    drop(f);
    let (status, _) = ui.send("POST", "/ui/models/scrub", None).unwrap();
    assert_eq!(status, 202);
    b.wait_until(Duration::from_secs(60), |_| {
        let (_, s) = ui.get("/ui/models/scrub")?;
        Ok(s["scrub"]["running"] == false && s["scrub"]["damaged"] == json!([name]))
    })
    .unwrap();
    let (_, list) = ui.get("/ui/models").unwrap();
    let m = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap();
    assert_eq!(m["state"], "damaged", "{m}");
    b.wait_until(Duration::from_secs(20), |b| {
        let (_, body) = b.post(
            "/v1/chat/completions",
            &chat(name, "hi", json!({"max_tokens": 2})),
        )?;
        Ok(body["error"]["code"] == "model_not_found")
    })
    .unwrap();
    assert_eq!(b.get("/healthz").unwrap().0, 200);
}

// A llama GGUF the store accepts, small enough to import seven times a test; the worker
// cannot run it (no tokenizer), which does not matter to the library.
#[path = "../../../appliance/store/tests/common/gguf.rs"]
mod tiny;
use tiny::tiny_gguf;

fn sha256_name(bytes: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(bytes);
    format!(
        "sha256-{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// Every file below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, base, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn names(list: &Value) -> Vec<String> {
    list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect()
}

/// How the model reaches the box in one crash run.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    Upload,
    Media,
}

/// One crash run: a fresh box told (`HEARTH_TEST_CRASH_AT`) to abort at `point`, the model
/// sent `via` HTTP, hearthd seen dying, restarted without the fault, then the library checked
/// over HTTP (nothing or the whole verified model; an unfinished upload resumes) and on disk
/// (no partial or temporary file left, every blob listed and whole). Returns the restarted box.
fn crash_once(point: u32, via: Via, file: &Path, stick: &Path) -> (Box_, Ui) {
    let bytes = std::fs::read(file).unwrap();
    let digest = sha256_name(&bytes);
    let config = stick.join("hearth.toml");
    std::fs::write(&config, format!("media_dir = {:?}\n", stick.join("media"))).unwrap();
    let args = ["--config".as_ref(), config.as_os_str()];
    let point_s = point.to_string();
    let env = [("HEARTH_TEST_CRASH_AT", point_s.as_ref())];
    let mut b = Box_::start_with_env(tempfile::tempdir().unwrap(), &args, &env).unwrap();
    let ui = Ui::login(&b).unwrap();
    let what = format!("point {point} via {via:?}");
    let size = bytes.len();
    match via {
        Via::Upload => {
            let filename = file.file_name().unwrap().to_string_lossy();
            let (status, body) = ui
                .send(
                    "POST",
                    "/ui/models/uploads",
                    Some(&json!({"filename": filename, "size": size})),
                )
                .unwrap();
            assert_eq!(status, 201, "{what}: {body}");
            let id = body["upload"]["id"].as_str().unwrap().to_owned();
            // Two chunks, then finish; the request that reaches the fault point gets no answer.
            let half = size / 2;
            let _ = ui
                .put_chunk(&id, 0, &bytes[..half])
                .and_then(|_| ui.put_chunk(&id, half as u64, &bytes[half..]))
                .and_then(|_| {
                    ui.send(
                        "POST",
                        &format!("/ui/models/uploads/{id}/finish"),
                        Some(&json!({"name": "crashy"})),
                    )
                });
        }
        Via::Media => {
            let rel = format!("STICK/{}", file.file_name().unwrap().to_string_lossy());
            let _ = ui.send(
                "POST",
                "/ui/models/media/import",
                Some(&json!({"path": rel, "name": "crashy"})),
            );
        }
    }
    let start = Instant::now();
    let status = loop {
        if let Some(status) = b.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what}: hearthd never reached the fault point"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(6), "{what}: {status} (not SIGABRT)");
    let log = std::fs::read_to_string(b.data.path().join("hearthd.log")).unwrap();
    assert!(
        log.contains("crashing at a configured fault point"),
        "{what}"
    );

    // Restart on the same data directory, without the fault.
    let data = std::mem::replace(&mut b.data, tempfile::tempdir().unwrap());
    drop(b);
    let b = Box_::start_in(data, &args).unwrap();
    let ui = Ui::login(&b).unwrap();
    let (status, list) = ui.get("/ui/models").unwrap();
    assert_eq!(status, 200, "{what}: {list}");
    let listed = names(&list);
    // Up to the catalogue commit the model is absent; from then on it is whole.
    let want: &[&str] = if point >= hearth_store_last_point() {
        &["crashy"]
    } else {
        &[]
    };
    assert_eq!(listed, want, "{what}: {list}");
    let (_, uploads) = ui.get("/ui/models/uploads").unwrap();
    let uploads = uploads["uploads"].as_array().unwrap().clone();
    if via == Via::Media || point >= 5 {
        // Media copies restart from scratch; after the rename nothing is left to resume.
        assert_eq!(uploads, Vec::<Value>::new(), "{what}");
    }
    if via == Via::Upload && point <= 4 {
        // The bytes were kept: resume from what the box says it has, then finish.
        assert_eq!(uploads.len(), 1, "{what}: {uploads:?}");
        let up = &uploads[0];
        let id = up["id"].as_str().unwrap();
        let received = up["received"].as_u64().unwrap() as usize;
        assert!(received <= size, "{what}: {up}");
        if received < size {
            let (status, body) = ui
                .put_chunk(id, received as u64, &bytes[received..])
                .unwrap();
            assert_eq!(status, 200, "{what}: {body}");
        }
        let (status, body) = ui
            .send(
                "POST",
                &format!("/ui/models/uploads/{id}/finish"),
                Some(&json!({"name": "crashy"})),
            )
            .unwrap();
        assert_eq!(status, 201, "{what}: {body}");
    }
    let (_, list) = ui.get("/ui/models").unwrap();
    for m in list["models"].as_array().unwrap() {
        assert_eq!(
            (&m["digest"], &m["size"], &m["state"]),
            (&json!(digest), &json!(size), &json!("ok")),
            "{what}: {m}"
        );
    }
    // On disk: no partial or temporary file, and exactly the listed blobs, each whole.
    let models = b.data.path().join("models");
    let files = tree(&models);
    let stray: Vec<&String> = files
        .iter()
        .filter(|f| {
            f.ends_with(".partial")
                || f.ends_with(".tmp")
                || f.starts_with("tmp/")
                || f.starts_with("uploads/")
                || f.starts_with("quarantine/")
        })
        .collect();
    assert!(stray.is_empty(), "{what}: stray files {stray:?}");
    let blobs: Vec<&String> = files.iter().filter(|f| f.starts_with("blobs/")).collect();
    let expect: Vec<String> = list["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| format!("blobs/{}", m["digest"].as_str().unwrap()))
        .collect();
    assert_eq!(blobs, expect.iter().collect::<Vec<_>>(), "{what}");
    for blob in &blobs {
        let stored = std::fs::read(models.join(blob)).unwrap();
        assert_eq!(&format!("blobs/{}", sha256_name(&stored)), *blob, "{what}");
    }
    (b, ui)
}

fn hearth_store_last_point() -> u32 {
    // hearth_store::LAST_FAULT_POINT (the e2e crate talks to the box only over HTTP).
    7
}

#[test]
fn hearthd_killed_at_every_import_step_keeps_nothing_or_the_whole_model() {
    let Some(smol) = model(SMOLLM2) else { return };
    let stick = tempfile::tempdir().unwrap();
    let media = stick.path().join("media/STICK");
    std::fs::create_dir_all(&media).unwrap();
    let tiny = media.join("tiny.gguf");
    std::fs::write(&tiny, tiny_gguf(1 << 19, 7)).unwrap(); // 2 MiB
    let start = Instant::now();
    for point in 1..=hearth_store_last_point() {
        for via in [Via::Upload, Via::Media] {
            let (mut b, ui) = if point == hearth_store_last_point() && via == Via::Upload {
                // Once with the real model: after the crash it is listed, loads and answers.
                let (mut b, ui) = crash_once(point, via, &smol, stick.path());
                ui.wait_loaded(&mut b, "crashy").unwrap();
                assert!(!ask(&b, "crashy").trim().is_empty());
                (b, ui)
            } else {
                crash_once(point, via, &tiny, stick.path())
            };
            drop(ui);
            b.terminate().unwrap();
        }
    }
    eprintln!(
        "{} crash runs in {:.1} s",
        2 * hearth_store_last_point(),
        start.elapsed().as_secs_f64()
    );
}

/// The `path`s of a `GET /ui/models/media` answer.
fn media_paths(media: &Value) -> Vec<&str> {
    media["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect()
}

/// Polls `GET /ui/models/media` until `pred` holds (at most 8 s: the watcher lists `media_dir`
/// every 2 s by default); returns the answer and how long it took.
fn wait_media(ui: &Ui, what: &str, pred: impl Fn(&[&str]) -> bool) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let (status, media) = ui.get("/ui/models/media").unwrap();
        assert_eq!(status, 200, "{media}");
        let paths = media_paths(&media);
        if pred(&paths) {
            return (media.clone(), start.elapsed());
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{what}: not seen within 8 s: {media}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stick_plugged_in_while_hearthd_runs_is_noticed_and_one_pulled_out_is_gone() {
    let stick = tempfile::tempdir().unwrap();
    let media = stick.path().join("media");
    std::fs::create_dir_all(&media).unwrap();
    let config = stick.path().join("hearth.toml");
    std::fs::write(&config, format!("media_dir = {media:?}\n")).unwrap();
    let b = Box_::start(&["--config".as_ref(), config.as_os_str()]).unwrap();
    let ui = Ui::login(&b).unwrap();
    let (first, _) = wait_media(&ui, "empty", |p| p.is_empty());
    let g0 = first["generation"].as_u64().unwrap();
    assert!(g0 >= 1, "{first}");

    // A stick appears at once, as a mount does: a directory built aside, renamed in.
    let staging = stick.path().join("staging");
    std::fs::create_dir_all(staging.join("models")).unwrap();
    std::fs::write(staging.join("models/tiny.gguf"), tiny_gguf(1024, 3)).unwrap();
    std::fs::write(staging.join("notes.txt"), b"not a model").unwrap();
    std::fs::rename(&staging, media.join("KINGSTON")).unwrap();
    let (seen, after) = wait_media(&ui, "plugged in", |p| p == ["KINGSTON/models/tiny.gguf"]);
    eprintln!("a new stick was listed after {:.1} s", after.as_secs_f64());
    assert!(seen["generation"].as_u64().unwrap() > g0, "{seen}");
    assert!(seen["changed_at"].as_i64().is_some(), "{seen}");
    // The listing stays put while nothing changes.
    std::thread::sleep(Duration::from_millis(2500));
    let (_, same) = ui.get("/ui/models/media").unwrap();
    assert_eq!(same["generation"], seen["generation"]);
    assert!(same["checked_at"].as_i64() >= seen["checked_at"].as_i64());

    // What was noticed imports.
    let (status, body) = ui
        .send(
            "POST",
            "/ui/models/media/import",
            Some(&json!({"path": "KINGSTON/models/tiny.gguf"})),
        )
        .unwrap();
    assert_eq!(status, 202, "{body}");
    let id = body["import"]["id"].as_str().unwrap().to_owned();
    let start = Instant::now();
    loop {
        let (_, s) = ui.get(&format!("/ui/models/imports/{id}")).unwrap();
        if s["import"]["state"] == "done" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{s}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A real mount, when this machine allows one (root, not in a locked-down container).
    let mounted = media.join("SANDISK");
    std::fs::create_dir_all(&mounted).unwrap();
    let is_root =
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    let mount_ok = is_root
        && std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=16m", "hearth-test-stick"])
            .arg(&mounted)
            .status()
            .is_ok_and(|s| s.success());
    if mount_ok {
        std::fs::write(mounted.join("m.gguf"), tiny_gguf(1024, 4)).unwrap();
        wait_media(&ui, "mounted", |p| p.contains(&"SANDISK/m.gguf"));
        let ok = std::process::Command::new("umount")
            .arg(&mounted)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "umount {}", mounted.display());
        wait_media(&ui, "unmounted", |p| !p.contains(&"SANDISK/m.gguf"));
    } else {
        eprintln!("a real mount is not possible here; the directory stands in for it");
    }

    // Pulled out: gone from the listing.
    std::fs::remove_dir_all(media.join("KINGSTON")).unwrap();
    let (gone, _) = wait_media(&ui, "pulled out", |p| p.is_empty());
    assert!(gone["generation"].as_u64() > seen["generation"].as_u64());
    // The import made before survives the stick leaving.
    let (_, list) = ui.get("/ui/models").unwrap();
    assert_eq!(names(&list), ["tiny"], "{list}");
}

/// Runs the real `curl` with `args` and returns (HTTP status, parsed JSON body).
fn curl(args: &[&str]) -> (u16, Value) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl (scripts/test installs it)");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
    )
}

/// The README's way in: `curl` with the session cookie and CSRF header imports the three test
/// models from a directory standing in for a stick, then (after deleting them) by upload, each
/// file in one `PUT`; the imported models answer.
#[test]
fn curl_imports_the_three_test_models_from_a_directory_and_by_upload() {
    let (Some(smol), Some(qwen), Some(gemma)) = (
        model(SMOLLM2),
        model(QWEN2),
        model("gemma-3-270m-q4_k_m.gguf"),
    ) else {
        return;
    };
    let stick = tempfile::tempdir().unwrap();
    let dir = stick.path().join("media/STICK");
    std::fs::create_dir_all(&dir).unwrap();
    for m in [&smol, &qwen, &gemma] {
        let to = dir.join(m.file_name().unwrap());
        if std::fs::hard_link(m, &to).is_err() {
            std::fs::copy(m, &to).unwrap();
        }
    }
    let config = stick.path().join("hearth.toml");
    std::fs::write(
        &config,
        format!("media_dir = {:?}\n", stick.path().join("media")),
    )
    .unwrap();
    let mut b = Box_::start(&["--config".as_ref(), config.as_os_str()]).unwrap();
    let base = b.base.clone();
    let jar = stick.path().join("cookies");
    let jar = jar.to_str().unwrap();
    let login = json!({"name": OWNER, "password": OWNER_PASSWORD}).to_string();
    let (status, body) = curl(&[
        "-c",
        jar,
        "-H",
        "Content-Type: application/json",
        "-d",
        &login,
        &format!("{base}/ui/login"),
    ]);
    assert_eq!(status, 200, "{body}");
    let csrf = format!("X-CSRF-Token: {}", body["csrf"].as_str().unwrap());
    let send = |method: &str, path: &str, body: &Value| {
        curl(&[
            "-b",
            jar,
            "-X",
            method,
            "-H",
            &csrf,
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            &format!("{base}{path}"),
        ])
    };
    let get = |path: &str| curl(&["-b", jar, &format!("{base}{path}")]);

    // From the directory.
    let mut taken = Vec::new();
    for m in [&smol, &qwen, &gemma] {
        let file = m.file_name().unwrap().to_str().unwrap();
        let (status, body) = send(
            "POST",
            "/ui/models/media/import",
            &json!({"path": format!("STICK/{file}")}),
        );
        assert_eq!(status, 202, "{body}");
        let id = body["import"]["id"].as_str().unwrap().to_owned();
        let start = Instant::now();
        let done = loop {
            let (_, s) = get(&format!("/ui/models/imports/{id}"));
            let state = s["import"]["state"].as_str().unwrap_or_default().to_owned();
            if state != "copying" && state != "verifying" {
                break s["import"].clone();
            }
            assert!(start.elapsed() < Duration::from_secs(180), "{s}");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(done["state"], "done", "{file}: {done}");
        assert_eq!(done["model"]["source"], "usb");
        taken.push(done["model"]["name"].as_str().unwrap().to_owned());
    }
    let (_, list) = get("/ui/models");
    assert_eq!(names(&list).len(), 3, "{list}");
    for name in &taken {
        let (status, _) = curl(&[
            "-b",
            jar,
            "-X",
            "DELETE",
            "-H",
            &csrf,
            &format!("{base}/ui/models/{name}"),
        ]);
        assert_eq!(status, 204);
    }

    // By upload, each file in one PUT.
    let mut uploaded = Vec::new();
    for m in [&smol, &qwen, &gemma] {
        let file = m.file_name().unwrap().to_str().unwrap();
        let size = std::fs::metadata(m).unwrap().len();
        let (status, body) = send(
            "POST",
            "/ui/models/uploads",
            &json!({"filename": file, "size": size}),
        );
        assert_eq!(status, 201, "{body}");
        let id = body["upload"]["id"].as_str().unwrap().to_owned();
        let start = Instant::now();
        let (status, body) = curl(&[
            "-b",
            jar,
            "-H",
            &csrf,
            "-H",
            "Content-Type: application/octet-stream",
            "-T",
            m.to_str().unwrap(),
            &format!("{base}/ui/models/uploads/{id}?offset=0"),
        ]);
        assert_eq!((status, &body["upload"]["received"]), (200, &json!(size)));
        let (status, body) = send(
            "POST",
            &format!("/ui/models/uploads/{id}/finish"),
            &json!({}),
        );
        eprintln!(
            "curl upload + verify of {file}: {status} in {:.1} s ({:.0} MB/s)",
            start.elapsed().as_secs_f64(),
            size as f64 / 1e6 / start.elapsed().as_secs_f64()
        );
        assert_eq!(status, 201, "{file}: {body}");
        assert_eq!(body["model"]["source"], "upload");
        uploaded.push(body["model"]["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(uploaded, taken);
    assert_eq!(get("/ui/models/uploads").1["uploads"], json!([]));

    // They load and answer (through the API token, as the README shows).
    let ui = Ui::login(&b).unwrap();
    for name in &uploaded {
        ui.wait_loaded(&mut b, name).unwrap();
        assert!(!ask(&b, name).trim().is_empty(), "{name}");
    }
}
