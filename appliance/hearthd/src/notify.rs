//! systemd integration: READY=1 / STOPPING=1 and watchdog pings, all no-ops outside systemd.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::db::Db;

pub fn ready() {
    if let Err(e) = sd_notify::notify(false, &[NotifyState::Ready]) {
        log::warn!(error:% = e; "could not notify systemd of readiness");
    }
}

pub fn stopping() {
    let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
}

/// Pings the systemd watchdog at half its interval for as long as the database answers,
/// so a wedged daemon is restarted. Returns at once when no watchdog is configured.
pub async fn watchdog(db: Db, mut shutdown: watch::Receiver<bool>) {
    let mut usec = 0;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let period = Duration::from_micros(usec / 2);
    log::info!(period_ms = period.as_millis() as u64; "systemd watchdog enabled");
    loop {
        let healthy = {
            let db = db.clone();
            tokio::task::spawn_blocking(move || db.check().is_ok())
                .await
                .unwrap_or(false)
        };
        if healthy {
            let _ = sd_notify::notify(false, &[NotifyState::Watchdog]);
        } else {
            log::error!("database check failed; withholding the watchdog ping");
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}
