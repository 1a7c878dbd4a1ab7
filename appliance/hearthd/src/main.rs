//! `hearthd`'s entry point: reads argv and the config file, installs the logger and signal
//! handlers, and hands over to [`hearthd::run`]. Only this file reads argv and environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use hearthd::Config;

/// Hearth: an offline AI box. hearthd serves the web UI and the OpenAI-compatible API, and
/// runs language models in a separate, supervised worker process.
///
/// Example (dev mode): hearthd --model ~/.cache/hearth/models/SmolLM2-135M-Instruct.Q4_1.gguf
/// then open http://127.0.0.1:8080/
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML config file; command-line options override its values.
    #[arg(long, short, env = "HEARTH_CONFIG")]
    config: Option<PathBuf>,
    /// Where state is kept (database, sockets). Default: ~/.local/share/hearth.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Address to serve HTTP on. Default: 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A GGUF model file to serve; its id is the file name without extension. Repeatable.
    #[arg(long = "model", value_name = "FILE")]
    models: Vec<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Provision the box without a browser (scripts, tests). Works while it runs, too.
    #[command(subcommand)]
    Admin(Admin),
}

#[derive(Subcommand)]
enum Admin {
    /// Create the owner account; the password is read from standard input.
    CreateOwner {
        /// The box's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// The owner's name.
        #[arg(long)]
        name: String,
        /// Read the password from standard input (one line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Create an API token for a person and print it (it is shown only this once).
    CreateToken {
        /// The box's data directory.
        #[arg(long, value_name = "DIR")]
        data_dir: PathBuf,
        /// Whose token it is.
        #[arg(long)]
        user: String,
        /// A name for the token, e.g. the script that uses it.
        #[arg(long)]
        name: String,
    },
}

fn admin(command: Admin) -> anyhow::Result<()> {
    match command {
        Admin::CreateOwner { data_dir, name, .. } => {
            let mut password = String::new();
            std::io::stdin().read_line(&mut password)?;
            let password = password.trim_end_matches(['\n', '\r']);
            hearthd::admin::create_owner(&data_dir, &name, password)?;
            eprintln!("owner '{name}' created");
        }
        Admin::CreateToken {
            data_dir,
            user,
            name,
        } => {
            let token = hearthd::admin::create_token(&data_dir, &user, &name)?;
            println!("{token}");
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Admin(command)) = cli.command {
        return admin(command);
    }
    hearthd::logging::init();
    let mut config = match &cli.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(dir) = cli.data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = cli.listen {
        config.listen = listen;
    }
    config.models.extend(cli.models);
    // Test-only fault injection (tests/e2e/tests/store.rs): abort at this model-import step.
    config.test_crash_at = std::env::var("HEARTH_TEST_CRASH_AT")
        .ok()
        .and_then(|v| v.parse().ok());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) else {
                return;
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            let _ = stop.send(true);
        });
        hearthd::run(config, shutdown).await
    })?;
    Ok(())
}
