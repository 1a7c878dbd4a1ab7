//! The model library's routes (`/ui/models*`, see API.md "Models"). Thin: each handler
//! validates, calls `hearth-store` off the async threads, and shapes the answer. Uploads are
//! streamed to disk chunk by chunk; the global body limit is lifted for the chunk route only.

use std::collections::HashMap;
use std::path::PathBuf;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use futures_util::StreamExt;
use hearth_ipc::ModelState;
use hearth_store::{Entry, ModelFacts, Store, StoreError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::auth::{CurrentUser, Owner};
use super::error::{ApiError, ApiJson};

/// The routes, for `api::route_table`.
pub fn route_table() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/ui/models", get(list)),
        ("/ui/models/uploads", get(list_uploads).post(create_upload)),
        (
            "/ui/models/uploads/{id}",
            get(get_upload)
                .put(put_chunk)
                .delete(cancel_upload)
                // Chunks stream to disk; their size is bounded by the declared upload size.
                .layer(DefaultBodyLimit::disable()),
        ),
        ("/ui/models/uploads/{id}/finish", post(finish_upload)),
        ("/ui/models/media", get(list_media)),
        ("/ui/models/media/import", post(start_media_import)),
        ("/ui/models/imports", get(list_imports)),
        (
            "/ui/models/imports/{id}",
            get(get_import).delete(cancel_import),
        ),
        ("/ui/models/scrub", get(scrub_status).post(start_scrub)),
        (
            "/ui/models/{name}",
            get(get_model).patch(update_model).delete(delete_model),
        ),
    ]
}

/// A store refusal as the one HTTP error shape.
pub fn store_error(e: StoreError) -> ApiError {
    let status = match &e {
        StoreError::InvalidName { .. }
        | StoreError::InvalidDigest { .. }
        | StoreError::InvalidId { .. }
        | StoreError::InvalidMediaPath { .. } => StatusCode::BAD_REQUEST,
        StoreError::UnknownModel { .. }
        | StoreError::UnknownUpload { .. }
        | StoreError::UnknownImport { .. } => StatusCode::NOT_FOUND,
        StoreError::NameTaken { .. }
        | StoreError::PathModel { .. }
        | StoreError::OffsetMismatch { .. }
        | StoreError::Incomplete { .. }
        | StoreError::Busy { .. }
        | StoreError::Cancelled => StatusCode::CONFLICT,
        StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        StoreError::InvalidModel { .. } | StoreError::UnsupportedArchitecture { .. } => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        StoreError::DoesNotFit { .. }
        | StoreError::InsufficientStorage { .. }
        | StoreError::DiskFull { .. } => StatusCode::INSUFFICIENT_STORAGE,
        StoreError::Io { .. } | StoreError::Catalogue { .. } => return ApiError::internal(e),
    };
    if matches!(e, StoreError::DiskFull { .. }) {
        log::warn!(error:% = e; "disk full");
        // The path is ours, not the client's business.
        return ApiError::new(
            status,
            e.code(),
            "the disk is full; the upload was removed. Free some space and try again",
        );
    }
    ApiError::new(status, e.code(), e.to_string())
}

/// Runs a blocking store call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(store_error)
}

/// What the worker says about each model: (state, error).
async fn loaded_states(state: &AppState) -> HashMap<String, (&'static str, Option<String>)> {
    let status =
        tokio::time::timeout(std::time::Duration::from_secs(2), state.inference.status()).await;
    let Ok(Ok(models)) = status else {
        return HashMap::new();
    };
    models
        .into_iter()
        .map(|m| {
            let s = match m.state {
                ModelState::Loading => ("loading", None),
                ModelState::Ready { .. } => ("ready", None),
                ModelState::Failed { reason } => ("failed", Some(reason)),
            };
            (m.id, s)
        })
        .collect()
}

fn entry_json(store: &Store, e: &Entry, default: Option<&str>) -> Value {
    json!({
        "name": e.name,
        "digest": e.digest,
        "size": e.size,
        "architecture": e.architecture,
        "parameters": e.parameters,
        "quantization": e.quantization,
        "context_length": e.context_length,
        "has_chat_template": e.has_chat_template,
        "license": e.license,
        "added_at": e.added_at,
        "source": e.source,
        "default": default == Some(e.name.as_str()),
        "state": if e.damaged { "damaged" } else { "ok" },
        "needs_bytes": store.needs_bytes(&e.facts),
        "loaded": "not_loaded",
        "load_error": null,
    })
}

