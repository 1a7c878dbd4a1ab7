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
    let listed: Vec<&str> = media["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
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
        let g = import("STICK/gemma.gguf");
        assert_eq!(g["error"]["code"], "unsupported_architecture", "{g}");
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
