//! The OpenAI-compatible API: `POST /v1/chat/completions` (plain and SSE) and `GET /v1/models`.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use hearth_engine::{ChatMessage, Completion, FinishReason, SamplingParams};
use hearth_ipc::{ChatRequest, Event, ModelState};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::{ApiError, ApiJson};
use crate::inference::EventStream;

/// The request body. Unknown fields are ignored: clients send many we do not use.
#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    top_k: Option<i64>,
    min_p: Option<f64>,
    repeat_penalty: Option<f64>,
    seed: Option<i64>,
    stop: Option<Stop>,
    n: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
struct ContentPart {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

/// Checks everything a client controls and turns it into a worker request; nothing out of
/// range gets past here.
fn to_worker_request(
    req: ChatCompletionRequest,
    max_tokens_limit: usize,
) -> Result<ChatRequest, ApiError> {
    if req.model.is_empty() {
        return Err(ApiError::invalid("model", "'model' must name a model"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "'messages' must hold at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!(
                        "messages[{i}]: role '{other}' is not supported (system, user, assistant)"
                    ),
                ));
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(text)) => text,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), part.text) {
                        ("text", Some(t)) => text.push_str(&t),
                        (kind, _) => {
                            return Err(ApiError::invalid(
                                "messages",
                                format!(
                                    "messages[{i}]: content part '{kind}' is not supported; only text"
                                ),
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage {
            role: role.to_owned(),
            content,
        });
    }
    if let Some(n) = req.n
        && n != 1
    {
        return Err(ApiError::invalid("n", "only n = 1 is supported"));
    }
    let max_tokens = match req.max_completion_tokens.or(req.max_tokens) {
        None => None,
        Some(n) if n >= 1 && (n as u64) <= max_tokens_limit as u64 => Some(n as usize),
        Some(n) => {
            return Err(ApiError::invalid(
                "max_tokens",
                format!("max_tokens must be between 1 and {max_tokens_limit}, got {n}"),
            ));
        }
    };
    let mut sampling = SamplingParams::default();
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(
                "temperature",
                "temperature must be between 0 and 2",
            ));
        }
        sampling.temperature = t as f32;
    }
    if let Some(p) = req.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                "top_p must be greater than 0 and at most 1",
            ));
        }
        sampling.top_p = p as f32;
    }
    if let Some(k) = req.top_k {
        if !(0..=1_000_000).contains(&k) {
            return Err(ApiError::invalid(
                "top_k",
                "top_k must be between 0 and 1000000",
            ));
        }
        sampling.top_k = k as usize;
    }
    if let Some(p) = req.min_p {
        if !(0.0..=1.0).contains(&p) {
            return Err(ApiError::invalid("min_p", "min_p must be between 0 and 1"));
        }
        sampling.min_p = p as f32;
    }
    if let Some(r) = req.repeat_penalty {
        if !(r > 0.0 && r <= 10.0) {
            return Err(ApiError::invalid(
                "repeat_penalty",
                "repeat_penalty must be greater than 0 and at most 10",
            ));
        }
        sampling.repeat_penalty = r as f32;
    }
    sampling.seed = req.seed.map(|s| s as u64);
    let stop = match req.stop {
        None => Vec::new(),
        Some(Stop::One(s)) => vec![s],
        Some(Stop::Many(v)) => v,
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err(ApiError::invalid(
            "stop",
            "stop takes up to 4 non-empty strings of at most 256 bytes",
        ));
    }
    Ok(ChatRequest {
        model: req.model,
        messages,
        max_tokens,
        stop,
        sampling,
    })
}

