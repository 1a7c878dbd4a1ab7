//! The System page's numbers (CPU, memory, disk, temperature, uptime, the inference service)
//! and the box's settings. Read from /proc and /sys; anything missing is shown as unknown.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{CurrentUser, Owner};
use super::error::{ApiError, ApiJson};
use super::{AppState, blocking};

pub async fn system(
    State(state): State<AppState>,
    _: CurrentUser,
) -> Result<Json<Value>, ApiError> {
    let data_dir = state.config.data_dir.clone();
    let mut info = tokio::task::spawn_blocking(move || host_info(&data_dir))
        .await
        .map_err(ApiError::internal)?;
    let inference = match tokio::time::timeout(Duration::from_secs(2), state.inference.status())
        .await
    {
        Ok(Ok(models)) => {
            json!({ "state": "ok", "models": models, "restarts": state.worker_health().restarts })
        }
        _ => {
            json!({ "state": "unavailable", "models": [], "restarts": state.worker_health().restarts })
        }
    };
    info["inference"] = inference;
    info["uptime_s"] = json!(state.started.elapsed().as_secs());
    Ok(Json(info))
}

fn host_info(data_dir: &std::path::Path) -> Value {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cpu_model = read("/proc/cpuinfo").and_then(|text| {
        text.lines()
            .find(|l| {
                l.starts_with("model name") || l.starts_with("Model") || l.starts_with("uarch")
            })
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
    });
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load: Vec<f64> = read("/proc/loadavg")
        .map(|t| {
            t.split_whitespace()
                .take(3)
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let meminfo = read("/proc/meminfo").unwrap_or_default();
    let mem = |key: &str| {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    // The casts matter on 32-bit boards, where these counts are u32.
    #[allow(clippy::unnecessary_cast)]
    let disk = nix::sys::statvfs::statvfs(data_dir).ok().map(|s| {
        let frag = s.fragment_size() as u64;
        json!({ "total": s.blocks() as u64 * frag, "free": s.blocks_available() as u64 * frag })
    });
    let temperature_c = (0..16)
        .filter_map(|i| read(&format!("/sys/class/thermal/thermal_zone{i}/temp")))
        .filter_map(|t| t.trim().parse::<f64>().ok())
        .map(|milli| milli / 1000.0)
        .reduce(f64::max);
    let host_uptime_s = read("/proc/uptime").and_then(|t| {
        t.split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
    });
    let kernel = read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_owned());
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": kernel,
        "host_uptime_s": host_uptime_s,
        "cpu": { "model": cpu_model, "cores": cores, "load": load },
        "memory": { "total": mem("MemTotal:"), "available": mem("MemAvailable:") },
        "disk": disk,
        "temperature_c": temperature_c,
    })
}

pub async fn logs(_: Owner) -> Json<Value> {
    Json(json!({ "lines": crate::logging::recent(200) }))
}

pub async fn settings(
    State(state): State<AppState>,
    _: CurrentUser,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "box_name": state.box_name.borrow().clone() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    box_name: Option<String>,
}

/// A box name becomes a DNS label (`<name>.local`): letters, digits and inner hyphens.
pub fn valid_box_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub async fn change_settings(
    State(state): State<AppState>,
    _: Owner,
    ApiJson(change): ApiJson<SettingsChange>,
) -> Result<Json<Value>, ApiError> {
    if let Some(name) = change.box_name {
        let name = name.trim().to_ascii_lowercase();
        if !valid_box_name(&name) {
            return Err(ApiError::invalid(
                "box_name",
                "a box name is 1-63 letters, digits or hyphens (it becomes NAME.local)",
            ));
        }
        let db = state.db.clone();
        let stored = name.clone();
        blocking(move || db.set_setting("box_name", &stored)).await?;
        state
            .hosts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(format!("{name}.local"));
        state.box_name.send_replace(name);
    }
    Ok(Json(json!({ "box_name": state.box_name.borrow().clone() })))
}
