//! The household rules over real sockets against the real binary: first-boot setup with the
//! code from the file, a session that chats with SmolLM2 through `/ui`, tokens made while the
//! box runs, and refusals (rebinding Host, cookie on /v1, cross-site POST).

#![allow(clippy::unwrap_used)] // A test: a failed step should stop it, with the line.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use hearth_e2e::{admin, bin_dir, model};
use serde_json::{Value, json};

const MODEL: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// A raw HTTP/1.1 exchange, so the test controls every header (Host, Origin, Cookie).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Vec<(String, String)>, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut reader = BufReader::new(s);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').unwrap();
        head.push((k.to_ascii_lowercase(), v.trim().to_owned()));
    }
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    let chunked = head
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(&rest) } else { rest };
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&data[..eol]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}

fn header<'a>(head: &'a [(String, String)], name: &str) -> Option<&'a str> {
    head.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn setup_with_the_code_then_chat_in_a_session_and_tokens_on_a_running_box() {
    let Some(model) = model(MODEL) else { return };
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(bin_dir().join("hearthd"))
        .arg("--data-dir")
        .arg(data.path())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--model")
        .arg(&model)
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(data.path().join("hearthd.log")).unwrap())
        .spawn()
        .unwrap();
    let result = std::panic::catch_unwind(|| run(port, data.path()));
    let _ = child.kill();
    let _ = child.wait();
    if let Err(panic) = result {
        eprintln!(
            "{}",
            std::fs::read_to_string(data.path().join("hearthd.log")).unwrap_or_default()
        );
        std::panic::resume_unwind(panic);
    }
}

fn run(port: u16, data: &std::path::Path) {
    // Wait for the box and its model.
    let mut ready = false;
    for _ in 0..1200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            let (status, _, body) = http(port, "GET", "/readyz", &[], "");
            let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if status == 200 && v["inference"]["models"][0]["state"]["state"] == "ready" {
                ready = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ready, "hearthd did not become ready");

    // The setup code is in its file and in the log; the log line matches the file.
    let code = std::fs::read_to_string(data.join("setup-code"))
        .unwrap()
        .trim()
        .to_owned();
    let log = std::fs::read_to_string(data.join("hearthd.log")).unwrap();
    assert!(
        log.contains(&code),
        "the setup code is logged for the person at the console"
    );

    // A rebinding page reaches the box under its own name: refused.
    let (status, _, _) = http(
        port,
        "GET",
        "/ui/session",
        &[("Host", "attacker.example")],
        "",
    );
    assert_eq!(status, 421);

    let json_ct = ("Content-Type", "application/json");
    let wrong = json!({ "code": "AAAA-BBBB-CCCC", "name": "Ana", "password": "owner password" })
        .to_string();
    assert_eq!(http(port, "POST", "/ui/setup", &[json_ct], &wrong).0, 403);
    let setup = json!({ "code": code, "name": "Ana", "password": "owner password" }).to_string();
    let (status, head, body) = http(
        port,
        "POST",
        "/ui/setup",
        &[json_ct, ("Origin", &format!("http://127.0.0.1:{port}"))],
        &setup,
    );
    assert_eq!(status, 201, "{body}");
    let cookie = header(&head, "set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let csrf = serde_json::from_str::<Value>(&body).unwrap()["csrf"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        http(port, "POST", "/ui/setup", &[json_ct], &setup).0,
        409,
        "the second setup loses"
    );

    let session = [
        json_ct,
        ("Cookie", cookie.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    let (status, _, body) = http(port, "POST", "/ui/conversations", &session, "{}");
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["conversation"]["id"]
        .as_i64()
        .unwrap();

    // A page on another site cannot post with the person's cookie.
    let (status, _, _) = http(
        port,
        "POST",
        &format!("/ui/conversations/{id}/messages"),
        &[
            ("Content-Type", "text/plain"),
            ("Cookie", cookie.as_str()),
            ("Origin", "http://evil.example"),
        ],
        "{\"content\":\"hi\"}",
    );
    assert_eq!(status, 403);

    let ask = json!({ "content": "Give me three tips for sleeping better." }).to_string();
    let (status, head, body) = http(
        port,
        "POST",
        &format!("/ui/conversations/{id}/messages"),
        &session,
        &ask,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        header(&head, "content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas = events.iter().filter(|e| e["type"] == "delta").count();
    assert!(deltas > 3, "the answer streams in pieces: {events:?}");
    let done = events.last().unwrap();
    assert_eq!(done["type"], "done", "{events:?}");
    let answer = done["message"]["content"].as_str().unwrap();
    // The UI samples (temperature > 0), so the words vary from run to run (a 135M model may
    // answer "caffeine, water, diet" without the word "sleep"); what must hold is that the
    // streamed pieces are the whole answer, nothing dropped or doubled.
    let streamed: String = events
        .iter()
        .filter(|e| e["type"] == "delta")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(!answer.trim().is_empty(), "{events:?}");
    assert_eq!(streamed, answer, "{events:?}");
    assert!(
        done["message"]["timings"]["predicted_per_second"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // The conversation is stored and titled by its first question.
    let (_, _, body) = http(
        port,
        "GET",
        &format!("/ui/conversations/{id}"),
        &session,
        "",
    );
    let conv: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(conv["messages"].as_array().unwrap().len(), 2);
    assert_eq!(conv["messages"][1]["role"], "assistant");
    assert_eq!(
        conv["messages"][1]["content"], answer,
        "the stored answer is the one streamed"
    );
    assert_eq!(
        conv["conversation"]["title"],
        "Give me three tips for sleeping better."
    );

    // The cookie does not open /v1; a token created while the box runs does.
    assert_eq!(
        http(
            port,
            "GET",
            "/v1/models",
            &[("Cookie", cookie.as_str())],
            ""
        )
        .0,
        401
    );
    let token = admin(
        data,
        &["create-token", "--user", "Ana", "--name", "script"],
        None,
    )
    .unwrap();
    let auth = format!("Bearer {token}");
    let (status, _, body) = http(
        port,
        "GET",
        "/v1/models",
        &[("Authorization", auth.as_str())],
        "",
    );
    assert_eq!(status, 200, "{body}");
    let (_, _, body) = http(port, "GET", "/ui/tokens", &session, "");
    assert!(body.contains("script") && !body.contains(&token), "{body}");

    // Limits: a 64 KiB header is refused with 431, a 2 MiB body on a JSON route with 413, and
    // a client that never finishes its headers does not hold anyone else up.
    let mut stalled = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        .unwrap();
    let big = "a".repeat(64 * 1024);
    assert_eq!(
        http(port, "GET", "/healthz", &[("X-Big", big.as_str())], "").0,
        431
    );
    let huge = "x".repeat(2 * 1024 * 1024);
    assert_eq!(
        http(port, "POST", "/ui/conversations", &session, &huge).0,
        413
    );
    assert_eq!(http(port, "GET", "/healthz", &[], "").0, 200);
    drop(stalled);

    // A second owner cannot be created behind the box's back either.
    assert!(
        admin(
            data,
            &["create-owner", "--name", "Eve", "--password-stdin"],
            Some("eve password\n")
        )
        .is_err()
    );
}
