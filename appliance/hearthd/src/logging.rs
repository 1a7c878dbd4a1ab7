//! Picks the log sink once, at start: the journal when systemd connected our stderr to it,
//! stderr otherwise. Prompts and answers are never logged.

use log::LevelFilter;

/// Installs the logger. `HEARTH_LOG` sets the level for the stderr sink (default `info`).
pub fn init() {
    if systemd_journal_logger::connected_to_journal() {
        match systemd_journal_logger::JournalLog::new() {
            Ok(journal) => {
                let journal = journal.with_syslog_identifier("hearthd".to_owned());
                if journal.install().is_ok() {
                    log::set_max_level(LevelFilter::Info);
                    return;
                }
            }
            Err(e) => eprintln!("hearthd: journald unavailable ({e}); logging to stderr"),
        }
    }
    let _ = env_logger::Builder::from_env(env_logger::Env::new().filter_or("HEARTH_LOG", "info"))
        .try_init();
}
