//! Router tests of the household rules: setup, sessions, CSRF, cross-origin, Host, tokens,
//! people, and one person's conversations hidden from another. `oneshot` against a real SQLite
//! file and the fake inference service.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use serde_json::{Value, json};

use super::AppState;
use super::tests::{SETUP_CODE, TEST_TOKEN, error_code, send_raw, state_with, test_state};

/// A browser session as the tests drive it.
#[derive(Clone)]
struct Browser {
    cookie: String,
    csrf: String,
}

fn json_req(method: Method, path: &str, body: Value) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn with_browser(mut req: Request<Body>, b: &Browser) -> Request<Body> {
    req.headers_mut()
        .insert(header::COOKIE, b.cookie.parse().unwrap());
    req.headers_mut()
        .insert("x-csrf-token", b.csrf.parse().unwrap());
    req.headers_mut()
        .insert("sec-fetch-site", "same-origin".parse().unwrap());
    req
}

fn browser_from(headers: &axum::http::HeaderMap, body: &[u8]) -> Browser {
    let set = headers
        .get(header::SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .unwrap();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let v: Value = serde_json::from_slice(body).unwrap();
    Browser {
        cookie,
        csrf: v["csrf"].as_str().unwrap().to_owned(),
    }
}

async fn do_setup(state: &AppState) -> Browser {
    let (status, headers, body) = send_raw(
        state,
        json_req(
            Method::POST,
            "/ui/setup",
            json!({ "code": SETUP_CODE.to_lowercase(), "name": "Ana", "password": "owner password" }),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    browser_from(&headers, &body)
}

async fn login(state: &AppState, name: &str, password: &str) -> (StatusCode, Option<Browser>) {
    let (status, headers, body) = send_raw(
        state,
        json_req(
            Method::POST,
            "/ui/login",
            json!({ "name": name, "password": password }),
        ),
    )
    .await;
    let browser = (status == StatusCode::OK).then(|| browser_from(&headers, &body));
    (status, browser)
}

async fn get_json(state: &AppState, path: &str, b: &Browser) -> (StatusCode, Value) {
    let req = with_browser(Request::get(path).body(Body::empty()).unwrap(), b);
    let (status, _, body) = send_raw(state, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn before_setup_only_the_public_routes_answer_and_setup_needs_the_code() {
    let (state, _, _dir) = state_with(true);
    let (status, _, body) = send_raw(
        &state,
        Request::get("/ui/session").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["setup_needed"], true);
    let (status, _, body) = send_raw(
        &state,
        Request::get("/ui/conversations")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "setup_required");

    let wrong = json!({ "code": "WRONG-CODE-0000", "name": "Ana", "password": "owner password" });
    let (status, _, body) = send_raw(&state, json_req(Method::POST, "/ui/setup", wrong)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(error_code(&body), "bad_setup_code");
    let short = json!({ "code": SETUP_CODE, "name": "Ana", "password": "short" });
    let (status, _, _) = send_raw(&state, json_req(Method::POST, "/ui/setup", short)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let b = do_setup(&state).await;
    let (status, v) = get_json(&state, "/ui/session", &b).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["user"]["name"], "Ana");
    assert_eq!(v["user"]["role"], "owner");
    assert_eq!(v["setup_needed"], false);
    // The code is spent: a second setup is refused even with it.
    let again = json!({ "code": SETUP_CODE, "name": "Eve", "password": "eve password" });
    let (status, _, body) = send_raw(&state, json_req(Method::POST, "/ui/setup", again)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_code(&body), "already_set_up");
}

#[tokio::test]
async fn of_racing_setups_exactly_one_wins() {
    let (state, _, _dir) = state_with(true);
    let attempts = (0..6).map(|i| {
        let state = state.clone();
        tokio::spawn(async move {
            let body = json!({ "code": SETUP_CODE, "name": format!("owner{i}"), "password": "owner password" });
            send_raw(&state, json_req(Method::POST, "/ui/setup", body)).await.0
        })
    });
    let mut statuses = Vec::new();
    for a in attempts {
        statuses.push(a.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::CREATED)
            .count(),
        1,
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT)
    );
}

#[tokio::test]
async fn every_route_outside_the_allowlist_refuses_a_stranger() {
    let (state, _, _dir) = test_state(true);
    let methods = [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
    ];
    let mut checked = 0;
    for (path, _) in super::route_table() {
        let path = path.replace("{id}", "1").replace("{file}", "app.js");
        for method in &methods {
            let req = Request::builder()
                .method(method.clone())
                .uri(&path)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let (status, _, body) = send_raw(&state, req).await;
            if super::auth::is_public(method, &path) {
                continue;
            }
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} answered a stranger: {}",
                String::from_utf8_lossy(&body)
            );
            checked += 1;
        }
    }
    assert!(
        checked > 50,
        "walked {checked} protected method/route pairs"
    );
}

#[tokio::test]
async fn v1_takes_only_bearer_tokens_never_the_cookie() {
    let (state, _, _dir) = state_with(true);
    let b = do_setup(&state).await;
    let models = || Request::get("/v1/models").body(Body::empty()).unwrap();
    let (status, headers, _) = send_raw(&state, with_browser(models(), &b)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the cookie must not open /v1"
    );
    assert_eq!(headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
    let mut req = models();
    req.headers_mut().insert(
        header::AUTHORIZATION,
        "Bearer hearth_not-a-real-token".parse().unwrap(),
    );
    assert_eq!(send_raw(&state, req).await.0, StatusCode::UNAUTHORIZED);

    // A token made in the UI works, is listed without its secret, and stops when revoked.
    let req = with_browser(
        json_req(Method::POST, "/ui/tokens", json!({ "name": "script" })),
        &b,
    );
    let (status, _, body) = send_raw(&state, req).await;
    assert_eq!(status, StatusCode::CREATED);
    let created: Value = serde_json::from_slice(&body).unwrap();
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("hearth_"));
    let with_token = |token: &str| {
        let mut req = models();
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        req
    };
    assert_eq!(send_raw(&state, with_token(&token)).await.0, StatusCode::OK);
    let (_, list) = get_json(&state, "/ui/tokens", &b).await;
    assert!(
        !list.to_string().contains(&token),
        "a token is shown only once"
    );
    assert!(list["tokens"][0]["last_used_at"].is_i64(), "{list}");
    let id = created["id"].as_i64().unwrap();
    let req = with_browser(
        Request::delete(format!("/ui/tokens/{id}"))
            .body(Body::empty())
            .unwrap(),
        &b,
    );
    assert_eq!(send_raw(&state, req).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        send_raw(&state, with_token(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn cookie_routes_refuse_cross_origin_requests_and_missing_csrf_tokens() {
    let (state, _, _dir) = state_with(true);
    let b = do_setup(&state).await;
    let new_conv = || with_browser(json_req(Method::POST, "/ui/conversations", json!({})), &b);

    assert_eq!(send_raw(&state, new_conv()).await.0, StatusCode::CREATED);

    let mut req = new_conv();
    req.headers_mut().remove("x-csrf-token");
    let (status, _, body) = send_raw(&state, req).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "csrf")
    );

    let mut req = new_conv();
    req.headers_mut()
        .insert("x-csrf-token", "guess".parse().unwrap());
    assert_eq!(send_raw(&state, req).await.0, StatusCode::FORBIDDEN);

    let mut req = new_conv();
    req.headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    let (status, _, body) = send_raw(&state, req).await;
    assert_eq!(
        (status, error_code(&body).as_str()),
        (StatusCode::FORBIDDEN, "cross_origin")
    );

    let mut req = new_conv();
    req.headers_mut().remove("sec-fetch-site");
    req.headers_mut()
        .insert(header::ORIGIN, "http://evil.example".parse().unwrap());
    assert_eq!(send_raw(&state, req).await.0, StatusCode::FORBIDDEN);

    // What an HTML form on another site can send: text/plain, no custom header.
    let form = Request::post("/ui/conversations")
        .header(header::CONTENT_TYPE, "text/plain")
        .header(header::COOKIE, &b.cookie)
        .header(header::ORIGIN, "http://evil.example")
        .body(Body::from("{\"title\":\"x\"}"))
        .unwrap();
    assert_eq!(send_raw(&state, form).await.0, StatusCode::FORBIDDEN);
    // Even from the same origin, a form body is not JSON.
    let mut form = with_browser(json_req(Method::POST, "/ui/conversations", json!({})), &b);
    form.headers_mut()
        .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    assert_eq!(
        send_raw(&state, form).await.0,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    // Login from another site is refused too (login CSRF).
    let mut req = json_req(
        Method::POST,
        "/ui/login",
        json!({ "name": "Ana", "password": "owner password" }),
    );
    req.headers_mut()
        .insert("sec-fetch-site", "cross-site".parse().unwrap());
    assert_eq!(send_raw(&state, req).await.0, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_host_that_is_not_the_box_is_refused_dns_rebinding() {
    let (state, _, _dir) = test_state(true);
    for host in [
        "evil.example",
        "evil.example:8080",
        "hearth.local.evil.example",
        "localhost.evil.example",
    ] {
        let req = Request::get("/healthz")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = send_raw(&state, req).await;
        assert_eq!(status, StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert_eq!(error_code(&body), "unknown_host");
    }
    for host in [
        "localhost:8080",
        "127.0.0.1",
        "[::1]:8080",
        "hearth.local",
        "HEARTH.LOCAL.",
        "192.168.1.20:443",
    ] {
        let req = Request::get("/healthz")
            .header(header::HOST, host)
            .body(Body::empty())
            .unwrap();
        assert_eq!(send_raw(&state, req).await.0, StatusCode::OK, "{host}");
    }
}

#[tokio::test]
async fn login_rotates_sessions_logout_ends_them_and_failures_back_off() {
    let (state, _, _dir) = state_with(true);
    let first = do_setup(&state).await;
    let (status, second) = login(&state, "ana", "owner password").await;
    assert_eq!(status, StatusCode::OK, "names match without regard to case");
    let second = second.unwrap();
    assert_ne!(
        first.cookie, second.cookie,
        "a new session id on every login"
    );

    let req = with_browser(
        Request::post("/ui/logout").body(Body::empty()).unwrap(),
        &second,
    );
    let (status, headers, _) = send_raw(&state, req).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        headers
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        get_json(&state, "/ui/conversations", &second).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_json(&state, "/ui/conversations", &first).await.0,
        StatusCode::OK
    );

    // Wrong passwords: free at first, then 429 with Retry-After, never a silent lockout.
    let mut statuses = Vec::new();
    for _ in 0..7 {
        statuses.push(login(&state, "Ana", "wrong password").await.0);
    }
    assert_eq!(statuses[0], StatusCode::UNAUTHORIZED);
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    let (status, headers, body) = send_raw(
        &state,
        json_req(
            Method::POST,
            "/ui/login",
            json!({ "name": "Ana", "password": "owner password" }),
        ),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    assert_eq!(error_code(&body), "rate_limited");
    assert!(headers.contains_key(header::RETRY_AFTER));
    // Unknown names get the same answer as wrong passwords.
    assert_eq!(
        login(&state, "nobody", "whatever pw").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn password_change_ends_other_sessions_and_keeps_this_one() {
    let (state, _, _dir) = state_with(true);
    let first = do_setup(&state).await;
    let (_, other) = login(&state, "Ana", "owner password").await;
    let other = other.unwrap();
    let change = json!({ "current": "owner password", "new": "a new password" });
    let (status, headers, body) = send_raw(
        &state,
        with_browser(json_req(Method::POST, "/ui/password", change), &first),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let renewed = browser_from(&headers, &body);
    assert_eq!(
        get_json(&state, "/ui/conversations", &other).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_json(&state, "/ui/conversations", &first).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_json(&state, "/ui/conversations", &renewed).await.0,
        StatusCode::OK
    );
    assert_eq!(
        login(&state, "Ana", "a new password").await.0,
        StatusCode::OK
    );
    let wrong = json!({ "current": "not it at all", "new": "another password" });
    let (status, _, _) = send_raw(
        &state,
        with_browser(json_req(Method::POST, "/ui/password", wrong), &renewed),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn members_see_only_their_own_conversations_and_cannot_manage_people() {
    let (state, _, _dir) = state_with(true);
    let owner = do_setup(&state).await;
    let add = json!({ "name": "Bea", "password": "member password" });
    let (status, _, body) = send_raw(
        &state,
        with_browser(json_req(Method::POST, "/ui/users", add.clone()), &owner),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let bea_id = serde_json::from_slice::<Value>(&body).unwrap()["user"]["id"]
        .as_i64()
        .unwrap();
    let (status, _, _) = send_raw(
        &state,
        with_browser(json_req(Method::POST, "/ui/users", add), &owner),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (_, bea) = login(&state, "Bea", "member password").await;
    let bea = bea.unwrap();

    let (_, _, body) = send_raw(
        &state,
        with_browser(
            json_req(
                Method::POST,
                "/ui/conversations",
                json!({ "title": "owner's notes" }),
            ),
            &owner,
        ),
    )
    .await;
    let conv = serde_json::from_slice::<Value>(&body).unwrap()["conversation"]["id"]
        .as_i64()
        .unwrap();
    let path = format!("/ui/conversations/{conv}");
    assert_eq!(get_json(&state, &path, &owner).await.0, StatusCode::OK);
    assert_eq!(get_json(&state, &path, &bea).await.0, StatusCode::NOT_FOUND);
    let (_, list) = get_json(&state, "/ui/conversations", &bea).await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 0);
    for req in [
        json_req(Method::PATCH, &path, json!({ "title": "mine now" })),
        Request::delete(&path).body(Body::empty()).unwrap(),
        json_req(
            Method::POST,
            &format!("{path}/messages"),
            json!({ "content": "hi" }),
        ),
    ] {
        assert_eq!(
            send_raw(&state, with_browser(req, &bea)).await.0,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(
        get_json(&state, "/ui/users", &bea).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get_json(&state, "/ui/system/logs", &bea).await.0,
        StatusCode::FORBIDDEN
    );

    // The owner resets Bea's password (ending her session), then removes her.
    let reset = json_req(
        Method::POST,
        &format!("/ui/users/{bea_id}/password"),
        json!({ "password": "reset password" }),
    );
    assert_eq!(
        send_raw(&state, with_browser(reset, &owner)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        get_json(&state, "/ui/conversations", &bea).await.0,
        StatusCode::UNAUTHORIZED
    );
    let del = Request::delete(format!("/ui/users/{bea_id}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send_raw(&state, with_browser(del, &owner)).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        login(&state, "Bea", "reset password").await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// Reads an SSE body into its JSON events.
fn sse_events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn a_conversation_streams_answers_stores_them_and_regenerates() {
    let (state, fake, _dir) = state_with(true);
    let b = do_setup(&state).await;
    let body = json!({ "model": "echo", "system_prompt": "be brief" });
    let (_, _, created) = send_raw(
        &state,
        with_browser(json_req(Method::POST, "/ui/conversations", body), &b),
    )
    .await;
    let id = serde_json::from_slice::<Value>(&created).unwrap()["conversation"]["id"]
        .as_i64()
        .unwrap();
    let path = format!("/ui/conversations/{id}/messages");

    let (status, headers, body) = send_raw(
        &state,
        with_browser(
            json_req(
                Method::POST,
                &path,
                json!({ "content": "tell me *about* dogs" }),
            ),
            &b,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_events(&body);
    assert_eq!(events.first().unwrap()["type"], "user");
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "delta")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "tell me *about* dogs ");
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done", "{events:?}");
    assert_eq!(done["message"]["content"], deltas);
    assert!(
        done["message"]["html"]
            .as_str()
            .unwrap()
            .contains("<em>about</em>")
    );
    assert!(done["message"]["timings"]["predicted_per_second"].is_number());
    // The system prompt and the question reached the model.
    let seen = fake.seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(seen.messages[0].role, "system");
    assert_eq!(seen.messages[0].content, "be brief");
    assert_eq!(
        seen.messages.last().unwrap().content,
        "tell me *about* dogs"
    );

    let (_, conv) = get_json(&state, &format!("/ui/conversations/{id}"), &b).await;
    assert_eq!(conv["conversation"]["title"], "tell me *about* dogs");
    assert_eq!(conv["messages"].as_array().unwrap().len(), 2);

    let (status, _, body) = send_raw(
        &state,
        with_browser(
            json_req(Method::POST, &path, json!({ "regenerate": true })),
            &b,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap()["type"], "done", "{events:?}");
    let (_, conv) = get_json(&state, &format!("/ui/conversations/{id}"), &b).await;
    assert_eq!(
        conv["messages"].as_array().unwrap().len(),
        2,
        "regenerate replaces the answer"
    );

    // An unknown model is refused before anything is stored.
    let (status, _, _) = send_raw(
        &state,
        with_browser(
            json_req(
                Method::POST,
                &path,
                json!({ "content": "x", "model": "nope" }),
            ),
            &b,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, conv) = get_json(&state, &format!("/ui/conversations/{id}"), &b).await;
    assert_eq!(conv["messages"].as_array().unwrap().len(), 2);

    let (_, list) = get_json(&state, "/ui/conversations?q=DOGS", &b).await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 1);
    let (_, list) = get_json(&state, "/ui/conversations?q=cats", &b).await;
    assert_eq!(list["conversations"].as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn settings_and_system_answer_and_bad_box_names_are_refused() {
    let (state, _, _dir) = state_with(true);
    let b = do_setup(&state).await;
    let (status, sys) = get_json(&state, "/ui/system", &b).await;
    assert_eq!(status, StatusCode::OK);
    assert!(sys["memory"]["total"].as_u64().unwrap() > 0, "{sys}");
    assert!(sys["disk"]["free"].is_u64(), "{sys}");
    assert_eq!(sys["inference"]["state"], "ok");
    let put = |name: &str| {
        with_browser(
            json_req(Method::PUT, "/ui/settings", json!({ "box_name": name })),
            &b,
        )
    };
    assert_eq!(send_raw(&state, put("kitchen")).await.0, StatusCode::OK);
    assert_eq!(
        state.db.setting("box_name").unwrap().as_deref(),
        Some("kitchen")
    );
    assert_eq!(*state.box_name.borrow(), "kitchen");
    for bad in ["", "-x", "a b", "evil.example", &"x".repeat(64)] {
        assert_eq!(
            send_raw(&state, put(bad)).await.0,
            StatusCode::BAD_REQUEST,
            "{bad:?}"
        );
    }
    let _ = TEST_TOKEN;
}

async fn login_from(state: &AppState, name: &str, password: &str, ip: [u8; 4]) -> StatusCode {
    let mut req = json_req(
        Method::POST,
        "/ui/login",
        json!({ "name": name, "password": password }),
    );
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
            ip, 40000,
        ))));
    send_raw(state, req).await.0
}

#[tokio::test]
async fn a_thousand_bad_logins_slow_the_attacker_but_the_owner_still_gets_in() {
    let (state, _, _dir) = state_with(true);
    do_setup(&state).await;
    let attacker = [192, 168, 1, 66];
    let mut limited = 0;
    for _ in 0..1000 {
        match login_from(&state, "Ana", "guess guess", attacker).await {
            StatusCode::TOO_MANY_REQUESTS => limited += 1,
            StatusCode::UNAUTHORIZED => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert!(
        limited >= 990,
        "one address is throttled after a few tries ({limited} limited)"
    );
    // Many addresses, a few tries each (a botnet on the LAN).
    for i in 0..60u8 {
        for _ in 0..2 {
            let status = login_from(&state, "Ana", "guess guess", [10, 9, 0, i]).await;
            assert!(matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ));
        }
    }
    // The owner, from their own phone, is not locked out by any of it.
    assert_eq!(
        login_from(&state, "ana", "owner password", [192, 168, 1, 10]).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn an_empty_or_missing_host_is_refused() {
    let (state, _, _dir) = test_state(true);
    let req = Request::get("/healthz")
        .header(header::HOST, "")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send_raw(&state, req).await.0,
        StatusCode::MISDIRECTED_REQUEST
    );
    let mut req = Request::get("/healthz").body(Body::empty()).unwrap();
    req.headers_mut().insert(header::HOST, "x".parse().unwrap());
    req.headers_mut().remove(header::HOST);
    let res = tower::ServiceExt::oneshot(super::app(state.clone()), req)
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn a_valid_token_opens_v1_only_as_a_bearer_header() {
    let (state, _, _dir) = test_state(true);
    let variants: [(&str, Option<(&str, String)>); 5] = [
        (
            "/v1/models",
            Some(("authorization", format!("Bearer {TEST_TOKEN}"))),
        ),
        ("/v1/models", Some(("x-api-key", TEST_TOKEN.to_owned()))),
        (
            "/v1/models",
            Some(("cookie", format!("hearth_session={TEST_TOKEN}"))),
        ),
        (
            "/v1/models",
            Some(("authorization", format!("Basic {TEST_TOKEN}"))),
        ),
        (
            &*Box::leak(format!("/v1/models?api_key={TEST_TOKEN}").into_boxed_str()),
            None,
        ),
    ];
    let mut statuses = Vec::new();
    for (path, header) in variants {
        let mut req = Request::get(path).body(Body::empty()).unwrap();
        if let Some((name, value)) = header {
            req.headers_mut().insert(name, value.parse().unwrap());
        }
        statuses.push(send_raw(&state, req).await.0.as_u16());
    }
    assert_eq!(statuses, [200, 401, 401, 401, 401]);
}
