//! Liveness and readiness.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// Liveness: the process is up and serving HTTP.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Readiness: the database answers and so does the inference service.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let db = state.db.clone();
    let database = tokio::task::spawn_blocking(move || db.check())
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let inference =
        match tokio::time::timeout(Duration::from_secs(2), state.inference.status()).await {
            Ok(Ok(models)) => Ok(models),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        };
    let worker = state.worker_health();
    let ready = database.is_ok() && inference.is_ok();
    if let Err(e) = &database {
        log::warn!(error = e.as_str(); "readiness: database check failed");
    }
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "database": if database.is_ok() { "ok" } else { "unavailable" },
        "inference": match &inference {
            Ok(models) => json!({ "state": "ok", "models": models, "restarts": worker.restarts }),
            Err(_) => json!({ "state": "unavailable", "restarts": worker.restarts }),
        },
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}
