//! The web UI's pages and assets, embedded in the binary by `hearth-webui`.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiError;

pub async fn index() -> Response {
    serve("index.html").unwrap_or_else(|e| e.into_response())
}

pub async fn asset(Path(file): Path<String>) -> Response {
    serve(&file).unwrap_or_else(|e| e.into_response())
}

/// Names are looked up in a fixed table; nothing here touches the file system.
fn serve(name: &str) -> Result<Response, ApiError> {
    let asset = hearth_webui::asset(name).ok_or_else(|| ApiError::not_found("no such file"))?;
    Ok((
        [
            (header::CONTENT_TYPE, asset.content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        asset.bytes,
    )
        .into_response())
}
