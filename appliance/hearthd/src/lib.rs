//! `hearthd`: the Hearth supervisor daemon.
//!
//! Owns the data directory and its SQLite database ([`db`]), starts and watches the
//! inference worker ([`inference`]), serves the web UI and the APIs over HTTP ([`api`]), and
//! talks to systemd ([`notify`]). It never runs model math: that happens in the worker
//! process, so a crash or out-of-memory kill there cannot take the box down.
//!

pub mod accounts;
pub mod admin;
pub mod api;
pub mod config;
pub mod db;
pub mod durable;
pub mod inference;
pub mod logging;
pub mod notify;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

pub use config::Config;

/// hearthd's errors. Each names the file or thing involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the config file {path}: {source}")]
    ConfigRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    ConfigParse { path: PathBuf, message: String },
    #[error("cannot use {path} as a model: it has no file name")]
    ModelPath { path: PathBuf },
    #[error("two models would both be called '{id}'; rename one file")]
    DuplicateModel { id: String },
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Database {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot find the inference worker binary (looked for {path})")]
    WorkerBinary { path: PathBuf },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Accounts(#[from] accounts::AccountError),
    #[error("model library: {0}")]
    Store(#[source] hearth_store::StoreError),
    #[error("HTTP server failed: {0}")]
    Serve(#[source] std::io::Error),
    #[error("LAN (HTTPS, certificate, mDNS): {0}")]
    Lan(#[from] hearth_lan::Error),
}

/// Runs the daemon until `shutdown` turns true, then stops the worker and returns.
pub async fn run(config: Config, shutdown: watch::Receiver<bool>) -> Result<(), Error> {
    let data_dir = config.data_dir.clone();
    prepare_data_dir(&data_dir)?;
    let db = {
        let path = config.database_path();
        tokio::task::spawn_blocking(move || db::Db::open(&path))
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))??
    };
    let path_models = config.model_files()?;
    let store = open_store(&config, &path_models).await?;
    // The worker's models follow the library (see `inference::publish_models`).
    let initial = {
        let (store, path_models) = (store.clone(), path_models.clone());
        tokio::task::spawn_blocking(move || inference::model_list(&store, &path_models))
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))?
            .map_err(Error::Store)?
    };
    let (models_tx, models) = watch::channel(initial);
    let publisher = tokio::spawn(inference::publish_models(
        store.clone(),
        path_models,
        models_tx,
        shutdown.clone(),
    ));
    if models.borrow().is_empty() {
        log::warn!("no models yet: import one on the Models page, or pass --model FILE.gguf");
    }
    let program = worker_binary(&config)?;
    let socket = config.worker_socket();
    let follower = tokio::spawn(inference::follow_models(
        inference::WorkerClient::new(socket.clone()),
        models.clone(),
        shutdown.clone(),
    ));
    let command = inference::WorkerCommand {
        program,
        socket: socket.clone(),
        models,
        max_context: config.max_context,
        kv_cache: config.kv_cache,
        queue_depth: config.queue_depth,
        threads: config.inference_threads,
        backoff_initial: Duration::from_millis(config.restart_backoff_initial_ms),
        backoff_max: Duration::from_millis(config.restart_backoff_max_ms),
    };
    let health = Arc::new(Mutex::new(inference::WorkerHealth::default()));
    let supervisor = tokio::spawn(inference::supervise(
        command,
        health.clone(),
        shutdown.clone(),
    ));
    let watchdog = tokio::spawn(notify::watchdog(db.clone(), shutdown.clone()));
    let media_watch = tokio::spawn(watch_media(
        store.clone(),
        config.media_poll_ms,
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(Error::Serve)?;
    let accounts = Arc::new(prepare_accounts(&config, &db).await?);
    let box_name = {
        let db = db.clone();
        tokio::task::spawn_blocking(move || db.setting("box_name"))
            .await
            .map_err(|e| Error::Serve(std::io::Error::other(e)))??
            .unwrap_or_else(|| config.box_name.clone())
    };
    let hosts: api::AllowedHosts = Arc::new(std::sync::RwLock::new(
        config
            .host_names
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .chain([format!("{box_name}.local")])
            .collect(),
    ));
    let (box_name, _) = watch::channel(box_name);
    let state = api::AppState {
        config: Arc::new(config),
        db,
        inference: Arc::new(inference::WorkerClient::new(socket)),
        worker: health,
        accounts,
        hosts,
        box_name: Arc::new(box_name),
        started: std::time::Instant::now(),
        store: store.clone(),
    };
    // HTTPS, the device certificate and mDNS (each only when configured); with HTTPS on, the
    // plain-HTTP listener only redirects to it and serves the certificate page.
    let app = api::app(state.clone());
    let lan = hearth_lan::Lan::start(
        lan_config(&state.config, local),
        app.clone(),
        state.box_name.subscribe(),
        state.hosts.clone(),
        shutdown.clone(),
    )
    .await?;
    log::info!(data_dir:? = data_dir, url = format!("http://{local}/"); "hearthd is serving");
    notify::ready();

    let mut stop = shutdown.clone();
    let announce = tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        notify::stopping();
        log::info!("shutting down");
    });
    // hyper under our own accept loop (not axum::serve) for the header-read timeout, the
    // header-size cap and the connection cap; open streams get a grace period at shutdown.
    hearth_lan::serve_http(
        listener,
        lan.plain_http_router(app),
        hearth_lan::HttpsOptions::default(),
        shutdown,
    )
    .await?;
    let _ = announce.await;
    let _ = supervisor.await;
    let _ = watchdog.await;
    let _ = media_watch.await;
    lan.join().await;
    store.shutdown();
    let _ = publisher.await;
    let _ = follower.await;
    log::info!("stopped");
    Ok(())
}

