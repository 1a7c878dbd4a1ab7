//! The real box on a real socket with the real SmolLM2: plain and streamed answers,
//! determinism, bad model files, oversized prompts, a killed worker, SIGTERM.
#![allow(clippy::unwrap_used)]

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use hearth_e2e::{Box_, SMOLLM2, chat, model};
use serde_json::{Value, json};

const ID: &str = "SmolLM2-135M-Instruct.Q4_1";

fn start(extra: &[&OsStr]) -> Option<Box_> {
    let smol = model(SMOLLM2)?;
    let mut args: Vec<&OsStr> = vec![OsStr::new("--model"), smol.as_os_str()];
    args.extend_from_slice(extra);
    // Leak the path so the &OsStr outlives this function; a test process is short.
    let args: Vec<&'static OsStr> = args
        .into_iter()
        .map(|a| &*Box::leak(a.to_owned().into_boxed_os_str()))
        .collect();
    let mut b = Box_::start(&args).unwrap();
    b.wait_ready().unwrap();
    Some(b)
}

#[test]
fn answers_plain_and_streamed_with_usage_and_same_seed_same_answer() {
    let Some(b) = start(&[]) else { return };
    let (status, models) = b.get("/v1/models").unwrap();
    assert_eq!(status, 200);
    assert_eq!(models["data"][0]["id"], ID);
    assert_eq!(models["data"][0]["hearth"]["state"], "ready");

    let (status, res) = b
        .post(
            "/v1/chat/completions",
            &chat(
                ID,
                "Give me three tips for sleeping better.",
                json!({ "temperature": 0, "max_tokens": 24 }),
            ),
        )
        .unwrap();
    assert_eq!(status, 200, "{res}");
    let answer = res["choices"][0]["message"]["content"].as_str().unwrap();
    // llama.cpp's greedy answer to this prompt starts "Here are three tips to help you".
    assert!(answer.starts_with("Here are three tips"), "{answer}");
    let usage = &res["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10);
    let completion_tokens = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&completion_tokens));
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + completion_tokens
    );

    // The same request streamed gives the same greedy text, in several chunks.
    let (status, sse) = b
        .stream(&chat(
            ID,
            "Give me three tips for sleeping better.",
            json!({ "temperature": 0, "max_tokens": 24, "stream": true }),
        ))
        .unwrap();
    assert_eq!(status, 200);
    let chunks = sse.collect().unwrap();
    assert_eq!(chunks.last().unwrap(), &Value::String("[DONE]".into()));
    let deltas: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .filter(|s| !s.is_empty())
        .collect();
    assert!(deltas.len() > 3, "{deltas:?}");
    assert_eq!(deltas.concat(), answer);
    let last = &chunks[chunks.len() - 2];
    assert!(last["choices"][0]["finish_reason"].is_string());
    assert_eq!(
        last["usage"]["completion_tokens"].as_u64().unwrap(),
        completion_tokens
    );

    // Sampling with a seed is repeatable; another seed (almost surely) is not identical.
    let sampled = |seed: u64| {
        let body = chat(
            ID,
            "Write a short poem about the sea.",
            json!({ "temperature": 1.0, "max_tokens": 32, "seed": seed }),
        );
        let (status, res) = b.post("/v1/chat/completions", &body).unwrap();
        assert_eq!(status, 200, "{res}");
        res["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let first = sampled(11);
    assert_eq!(first, sampled(11));
    assert_ne!(first, sampled(12));

    // Stop strings end the answer before them.
    let (_, res) = b
        .post(
            "/v1/chat/completions",
            &chat(
                ID,
                "Give me three tips for sleeping better.",
                json!({ "temperature": 0, "max_tokens": 24, "stop": ["tips"] }),
            ),
        )
        .unwrap();
    let stopped = res["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(stopped, "Here are three ", "cut before the stop string");
    assert_eq!(res["choices"][0]["finish_reason"], "stop");
}

#[test]
fn a_prompt_longer_than_the_context_is_a_clear_400_and_the_box_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hearth.toml");
    std::fs::write(&config, "max_context = 256\n").unwrap();
    let Some(b) = start(&[OsStr::new("--config"), config.as_os_str()]) else {
        return;
    };
    let long = "tell me about the sea ".repeat(200);
    let (status, res) = b
        .post("/v1/chat/completions", &chat(ID, &long, json!({})))
        .unwrap();
    assert_eq!(status, 400, "{res}");
    assert_eq!(res["error"]["code"], "context_length_exceeded");
    assert!(
        res["error"]["message"].as_str().unwrap().contains("256"),
        "{res}"
    );
    let (status, res) = b
        .post(
            "/v1/chat/completions",
            &chat(ID, "Hi", json!({ "max_tokens": 250 })),
        )
        .unwrap();
    assert_eq!(status, 400, "prompt + 250 > 256: {res}");
    let (status, _) = b
        .post(
            "/v1/chat/completions",
            &chat(ID, "Hi", json!({ "max_tokens": 8 })),
        )
        .unwrap();
    assert_eq!(status, 200);
}

#[test]
fn truncated_and_non_gguf_files_are_refused_by_name_and_good_models_still_serve() {
    let Some(smol) = model(SMOLLM2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(&smol).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 3]).unwrap();
    let text = dir.path().join("notes.gguf");
    std::fs::write(&text, "these are my notes, not a model\n").unwrap();
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let Some(mut b) = start(&[
        OsStr::new("--model"),
        truncated.as_os_str(),
        OsStr::new("--model"),
        text.as_os_str(),
        OsStr::new("--model"),
        empty.as_os_str(),
    ]) else {
        return;
    };
    let ready = b.wait_ready().unwrap();
    let states: Vec<(String, String)> = ready["inference"]["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["id"].as_str().unwrap().to_owned(),
                m["state"]["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        states.contains(&(ID.to_owned(), "ready".to_owned())),
        "{states:?}"
    );
    for (id, why) in [
        ("truncated", "damaged"),
        ("notes", "not a GGUF"),
        ("empty", "not a GGUF"),
    ] {
        let (status, res) = b
            .post("/v1/chat/completions", &chat(id, "Hi", json!({})))
            .unwrap();
        assert_eq!(status, 422, "{id}: {res}");
        assert_eq!(res["error"]["code"], "model_unavailable");
        let message = res["error"]["message"].as_str().unwrap();
        assert!(message.contains(why), "{id}: {message}");
    }
    let (status, _) = b
        .post(
            "/v1/chat/completions",
            &chat(ID, "Hi", json!({ "max_tokens": 4 })),
        )
        .unwrap();
    assert_eq!(status, 200);
    assert!(b.child.try_wait().unwrap().is_none(), "hearthd is still up");
}

/// The fit check before loading: with less memory available than SmolLM2's weights and KV
/// cache need, the worker refuses to load it and says the numbers; the box keeps serving.
#[test]
fn a_model_that_does_not_fit_in_memory_is_refused_with_the_numbers() {
    let Some(smol) = model(SMOLLM2) else { return };
    let data = tempfile::tempdir().unwrap();
    let mut b = Box_::start_with_env(
        data,
        &[OsStr::new("--model"), smol.as_os_str()],
        &[("HEARTH_TEST_MEMORY_AVAILABLE", OsStr::new("50000000"))],
    )
    .unwrap();
    let ready = b.wait_ready().unwrap();
    let state = &ready["inference"]["models"][0]["state"];
    assert_eq!(state["state"], "failed", "{ready}");
    let (status, res) = b
        .post("/v1/chat/completions", &chat(ID, "Hi", json!({})))
        .unwrap();
    assert_eq!(status, 422, "{res}");
    assert_eq!(res["error"]["code"], "model_unavailable");
    let message = res["error"]["message"].as_str().unwrap();
    // 98 MB of weights plus an f16 KV cache for 8192 tokens, against 50 MB.
    assert!(
        message.contains("does not fit in memory: needs 0.3 GiB, 47.7 MiB available"),
        "{message}"
    );
    let (status, _) = b.get("/healthz").unwrap();
    assert_eq!(status, 200);
    assert!(b.child.try_wait().unwrap().is_none(), "hearthd is still up");
}

#[test]
fn kill_9_of_the_worker_ends_the_running_stream_with_an_error_and_the_next_request_works() {
    let Some(mut b) = start(&[]) else { return };
    let hearthd_pid = b.child.id();
    let worker = b.worker_pid().expect("hearthd has a worker child");
    let (status, mut sse) = b
        .stream(&chat(
            ID,
            "Tell me a very long story about a lighthouse keeper.",
            json!({ "max_tokens": 2000, "stream": true, "temperature": 0.7 }),
        ))
        .unwrap();
    assert_eq!(status, 200);
    // Wait for real tokens, then kill the worker mid-answer.
    let mut tokens = 0;
    while tokens < 5 {
        let data = sse
            .next_data()
            .unwrap()
            .expect("stream ended before any tokens");
        let v: Value = serde_json::from_str(&data).unwrap();
        if v["choices"][0]["delta"]["content"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
        {
            tokens += 1;
        }
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let rest = sse.collect().unwrap();
    assert_eq!(
        rest.last().unwrap(),
        &Value::String("[DONE]".into()),
        "{rest:?}"
    );
    let error = &rest[rest.len() - 2];
    assert_eq!(error["error"]["type"], "server_error", "{rest:?}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("try again"),
        "{error}"
    );

    // hearthd stays up, restarts the worker, and the next request works.
    assert!(b.child.try_wait().unwrap().is_none());
    let started = Instant::now();
    let ready = b.wait_ready().unwrap();
    assert!(
        ready["inference"]["restarts"].as_u64().unwrap() >= 1,
        "{ready}"
    );
    let (status, res) = b
        .post(
            "/v1/chat/completions",
            &chat(ID, "Say hello.", json!({ "max_tokens": 8 })),
        )
        .unwrap();
    assert_eq!(status, 200, "{res}");
    let new_worker = b.worker_pid().unwrap();
    assert_ne!(new_worker, worker);
    assert_eq!(b.child.id(), hearthd_pid);
    eprintln!(
        "worker back and answering {:?} after the kill",
        started.elapsed()
    );
}

#[test]
fn sigterm_stops_hearthd_and_its_worker_cleanly() {
    let Some(mut b) = start(&[]) else { return };
    let worker = b.worker_pid().unwrap();
    let status = b.terminate().unwrap();
    assert!(status.success(), "{status}");
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{worker}")).exists()
        && std::fs::read_to_string(format!("/proc/{worker}/stat")).is_ok_and(|s| !s.contains(") Z"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "worker {worker} outlived hearthd"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A second start on the same data directory opens the same database.
    let db = b.data.path().join("hearth.db");
    assert!(db.is_file());
}
