//! The `herald` binary: the node service and the operator's tools.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    about = "Coordination runtime for clustered mail servers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node service: consume, handle, commit, until SIGTERM/SIGINT.
    Run {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a node on an embedded Kafka cluster with sample events.
    Demo {
        /// The handler folder.
        #[arg(long, default_value = "target/handlers")]
        handlers: PathBuf,
    },
    /// Publish one event (JSON form; `-` reads stdin) and print where it landed.
    Publish {
        #[arg(long)]
        config: PathBuf,
        event: PathBuf,
    },
    /// Work with the configuration file.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Work with handler components.
    #[command(subcommand)]
    Handler(HandlerCmd),
    /// Read and write Stalwart v0.16 coordination records (topic stwt.agora).
    #[command(subcommand)]
    Stalwart(StalwartCmd),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file without connecting to anything.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum HandlerCmd {
    /// Run events (JSON lines) through a component in the real sandbox with a
    /// recording host; print one JSON line per event: outcome and effects.
    Test {
        wasm: PathBuf,
        events: PathBuf,
        /// The manifest to use (default: the .toml beside the component).
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
    /// Ask the running node (through its local API) to re-read its handler folder.
    Reload {
        #[arg(long)]
        config: PathBuf,
    },
    /// Print a component's world, imports and exports.
    Inspect {
        wasm: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum StalwartCmd {
    /// Decode a record (hex argument, or raw bytes on stdin): node id, then
    /// one JSON line per event.
    Decode { hex: Option<String> },
    /// Encode the JSON lines `decode` prints back into a record (hex).
    Encode,
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HERALD_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Not locked: the demo and the node print from several tasks.
    let mut stdout = std::io::stdout();
    match cli.command {
        Command::Run { config } => herald::cli::node::run(&config).await?,
        Command::Demo { handlers } => herald::cli::demo::run(&handlers).await?,
        Command::Publish { config, event } => {
            herald::cli::node::publish(&config, &event, &mut stdout).await?
        }
        Command::Config(ConfigCmd::Check { file }) => {
            herald::cli::config::check(&file, &mut stdout)?
        }
        Command::Handler(HandlerCmd::Test {
            wasm,
            events,
            manifest,
        }) => {
            let bad = herald::cli::handler::test(&wasm, &events, manifest.as_deref(), &mut stdout)
                .await?;
            if bad > 0 {
                eprintln!(
                    "error: {bad} line(s) of {} are not events",
                    events.display()
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Handler(HandlerCmd::Reload { config }) => {
            if !herald::cli::node::reload(&config, &mut stdout).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Handler(HandlerCmd::Inspect { wasm, json }) => {
            herald::cli::handler::inspect(&wasm, json, &mut stdout)?;
        }
        Command::Stalwart(StalwartCmd::Decode { hex }) => {
            herald::cli::stalwart::decode_cmd(hex.as_deref(), &mut std::io::stdin(), &mut stdout)?;
        }
        Command::Stalwart(StalwartCmd::Encode) => {
            herald::cli::stalwart::encode_cmd(&mut std::io::stdin().lock(), &mut stdout)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
