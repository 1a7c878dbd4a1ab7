//! The HTTP surface: `fn app(state) -> Router`. Handlers are thin; they validate, call the
//! inference service or the database, and shape the answer.

pub mod auth;
mod conversations;
mod error;
mod health;
pub mod models;
mod openai;
mod system;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_household;
mod ui;

use std::sync::{Arc, PoisonError};
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post};

pub use auth::{Accounts, AllowedHosts};
pub use error::ApiError;
pub use system::valid_box_name;

use crate::config::Config;
use crate::db::Db;
use crate::inference::{Inference, SharedHealth, WorkerHealth};

/// Runs a database call off the async threads. Its failures are the box's own: logged, and
/// the client gets a generic 500.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub inference: Arc<dyn Inference>,
    pub worker: SharedHealth,
    /// Setup code, login throttle, cookie policy.
    pub accounts: Arc<Accounts>,
    /// The host names the box answers to (besides localhost and IP literals).
    pub hosts: AllowedHosts,
    /// The box's name (`<name>.local`); the mDNS responder follows it.
    pub box_name: Arc<tokio::sync::watch::Sender<String>>,
    /// When hearthd started, for uptime.
    pub started: Instant,
    /// The model library.
    pub store: hearth_store::Store,
}

impl AppState {
    pub fn worker_health(&self) -> WorkerHealth {
        self.worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Every route of the box, in one table: [`app`] builds the router from it, and a test walks
/// it without credentials to prove that only the public ones answer.
pub fn route_table() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/", get(ui::index)),
        ("/setup", get(ui::index)),
        ("/login", get(ui::index)),
        ("/assets/{file}", get(ui::asset)),
        ("/healthz", get(health::healthz)),
        ("/readyz", get(health::readyz)),
        ("/v1/models", get(openai::list_models)),
        ("/v1/chat/completions", post(openai::chat_completions)),
        ("/ui/session", get(auth::session)),
        ("/ui/setup", post(auth::setup)),
        ("/ui/login", post(auth::login)),
        ("/ui/logout", post(auth::logout)),
        ("/ui/password", post(auth::change_password)),
        ("/ui/users", get(auth::list_users).post(auth::create_user)),
        ("/ui/users/{id}", delete(auth::delete_user)),
        ("/ui/users/{id}/password", post(auth::reset_password)),
        (
            "/ui/tokens",
            get(auth::list_tokens).post(auth::create_token),
        ),
        ("/ui/tokens/{id}", delete(auth::delete_token)),
        (
            "/ui/conversations",
            get(conversations::list).post(conversations::create),
        ),
        (
            "/ui/conversations/{id}",
            get(conversations::get)
                .patch(conversations::update)
                .delete(conversations::delete),
        ),
        ("/ui/conversations/{id}/messages", post(conversations::send)),
        ("/ui/system", get(system::system)),
        ("/ui/system/logs", get(system::logs)),
        (
            "/ui/settings",
            get(system::settings).put(system::change_settings),
        ),
    ]
    .into_iter()
    .chain(models::route_table())
    .collect()
}

pub fn app(state: AppState) -> Router {
    let body_limit = state.config.max_body_bytes;
    let body_timeout = std::time::Duration::from_secs(state.config.request_body_timeout_secs);
    let mut router = Router::new();
    for (path, handler) in route_table() {
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::check_host,
        ))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// Headers every response carries: no sniffing, no framing, scripts only from this box.
/// Also gives axum's bare 405 the same JSON shape as every other error.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && !response.headers().contains_key(header::CONTENT_TYPE)
    {
        let allow = response.headers().get(header::ALLOW).cloned();
        response = IntoResponse::into_response(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        ));
        if let Some(allow) = allow {
            response.headers_mut().insert(header::ALLOW, allow);
        }
    }
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}
