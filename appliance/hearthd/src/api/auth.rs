//! Who is asking, and may they: the Host check, authentication (bearer tokens for `/v1` and
//! `/api`, the session cookie for `/ui`), the cross-origin and CSRF checks, and the routes
//! that create sessions, people and tokens. Every route is closed unless [`is_public`] opens it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiJson};
use super::{AppState, blocking};
use crate::accounts::{self, LoginThrottle, ThrottleKey};
use crate::db::{Created, Role, User};

/// The host names this box answers to besides localhost and IP literals, lowercase and
/// without port. The mDNS responder and the settings page keep it current.
pub type AllowedHosts = Arc<RwLock<BTreeSet<String>>>;

/// Account state that lives beside the database: the pending setup code and the throttle.
#[derive(Debug)]
pub struct Accounts {
    /// The normalized setup code while no owner exists; `None` afterwards.
    setup_code: Mutex<Option<String>>,
    throttle: LoginThrottle,
    /// Cookies get `Secure` and the `__Host-` prefix (the box serves HTTPS).
    pub secure_cookies: bool,
    session_idle: Duration,
}

impl Accounts {
    pub fn new(setup_code: Option<String>, secure_cookies: bool, session_idle: Duration) -> Self {
        Self {
            setup_code: Mutex::new(setup_code),
            throttle: LoginThrottle::default(),
            secure_cookies,
            session_idle,
        }
    }

    fn cookie_name(&self) -> &'static str {
        if self.secure_cookies {
            "__Host-hearth_session"
        } else {
            "hearth_session"
        }
    }

    fn set_cookie(&self, value: &str) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        let max_age = self.session_idle.as_secs();
        let cookie = format!(
            "{}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}",
            self.cookie_name()
        );
        HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    fn clear_cookie(&self) -> HeaderValue {
        let secure = if self.secure_cookies { "; Secure" } else { "" };
        let cookie = format!(
            "{}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}",
            self.cookie_name()
        );
        HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// How the current request proved who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    Session { id_hash: String, csrf: String },
    Token,
}

/// The person making the request; handlers take it as an argument.
#[derive(Debug, Clone)]
pub struct CurrentUser {
    pub user: User,
    pub credential: Credential,
}

/// The owner making the request; any other person gets 403.
#[derive(Debug, Clone)]
pub struct Owner(pub CurrentUser);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or_else(unauthenticated)
    }
}

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = CurrentUser::from_request_parts(parts, state).await?;
        if user.user.role == Role::Owner {
            Ok(Self(user))
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "owner_only",
                "only the box's owner can do this",
            ))
        }
    }
}

fn unauthenticated() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "log in first (or, for /v1 and /api, send an API token as 'Authorization: Bearer')",
    )
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Routes anyone may reach: the pages and assets, health, the certificate, and the steps
/// that lead to a session.
pub fn is_public(method: &Method, path: &str) -> bool {
    let get = method == Method::GET || method == Method::HEAD;
    match path {
        "/" | "/setup" | "/login" | "/healthz" | "/readyz" | "/certificate"
        | "/certificate.crt" | "/favicon.ico" => get,
        "/ui/session" => get,
        "/ui/setup" | "/ui/login" => method == Method::POST,
        _ => get && path.starts_with("/assets/"),
    }
}

/// Bearer-only prefixes: scripts and API clients, never the browser cookie.
fn is_token_route(path: &str) -> bool {
    path.starts_with("/v1/") || path == "/v1" || path.starts_with("/api/") || path == "/api"
}

/// Refuses requests whose `Host` is not one of the box's own names. A DNS-rebinding page
/// reaches the box under the attacker's name, so this is what stops it.
pub async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()));
    let allowed = host
        .as_deref()
        .is_some_and(|h| host_allowed(&state.hosts, h));
    if !allowed {
        log::warn!(host:? = host; "refused a request for a host name that is not this box");
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown_host",
            "this box does not answer to that host name",
        )
        .into_response();
    }
    next.run(request).await
}