fn path_model_json(
    store: &Store,
    name: &str,
    path: &std::path::Path,
    facts: Result<ModelFacts, StoreError>,
    default: Option<&str>,
) -> Value {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let mut v = json!({
        "name": name,
        "digest": null,
        "size": size,
        "source": "path",
        "default": default == Some(name),
        "state": "ok",
        "added_at": null,
        "loaded": "not_loaded",
        "load_error": null,
    });
    match facts {
        Ok(f) => {
            v["architecture"] = json!(f.architecture);
            v["parameters"] = json!(f.parameters);
            v["quantization"] = json!(f.quantization);
            v["context_length"] = json!(f.context_length);
            v["has_chat_template"] = json!(f.has_chat_template);
            v["license"] = json!(f.license);
            v["needs_bytes"] = json!(store.needs_bytes(&f));
        }
        Err(e) => {
            v["state"] = json!("damaged");
            v["load_error"] = json!(e.to_string());
        }
    }
    v
}

/// Every model (path models first), with what the worker says about it.
async fn model_views(state: &AppState) -> Result<(Vec<Value>, Option<String>), ApiError> {
    let store = state.store.clone();
    let path_models = state.config.model_files().unwrap_or_default();
    let (mut views, default) = blocking(move || {
        let default = store.default_model()?;
        let mut views: Vec<Value> = path_models
            .iter()
            .map(|(name, path)| {
                let facts = Store::path_model_facts(path);
                path_model_json(&store, name, path, facts, default.as_deref())
            })
            .collect();
        for e in store.list()? {
            views.push(entry_json(&store, &e, default.as_deref()));
        }
        Ok((views, default))
    })
    .await?;
    let loaded = loaded_states(state).await;
    for v in &mut views {
        if let Some((s, err)) = v["name"].as_str().and_then(|n| loaded.get(n)) {
            v["loaded"] = json!(s);
            if err.is_some() {
                v["load_error"] = json!(err);
            }
        }
    }
    Ok((views, default))
}

async fn list(State(state): State<AppState>, _: CurrentUser) -> Result<Json<Value>, ApiError> {
    let (models, default) = model_views(&state).await?;
    let store = state.store.clone();
    let (disk, memory) = blocking(move || Ok((store.disk()?, store.memory_available()))).await?;
    Ok(Json(json!({
        "models": models,
        "default": default,
        "disk": {"free": disk.0, "total": disk.1},
        "memory": {"available": memory},
    })))
}

async fn one_view(state: &AppState, name: &str) -> Result<Value, ApiError> {
    hearth_store::validate_name(name).map_err(store_error)?;
    let (models, _) = model_views(state).await?;
    models
        .into_iter()
        .find(|m| m["name"] == name)
        .ok_or_else(|| ApiError::not_found(format!("no model named '{name}'")))
}

