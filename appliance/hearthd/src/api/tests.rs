//! Router tests with `oneshot` against an in-memory fake of the inference service and a real
//! SQLite file in a temporary directory.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use hearth_engine::{Completion, FinishReason, ModelInfo};
use hearth_ipc::{ChatRequest, ErrorKind, Event, ModelState, ModelStatus, WorkerError};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{AppState, app};
use crate::config::Config;
use crate::db::Db;
use crate::inference::{EventStream, Inference, InferenceError};

/// Answers every chat with the words of the last message, one event each.
pub(super) struct FakeInference {
    up: bool,
    pub(super) seen: Mutex<Vec<ChatRequest>>,
}

#[async_trait::async_trait]
impl Inference for FakeInference {
    async fn status(&self) -> Result<Vec<ModelStatus>, InferenceError> {
        if !self.up {
            return Err(InferenceError::Unreachable("down".into()));
        }
        let info = ModelInfo {
            id: "echo".into(),
            path: "/models/echo.gguf".into(),
            architecture: "llama".into(),
            context_length: 64,
            file_size: 1,
            has_chat_template: true,
        };
        Ok(vec![
            ModelStatus {
                id: "echo".into(),
                state: ModelState::Ready { info },
            },
            ModelStatus {
                id: "broken".into(),
                state: ModelState::Failed {
                    reason: "not a GGUF file".into(),
                },
            },
        ])
    }

    async fn chat(&self, request: ChatRequest) -> Result<EventStream, InferenceError> {
        if !self.up {
            return Err(InferenceError::Unreachable("down".into()));
        }
        self.seen.lock().unwrap().push(request.clone());
        let events: Vec<Event> = match request.model.as_str() {
            "echo" => {
                let words: Vec<String> = request
                    .messages
                    .last()
                    .unwrap()
                    .content
                    .split(' ')
                    .map(|w| format!("{w} "))
                    .collect();
                let n = words.len();
                std::iter::once(Event::Started { prompt_tokens: 5 })
                    .chain(words.into_iter().map(|text| Event::Text { text }))
                    .chain(std::iter::once(Event::Done {
                        completion: Completion {
                            finish_reason: FinishReason::Stop,
                            prompt_tokens: 5,
                            completion_tokens: n,
                            prefill: Duration::from_millis(10),
                            decode: Duration::from_millis(20),
                        },
                    }))
                    .collect()
            }
            "dies" => vec![
                Event::Started { prompt_tokens: 5 },
                Event::Text {
                    text: "half".into(),
                },
                Event::Error(WorkerError::new(
                    ErrorKind::Internal,
                    "the inference service stopped",
                )),
            ],
            "long" => vec![Event::Error(WorkerError::new(
                ErrorKind::ContextLength,
                "too long",
            ))],
            "broken" => vec![Event::Error(WorkerError::new(
                ErrorKind::ModelUnavailable,
                "model 'broken' could not be loaded: not a GGUF file",
            ))],
            other => vec![Event::Error(WorkerError::new(
                ErrorKind::UnknownModel,
                format!("no model named '{other}'"),
            ))],
        };
        Ok(Box::pin(futures_util::stream::iter(events)))
    }
}

pub(super) fn state_with(up: bool) -> (AppState, Arc<FakeInference>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("hearth.db")).unwrap();
    let fake = Arc::new(FakeInference {
        up,
        seen: Mutex::new(Vec::new()),
    });
    let config = Config {
        data_dir: dir.path().to_owned(),
        max_body_bytes: 64 * 1024,
        ..Config::default()
    };
    let state = AppState {
        config: Arc::new(config),
        db,
        inference: fake.clone(),
        worker: Default::default(),
        accounts: Arc::new(super::Accounts::new(
            Some(SETUP_CODE.into()),
            false,
            Duration::from_secs(3600),
        )),
        hosts: Arc::new(std::sync::RwLock::new(["hearth.local".to_owned()].into())),
        box_name: Arc::new(tokio::sync::watch::channel("hearth".to_owned()).0),
        started: std::time::Instant::now(),
        store: hearth_store::Store::open(hearth_store::StoreConfig {
            root: dir.path().join("models"),
            ..Default::default()
        })
        .unwrap(),
    };
    (state, fake, dir)
}

