//! `hearth-inference`: the inference worker process.
//!
//! Owns the loaded models and runs generations, each model on its own thread with a bounded
//! queue of jobs. It answers [`hearth_ipc`] requests on a Unix socket, one request per
//! connection; a client closing its connection cancels its generation.
//!
//! It runs apart from `hearthd` so that a crash, an abort or an out-of-memory kill in model
//! code never takes the supervisor down. It must never touch HTTP, SQL or the model store's
//! files and catalogue (it borrows only the store's fit arithmetic, so the check before a load
//! and the one at import agree): it is told which files to load (`--model` at start, then `SetModels` requests whenever the
//! library changes) and where to listen. An unloaded model's thread ends after its queued
//! jobs, and its memory goes with it.

mod fit;
mod slot;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use hearth_engine::EngineConfig;
use hearth_ipc::{ErrorKind, Event, ModelSpec, Request, WorkerError, read_frame, write_frame};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, watch};

pub use slot::ModelSlot;

/// What the worker loads and where it listens.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Unix socket to listen on; a stale file there is replaced.
    pub socket: PathBuf,
    /// Models to load: (id, path of the GGUF file).
    pub models: Vec<(String, PathBuf)>,
    pub engine: EngineConfig,
    /// Jobs that may wait per model before new ones are refused as busy.
    pub queue_depth: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerFault {
    #[error("cannot listen on {path}: {source}")]
    Listen {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Loads the models (in the background) and serves requests until `shutdown` turns true.
pub async fn serve(
    config: WorkerConfig,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), WorkerFault> {
    let listen_err = |source| WorkerFault::Listen {
        path: config.socket.clone(),
        source,
    };
    match std::fs::remove_file(&config.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(listen_err(e)),
    }
    let listener = UnixListener::bind(&config.socket).map_err(listen_err)?;
    let slots: Slots = Arc::new(RwLock::new(BTreeMap::new()));
    let initial: Vec<ModelSpec> = config
        .models
        .iter()
        .map(|(id, path)| ModelSpec {
            id: id.clone(),
            path: path.clone(),
        })
        .collect();
    set_models(&slots, &initial, &config);
    let config = Arc::new(config);
    log::info!(socket:? = config.socket, models = initial.len(); "inference worker listening");
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(handle_connection(stream, slots.clone(), config.clone()));
                }
                Err(e) => log::warn!(error:% = e; "accept failed"),
            },
            _ = shutdown.changed() => break,
        }
    }
    let _ = std::fs::remove_file(&config.socket);
    Ok(())
}

/// The loaded models by id; replaced wholesale by `SetModels`.
type Slots = Arc<RwLock<BTreeMap<String, Arc<ModelSlot>>>>;

/// Makes the loaded set exactly `models`: starts new ones (and ones whose file changed), drops
/// the others. A dropped slot's thread finishes its queued jobs, then ends and frees the model.
fn set_models(slots: &Slots, models: &[ModelSpec], config: &WorkerConfig) {
    let mut slots = slots.write().unwrap_or_else(PoisonError::into_inner);
    slots.retain(|id, slot| {
        let keep = models.iter().any(|m| m.id == *id && m.path == slot.path());
        if !keep {
            log::info!(model = id.as_str(); "unloading model");
        }
        keep
    });
    for m in models {
        if !slots.contains_key(&m.id) {
            log::info!(model = m.id.as_str(), path:? = m.path; "loading model");
            let slot = ModelSlot::spawn(&m.id, &m.path, &config.engine, config.queue_depth);
            slots.insert(m.id.clone(), Arc::new(slot));
        }
    }
}

fn status(slots: &Slots) -> Event {
    let slots = slots.read().unwrap_or_else(PoisonError::into_inner);
    Event::Status {
        models: slots.values().map(|s| s.status()).collect(),
    }
}

async fn handle_connection(stream: UnixStream, slots: Slots, config: Arc<WorkerConfig>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let request = match read_frame::<_, Request>(&mut read).await {
        Ok(Some(request)) => request,
        Ok(None) => return,
        Err(e) => {
            let error = WorkerError::new(ErrorKind::InvalidRequest, e.to_string());
            let _ = write_frame(&mut write, &Event::Error(error)).await;
            return;
        }
    };
    let chat = match request {
        Request::Status => {
            let _ = write_frame(&mut write, &status(&slots)).await;
            return;
        }
        Request::SetModels { models } => {
            set_models(&slots, &models, &config);
            let _ = write_frame(&mut write, &status(&slots)).await;
            return;
        }
        Request::Chat(chat) => chat,
    };
    let slot = slots
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&chat.model)
        .cloned();
    let Some(slot) = slot else {
        let error = WorkerError::new(
            ErrorKind::UnknownModel,
            format!("no model named '{}'", chat.model),
        );
        let _ = write_frame(&mut write, &Event::Error(error)).await;
        return;
    };
    let (events_tx, mut events) = mpsc::channel(64);
    let cancel = Arc::new(AtomicBool::new(false));
    // However this function ends, a running generation for it stops.
    let _cancel_on_drop = CancelOnDrop(cancel.clone());
    if let Err(error) = slot.submit(chat, events_tx, cancel.clone()) {
        let _ = write_frame(&mut write, &Event::Error(error)).await;
        return;
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    if write_frame(&mut write, &event).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            // The client never sends more after its request: readable means it went away.
            _ = read.fill_buf() => break,
        }
    }
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
