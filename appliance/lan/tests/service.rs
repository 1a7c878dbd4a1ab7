//! `Lan::start` as hearthd uses it: HTTPS on, mDNS off; the plain-HTTP router; the follower
//! that keeps the allowlist and the certificate in step with a rename.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use axum::routing::get;
use hearth_lan::{HttpsOptions, Lan, LanConfig, SharedHosts};
use tokio::sync::watch;
use tower::ServiceExt;

async fn call(
    router: &Router,
    path: &str,
    host: &str,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let res = router
        .clone()
        .oneshot(
            Request::get(path)
                .header(header::HOST, host)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20)
        .await
        .unwrap();
    (status, headers, body.to_vec())
}

#[tokio::test]
async fn https_with_redirect_certificate_page_and_rename_following() {
    let dir = tempfile::tempdir().unwrap();
    let app = Router::new().route("/", get(|| async { "the app" }));
    let hosts: SharedHosts = Arc::default();
    let (name_tx, name_rx) = watch::channel("hearth".to_owned());
    let (stop, shutdown) = watch::channel(false);
    let lan = Lan::start(
        LanConfig {
            tls_dir: dir.path().join("tls"),
            https_listen: Some("127.0.0.1:0".parse().unwrap()),
            http_port: 8080,
            mdns: false,
            mdns_interfaces: Vec::new(),
            host_names: vec!["ai.clinic.example".into()],
            version: "1.2.3".into(),
            https: HttpsOptions::default(),
        },
        app.clone(),
        name_rx,
        hosts.clone(),
        shutdown,
    )
    .await
    .unwrap();
    let port = lan.https_addr().unwrap().port();
    let identity = lan.identity().unwrap().clone();
    {
        let set = hosts.read().unwrap();
        for h in [
            "hearth.local",
            "localhost",
            "127.0.0.1",
            "ai.clinic.example",
        ] {
            assert!(set.contains(h), "{h} in {set:?}");
        }
    }
    let names = identity.server_names();
    for n in [
        "hearth.local",
        "localhost",
        "127.0.0.1",
        "ai.clinic.example",
    ] {
        assert!(names.contains(n), "{n} in {names:?}");
    }

    let plain = lan.plain_http_router(app.clone());
    let (status, headers, _) = call(&plain, "/chat?x=1", "Hearth.Local:8080").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        headers[header::LOCATION],
        format!("https://hearth.local:{port}/chat?x=1")
    );
    let (status, headers, _) = call(&plain, "/", "[::1]:8080").await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers[header::LOCATION], format!("https://[::1]:{port}/"));
    let (status, _, _) = call(&plain, "/", "evil\"x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, headers, body) = call(&plain, "/certificate", "hearth.local").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script"),
        "{csp}"
    );
    let html = String::from_utf8(body).unwrap();
    assert!(
        html.contains(identity.fingerprint()),
        "fingerprint on the page"
    );
    assert!(!html.contains("<script"), "no script on the page");
    assert!(html.contains("href=\"/certificate.crt\""));

    let (status, headers, body) = call(&plain, "/certificate.crt", "hearth.local").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/x-x509-ca-cert");
    assert_eq!(body, identity.ca_der());
    assert_eq!(hearth_lan::fingerprint(&body), identity.fingerprint());

    let (status, _, body) = call(&plain, "/healthz", "hearth.local").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, br#"{"status":"ok"}"#);

    // The owner renames the box: the allowlist and the certificate follow.
    name_tx.send_replace("kitchen".into());
    let start = Instant::now();
    while !identity.server_names().contains("kitchen.local") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "certificate did not follow"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(hosts.read().unwrap().contains("kitchen.local"));

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), lan.join())
        .await
        .expect("LAN services stop after the signal");
}

#[tokio::test]
async fn without_https_the_plain_router_is_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let app = Router::new().route("/", get(|| async { "the app" }));
    let (_name_tx, name_rx) = watch::channel("hearth".to_owned());
    let (stop, shutdown) = watch::channel(false);
    let lan = Lan::start(
        LanConfig {
            tls_dir: dir.path().join("tls"),
            https_listen: None,
            http_port: 8080,
            mdns: false,
            mdns_interfaces: Vec::new(),
            host_names: Vec::new(),
            version: "1.2.3".into(),
            https: HttpsOptions::default(),
        },
        app.clone(),
        name_rx,
        Arc::default(),
        shutdown,
    )
    .await
    .unwrap();
    assert!(lan.identity().is_none());
    assert!(!dir.path().join("tls").exists(), "no keys made in dev mode");
    let (status, _, body) = call(&lan.plain_http_router(app), "/", "localhost").await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"the app"[..]));
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(5), lan.join())
        .await
        .unwrap();
}
