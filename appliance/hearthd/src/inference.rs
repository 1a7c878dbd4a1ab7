//! Talking to the inference worker, and keeping it alive.
//!
//! [`Inference`] is the seam the HTTP layer uses; [`WorkerClient`] is the real one (a Unix
//! socket per request), and tests use an in-memory fake. [`supervise`] starts the worker
//! process, restarts it with exponential backoff when it dies, and stops it on shutdown.
//!
//! The loaded set follows the model library: [`publish_models`] turns every change of the
//! store (and the `--model` paths) into a list on a watch channel; [`follow_models`] sends
//! that list to the running worker (`SetModels`), and [`supervise`] starts each new worker
//! with the latest list, so a restart never loads a stale set.

use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::Stream;
use hearth_ipc::{
    ChatRequest, ErrorKind, Event, ModelSpec, ModelStatus, Request, WorkerError, read_frame,
    write_frame,
};
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::watch;

/// Events of one generation, ending with `Done` or `Error`.
pub type EventStream = Pin<Box<dyn Stream<Item = Event> + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// The worker is not running (starting, restarting or crashed).
    #[error("the inference service is not answering: {0}")]
    Unreachable(String),
}

/// What the HTTP layer needs from the inference service.
#[async_trait::async_trait]
pub trait Inference: Send + Sync {
    async fn status(&self) -> Result<Vec<ModelStatus>, InferenceError>;
    /// Starts a generation. Dropping the stream cancels it.
    async fn chat(&self, request: ChatRequest) -> Result<EventStream, InferenceError>;
}

/// The real client: one Unix socket connection per request.
#[derive(Debug, Clone)]
pub struct WorkerClient {
    socket: PathBuf,
}

impl WorkerClient {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }

    async fn send(&self, request: &Request) -> Result<UnixStream, InferenceError> {
        let unreachable = |e: &dyn std::fmt::Display| InferenceError::Unreachable(e.to_string());
        let mut stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| unreachable(&e))?;
        write_frame(&mut stream, request)
            .await
            .map_err(|e| unreachable(&e))?;
        Ok(stream)
    }
}

#[async_trait::async_trait]
impl Inference for WorkerClient {
    async fn status(&self) -> Result<Vec<ModelStatus>, InferenceError> {
        let stream = self.send(&Request::Status).await?;
        let mut reader = BufReader::new(stream);
        match read_frame::<_, Event>(&mut reader).await {
            Ok(Some(Event::Status { models })) => Ok(models),
            Ok(other) => Err(InferenceError::Unreachable(format!(
                "unexpected answer to a status request: {other:?}"
            ))),
            Err(e) => Err(InferenceError::Unreachable(e.to_string())),
        }
    }

    async fn chat(&self, request: ChatRequest) -> Result<EventStream, InferenceError> {
        let stream = self.send(&Request::Chat(request)).await?;
        let reader = BufReader::new(stream);
        // Reads frames until a terminal event; a connection that ends before one means the
        // worker died mid-generation, which the caller sees as an error event.
        let events = futures_util::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            let event = match read_frame::<_, Event>(&mut reader).await {
                Ok(Some(event)) => event,
                Ok(None) | Err(_) => Event::Error(WorkerError::new(
                    ErrorKind::Internal,
                    "the inference service stopped during the answer; please try again",
                )),
            };
            let terminal = matches!(event, Event::Done { .. } | Event::Error(_));
            Some((event, (!terminal).then_some(reader)))
        });
        Ok(Box::pin(events))
    }
}

/// The models the worker should have, as (id, path).
pub type ModelList = Vec<(String, PathBuf)>;

/// Keeps `models` equal to the `--model` paths followed by the store's loadable models (a
/// store model whose name a path model already uses is left out), until `shutdown`.
pub async fn publish_models(
    store: hearth_store::Store,
    path_models: ModelList,
    models: watch::Sender<ModelList>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = store.subscribe();
    loop {
        let list = {
            let (store, path_models) = (store.clone(), path_models.clone());
            tokio::task::spawn_blocking(move || model_list(&store, &path_models)).await
        };
        match list {
            Ok(Ok(list)) => {
                models.send_if_modified(|current| {
                    let changed = *current != list;
                    *current = list;
                    changed
                });
            }
            Ok(Err(e)) => log::error!(error:% = e; "cannot read the model catalogue"),
            Err(e) => log::error!(error:% = e; "model list task failed"),
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// The `--model` paths followed by the store's loadable (not damaged) models.
pub fn model_list(
    store: &hearth_store::Store,
    path_models: &[(String, PathBuf)],
) -> Result<ModelList, hearth_store::StoreError> {
    let mut list = path_models.to_vec();
    for (name, path) in store.loadable()? {
        if !list.iter().any(|(n, _)| *n == name) {
            list.push((name, path));
        }
    }
    Ok(list)
}

/// Sends every new model list to the running worker (`SetModels`), retrying while the worker
/// is (re)starting; a worker started later gets the list on its command line instead.
pub async fn follow_models(
    client: WorkerClient,
    mut models: watch::Receiver<ModelList>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            changed = models.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        let list: Vec<ModelSpec> = models
            .borrow_and_update()
            .iter()
            .map(|(id, path)| ModelSpec {
                id: id.clone(),
                path: path.clone(),
            })
            .collect();
        for attempt in 0..50 {
            match client.set_models(list.clone()).await {
                Ok(()) => break,
                Err(e) if attempt == 49 => {
                    log::warn!(error:% = e; "could not send the model list to the worker")
                }
                Err(_) => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.changed() => return,
                    }
                    // A newer list supersedes this one.
                    if models.has_changed().unwrap_or(false) {
                        break;
                    }
                }
            }
        }
    }
}