pub async fn chat_completions(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    let stream = req.stream;
    let request = to_worker_request(req, state.config.max_tokens_limit)?;
    let model = request.model.clone();
    let mut events = state.inference.chat(request).await?;
    // The first event decides the HTTP status: a refusal is a 4xx, not a broken stream.
    let prompt_tokens = match events.next().await {
        Some(Event::Started { prompt_tokens }) => prompt_tokens,
        Some(Event::Error(e)) => return Err(e.into()),
        other => {
            return Err(ApiError::internal(format!(
                "unexpected first event {other:?}"
            )));
        }
    };
    let meta = ResponseMeta::new(model);
    if stream {
        let sse =
            Sse::new(sse_chunks(meta, prompt_tokens, events)).keep_alive(KeepAlive::default());
        return Ok(sse.into_response());
    }
    let mut content = String::new();
    while let Some(event) = events.next().await {
        match event {
            Event::Text { text } => content.push_str(&text),
            Event::Done { completion } => {
                return Ok(Json(json!({
                    "id": meta.id,
                    "object": "chat.completion",
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [{
                        "index": 0,
                        "message": { "role": "assistant", "content": content },
                        "finish_reason": finish_reason(&completion),
                    }],
                    "usage": usage(&completion),
                    "timings": timings(&completion),
                }))
                .into_response());
            }
            Event::Error(e) => return Err(e.into()),
            Event::Started { .. } | Event::Status { .. } => {}
        }
    }
    Err(ApiError::internal(
        "the event stream ended without a result",
    ))
}

struct ResponseMeta {
    id: String,
    created: u64,
    model: String,
}

impl ResponseMeta {
    fn new(model: String) -> Self {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("chatcmpl-{:016x}", rand::random::<u64>()),
            created,
            model,
        }
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
        })
    }
}

/// The SSE body: a role chunk, content chunks, a final chunk with the finish reason, usage
/// and timings (or an error event), then `[DONE]`.
fn sse_chunks(
    meta: ResponseMeta,
    prompt_tokens: usize,
    events: EventStream,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    let first = meta.chunk(json!({ "role": "assistant", "content": "" }), None);
    let head = futures_util::stream::once(async move { first });
    let body = events.filter_map(move |event| {
        let chunk = match event {
            Event::Text { text } => Some(meta.chunk(json!({ "content": text }), None)),
            Event::Done { completion } => {
                let mut chunk = meta.chunk(json!({}), Some(finish_reason(&completion)));
                chunk["usage"] = usage(&completion);
                chunk["timings"] = timings(&completion);
                Some(chunk)
            }
            Event::Error(e) => {
                log::warn!(error:% = e, prompt_tokens = prompt_tokens; "stream ended with an error");
                let mut error = super::error::ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "inference_failed",
                    e.message,
                )
                .body();
                error["error"]["type"] = json!("server_error");
                Some(error)
            }
            Event::Started { .. } | Event::Status { .. } => None,
        };
        async move { chunk }
    });
    head.chain(body)
        .map(|chunk| Ok(SseEvent::default().data(chunk.to_string())))
        .chain(futures_util::stream::once(async {
            Ok(SseEvent::default().data("[DONE]"))
        }))
}

fn finish_reason(c: &Completion) -> &'static str {
    match c.finish_reason {
        FinishReason::Stop | FinishReason::Cancelled => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(c: &Completion) -> Value {
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    })
}

/// llama.cpp-style timings, so clients (and our chat page) can show tokens per second.
fn timings(c: &Completion) -> Value {
    let per_second = |n: usize, d: std::time::Duration| {
        let s = d.as_secs_f64();
        if s > 0.0 { n as f64 / s } else { 0.0 }
    };
    json!({
        "prompt_n": c.prompt_tokens,
        "prompt_ms": c.prefill.as_secs_f64() * 1000.0,
        "prompt_per_second": per_second(c.prompt_tokens, c.prefill),
        "predicted_n": c.completion_tokens,
        "predicted_ms": c.decode.as_secs_f64() * 1000.0,
        "predicted_per_second": per_second(c.completion_tokens.saturating_sub(1), c.decode),
    })
}

/// `GET /v1/models`: every configured model, with its state in a `hearth` extension field.
pub async fn list_models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let models = state.inference.status().await?;
    let data: Vec<Value> = models
        .into_iter()
        .map(|m| {
            let hearth = match m.state {
                ModelState::Loading => json!({ "state": "loading" }),
                ModelState::Ready { info } => json!({
                    "state": "ready",
                    "architecture": info.architecture,
                    "context_length": info.context_length,
                    "file_size": info.file_size,
                }),
                ModelState::Failed { reason } => json!({ "state": "failed", "reason": reason }),
            };
            json!({ "id": m.id, "object": "model", "created": 0, "owned_by": "hearth", "hearth": hearth })
        })
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}
