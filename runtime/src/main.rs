//! The `herald` binary: the node service and the operator's tools.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    /// Publish one event (JSON form; `-` reads stdin), or a JSON array of events as one
    /// bundle record, and print where it landed.
    Publish {
        #[arg(long)]
        config: PathBuf,
        event: PathBuf,
    },
    /// Show a running node's state: readiness, groups and lag, handlers,
    /// dead letters of the last hour, blocklist, certificates. Exits 1 when
    /// the node is not ready.
    Status {
        #[arg(long)]
        config: PathBuf,
        /// Print the API's JSON instead, for scripts.
        #[arg(long)]
        json: bool,
        /// Also list every node heard from (version, handlers, lag) and name
        /// the silent ones; exits 1 when one is silent or this node's own
        /// probes do not come back.
        #[arg(long)]
        cluster: bool,
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
    /// Signing keys and the cluster's sealing identity.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Roll TLS certificates out to every node.
    #[command(subcommand)]
    Cert(CertCmd),
    /// The compacted state topic (`topics.state`).
    #[command(subcommand)]
    State(StateCmd),
    /// Work with the kernel firewall herald keeps (`firewall.nftables`).
    #[command(subcommand)]
    Firewall(FirewallCmd),
    /// Web Push: the node's VAPID identity.
    #[command(subcommand)]
    Push(PushCmd),
    /// Print the shell completion script for bash, zsh or fish (also elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page, herald(1), in roff.
    Man,
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
    /// Stop one broadcast handler's consumption while the others go on; its
    /// offsets stay where they were (in a group of its own).
    Pause {
        name: String,
        #[arg(long)]
        config: PathBuf,
    },
    /// Restart a paused handler where it stopped.
    Resume {
        name: String,
        #[arg(long)]
        config: PathBuf,
    },
    /// Make one broadcast handler, alone in a group of its own, handle the
    /// history again from a time (RFC 3339), an offset, or `earliest`.
    Replay {
        name: String,
        #[arg(long)]
        from: String,
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
enum PushCmd {
    /// Print the VAPID public key (the `applicationServerKey` web clients
    /// subscribe with), creating the key file the config names
    /// (`push.vapid.keyFile`, default `<stateDir>/vapid.key`) if missing.
    VapidKey {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// Create a new Ed25519 signing key file (mode 0600) and print its id and
    /// public key; with --sealing, the cluster's age identity and its recipient.
    Generate {
        /// Where to write it; an existing file is never overwritten.
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        sealing: bool,
    },
    /// Print this node's signing key id and public key (creating the key if
    /// the node has not yet), and the trust entry other nodes need.
    Show {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Check a certificate and its key, seal the key to certificates.sealTo,
    /// sign and publish it: every node installs it. For ACME deploy hooks.
    Publish {
        #[arg(long)]
        config: PathBuf,
        /// The names to install it for, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        domains: Vec<String>,
        /// The chain, leaf first (fullchain.pem).
        #[arg(long)]
        cert: PathBuf,
        /// The private key (privkey.pem).
        #[arg(long)]
        key: PathBuf,
    },
    /// Install a certificate on this node now, past the version and
    /// no-rollback rules (a way out of a bad certificate): it gets a version
    /// of the current time, so older replays stay refused and the cluster's
    /// next newer certificate replaces it.
    Force {
        #[arg(long)]
        config: PathBuf,
        /// The names to install it for, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        domains: Vec<String>,
        /// The chain, leaf first (fullchain.pem).
        #[arg(long)]
        cert: PathBuf,
        /// The private key (privkey.pem), in plaintext.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand)]
enum StateCmd {
    /// Copy the blocks and certificates on the events topic to the state
    /// topic, with their keys and signatures: once, when a cluster from
    /// before the state topic upgrades.
    Seed {
        #[arg(long)]
        config: PathBuf,
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

#[derive(Subcommand)]
enum FirewallCmd {
    /// Delete herald's nftables table (the blocklist file is kept). Stop the
    /// node first: a running node puts the table back at its next change.
    Flush {
        #[arg(long)]
        config: PathBuf,
    },
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
        Command::Status {
            config,
            json,
            cluster,
        } => {
            if !herald::cli::status::status(&config, json, cluster, &mut stdout).await? {
                return Ok(ExitCode::FAILURE);
            }
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
        Command::Handler(HandlerCmd::Pause { name, config }) => {
            if !herald::cli::node::control(&config, &name, "pause", None, &mut stdout).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Handler(HandlerCmd::Resume { name, config }) => {
            if !herald::cli::node::control(&config, &name, "resume", None, &mut stdout).await? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Handler(HandlerCmd::Replay { name, from, config }) => {
            if !herald::cli::node::control(&config, &name, "replay", Some(&from), &mut stdout)
                .await?
            {
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
        Command::Keys(KeysCmd::Generate { out, sealing }) => {
            herald::cli::keys::generate(&out, sealing, &mut stdout)?
        }
        Command::Keys(KeysCmd::Show { config }) => herald::cli::keys::show(&config, &mut stdout)?,
        Command::Cert(CertCmd::Publish {
            config,
            domains,
            cert,
            key,
        }) => {
            herald::cli::keys::publish_certificate(&config, &domains, &cert, &key, &mut stdout)
                .await?
        }
        Command::State(StateCmd::Seed { config }) => {
            herald::cli::state::seed(&config, &mut stdout).await?
        }
        Command::Cert(CertCmd::Force {
            config,
            domains,
            cert,
            key,
        }) => herald::cli::keys::force_certificate(&config, &domains, &cert, &key, &mut stdout)?,
        Command::Push(PushCmd::VapidKey { config }) => {
            herald::cli::push::vapid_key(&config, &mut stdout)?
        }
        Command::Firewall(FirewallCmd::Flush { config }) => {
            herald::cli::firewall::flush(&config, &mut stdout).await?
        }
        Command::Completions { shell } => {
            // Through a buffer: `generate` panics when a write fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "herald", &mut script);
            stdout.write_all(&script)?;
        }
        Command::Man => man_page(&mut stdout)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// herald(1), from the CLI definition: clap_mangen's sections, then every
/// command however deep (in this one page, not in herald-<command>(1) pages).
fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    let mut cli = Cli::command();
    cli.build();
    let man = clap_mangen::Man::new(cli.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    man_commands(&cli, out)?;
    man.render_version_section(out)
}

fn man_commands(cmd: &clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    // roff: `-` is a hyphen unless escaped, `\` starts an escape, a line
    // starting with `.` or `'` is a request.
    let roff = |s: &str| {
        let s = s.replace('\\', "\\e").replace('-', "\\-");
        if s.starts_with(['.', '\'']) {
            format!("\\&{s}")
        } else {
            s
        }
    };
    let subs = cmd.get_subcommands();
    for sub in subs.filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        if sub.has_subcommands() {
            man_commands(sub, out)?;
            continue;
        }
        let name = sub.get_bin_name().unwrap_or(sub.get_name());
        let usage = sub.clone().render_usage().to_string();
        let args = usage.trim_start_matches("Usage: ").trim_start_matches(name);
        writeln!(out, ".TP\n\\fB{}\\fR{}", roff(name), roff(args))?;
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            for line in about.to_string().lines() {
                writeln!(out, "{}", roff(line))?;
            }
        }
        for arg in sub.get_arguments() {
            let (Some(long), Some(help)) = (arg.get_long(), arg.get_help()) else {
                continue;
            };
            if ["help", "version"].contains(&long) {
                continue;
            }
            writeln!(
                out,
                ".br\n\\fB\\-\\-{}\\fR: {}",
                roff(long),
                roff(&help.to_string())
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_page_describes_every_command() {
        let mut page = Vec::new();
        man_page(&mut page).unwrap();
        let page = String::from_utf8(page).unwrap();
        assert!(
            page.starts_with(".ie") && page.contains(".TH herald 1"),
            "{page}"
        );
        for command in ["herald run", "herald handler reload", "herald config check"] {
            assert!(
                page.contains(&format!("\\fB{command}\\fR")),
                "{command}: {page}"
            );
        }
    }

    #[test]
    fn completions_know_the_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "herald", &mut script);
            let script = String::from_utf8(script).unwrap();
            assert!(
                script.contains("handler") && script.contains("reload"),
                "{shell}"
            );
        }
    }
}