async fn get_model(
    State(state): State<AppState>,
    _: CurrentUser,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "model": one_view(&state, &name).await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateModel {
    name: Option<String>,
    default: Option<bool>,
}

async fn update_model(
    State(state): State<AppState>,
    _: Owner,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<UpdateModel>,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let current = name.clone();
    let name = blocking(move || {
        let mut name = current;
        if let Some(new) = body.name.filter(|n| *n != name) {
            store.rename(&name, &new)?;
            name = new;
        }
        if body.default == Some(true) {
            store.set_default(&name)?;
        }
        Ok(name)
    })
    .await?;
    Ok(Json(json!({ "model": one_view(&state, &name).await? })))
}

async fn delete_model(
    State(state): State<AppState>,
    _: Owner,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.store.clone();
    // The catalogue row goes first; the worker then unloads the model (SetModels).
    blocking(move || store.delete(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUpload {
    filename: String,
    size: u64,
}

async fn create_upload(
    State(state): State<AppState>,
    _: Owner,
    ApiJson(body): ApiJson<NewUpload>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let upload = blocking(move || store.create_upload(&body.filename, body.size)).await?;
    Ok((StatusCode::CREATED, Json(json!({ "upload": upload }))).into_response())
}

async fn list_uploads(State(state): State<AppState>, _: CurrentUser) -> Json<Value> {
    Json(json!({ "uploads": state.store.uploads() }))
}

async fn get_upload(
    State(state): State<AppState>,
    _: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let upload = state.store.upload(&id).map_err(store_error)?;
    Ok(Json(json!({ "upload": upload })))
}

#[derive(Deserialize)]
struct Offset {
    offset: Option<u64>,
}

/// Streams one chunk to disk: the body goes through a small channel to a blocking writer, so
/// memory stays bounded whatever the chunk size. A body cut off keeps what arrived.
async fn put_chunk(
    State(state): State<AppState>,
    _: Owner,
    Path(id): Path<String>,
    Query(query): Query<Offset>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let offset = query
        .offset
        .ok_or_else(|| ApiError::invalid("offset", "give ?offset=N (the bytes received so far)"))?;
    let store = state.store.clone();
    let mut writer = blocking(move || store.chunk(&id, offset)).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let task = tokio::task::spawn_blocking(move || {
        let mut written = Ok(());
        while let Some(bytes) = rx.blocking_recv() {
            if let Err(e) = writer.write(&bytes) {
                written = Err(e);
                break;
            }
        }
        drop(rx);
        let finished = writer.finish();
        (written, finished)
    });
    let mut stream = body.into_data_stream();
    let mut cut = false;
    while let Some(frame) = stream.next().await {
        match frame {
            Ok(bytes) => {
                if tx.send(bytes).await.is_err() {
                    break; // the writer stopped (error below)
                }
            }
            Err(_) => {
                cut = true;
                break;
            }
        }
    }
    drop(tx);
    let (written, finished) = task.await.map_err(ApiError::internal)?;
    written.map_err(store_error)?;
    let upload = finished.map_err(store_error)?;
    if cut {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "upload_cut",
            format!(
                "the chunk was cut off; {} bytes are stored, resume from there",
                upload.received
            ),
        ));
    }
    Ok(Json(json!({ "upload": upload })))
}

async fn cancel_upload(
    State(state): State<AppState>,
    _: Owner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let store = state.store.clone();
    blocking(move || store.cancel_upload(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Finish {
    name: Option<String>,
}

async fn finish_upload(
    State(state): State<AppState>,
    _: Owner,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Finish>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let (entry, created) = blocking(move || store.finish_upload(&id, body.name.as_deref())).await?;
    let model = one_view(&state, &entry.name).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "model": model }))).into_response())
}

/// What the media watcher last saw (cheap: no disk access while the watcher runs; with
/// `media_poll_ms = 0` the directory is listed now).
async fn list_media(
    State(state): State<AppState>,
    _: CurrentUser,
) -> Result<Json<Value>, ApiError> {
    let store = state.store.clone();
    let watched = state.config.media_poll_ms > 0;
    let view = blocking(move || {
        if !watched {
            store.poll_media();
        }
        Ok(store.media())
    })
    .await?;
    let dir: Option<PathBuf> = state.store.config().media_dir.clone();
    Ok(Json(json!({
        "media_dir": dir,
        "files": view.files,
        "generation": view.generation,
        "changed_at": view.changed_at,
        "checked_at": view.checked_at,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MediaImport {
    path: String,
    name: Option<String>,
}

async fn start_media_import(
    State(state): State<AppState>,
    _: Owner,
    ApiJson(body): ApiJson<MediaImport>,
) -> Result<Response, ApiError> {
    let store = state.store.clone();
    let status =
        blocking(move || store.start_media_import(&body.path, body.name.as_deref())).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "import": status }))).into_response())
}

async fn list_imports(State(state): State<AppState>, _: CurrentUser) -> Json<Value> {
    Json(json!({ "imports": state.store.imports() }))
}

async fn get_import(
    State(state): State<AppState>,
    _: CurrentUser,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let status = state.store.import_status(&id).map_err(store_error)?;
    Ok(Json(json!({ "import": status })))
}

async fn cancel_import(
    State(state): State<AppState>,
    _: Owner,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.cancel_import(&id).map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn scrub_status(State(state): State<AppState>, _: CurrentUser) -> Json<Value> {
    Json(json!({ "scrub": state.store.scrub_status() }))
}

async fn start_scrub(State(state): State<AppState>, _: Owner) -> Response {
    let status = state.store.start_scrub();
    (StatusCode::ACCEPTED, Json(json!({ "scrub": status }))).into_response()
}
