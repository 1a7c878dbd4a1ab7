//! The browser's conversations: stored on the box, one person's only, answered by streaming
//! from the inference service. A stopped or broken answer keeps what was said so far.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hearth_engine::{ChatMessage, Completion, SamplingParams};
use hearth_ipc::{ChatRequest, Event, ModelState};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::auth::CurrentUser;
use super::error::{ApiError, ApiJson};
use super::{AppState, blocking};
use crate::db::{ConversationPatch, Db, Message};

const MAX_MESSAGE_BYTES: usize = 64 * 1024;
const MAX_TITLE_CHARS: usize = 200;
const MAX_SYSTEM_PROMPT_BYTES: usize = 16 * 1024;

fn missing() -> ApiError {
    ApiError::not_found("no such conversation")
}

/// A message as the API shows it: with its Markdown rendered safely and its timings parsed.
pub fn message_json(m: &Message) -> Value {
    let timings: Value = m
        .timings
        .as_deref()
        .and_then(|t| serde_json::from_str(t).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": m.id,
        "role": m.role,
        "content": m.content,
        "html": render_markdown(&m.content),
        "created_at": m.created_at,
        "stopped": m.stopped,
        "timings": timings,
    })
}

/// Markdown to HTML for the chat page. Raw HTML in the text is shown as text, never passed
/// through; links keep their target only for http(s) and mailto; images become links, since
/// the box must not make the browser fetch anything from elsewhere.
pub fn render_markdown(text: &str) -> String {
    use pulldown_cmark::{CowStr, Event as Md, LinkType, Options, Parser, Tag, TagEnd, html};
    // A link keeps its target only when it is http(s) or mailto; otherwise it points nowhere.
    fn safe_url(url: CowStr<'_>) -> CowStr<'_> {
        let lower = url.trim().to_ascii_lowercase();
        let safe = ["http://", "https://", "mailto:"]
            .iter()
            .any(|scheme| lower.starts_with(scheme));
        if safe { url } else { CowStr::from("") }
    }
    let mut options = Options::empty();
    options.insert(Options::ENABLE_TABLES);
    options.insert(Options::ENABLE_STRIKETHROUGH);
    let events = Parser::new_ext(text, options).map(|event| match event {
        Md::Html(raw) | Md::InlineHtml(raw) => Md::Text(raw),
        Md::Start(Tag::Link {
            link_type,
            dest_url,
            title,
            id,
        }) => Md::Start(Tag::Link {
            link_type,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        Md::Start(Tag::Image {
            dest_url,
            title,
            id,
            ..
        }) => Md::Start(Tag::Link {
            link_type: LinkType::Inline,
            dest_url: safe_url(dest_url),
            title,
            id,
        }),
        Md::End(TagEnd::Image) => Md::End(TagEnd::Link),
        other => other,
    });
    let mut out = String::with_capacity(text.len() * 2);
    html::push_html(&mut out, events);
    out
}

#[derive(Deserialize)]
pub struct ListQuery {
    q: Option<String>,
}

pub async fn list(
    State(state): State<AppState>,
    user: CurrentUser,
    Query(query): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let db = state.db.clone();
    let search = query.q.filter(|q| !q.is_empty() && q.len() <= 200);
    let list = blocking(move || db.conversations(user.user.id, search.as_deref())).await?;
    Ok(Json(json!({ "conversations": list })))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConversationFields {
    title: Option<String>,
    model: Option<String>,
    system_prompt: Option<String>,
}

impl ConversationFields {
    fn check(&self) -> Result<(), ApiError> {
        if self
            .title
            .as_ref()
            .is_some_and(|t| t.chars().count() > MAX_TITLE_CHARS)
        {
            return Err(ApiError::invalid(
                "title",
                "a title is at most 200 characters",
            ));
        }
        if self.model.as_ref().is_some_and(|m| m.len() > 256) {
            return Err(ApiError::invalid(
                "model",
                "a model name is at most 256 bytes",
            ));
        }
        if self
            .system_prompt
            .as_ref()
            .is_some_and(|s| s.len() > MAX_SYSTEM_PROMPT_BYTES)
        {
            return Err(ApiError::invalid(
                "system_prompt",
                "a system prompt is at most 16 KiB",
            ));
        }
        Ok(())
    }
}

pub async fn create(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(fields): ApiJson<ConversationFields>,
) -> Result<Response, ApiError> {
    fields.check()?;
    let db = state.db.clone();
    let conversation = blocking(move || {
        db.create_conversation(
            user.user.id,
            fields.title.as_deref().unwrap_or("").trim(),
            fields.model.as_deref().unwrap_or(""),
            fields.system_prompt.as_deref().unwrap_or(""),
        )
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "conversation": conversation })),
    )
        .into_response())
}

pub async fn get(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Json<Value>, ApiError> {
    let db = state.db.clone();
    let uid = user.user.id;
    let (conversation, messages) = blocking(move || {
        let c = db.conversation(uid, id)?;
        let m = db.messages(uid, id)?;
        Ok((c, m))
    })
    .await?;
    let (Some(conversation), Some(messages)) = (conversation, messages) else {
        return Err(missing());
    };
    let messages: Vec<Value> = messages.iter().map(message_json).collect();
    Ok(Json(
        json!({ "conversation": conversation, "messages": messages }),
    ))
}

pub async fn update(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(fields): ApiJson<ConversationFields>,
) -> Result<Json<Value>, ApiError> {
    fields.check()?;
    let patch = ConversationPatch {
        title: fields.title.map(|t| t.trim().to_owned()),
        model: fields.model,
        system_prompt: fields.system_prompt,
    };
    let db = state.db.clone();
    let updated = blocking(move || db.update_conversation(user.user.id, id, &patch)).await?;
    let conversation = updated.ok_or_else(missing)?;
    Ok(Json(json!({ "conversation": conversation })))
}

pub async fn delete(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let db = state.db.clone();
    if blocking(move || db.delete_conversation(user.user.id, id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(missing())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewMessage {
    content: Option<String>,
    model: Option<String>,
    #[serde(default)]
    regenerate: bool,
}

/// Stores the question (or drops the last answer, to regenerate), asks the model with the
/// whole conversation, and streams the answer as server-sent events while storing it.
pub async fn send(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<NewMessage>,
) -> Result<Response, ApiError> {
    let content = match (&req.content, req.regenerate) {
        (Some(_), true) => {
            return Err(ApiError::invalid(
                "content",
                "send either content or regenerate, not both",
            ));
        }
        (None, false) => return Err(ApiError::invalid("content", "a message needs content")),
        (Some(c), false) if c.trim().is_empty() => {
            return Err(ApiError::invalid("content", "a message needs content"));
        }
        (Some(c), false) if c.len() > MAX_MESSAGE_BYTES => {
            return Err(ApiError::invalid("content", "a message is at most 64 KiB"));
        }
        (content, _) => content.clone(),
    };
    if req
        .model
        .as_ref()
        .is_some_and(|m| m.is_empty() || m.len() > 256)
    {
        return Err(ApiError::invalid("model", "'model' must name a model"));
    }
    let db = state.db.clone();
    let uid = user.user.id;
    let (conversation, history) =
        blocking(move || Ok((db.conversation(uid, id)?, db.messages(uid, id)?))).await?;
    let (Some(conversation), Some(mut history)) = (conversation, history) else {
        return Err(missing());
    };
    if req.regenerate {
        if history.last().is_some_and(|m| m.role == "assistant") {
            history.pop();
        }
        if history.last().is_none_or(|m| m.role != "user") {
            return Err(ApiError::invalid(
                "regenerate",
                "there is no question to answer again",
            ));
        }
    }
    let model = match req
        .model
        .clone()
        .or_else(|| Some(conversation.model.clone()).filter(|m| !m.is_empty()))
    {
        Some(model) => model,
        None => default_model(&state).await?,
    };

    let mut messages = Vec::with_capacity(history.len() + 2);
    if !conversation.system_prompt.trim().is_empty() {
        messages.push(ChatMessage {
            role: "system".into(),
            content: conversation.system_prompt.clone(),
        });
    }
    messages.extend(history.iter().map(|m| ChatMessage {
        role: m.role.clone(),
        content: m.content.clone(),
    }));
    if let Some(content) = &content {
        messages.push(ChatMessage {
            role: "user".into(),
            content: content.clone(),
        });
    }
    let request = ChatRequest {
        model: model.clone(),
        messages,
        max_tokens: None,
        stop: Vec::new(),
        sampling: SamplingParams::default(),
    };
    let mut events = state.inference.chat(request).await?;
    // A refusal (unknown model, too long) is an HTTP error, and nothing is stored.
    match events.next().await {
        Some(Event::Started { .. }) => {}
        Some(Event::Error(e)) => return Err(e.into()),
        other => {
            return Err(ApiError::internal(format!(
                "unexpected first event {other:?}"
            )));
        }
    }

    let db = state.db.clone();
    let stored_user = {
        let db = db.clone();
        let regenerate = req.regenerate;
        let model_changed = conversation.model != model;
        let model = model.clone();
        blocking(move || {
            if model_changed {
                let patch = ConversationPatch {
                    model: Some(model),
                    ..Default::default()
                };
                db.update_conversation(uid, id, &patch)?;
            }
            if regenerate {
                db.delete_last_assistant_message(id)?;
                return Ok(None);
            }
            let content = content.unwrap_or_default();
            db.add_message(id, "user", &content, false, None).map(Some)
        })
        .await?
    };

    let (tx, rx) = mpsc::channel::<Value>(64);
    tokio::spawn(relay_answer(db, id, stored_user, events, tx));
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())));
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Moves the answer from the inference service to the browser and stores it. When the browser
/// goes away (Stop, a closed tab), the generation is cancelled by dropping its stream, and what
/// was said so far is stored as stopped.
async fn relay_answer(
    db: Db,
    conversation_id: i64,
    stored_user: Option<Message>,
    mut events: crate::inference::EventStream,
    tx: mpsc::Sender<Value>,
) {
    if let Some(message) = &stored_user {
        let _ = tx
            .send(json!({ "type": "user", "message": message_json(message) }))
            .await;
    }
    let mut answer = String::new();
    let outcome: Result<Option<Completion>, String> = loop {
        let event = tokio::select! {
            event = events.next() => event,
            () = tx.closed() => break Ok(None),
        };
        match event {
            Some(Event::Text { text }) => {
                answer.push_str(&text);
                if tx
                    .send(json!({ "type": "delta", "text": text }))
                    .await
                    .is_err()
                {
                    break Ok(None);
                }
            }
            Some(Event::Done { completion }) => break Ok(Some(completion)),
            Some(Event::Error(e)) => break Err(e.message),
            None => break Err("the inference service went away mid-answer".into()),
            Some(Event::Started { .. } | Event::Status { .. }) => {}
        }
    };
    // Stop generating before the (possibly slow) write.
    drop(events);
    let (stopped, timings) = match &outcome {
        Ok(Some(c)) => (false, Some(timings_json(c).to_string())),
        Ok(None) | Err(_) => (true, None),
    };
    if answer.is_empty() && stopped {
        if let Err(message) = outcome {
            let _ = tx
                .send(json!({ "type": "error", "error": { "code": "inference_failed", "message": message } }))
                .await;
        }
        return;
    }
    let stored = tokio::task::spawn_blocking(move || {
        db.add_message(
            conversation_id,
            "assistant",
            &answer,
            stopped,
            timings.as_deref(),
        )
    })
    .await;
    match (stored, outcome) {
        (Ok(Ok(message)), Ok(_)) => {
            let _ = tx
                .send(json!({ "type": "done", "message": message_json(&message) }))
                .await;
        }
        (Ok(Ok(_)), Err(message)) => {
            log::warn!(error = message.as_str(); "an answer broke off");
            let _ = tx
                .send(json!({ "type": "error", "error": { "code": "inference_failed", "message": message } }))
                .await;
        }
        (Ok(Err(e)), _) => {
            log::error!(error:% = e; "cannot store an answer");
            let _ = tx
                .send(json!({ "type": "error", "error": { "code": "internal_error", "message": "the answer could not be stored" } }))
                .await;
        }
        (Err(e), _) => log::error!(error:% = e; "storing an answer panicked"),
    }
}

fn timings_json(c: &Completion) -> Value {
    let per_second = |n: usize, d: std::time::Duration| {
        let s = d.as_secs_f64();
        if s > 0.0 { n as f64 / s } else { 0.0 }
    };
    json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "prompt_per_second": per_second(c.prompt_tokens, c.prefill),
        "predicted_per_second": per_second(c.completion_tokens.saturating_sub(1), c.decode),
    })
}

/// The model to use when neither the request nor the conversation names one: the first
/// model that is ready.
async fn default_model(state: &AppState) -> Result<String, ApiError> {
    let models = state.inference.status().await?;
    models
        .into_iter()
        .find(|m| matches!(m.state, ModelState::Ready { .. }))
        .map(|m| m.id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_model",
                "no model is ready yet; add one on the Models page",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::render_markdown;

    #[test]
    fn markdown_never_passes_raw_html_or_script_links() {
        let html = render_markdown("<script>alert(1)</script>\n\nhi <img src=x onerror=alert(1)>");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<img"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        let html = render_markdown(
            "[x](javascript:alert(1)) [y](https://example.org) ![i](http://e/x.png)",
        );
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("href=\"https://example.org\""), "{html}");
        assert!(!html.contains("<img"), "{html}");
        let html = render_markdown("```rust\nfn main() {}\n```");
        assert!(
            html.contains("<pre><code class=\"language-rust\">"),
            "{html}"
        );
    }
}
