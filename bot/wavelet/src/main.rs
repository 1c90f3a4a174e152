//! `wavelet`: parses the command line, loads the configuration, wires the parts and runs.
//! No business logic lives here.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use wavelet::app;
use wavelet::chat::ChatContext;
use wavelet::chat::console::ConsoleAdapter;
use wavelet::delivery::ingest::{Ingest, MAX_BATCH};
use wavelet::delivery::{Adapters, deliver_pending};
use wavelet::ops::audit::{self, Format};
use wavelet::ops::transcripts;
use wavelet::runtime::SystemClock;
use wavelet_core::engine::{SandboxLimits, WorkflowEngine};

#[derive(Parser)]
#[command(
    name = "wavelet",
    version,
    about = "Safeguarding concerns, structured and accountable, in your team's chat rooms."
)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, env = "WAVELET_CONFIG", default_value = "wavelet.toml")]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Wavelet with the console room: speak as anyone in the directory (reads stdin).
    Console {
        /// Who you speak as first (a person id).
        #[arg(long = "as")]
        as_person: Option<String>,
        #[command(flatten)]
        input: InputArgs,
    },
    /// Run Wavelet on the chat platforms in the configuration (Matrix, Discord; with none, the console room).
    Run {
        #[arg(long = "as")]
        as_person: Option<String>,
        #[command(flatten)]
        input: InputArgs,
    },
    /// Check the configuration and compile every workflow; exit non-zero on any mistake.
    Check,
    /// Run transcript tests (default: every *.transcript under the workflows folder).
    Test { paths: Vec<PathBuf> },
    /// Read and verify the ledger.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Look after the store (PostgreSQL).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand)]
enum StoreCommand {
    /// As the database's owner: bring the schema up to date, and let ROLE run Wavelet
    /// without the rights to change or remove what the ledger holds.
    Grant { role: String },
}