pub fn host_allowed(hosts: &AllowedHosts, host_header: &str) -> bool {
    let host = strip_port(host_header.trim()).to_ascii_lowercase();
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    // An IP literal cannot be rebound: the attacker's page would carry its own name.
    if host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .is_ok()
    {
        return true;
    }
    hosts
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(host)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Authenticates the request and enforces the cross-origin and CSRF rules; closes every route
/// that [`is_public`] does not open.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match authorize(&state, &mut request).await {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn authorize(state: &AppState, request: &mut Request) -> Result<(), ApiError> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let unsafe_method = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);

    if is_token_route(&path) {
        let user = bearer_user(state, request.headers()).await?;
        let Some(user) = user else {
            return Err(ApiError {
                bearer_challenge: true,
                ..unauthenticated()
            });
        };
        request.extensions_mut().insert(CurrentUser {
            user,
            credential: Credential::Token,
        });
        return Ok(());
    }

    if unsafe_method {
        check_same_origin(request.headers())?;
    }
    let public = is_public(&method, &path);
    let session = session_user(state, request.headers()).await?;
    match session {
        Some(current) => {
            if unsafe_method && !public {
                let Credential::Session { csrf, .. } = &current.credential else {
                    return Err(unauthenticated());
                };
                let sent = request
                    .headers()
                    .get("x-csrf-token")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if !accounts::secrets_equal(sent, csrf) {
                    return Err(ApiError::new(
                        StatusCode::FORBIDDEN,
                        "csrf",
                        "missing or wrong X-CSRF-Token header; reload the page",
                    ));
                }
            }
            request.extensions_mut().insert(current);
            Ok(())
        }
        None if public => Ok(()),
        None => {
            if path.starts_with("/ui/") && !owner_exists(state).await? {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "setup_required",
                    "this box is not set up yet: open it in a browser and enter the setup code",
                ));
            }
            Err(unauthenticated())
        }
    }
}

/// Browsers say where a request comes from; a page on another site must not drive the box
/// with the person's cookie. Clients that are not browsers send neither header.
fn check_same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let cross = |why: &str| {
        log::warn!(reason = why; "refused a cross-origin request");
        ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_origin",
            "requests from other sites are not accepted",
        )
    };
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return Err(cross("sec-fetch-site"));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let origin_host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .unwrap_or("\u{0}");
        if !origin_host.eq_ignore_ascii_case(host) {
            return Err(cross("origin"));
        }
    }
    Ok(())
}

async fn owner_exists(state: &AppState) -> Result<bool, ApiError> {
    let db = state.db.clone();
    blocking(move || db.owner_exists()).await
}

async fn bearer_user(state: &AppState, headers: &HeaderMap) -> Result<Option<User>, ApiError> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Ok(None);
    };
    let Some(token) = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
    else {
        return Ok(None);
    };
    let token = token.trim();
    if !token.starts_with("hearth_") || token.len() > 128 {
        return Ok(None);
    }
    let hash = accounts::secret_hash(token);
    let db = state.db.clone();
    let lookup = hash.clone();
    let found = blocking(move || db.token_user(&lookup, now_unix())).await?;
    Ok(found.and_then(|(user, stored)| accounts::secrets_equal(&stored, &hash).then_some(user)))
}

fn session_cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

