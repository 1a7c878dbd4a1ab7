//! Helpers for the end-to-end tests: start the real `hearthd` (which starts the real worker)
//! on a real socket with a temporary data directory, and talk HTTP to it.
//!
//! Tests need the release binaries (`cargo build --release --workspace`) and the test models
//! (`../shared/scripts/fetch-models`); without a model a test says so and passes, unless
//! `HEARTH_REQUIRE_MODELS=1` (set by the project's test command) makes that a failure.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const QWEN2: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";

/// The test model called `file`, or `None` (after saying why) when it is not fetched.
pub fn model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("HEARTH_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| dirs_home().join(".cache/hearth/models"));
    let path = dir.join(file);
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("HEARTH_REQUIRE_MODELS").as_deref() == Ok("1") {
        panic!(
            "{} is missing; run ../shared/scripts/fetch-models",
            path.display()
        );
    }
    eprintln!(
        "skipped: {} is missing; run ../shared/scripts/fetch-models",
        path.display()
    );
    None
}

fn dirs_home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/".into())
}

/// Where cargo put the binaries of this build (the test executable lives in `deps/` below).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_owned()
}

/// A running hearthd with its own data directory; killed when dropped.
pub struct Box_ {
    pub child: Child,
    pub base: String,
    pub data: tempfile::TempDir,
    /// An API token of the owner, provisioned before start; sent on every request.
    pub token: String,
    agent: ureq::Agent,
}

/// The owner every test box is provisioned with (`hearthd admin create-owner`).
pub const OWNER: &str = "owner";
pub const OWNER_PASSWORD: &str = "owner password";

/// Runs `hearthd admin ...` against a data directory, as a provisioning script would.
pub fn admin(data: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use std::io::Write;
    let mut child = Command::new(bin_dir().join("hearthd"))
        .arg("admin")
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "hearthd admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Makes sure the box has its owner and returns a fresh API token for them.
pub fn provision(data: &Path) -> Result<String> {
    if let Err(e) = admin(
        data,
        &["create-owner", "--name", OWNER, "--password-stdin"],
        Some(&format!("{OWNER_PASSWORD}\n")),
    ) && !e.to_string().contains("already has an owner")
    {
        return Err(e);
    }
    admin(
        data,
        &["create-token", "--user", OWNER, "--name", "e2e"],
        None,
    )
}

impl Box_ {
    /// Starts hearthd with `args` on a free port and waits until it answers `/healthz`.
    pub fn start(args: &[&std::ffi::OsStr]) -> Result<Self> {
        let data = tempfile::tempdir()?;
        Self::start_in(data, args)
    }

    pub fn start_in(data: tempfile::TempDir, args: &[&std::ffi::OsStr]) -> Result<Self> {
        Self::start_with_env(data, args, &[])
    }

    /// Starts hearthd with extra environment variables (e.g. systemd's `NOTIFY_SOCKET`).
    pub fn start_with_env(
        data: tempfile::TempDir,
        args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        let token = provision(data.path())?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let hearthd = bin_dir().join("hearthd");
        // systemd sets WATCHDOG_PID to the service's pid; `exec` keeps the shell's pid for it.
        let child = Command::new("sh")
            .arg("-c")
            .arg(r#"export WATCHDOG_PID=$$; exec "$0" "$@""#)
            .arg(&hearthd)
            .arg("--data-dir")
            .arg(data.path())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .env("HEARTH_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(data.path().join("hearthd.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", hearthd.display()))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(600)))
            .build()
            .into();
        let mut b = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            data,
            token,
            agent,
        };
        b.wait_until(Duration::from_secs(30), |b| Ok(b.get("/healthz")?.0 == 200))?;
        Ok(b)
    }

    /// Polls `check` every 100 ms until it is true or `limit` passes.
    pub fn wait_until(
        &mut self,
        limit: Duration,
        mut check: impl FnMut(&mut Self) -> Result<bool>,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("hearthd exited early: {status}");
            }
            if check(self).unwrap_or(false) {
                return Ok(());
            }
            if start.elapsed() > limit {
                bail!("timed out after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `/readyz` is 200 and every model has finished loading.
    pub fn wait_ready(&mut self) -> Result<Value> {
        let mut last = Value::Null;
        self.wait_until(Duration::from_secs(120), |b| {
            let (status, body) = b.get("/readyz")?;
            let loading = body["inference"]["models"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["state"]["state"] == "loading"));
            last = body;
            Ok(status == 200 && !loading)
        })?;
        Ok(last)
    }

    pub fn get(&self, path: &str) -> Result<(u16, Value)> {
        let mut res = self
            .agent
            .get(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .call()?;
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string()?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let mut res = self
            .agent
            .post(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)?;
        let status = res.status().as_u16();
        let text = res.body_mut().read_to_string()?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Starts a streamed chat; returns the status and a reader of SSE `data:` payloads.
    pub fn stream(&self, body: &Value) -> Result<(u16, SseReader)> {
        let res = self
            .agent
            .post(format!("{}/v1/chat/completions", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .send_json(body)?;
        let status = res.status().as_u16();
        let reader = BufReader::new(Box::new(res.into_body().into_reader()) as Box<dyn Read>);
        Ok((status, SseReader { reader }))
    }

    /// The pid of the inference worker (hearthd's only child process).
    pub fn worker_pid(&self) -> Option<i32> {
        // Children are listed per thread of hearthd; the tokio thread that spawned it holds it.
        let pid = self.child.id();
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
            .flat_map(|c| {
                c.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<i32>>()
            })
            .next()
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> Result<std::process::ExitStatus> {
        // It may already be gone (a test sent the signal itself).
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > Duration::from_secs(20) {
                bail!("hearthd did not stop within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Box_ {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.data.path().join("hearthd.log"));
            eprintln!("--- hearthd's log ---\n{}", log.unwrap_or_default());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads `data:` payloads of an SSE body one at a time.
pub struct SseReader {
    reader: BufReader<Box<dyn Read>>,
}

impl SseReader {
    /// The next `data:` payload, or `None` at the end of the body.
    pub fn next_data(&mut self) -> Result<Option<String>> {
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(None);
            }
            if let Some(data) = line.trim_end().strip_prefix("data: ") {
                return Ok(Some(data.to_owned()));
            }
        }
    }

    /// Every remaining payload, parsed (the final `[DONE]` as a JSON string).
    pub fn collect(mut self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        while let Some(d) = self.next_data()? {
            out.push(serde_json::from_str(&d).unwrap_or(Value::String(d)));
        }
        Ok(out)
    }
}

/// A chat request body for `model` asking `question`.
pub fn chat(model: &str, question: &str, extra: Value) -> Value {
    let mut body = serde_json::json!({
        "model": model,
        "messages": [{ "role": "user", "content": question }],
    });
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}