#[derive(clap::Args, Clone, Default)]
struct InputArgs {
    /// Name the input (a file of lines): feeding it again after a crash skips the lines
    /// already handled, as a chat platform redelivers only what was not acknowledged.
    #[arg(long)]
    input_id: Option<String>,
    /// Show each message's idempotency key, the id a chat platform dedupes resends by.
    #[arg(long)]
    show_keys: bool,
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Walk the hash chain; exit non-zero and name the first bad entry.
    Verify {
        /// A ledger witness, ENTRY:HASH as posted in the witness group's rooms: the chain
        /// must still pass through it (repeat for each witness kept).
        #[arg(long = "witness", value_name = "ENTRY:HASH")]
        witnesses: Vec<wavelet_core::ledger::Witness>,
    },
    /// A case's timeline (recorded in the ledger as read by --as).
    Show {
        #[arg(long)]
        case: String,
        /// The reviewer or coordinator reading.
        #[arg(long = "as")]
        reader: String,
    },
    /// Every entry, as JSON lines or CSV (recorded in the ledger as read by --as).
    Export {
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        #[arg(long = "as")]
        reader: String,
        /// Write here instead of stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Lawfully erase one entry's content (retention, a court order): the hash stays, and
    /// the erasure itself is chained.
    Erase {
        #[arg(long)]
        seq: i64,
        #[arg(long)]
        reason: String,
        /// The reviewer or coordinator erasing.
        #[arg(long = "as")]
        reader: String,
    },
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

/// The filter with serenity's own logging off, whatever `WAVELET_LOG` says: serenity logs a
/// gateway frame it cannot parse whole (message text and names in it) and records request
/// bodies in its spans. The Discord adapter logs what happens, by id. (A directive for the
/// same target replaces one given in `WAVELET_LOG`.)
fn without_chat_text(filter: tracing_subscriber::EnvFilter) -> tracing_subscriber::EnvFilter {
    filter.add_directive("serenity=off".parse().expect("a valid directive"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` says what it does; the others only warn.
    let default_filter = match cli.command {
        // The console room is a terminal conversation: keep the log out of it.
        Command::Run { .. } => format!("warn,wavelet=info,{}", wavelet::chat::QUIET_BY_DEFAULT),
        _ => format!("warn,{}", wavelet::chat::QUIET_BY_DEFAULT),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("WAVELET_LOG").unwrap_or_else(|_| default_filter.into());
    tracing_subscriber::fmt()
        .with_env_filter(without_chat_text(filter))
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal; plain text for a journal or a file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => check(&cli.config),
        Command::Test { paths } => test(&cli.config, paths).await,
        Command::Console { as_person, input } => console(&cli.config, as_person, input).await,
        // With a terminal, `run` is the console room; as a service (no terminal), it keeps
        // timers, delivery and reloading going until it is stopped.
        Command::Run { as_person, input } if std::io::stdin().is_terminal() => {
            console(&cli.config, as_person, input).await
        }
        Command::Run { input, .. } => serve(&cli.config, input.show_keys).await,
        Command::Audit(a) => audit_command(&cli.config, a).await,
        Command::Store(StoreCommand::Grant { role }) => grant(&cli.config, &role).await,
    }
}

fn check(config: &std::path::Path) -> anyhow::Result<ExitCode> {
    let config = app::load_config(config, &env)?;
    let engine = WorkflowEngine::new(SandboxLimits::default());
    let (workflows, report) = wavelet::runtime::Workflows::load(&engine, &config.workflows.dir);
    println!("configuration {}: {} people, {} groups", config.path.display(), config.people.len(), config.groups.len());
    for wf in workflows.all() {
        println!("  ok  {} (!{}, version {})", wf.file.display(), wf.meta.command, &wf.hash[..12]);
    }
    for e in &report.refused {
        println!("  error  {e}");
    }
    // A schedule naming no loaded workflow would only be found when it falls due.
    let mut unscheduled = 0;
    for sch in &config.schedules {
        if workflows.by_command(&sch.workflow).is_none() {
            unscheduled += 1;
            println!(
                "  error  {}: schedule `{}` names workflow `{}`, but no workflow has that COMMAND; `wavelet check` lists the loaded ones above",
                config.path.display(),
                sch.id,
                sch.workflow
            );
        }
    }
    match &config.witness {
        Some(w) => {
            println!("  ok  ledger witness: the ledger's head is posted to group `{}` at `{}` (UTC)", w.group, w.cron)
        }
        None => println!(
            "  note  no ledger witness: add [audit] witness_group = \"…\" so the ledger's head is posted outside the database each day (README, \"The ledger witness\")"
        ),
    }
    Ok(if report.refused.is_empty() && unscheduled == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn test(config: &std::path::Path, paths: Vec<PathBuf>) -> anyhow::Result<ExitCode> {
    let default_config = config.exists().then_some(config);
    let files = if paths.is_empty() {
        let c = app::load_config(config, &env)?;
        transcripts::find(&c.workflows.dir)
    } else {
        paths.iter().flat_map(|p| if p.is_dir() { transcripts::find(p) } else { vec![p.clone()] }).collect()
    };
    if files.is_empty() {
        anyhow::bail!("no *.transcript files found; pass paths, or put them under the workflows folder");
    }
    let (mut passed, mut failed) = (0, 0);
    for f in &files {
        match transcripts::run(f, default_config).await {
            Ok(steps) => {
                passed += 1;
                println!("PASS {} ({steps} steps)", f.display());
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {e}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

async fn console(
    config_path: &std::path::Path,
    as_person: Option<String>,
    input: InputArgs,
) -> anyhow::Result<ExitCode> {
    let config = app::load_config(config_path, &env)?;
    let url = config.store.url.clone();
    let parts = app::build(config, &url, Arc::new(SystemClock)).await?;
    let rt = parts.runtime;
    for e in &parts.load.refused {
        eprintln!("workflow not loaded: {e}");
    }
    wavelet::ops::reload::record(&rt, &parts.load, false).await;
    let console = Arc::new(
        ConsoleAdapter::new(Box::new(std::io::stdout()), rt.directory().clone()).showing_keys(input.show_keys),
    );
    let mut adapters = Adapters::default();
    adapters.add(console.clone());
    let reloader = wavelet::ops::reload::spawn(rt.clone());
    // Timers fire and messages go out while the console is open.
    let background = wavelet::delivery::service::spawn(rt.clone(), adapters.clone());
    let (ingest, ingest_worker) = Ingest::spawn(rt.clone(), MAX_BATCH);
    let ctx = ChatContext::new(rt.clone(), ingest);
    let stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let options = wavelet::chat::console::ConsoleOptions {
        start_as: as_person,
        echo: !std::io::stdin().is_terminal(),
        input_id: input.input_id,
    };
    let result = wavelet::chat::console::run(&ctx, &adapters, console, stdin, options).await;
    background.stop().await;
    drop(ctx);
    let _ = ingest_worker.await;
    reloader.abort();
    result?;
    // What fell due while the last lines were handled, said before the console closes.
    rt.fire_due_timers().await?;
    deliver_pending(&rt, &adapters, rt.now()).await?;
    rt.store().close().await;
    Ok(ExitCode::SUCCESS)
}

async fn serve(config_path: &std::path::Path, show_keys: bool) -> anyhow::Result<ExitCode> {
    let config = app::load_config(config_path, &env)?;
    let url = config.store.url.clone();
    let parts = app::build(config, &url, Arc::new(SystemClock)).await?;
    let rt = parts.runtime;
    wavelet::ops::reload::record(&rt, &parts.load, false).await;
    let mut adapters = Adapters::default();
    // The console room prints to stdout: only where no chat platform is configured (a
    // demo, a test). With a platform, what is said to someone must not end up in a
    // service's output.
    if !rt.directory().config().has_chat_platform() {
        let console = ConsoleAdapter::new(Box::new(std::io::stdout()), rt.directory().clone()).showing_keys(show_keys);
        adapters.add(Arc::new(console));
    }
    let (ingest, ingest_worker) = Ingest::spawn(rt.clone(), MAX_BATCH);
    let ctx = ChatContext::new(rt.clone(), ingest.clone());
    let mut platforms = app::start_platforms(&ctx, &mut adapters).await?;
    drop(ctx);
    for (platform, waiting) in rt.store().undelivered_by_platform().await? {
        if !adapters.platforms().iter().any(|p| p.as_str() == platform) {
            tracing::warn!(platform = %platform, messages = waiting, "messages wait for a platform this process does not run; give those people an account on a configured platform");
        }
    }
    let reloader = wavelet::ops::reload::spawn(rt.clone());
    tracing::info!(store = rt.store().backend(), instance = %rt.instance(), "wavelet running; stop it with SIGTERM or Ctrl-C");
    let background = wavelet::delivery::service::spawn(rt.clone(), adapters);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    // A platform's task ends only when the platform will not have us any more (a revoked
    // Discord token): stop, and say why.
    let fatal = tokio::select! {
        _ = interrupt.recv() => None,
        _ = term.recv() => None,
        e = platforms.lost() => Some(e),
    };
    tracing::info!("wavelet stopping");
    // The stop, within STOP_WITHIN in all: no new events; what was taken is committed
    // (each step whole or not at all); what is being sent is sent; then the store closes.
    // Whatever is cut short is not lost: an event not committed was not acknowledged, so
    // its platform brings it again, and the outbox holds what was not sent.
    platforms.stop(STOP_TAKING).await;
    ingest.close();
    drop(ingest);
    let mut ingest_worker = ingest_worker;
    if tokio::time::timeout(STOP_COMMITTING, &mut ingest_worker).await.is_err() {
        ingest_worker.abort();
        tracing::warn!(
            "events being handled at the stop were not committed in time; they come again at the next start"
        );
    }
    if !background.stop_within(STOP_SENDING).await {
        tracing::warn!(
            "a delivery pass did not finish in time; what it had not recorded is sent again at the next start"
        );
    }
    reloader.abort();
    rt.store().close().await;
    tracing::info!("wavelet stopped");
    match fatal {
        Some(e) => Err(e),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// How long, at a stop, the platforms get to stop taking events, the ingest to commit what
/// it took, and the delivery loop to finish its pass: under 10 s in all.
const STOP_TAKING: std::time::Duration = std::time::Duration::from_secs(4);
const STOP_COMMITTING: std::time::Duration = std::time::Duration::from_secs(2);
const STOP_SENDING: std::time::Duration = std::time::Duration::from_secs(2);

async fn grant(config_path: &std::path::Path, role: &str) -> anyhow::Result<ExitCode> {
    let config = app::load_config(config_path, &env)?;
    let url = config.store.url.clone();
    // Opening migrates: the owner brings the schema up to date first.
    let store = wavelet_store::Store::open(&url)
        .await
        .with_context(|| format!("cannot open the store at {}", wavelet_store::redact(&url)))?;
    let statements = store.grant(role).await.with_context(|| format!("cannot grant to `{role}`"))?;
    for sql in &statements {
        println!("  {sql}");
    }
    println!(
        "`{role}` may now run Wavelet on this store: point WAVELET_DATABASE_URL at it as `{role}`. It may append to \
         the ledger and erase content, never change or remove entries."
    );
    Ok(ExitCode::SUCCESS)
}

async fn audit_command(config_path: &std::path::Path, a: AuditCommand) -> anyhow::Result<ExitCode> {
    let config = app::load_config(config_path, &env)?;
    let url = config.store.url.clone();
    let parts = app::open(config, &url, Arc::new(SystemClock)).await?;
    let rt = parts.runtime;
    match a {
        AuditCommand::Verify { witnesses } => match rt.store().verify(&witnesses).await? {
            Ok(r) => {
                let witnessed = match r.witnessed {
                    0 => String::new(),
                    1 => ", and it matches its witness".to_string(),
                    n => format!(", and it matches all {n} witnesses"),
                };
                println!(
                    "ledger verified: {} entries, {} erased, head {} (entry {}){witnessed}",
                    r.entries, r.erased, r.head.hash, r.head.seq
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(fault) => {
                println!("LEDGER DOES NOT VERIFY: {fault}");
                Ok(ExitCode::FAILURE)
            }
        },
        AuditCommand::Show { case, reader } => {
            audit::show_case(&rt, &reader, &case, &mut std::io::stdout())
                .await
                .with_context(|| format!("cannot show case {case}"))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Erase { seq, reason, reader } => {
            if reason.trim().is_empty() {
                anyhow::bail!(
                    "an erasure needs a --reason (e.g. \"retention period ended\", a court order's reference)"
                );
            }
            if audit::erase(&rt, &reader, seq, &reason).await? {
                println!("entry {seq}'s content erased; its hash stays and the erasure is recorded");
                Ok(ExitCode::SUCCESS)
            } else {
                println!("no entry {seq} with content to erase (it may be erased already)");
                Ok(ExitCode::FAILURE)
            }
        }
        AuditCommand::Export { format, reader, out } => {
            let mut sink: Box<dyn std::io::Write> = match &out {
                Some(p) => Box::new(private_file(p).with_context(|| format!("cannot write {}", p.display()))?),
                None => Box::new(std::io::stdout()),
            };
            let n = audit::export(&rt, &reader, format, &mut sink).await?;
            eprintln!("exported {n} entries");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A new file only its owner can read: exports hold what was shared about children.
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}
