//! Picks the log sink once, at start: the journal when systemd connected our stderr to it,
//! stderr otherwise. Every record also goes to a small in-memory ring that the owner's System
//! page shows. Prompts and answers are never logged.

use std::collections::VecDeque;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{LevelFilter, Log, Metadata, Record};

/// How many recent lines the ring keeps.
const RING_LINES: usize = 500;

/// One remembered log line.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// Unix seconds.
    pub time: u64,
    pub level: &'static str,
    pub message: String,
}

fn ring() -> &'static Mutex<VecDeque<LogLine>> {
    static RING: OnceLock<Mutex<VecDeque<LogLine>>> = OnceLock::new();
    RING.get_or_init(|| Mutex::new(VecDeque::with_capacity(RING_LINES)))
}

/// The most recent log lines, newest first.
pub fn recent(limit: usize) -> Vec<LogLine> {
    let ring = ring().lock().unwrap_or_else(PoisonError::into_inner);
    ring.iter().rev().take(limit).cloned().collect()
}

fn remember(record: &Record<'_>) {
    struct Kv(String);
    impl<'kvs> log::kv::VisitSource<'kvs> for Kv {
        fn visit_pair(
            &mut self,
            key: log::kv::Key<'kvs>,
            value: log::kv::Value<'kvs>,
        ) -> Result<(), log::kv::Error> {
            self.0.push_str(&format!(" {key}={value}"));
            Ok(())
        }
    }
    let mut kv = Kv(String::new());
    let _ = record.key_values().visit(&mut kv);
    let line = LogLine {
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        level: record.level().as_str(),
        message: format!("{}{}", record.args(), kv.0),
    };
    let mut ring = ring().lock().unwrap_or_else(PoisonError::into_inner);
    if ring.len() == RING_LINES {
        ring.pop_front();
    }
    ring.push_back(line);
}

/// Forwards to the real sink and remembers the line.
struct Tee(Box<dyn Log>);

impl Log for Tee {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if self.0.enabled(record.metadata()) {
            remember(record);
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// Installs the logger. `HEARTH_LOG` sets the level for the stderr sink (default `info`).
pub fn init() {
    if systemd_journal_logger::connected_to_journal() {
        match systemd_journal_logger::JournalLog::new() {
            Ok(journal) => {
                let journal = journal.with_syslog_identifier("hearthd".to_owned());
                if log::set_boxed_logger(Box::new(Tee(Box::new(journal)))).is_ok() {
                    log::set_max_level(LevelFilter::Info);
                    return;
                }
            }
            Err(e) => eprintln!("hearthd: journald unavailable ({e}); logging to stderr"),
        }
    }
    let logger =
        env_logger::Builder::from_env(env_logger::Env::new().filter_or("HEARTH_LOG", "info"))
            .build();
    let level = logger.filter();
    if log::set_boxed_logger(Box::new(Tee(Box::new(logger)))).is_ok() {
        log::set_max_level(level);
    }
}
