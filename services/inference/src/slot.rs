//! One model, its thread and its queue of jobs.

use std::ops::ControlFlow;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};

use hearth_engine::{EngineConfig, EngineError, GenerationParams, LoadedModel};
use hearth_ipc::{ChatRequest, ErrorKind, Event, ModelState, ModelStatus, WorkerError};
use tokio::sync::mpsc;

struct Job {
    request: ChatRequest,
    events: mpsc::Sender<Event>,
    cancel: Arc<AtomicBool>,
}

/// A model being loaded or served by its own thread.
pub struct ModelSlot {
    id: String,
    path: PathBuf,
    state: Arc<Mutex<ModelState>>,
    jobs: SyncSender<Job>,
}

impl ModelSlot {
    /// Starts the model's thread; it loads the file, then runs queued jobs one at a time.
    pub fn spawn(id: &str, path: &Path, engine: &EngineConfig, queue_depth: usize) -> Self {
        let state = Arc::new(Mutex::new(ModelState::Loading));
        let (jobs, queue) = sync_channel(queue_depth);
        let (thread_id, thread_path, thread_state, engine) = (
            id.to_owned(),
            path.to_owned(),
            state.clone(),
            engine.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("model-{id}"))
            .spawn(move || model_thread(thread_id, thread_path, engine, thread_state, queue));
        if let Err(e) = spawned {
            *state.lock().unwrap_or_else(PoisonError::into_inner) = ModelState::Failed {
                reason: format!("cannot start the model thread: {e}"),
            };
        }
        Self {
            id: id.to_owned(),
            path: path.to_owned(),
            state,
            jobs,
        }
    }

    /// The file this slot loads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn status(&self) -> ModelStatus {
        ModelStatus {
            id: self.id.clone(),
            state: self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Queues a generation; refuses at once when the model failed or the queue is full.
    pub fn submit(
        &self,
        request: ChatRequest,
        events: mpsc::Sender<Event>,
        cancel: Arc<AtomicBool>,
    ) -> Result<(), WorkerError> {
        if let ModelState::Failed { reason } = self.status().state {
            return Err(unavailable(&self.id, &reason));
        }
        let job = Job {
            request,
            events,
            cancel,
        };
        match self.jobs.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(WorkerError::new(
                ErrorKind::Busy,
                format!("model '{}' has too many requests waiting", self.id),
            )),
            Err(TrySendError::Disconnected(_)) => Err(unavailable(&self.id, "it stopped")),
        }
    }
}

fn unavailable(id: &str, reason: &str) -> WorkerError {
    WorkerError::new(
        ErrorKind::ModelUnavailable,
        format!("model '{id}' could not be loaded: {reason}"),
    )
}

fn model_thread(
    id: String,
    path: PathBuf,
    engine: EngineConfig,
    state: Arc<Mutex<ModelState>>,
    queue: Receiver<Job>,
) {
    let set_state = |s| *state.lock().unwrap_or_else(PoisonError::into_inner) = s;
    if let Err(reason) = crate::fit::check(&path, &engine) {
        log::error!(model = id, reason; "model does not fit in memory; not loading it");
        set_state(ModelState::Failed {
            reason: reason.clone(),
        });
        return fail_queued_jobs(&id, &reason, queue);
    }
    let loaded = std::panic::catch_unwind(|| LoadedModel::load(&id, &path, &engine));
    let mut model = match loaded {
        Ok(Ok(model)) => {
            log::info!(model = id, architecture = model.info().architecture,
                       context = model.info().context_length; "model loaded");
            set_state(ModelState::Ready {
                info: model.info().clone(),
            });
            model
        }
        Ok(Err(e)) => {
            log::error!(model = id, error:% = e; "model failed to load");
            set_state(ModelState::Failed {
                reason: e.to_string(),
            });
            return fail_queued_jobs(&id, &e.to_string(), queue);
        }
        Err(_) => {
            let reason = "the loader crashed on this file".to_owned();
            log::error!(model = id; "{reason}");
            set_state(ModelState::Failed {
                reason: reason.clone(),
            });
            return fail_queued_jobs(&id, &reason, queue);
        }
    };
    for job in queue {
        let events = job.events.clone();
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_job(&mut model, job)));
        let error = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            Err(_) => {
                log::error!(model = id; "generation panicked");
                WorkerError::new(ErrorKind::Internal, "the generation failed")
            }
        };
        let _ = events.blocking_send(Event::Error(error));
    }
}

fn fail_queued_jobs(id: &str, reason: &str, queue: Receiver<Job>) {
    for job in queue {
        let _ = job
            .events
            .blocking_send(Event::Error(unavailable(id, reason)));
    }
}

fn run_job(model: &mut LoadedModel, job: Job) -> Result<(), WorkerError> {
    let Job {
        request,
        events,
        cancel,
    } = job;
    if cancel.load(Ordering::Relaxed) {
        return Ok(());
    }
    let prompt = model.render_chat(&request.messages).map_err(engine_error)?;
    let tokens = model.tokenize_prompt(&prompt).map_err(engine_error)?;
    let context = model.info().context_length;
    let max_tokens = request
        .max_tokens
        .unwrap_or_else(|| context.saturating_sub(tokens.len()));
    let params = GenerationParams {
        max_tokens,
        stop: request.stop,
        sampling: request.sampling,
    };
    // Validate before announcing the start, so refusals come as a single error event.
    if tokens.len() + max_tokens > context || max_tokens == 0 {
        return Err(engine_error(EngineError::ContextLength {
            prompt_tokens: tokens.len(),
            max_tokens,
            context_length: context,
        }));
    }
    params.sampling.validate().map_err(engine_error)?;
    let _ = events.blocking_send(Event::Started {
        prompt_tokens: tokens.len(),
    });
    let completion = model
        .generate(&tokens, &params, &mut |text| {
            if cancel.load(Ordering::Relaxed) {
                return ControlFlow::Break(());
            }
            if !text.is_empty()
                && events
                    .blocking_send(Event::Text {
                        text: text.to_owned(),
                    })
                    .is_err()
            {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })
        .map_err(engine_error)?;
    log::info!(model = model.info().id, prompt_tokens = completion.prompt_tokens,
               completion_tokens = completion.completion_tokens,
               prefill_ms = completion.prefill.as_millis() as u64,
               decode_ms = completion.decode.as_millis() as u64,
               finish:? = completion.finish_reason; "generation finished");
    let _ = events.blocking_send(Event::Done { completion });
    Ok(())
}

fn engine_error(e: EngineError) -> WorkerError {
    let kind = match &e {
        EngineError::ContextLength { .. } => ErrorKind::ContextLength,
        e if e.is_client_error() => ErrorKind::InvalidRequest,
        _ => {
            log::error!(error:% = e; "generation failed");
            return WorkerError::new(ErrorKind::Internal, "the generation failed");
        }
    };
    WorkerError::new(kind, e.to_string())
}