/// The setup code the test boxes start with.
pub(super) const SETUP_CODE: &str = "ABCD2345WXYZ";
/// An API token the tests provision for the owner, as `hearthd admin create-token` would.
pub(super) const TEST_TOKEN: &str = "hearth_testtokentesttokentesttokentesttokentesttok";

/// A box whose owner exists and holds [`TEST_TOKEN`].
fn provisioned(state: &AppState) {
    let hash = crate::accounts::hash_password("owner password").unwrap();
    let crate::db::Created::Done(owner) = state
        .db
        .create_user("owner", crate::db::Role::Owner, &hash)
        .unwrap()
    else {
        panic!("owner exists")
    };
    state
        .db
        .create_token(owner.id, "tests", &crate::accounts::secret_hash(TEST_TOKEN))
        .unwrap();
}

pub(super) fn test_state(up: bool) -> (AppState, Arc<FakeInference>, tempfile::TempDir) {
    let (state, fake, dir) = state_with(up);
    provisioned(&state);
    (state, fake, dir)
}

/// Sends a request as a well-behaved client: `Host: localhost`, and the test token on `/v1`.
async fn send(
    state: &AppState,
    mut req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    if req.uri().path().starts_with("/v1") && !req.headers().contains_key(header::AUTHORIZATION) {
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {TEST_TOKEN}").parse().unwrap(),
        );
    }
    send_raw(state, req).await
}