impl WorkerClient {
    /// Asks the worker to load exactly `models`.
    pub async fn set_models(&self, models: Vec<ModelSpec>) -> Result<(), InferenceError> {
        let stream = self.send(&Request::SetModels { models }).await?;
        let mut reader = BufReader::new(stream);
        match read_frame::<_, Event>(&mut reader).await {
            Ok(Some(Event::Status { .. })) => Ok(()),
            Ok(other) => Err(InferenceError::Unreachable(format!(
                "unexpected answer to set_models: {other:?}"
            ))),
            Err(e) => Err(InferenceError::Unreachable(e.to_string())),
        }
    }
}

/// How to start the worker.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub socket: PathBuf,
    /// The models to load, as (id, path); each start uses the latest list.
    pub models: watch::Receiver<ModelList>,
    pub max_context: Option<usize>,
    /// The worker's KV cache type (`--kv-cache`).
    pub kv_cache: hearth_engine::KvCacheType,
    pub queue_depth: usize,
    /// Threads for model math; `None` lets the worker use the cores it may run on.
    pub threads: Option<usize>,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

/// What the supervisor knows about the worker, for status pages and readiness.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerHealth {
    pub running: bool,
    pub pid: Option<u32>,
    /// Times the worker died and was started again since hearthd started.
    pub restarts: u64,
    pub last_exit: Option<String>,
}

pub type SharedHealth = Arc<Mutex<WorkerHealth>>;

fn update(health: &SharedHealth, f: impl FnOnce(&mut WorkerHealth)) {
    f(&mut health.lock().unwrap_or_else(PoisonError::into_inner));
}

/// A worker that stays up this long is considered healthy again: the backoff resets.
const STABLE_RUN: Duration = Duration::from_secs(60);

/// Runs the worker until `shutdown`, restarting it with exponential backoff when it exits.
pub async fn supervise(
    command: WorkerCommand,
    health: SharedHealth,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = command.backoff_initial;
    loop {
        let mut cmd = Command::new(&command.program);
        cmd.arg("--socket")
            .arg(&command.socket)
            .arg("--queue-depth")
            .arg(command.queue_depth.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        if let Some(threads) = command.threads {
            cmd.arg("--threads").arg(threads.to_string());
        }
        if let Some(max) = command.max_context {
            cmd.arg("--max-context").arg(max.to_string());
        }
        cmd.arg("--kv-cache").arg(command.kv_cache.to_string());
        let models = command.models.borrow().clone();
        for (id, path) in &models {
            let mut arg = std::ffi::OsString::from(format!("{id}="));
            arg.push(path);
            cmd.arg("--model").arg(arg);
        }
        let started = Instant::now();
        let exit = match cmd.spawn() {
            Ok(mut child) => {
                let pid = child.id();
                log::info!(pid:? = pid; "inference worker started");
                update(&health, |h| {
                    h.running = true;
                    h.pid = pid;
                });
                tokio::select! {
                    status = child.wait() => match status {
                        Ok(status) => status.to_string(),
                        Err(e) => format!("could not wait for it: {e}"),
                    },
                    _ = shutdown.changed() => {
                        stop_child(&mut child).await;
                        update(&health, |h| { h.running = false; h.pid = None; });
                        return;
                    }
                }
            }
            Err(e) => format!("could not start {}: {e}", command.program.display()),
        };
        if started.elapsed() >= STABLE_RUN {
            backoff = command.backoff_initial;
        }
        log::error!(exit = exit, retry_in_ms = backoff.as_millis() as u64;
                    "inference worker stopped; restarting");
        update(&health, |h| {
            h.running = false;
            h.pid = None;
            h.restarts += 1;
            h.last_exit = Some(exit);
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(command.backoff_max);
    }
}

/// SIGTERM, a grace period, then SIGKILL.
async fn stop_child(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
}