/// What `hearth-lan` starts: HTTPS when `https_listen` is set, mDNS when `mdns` is.
fn lan_config(config: &Config, plain: std::net::SocketAddr) -> hearth_lan::LanConfig {
    hearth_lan::LanConfig {
        tls_dir: config.tls_path(),
        https_listen: config.https_listen,
        http_port: plain.port(),
        mdns: config.mdns,
        mdns_interfaces: config.mdns_interfaces.clone(),
        host_names: config.host_names.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        https: hearth_lan::HttpsOptions::default(),
    }
}

/// Loads (or creates and logs) the setup code while the box has no owner.
async fn prepare_accounts(config: &Config, db: &db::Db) -> Result<api::Accounts, Error> {
    let db = db.clone();
    let path = config.setup_code_path();
    let code = tokio::task::spawn_blocking(move || {
        if db.owner_exists()? {
            return Ok(None);
        }
        let (code, created) = accounts::load_or_create_setup_code(&path)?;
        let shown: String = code
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-");
        log::info!(setup_code = shown.as_str(), file:? = path, created = created;
                   "this box is not set up yet: open it in a browser and enter the setup code");
        Ok::<_, Error>(Some(code))
    })
    .await
    .map_err(|e| Error::Serve(std::io::Error::other(e)))??;
    let session_idle = Duration::from_secs(config.session_idle_hours.max(1) * 3600);
    Ok(api::Accounts::new(
        code,
        config.https_listen.is_some(),
        session_idle,
    ))
}

/// Opens the model library under `<data_dir>/models` and starts a scrub in the background.
async fn open_store(
    config: &Config,
    path_models: &[(String, PathBuf)],
) -> Result<hearth_store::Store, Error> {
    let store_config = hearth_store::StoreConfig {
        root: config.data_dir.join("models"),
        max_context: config.max_context.map(|c| c as u64),
        kv_cache: config.kv_cache,
        memory: hearth_store::MemorySource::default(),
        disk_reserve: 64 << 20,
        media_dir: Some(config.media_dir.clone()),
        reserved_names: path_models.iter().map(|(n, _)| n.clone()).collect(),
        crash_at: config.test_crash_at,
    };
    let store = tokio::task::spawn_blocking(move || hearth_store::Store::open(store_config))
        .await
        .map_err(|e| Error::Serve(std::io::Error::other(e)))?
        .map_err(Error::Store)?;
    store.start_scrub();
    Ok(store)
}

/// Lists `media_dir` every `every_ms` (0: never; the API then lists on request) and keeps the
/// result in the store, so the Models page sees a stick appear or go. Ends at shutdown.
async fn watch_media(
    store: hearth_store::Store,
    every_ms: u64,
    mut shutdown: watch::Receiver<bool>,
) {
    if every_ms == 0 {
        return;
    }
    let every = Duration::from_millis(every_ms);
    loop {
        let s = store.clone();
        if let Ok(Some(view)) = tokio::task::spawn_blocking(move || s.poll_media()).await
            && view.generation > 1
        {
            log::info!(files = view.files.len(); "removable media changed");
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
    }
}

fn prepare_data_dir(dir: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    let err = |source| Error::DataDir {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("run"))
        .map_err(err)?;
    Ok(())
}

/// The worker binary: configured, or `hearth-inference` next to our own executable.
fn worker_binary(config: &Config) -> Result<PathBuf, Error> {
    if let Some(path) = &config.inference_worker {
        return Ok(path.clone());
    }
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("hearth-inference")))
        .unwrap_or_else(|| PathBuf::from("hearth-inference"));
    if path.exists() {
        Ok(path)
    } else {
        Err(Error::WorkerBinary { path })
    }
}