/// Sends a request with only the headers given (plus `Host: localhost` when none).
pub(super) async fn send_raw(
    state: &AppState,
    mut req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    if !req.headers().contains_key(header::HOST) {
        req.headers_mut()
            .insert(header::HOST, "localhost:8080".parse().unwrap());
    }
    let res = app(state.clone()).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = to_bytes(res.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    (status, headers, body)
}

fn post_json(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/chat/completions")
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .unwrap()
}

fn chat(model: &str, extra: Value) -> Request<Body> {
    let mut body =
        json!({ "model": model, "messages": [{ "role": "user", "content": "hello there box" }] });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    post_json(body.to_string())
}

pub(super) fn error_code(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
    assert!(v["error"]["type"].is_string(), "{v}");
    v["error"]["code"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn plain_completion_has_openai_shape_and_usage() {
    let (state, _, _dir) = test_state(true);
    let (status, _, body) = send(&state, chat("echo", json!({}))).await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "hello there box ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 8);
}

#[tokio::test]
async fn streamed_completion_is_sse_ending_in_done_with_usage_in_the_final_chunk() {
    let (state, _, _dir) = test_state(true);
    let (status, headers, body) = send(&state, chat("echo", json!({ "stream": true }))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = String::from_utf8(body).unwrap();
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(datas.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = datas[..datas.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "hello there box ");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["completion_tokens"], 3);
    assert!(last["timings"]["predicted_per_second"].as_f64().unwrap() > 0.0);
}

#[tokio::test]
async fn a_worker_dying_mid_stream_ends_the_stream_with_an_error_event() {
    let (state, _, _dir) = test_state(true);
    let (status, _, body) = send(&state, chat("dies", json!({ "stream": true }))).await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    let datas: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let error: Value = serde_json::from_str(datas[datas.len() - 2]).unwrap();
    assert_eq!(error["error"]["type"], "server_error");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stopped")
    );
    assert_eq!(datas.last(), Some(&"[DONE]"));
}

#[tokio::test]
async fn bad_requests_get_4xx_with_openai_error_bodies() {
    let (state, fake, _dir) = test_state(true);
    let cases: Vec<(Request<Body>, StatusCode, &str)> = vec![
        (
            post_json("{not json"),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (post_json("[]"), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            post_json(r#"{"model":"echo"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            post_json(r#"{"model":"echo","messages":[]}"#),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            post_json(r#"{"model":"echo","messages":[{"role":"wizard","content":"x"}]}"#),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            post_json(
                r#"{"model":"echo","messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            chat("echo", json!({ "max_tokens": 0 })),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            chat("echo", json!({ "max_tokens": -5 })),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            chat("echo", json!({ "max_tokens": 1u64 << 40 })),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            chat("echo", json!({ "max_tokens": "ten" })),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            chat("echo", json!({ "temperature": 7.5 })),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            chat("echo", json!({ "top_p": 0 })),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            chat("echo", json!({ "n": 3 })),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            chat("echo", json!({ "stop": ["a", "b", "c", "d", "e"] })),
            StatusCode::BAD_REQUEST,
            "invalid_value",
        ),
        (
            chat("nope", json!({})),
            StatusCode::NOT_FOUND,
            "model_not_found",
        ),
        (
            chat("long", json!({})),
            StatusCode::BAD_REQUEST,
            "context_length_exceeded",
        ),
        (
            chat("broken", json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "model_unavailable",
        ),
        (
            Request::post("/v1/chat/completions")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Request::get("/v1/chat/completions")
                .body(Body::empty())
                .unwrap(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            Request::get("/v1/nothing").body(Body::empty()).unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (req, want_status, want_code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, _, body) = send(&state, req).await;
        assert_eq!(
            status,
            want_status,
            "{what}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(error_code(&body), want_code, "{what}");
    }
    // Only requests that passed validation reached the engine, with values in range.
    let seen = fake.seen.lock().unwrap();
    assert!(
        seen.iter()
            .all(|r| ["nope", "long", "broken"].contains(&r.model.as_str()))
    );
}

#[tokio::test]
async fn parameters_reach_the_engine_as_given() {
    let (state, fake, _dir) = test_state(true);
    let extra = json!({ "max_tokens": 7, "temperature": 0, "top_k": 3, "seed": 42, "stop": "END",
                        "messages": [{ "role": "system", "content": "Be brief." },
                                     { "role": "user", "content": [{ "type": "text", "text": "hi" }] }] });
    let (status, _, _) = send(&state, chat("echo", extra)).await;
    assert_eq!(status, StatusCode::OK);
    let seen = fake.seen.lock().unwrap();
    let r = &seen[0];
    assert_eq!(r.max_tokens, Some(7));
    assert_eq!(r.sampling.temperature, 0.0);
    assert_eq!(r.sampling.top_k, 3);
    assert_eq!(r.sampling.seed, Some(42));
    assert_eq!(r.stop, ["END"]);
    assert_eq!(r.messages.len(), 2);
    assert_eq!(r.messages[1].content, "hi");
}

#[tokio::test]
async fn an_oversized_body_gets_413() {
    let (state, _, _dir) = test_state(true);
    let big = format!(
        r#"{{"model":"echo","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(100 * 1024)
    );
    let (status, _, body) = send(&state, post_json(big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_code(&body), "request_too_large");
}

#[tokio::test]
async fn models_are_listed_with_their_state() {
    let (state, _, _dir) = test_state(true);
    let (status, _, body) = send(
        &state,
        Request::get("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "echo");
    assert_eq!(v["data"][0]["hearth"]["state"], "ready");
    assert_eq!(v["data"][0]["hearth"]["context_length"], 64);
    assert_eq!(v["data"][1]["hearth"]["state"], "failed");
}

#[tokio::test]
async fn readiness_follows_the_inference_service_and_liveness_does_not() {
    let (up, _, _d1) = test_state(true);
    let (down, _, _d2) = test_state(false);
    let get = |p: &str| Request::get(p).body(Body::empty()).unwrap();
    assert_eq!(send(&up, get("/readyz")).await.0, StatusCode::OK);
    let (status, _, body) = send(&down, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["database"], "ok");
    assert_eq!(v["inference"]["state"], "unavailable");
    assert_eq!(send(&down, get("/healthz")).await.0, StatusCode::OK);
    let (status, headers, body) = send(&down, chat("echo", json!({}))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key(header::RETRY_AFTER));
    assert_eq!(error_code(&body), "inference_unavailable");
}

#[tokio::test]
async fn the_chat_page_and_its_assets_are_served_with_security_headers() {
    let (state, _, _dir) = test_state(true);
    let (status, headers, body) =
        send(&state, Request::get("/").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8(body).unwrap().contains("/assets/app.js"));
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe-inline"));
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let (status, headers, _) = send(
        &state,
        Request::get("/assets/app.js").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    for bad in [
        "/assets/..%2fCargo.toml",
        "/assets/%2e%2e%2fsecret",
        "/assets/nope.js",
    ] {
        let (status, _, _) = send(&state, Request::get(bad).body(Body::empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
    }
}