async fn session_user(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<CurrentUser>, ApiError> {
    let Some(id) = session_cookie(headers, state.accounts.cookie_name()) else {
        return Ok(None);
    };
    let id_hash = accounts::secret_hash(id);
    let db = state.db.clone();
    let idle = state.accounts.session_idle.as_secs() as i64;
    let found = tokio::task::spawn_blocking(move || {
        let now = now_unix();
        let row = db.session(&id_hash, now)?;
        if let Some(row) = &row {
            // Slide the expiry at most once a minute, not on every request.
            if row.expires_at - (now + idle) < -60 {
                db.touch_session(&id_hash, now, now + idle)?;
            }
        }
        Ok::<_, crate::Error>(row.map(|row| CurrentUser {
            user: row.user,
            credential: Credential::Session {
                id_hash,
                csrf: row.csrf,
            },
        }))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?;
    Ok(found)
}

/// Starts a session: a new random id every time (so a fixed id cannot be planted), the cookie
/// and the CSRF token.
async fn start_session(state: &AppState, user: &User) -> Result<(HeaderValue, String), ApiError> {
    let id = accounts::random_secret();
    let csrf = accounts::random_secret();
    let db = state.db.clone();
    let (user_id, id_hash, csrf2) = (user.id, accounts::secret_hash(&id), csrf.clone());
    let expires = now_unix() + state.accounts.session_idle.as_secs() as i64;
    blocking(move || db.create_session(&id_hash, user_id, &csrf2, expires)).await?;
    Ok((state.accounts.set_cookie(&id), csrf))
}

fn client_ip(request_parts: &axum::http::Extensions) -> Option<IpAddr> {
    request_parts
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

// ---- routes -------------------------------------------------------------------------------

pub async fn session(
    State(state): State<AppState>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let current = session_user(&state, request.headers()).await?;
    let setup_needed = !owner_exists(&state).await?;
    Ok(Json(match current {
        Some(CurrentUser {
            user,
            credential: Credential::Session { csrf, .. },
        }) => json!({ "setup_needed": setup_needed, "user": user, "csrf": csrf }),
        _ => json!({ "setup_needed": setup_needed, "user": null, "csrf": null }),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetupRequest {
    code: String,
    name: String,
    password: String,
}

pub async fn setup(
    State(state): State<AppState>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    ApiJson(req): ApiJson<SetupRequest>,
) -> Result<Response, ApiError> {
    let keys: Vec<ThrottleKey> = ip.map(ThrottleKey::Address).into_iter().collect();
    throttled(&state.accounts.throttle, &keys)?;
    accounts::valid_name(&req.name).map_err(|m| ApiError::invalid("name", m))?;
    accounts::valid_password(&req.password).map_err(|m| ApiError::invalid("password", m))?;
    let expected = state
        .accounts
        .setup_code
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let Some(expected) = expected else {
        return Err(already_set_up());
    };
    if !accounts::secrets_equal(&accounts::normalize_code(&req.code), &expected) {
        state.accounts.throttle.failed(&keys, Instant::now());
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "bad_setup_code",
            "that is not this box's setup code (it is printed on the label, or in the log)",
        ));
    }
    let db = state.db.clone();
    let name = req.name.clone();
    let created = tokio::task::spawn_blocking(move || {
        let hash = accounts::hash_password(&req.password).map_err(ApiError::internal)?;
        db.create_user(&name, Role::Owner, &hash)
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    let Created::Done(user) = created else {
        return Err(already_set_up());
    };
    *state
        .accounts
        .setup_code
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = None;
    log::info!(owner = user.name.as_str(); "setup complete: the owner account exists");
    let (cookie, csrf) = start_session(&state, &user).await?;
    let mut response = (
        StatusCode::CREATED,
        Json(json!({ "user": user, "csrf": csrf })),
    )
        .into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

fn already_set_up() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_set_up",
        "this box already has an owner; log in instead",
    )
}

fn throttled(throttle: &LoginThrottle, keys: &[ThrottleKey]) -> Result<(), ApiError> {
    if let Some(wait) = throttle.wait(keys, Instant::now()) {
        let secs = wait.as_secs().max(1);
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many failed attempts; try again in {secs} s"),
        );
        e.retry_after = Some(secs);
        return Err(e);
    }
    Ok(())
}

/// The client address when the server recorded it (absent in router tests).
pub struct ConnectInfoOpt(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ConnectInfoOpt {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(&parts.extensions)))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    name: String,
    password: String,
}

pub async fn login(
    State(state): State<AppState>,
    ConnectInfoOpt(ip): ConnectInfoOpt,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Response, ApiError> {
    let account = ThrottleKey::Account(req.name.to_lowercase(), ip);
    let mut keys = vec![account.clone()];
    keys.extend(ip.map(ThrottleKey::Address));
    throttled(&state.accounts.throttle, &keys)?;
    if req.password.len() > accounts::MAX_PASSWORD_BYTES || req.name.len() > 256 {
        return Err(bad_credentials());
    }
    let db = state.db.clone();
    let user = tokio::task::spawn_blocking(move || {
        let row = db.user_by_name(&req.name).map_err(ApiError::internal)?;
        let hash = row
            .as_ref()
            .map_or(accounts::decoy_hash(), |r| r.password_hash.as_str());
        let ok = accounts::verify_password(&req.password, hash);
        Ok::<_, ApiError>(row.filter(|_| ok).map(|r| r.user))
    })
    .await
    .map_err(ApiError::internal)??;
    let Some(user) = user else {
        state.accounts.throttle.failed(&keys, Instant::now());
        return Err(bad_credentials());
    };
    state.accounts.throttle.succeeded(&account);
    let (cookie, csrf) = start_session(&state, &user).await?;
    let mut response = Json(json!({ "user": user, "csrf": csrf })).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

fn bad_credentials() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
        "wrong name or password",
    )
}

pub async fn logout(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Response, ApiError> {
    if let Credential::Session { id_hash, .. } = user.credential {
        let db = state.db.clone();
        blocking(move || db.delete_session(&id_hash)).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, state.accounts.clear_cookie());
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    current: String,
    new: String,
}

pub async fn change_password(
    State(state): State<AppState>,
    current: CurrentUser,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<Response, ApiError> {
    accounts::valid_password(&req.new).map_err(|m| ApiError::invalid("new", m))?;
    let keys = [ThrottleKey::Account(current.user.name.to_lowercase(), None)];
    throttled(&state.accounts.throttle, &keys)?;
    let db = state.db.clone();
    let user_id = current.user.id;
    let ok = tokio::task::spawn_blocking(move || {
        let row = db.user_by_id(user_id).map_err(ApiError::internal)?;
        let Some(row) = row.filter(|r| accounts::verify_password(&req.current, &r.password_hash))
        else {
            return Ok(false);
        };
        let hash = accounts::hash_password(&req.new).map_err(ApiError::internal)?;
        // Ends every session of this person, this one too; a fresh one follows.
        db.set_password(row.user.id, &hash)
            .map_err(ApiError::internal)?;
        Ok::<_, ApiError>(true)
    })
    .await
    .map_err(ApiError::internal)??;
    if !ok {
        state.accounts.throttle.failed(&keys, Instant::now());
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_password",
            "the current password is not right",
        ));
    }
    let (cookie, csrf) = start_session(&state, &current.user).await?;
    let mut response = Json(json!({ "csrf": csrf })).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

// ---- people -------------------------------------------------------------------------------

pub async fn list_users(State(state): State<AppState>, _: Owner) -> Result<Json<Value>, ApiError> {
    let db = state.db.clone();
    let users = blocking(move || db.users()).await?;
    let users: Vec<Value> = users
        .into_iter()
        .map(|r| {
            json!({ "id": r.user.id, "name": r.user.name, "role": r.user.role, "created_at": r.created_at })
        })
        .collect();
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    password: String,
    #[serde(default)]
    role: Option<String>,
}

pub async fn create_user(
    State(state): State<AppState>,
    _: Owner,
    ApiJson(req): ApiJson<NewUser>,
) -> Result<Response, ApiError> {
    accounts::valid_name(&req.name).map_err(|m| ApiError::invalid("name", m))?;
    accounts::valid_password(&req.password).map_err(|m| ApiError::invalid("password", m))?;
    if req.role.as_deref().is_some_and(|r| r != "member") {
        return Err(ApiError::invalid(
            "role",
            "new people are members; the box has one owner",
        ));
    }
    let db = state.db.clone();
    let created = tokio::task::spawn_blocking(move || {
        let hash = accounts::hash_password(&req.password).map_err(ApiError::internal)?;
        db.create_user(&req.name, Role::Member, &hash)
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    match created {
        Created::Done(user) => {
            Ok((StatusCode::CREATED, Json(json!({ "user": user }))).into_response())
        }
        Created::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            "someone on this box already has that name",
        )),
    }
}

pub async fn delete_user(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    if id == owner.user.id {
        return Err(ApiError::invalid("id", "the owner cannot delete themself"));
    }
    let db = state.db.clone();
    let deleted = blocking(move || db.delete_member(id)).await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such person"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordReset {
    password: String,
}

pub async fn reset_password(
    State(state): State<AppState>,
    _: Owner,
    Path(id): Path<i64>,
    ApiJson(req): ApiJson<PasswordReset>,
) -> Result<StatusCode, ApiError> {
    accounts::valid_password(&req.password).map_err(|m| ApiError::invalid("password", m))?;
    let db = state.db.clone();
    let done = tokio::task::spawn_blocking(move || {
        let hash = accounts::hash_password(&req.password).map_err(ApiError::internal)?;
        db.set_password(id, &hash).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    if done {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such person"))
    }
}

// ---- tokens -------------------------------------------------------------------------------

pub async fn list_tokens(
    State(state): State<AppState>,
    user: CurrentUser,
) -> Result<Json<Value>, ApiError> {
    let db = state.db.clone();
    let tokens = blocking(move || db.tokens(user.user.id)).await?;
    Ok(Json(json!({ "tokens": tokens })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    name: String,
}

pub async fn create_token(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiJson(req): ApiJson<NewToken>,
) -> Result<Response, ApiError> {
    accounts::valid_name(&req.name).map_err(|m| ApiError::invalid("name", m))?;
    let token = accounts::new_api_token();
    let hash = accounts::secret_hash(&token);
    let db = state.db.clone();
    let row = blocking(move || db.create_token(user.user.id, &req.name, &hash)).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "id": row.id, "name": row.name, "token": token, "created_at": row.created_at }),
        ),
    )
        .into_response())
}

pub async fn delete_token(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let db = state.db.clone();
    let deleted = blocking(move || db.delete_token(user.user.id, id)).await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found("no such token"))
    }
}
