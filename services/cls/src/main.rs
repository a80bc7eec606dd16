//! `cls`: the operator's command line. `cls migrate` and `cls topology` prepare Postgres and
//! RabbitMQ, `cls up` runs the whole cluster locally in the foreground (SPEC §7), and
//! `cls brand create` gives a new user a brand and an API key in one command, and
//! `cls read-model rebuild` rewrites the Redis read model from Postgres.
//!
//! This file parses the command line and reads the environment (nothing below it does), then
//! hands typed values to one function per subcommand.

mod admin;
mod bench;
mod dlq;
mod http;
mod setup;
mod transfer;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use cls_runtime::settings::LogFormat;
use cls_runtime::{Secret, ServiceKind, Settings};

/// Default of `CLS_DATABASE_URL` (SPEC §7).
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/cls";
/// Default of `CLS_AMQP_URL` (SPEC §7).
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Default of `CLS_REDIS_URL` (SPEC §7).
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Default of `CLS_NAMESPACE` (SPEC §7).
const DEFAULT_NAMESPACE: &str = "cls";
/// Default of `CLS_HTTP_ADDR` (SPEC §7), also where `cls brand create` finds the gateway.
const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8080";

#[derive(Debug, Parser)]
#[command(name = "cls", version, about = "CLS, the centralized license service: operator commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One variant per subcommand, dispatched by one `match` in [`run`].
#[derive(Debug, Subcommand)]
enum Command {
    /// Create the database if missing and apply migrations (uses CLS_DATABASE_URL only).
    Migrate,
    /// Declare the AMQP exchanges and queues of CLS_NAMESPACE on CLS_AMQP_URL.
    Topology,
    /// Run the whole cluster locally in the foreground: migrate, declare the topology, start the
    /// query service, every worker kind and the gateway; Ctrl-C stops everything.
    Up(UpArgs),
    /// Manage brands through the gateway's admin API (needs CLS_ADMIN_TOKEN).
    #[command(subcommand)]
    Brand(BrandCommand),
    /// Maintain the Redis read model of hot reads (uses CLS_DATABASE_URL, CLS_REDIS_URL,
    /// CLS_NAMESPACE).
    #[command(subcommand, name = "read-model")]
    ReadModel(ReadModelCommand),
    /// Inspect and replay dead-lettered messages (uses CLS_AMQP_URL, CLS_NAMESPACE).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Load a running cluster and report throughput, latency, errors and memory, against
    /// hyper + Redis and RabbitMQ request/reply references measured in the same run.
    Bench(Box<bench::BenchArgs>),
    /// Import licenses from a CSV file through the public API (brands migrating from another
    /// licensing system). Safe to re-run: rows already imported are not imported twice. Exit
    /// status: 0 every row imported, 2 some rows rejected (see the rejects file), 1 fatal error.
    Import(transfer::ImportArgs),
    /// Export every license of the brand as CSV (the license keys themselves cannot be exported).
    Export(transfer::ExportArgs),
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Every dead-letter queue of the namespace with its depth, and the first messages of each.
    List {
        /// Messages to show per non-empty queue (they stay in the queue).
        #[arg(long, default_value_t = 10)]
        show: usize,
    },
    /// Publish dead letters back to the queue they died in (after fixing the cause).
    Replay {
        /// The dead-letter queue, e.g. cls.licenses.commands.dlq.
        queue: String,
        /// Only the message with this message id (default: all of them).
        #[arg(long)]
        message_id: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ReadModelCommand {
    /// Rewrite every document from PostgreSQL. Safe while the cluster serves: writes are
    /// version compare-and-sets, so nothing newer is overwritten.
    Rebuild {
        /// Delete the namespace's read-model keys first (reads fill from PostgreSQL meanwhile).
        #[arg(long)]
        wipe: bool,
    },
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Replicas of a worker kind, as KIND=N (repeatable or comma-separated), e.g.
    /// `--replicas brands=2,activations=3`. Kinds: brands, licenses, activations. Default 1 each.
    #[arg(long = "replicas", value_name = "KIND=N", value_delimiter = ',', value_parser = up::parse_replicas)]
    replicas: Vec<(cls_contracts::Module, u16)>,
    /// First port of the children's ops listeners on 127.0.0.1: the gateway gets BASE, the query
    /// service BASE+1, worker replicas BASE+10 upward.
    #[arg(long, value_name = "BASE", default_value_t = 9100)]
    ops_base_port: u16,
}

#[derive(Debug, Subcommand)]
enum BrandCommand {
    /// Create a brand and its first API key, and print the key (shown only once). Safe to re-run
    /// with the same arguments: the requests carry idempotency keys derived from them.
    Create(BrandCreateArgs),
}

#[derive(Debug, Args)]
struct BrandCreateArgs {
    /// The brand's slug: 2-40 characters of a-z, 0-9 and '-'.
    #[arg(long)]
    slug: String,
    /// The brand's display name.
    #[arg(long)]
    name: String,
    /// The prefix of the brand's license keys: 2-8 characters of A-Z and 0-9 (e.g. RM).
    #[arg(long)]
    key_prefix: String,
    /// Name of the API key to create.
    #[arg(long, default_value = "default")]
    api_key_name: String,
    /// Scopes of the API key (comma-separated): licenses:read, licenses:write, ecosystem:read.
    /// The server's default is licenses:write.
    #[arg(long, value_delimiter = ',')]
    scopes: Option<Vec<String>>,
    /// The gateway's base URL (default: http://CLS_HTTP_ADDR, else http://127.0.0.1:8080).
    #[arg(long)]
    url: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The environment variable `name`, if set to something other than blanks.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn log_format() -> LogFormat {
    match env("CLS_LOG_FORMAT").as_deref() {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            cls_runtime::telemetry::init(log_format());
            let url = env("CLS_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
            setup::migrate(&url).await
        }
        Command::Topology => {
            cls_runtime::telemetry::init(log_format());
            let url = env("CLS_AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
            let namespace = env("CLS_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
            setup::declare_topology(&url, &namespace).await
        }
        Command::Up(args) => run_up(args).await,
        Command::Bench(args) => bench::run(*args).await,
        Command::Import(args) => transfer::import::run(args, env("CLS_HTTP_ADDR")).await,
        Command::Export(args) => transfer::export::run(args, env("CLS_HTTP_ADDR")).await,
        Command::Brand(BrandCommand::Create(args)) => run_brand_create(args).await,
        Command::Dlq(command) => {
            cls_runtime::telemetry::init(log_format());
            let url = env("CLS_AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.to_owned());
            let namespace = env("CLS_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
            match command {
                DlqCommand::List { show } => dlq::list(&url, &namespace, show).await,
                DlqCommand::Replay { queue, message_id } => dlq::replay(&url, &namespace, &queue, message_id.as_deref()).await,
            }
        }
        Command::ReadModel(ReadModelCommand::Rebuild { wipe }) => {
            cls_runtime::telemetry::init(log_format());
            let database_url = env("CLS_DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned());
            let redis_url = env("CLS_REDIS_URL").unwrap_or_else(|| DEFAULT_REDIS_URL.to_owned());
            let namespace = env("CLS_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
            setup::rebuild_read_model(&database_url, &redis_url, &namespace, wipe).await
        }
    }
}

async fn run_up(args: UpArgs) -> anyhow::Result<()> {
    // Secrets the user did not set are generated for this run and handed to every child.
    let generated = up::generate_missing_secrets(env("CLS_SECRET_KEY").is_some(), env("CLS_INTERNAL_TOKEN").is_some());
    let lookup = |name: &str| {
        let generated = generated.vars().into_iter().find(|(n, _)| *n == name);
        generated.map(|(_, v)| v.expose().to_owned()).or_else(|| env(name))
    };
    // The children read the same variables; parsing them here fails fast on a malformed one.
    let settings = Settings::from_lookup(ServiceKind::Gateway, lookup)?;
    cls_runtime::telemetry::init(settings.log_format);
    let plan = up::Plan {
        bin_dir: bin_dir()?,
        replicas: args.replicas,
        ops_base_port: args.ops_base_port,
        generated,
        settings,
    };
    let shutdown = cls_runtime::shutdown::on_signals();
    up::run(plan, shutdown).await
}

/// The directory of the running `cls`, where `cargo build --bins` puts the sibling binaries.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the cls executable")?;
    exe.parent().map(PathBuf::from).context("the cls executable has no parent directory")
}

async fn run_brand_create(args: BrandCreateArgs) -> anyhow::Result<()> {
    let Some(admin_token) = env("CLS_ADMIN_TOKEN").map(Secret::new) else {
        bail!("CLS_ADMIN_TOKEN is not set: export the operator token the gateway was started with");
    };
    let base_url = match args.url {
        Some(url) => url,
        None => {
            let addr = env("CLS_HTTP_ADDR").unwrap_or_else(|| DEFAULT_HTTP_ADDR.to_owned());
            let addr: SocketAddr = addr.parse().with_context(|| format!("CLS_HTTP_ADDR {addr:?} is not host:port"))?;
            format!("http://{}", up::reachable(addr))
        }
    };
    let request = admin::NewBrand {
        slug: args.slug,
        name: args.name,
        key_prefix: args.key_prefix,
        api_key_name: args.api_key_name,
        scopes: args.scopes,
    };
    let created = admin::create_brand(&base_url, &admin_token, &request).await?;
    if args.json {
        println!("{}", admin::to_json(&created));
    } else {
        print!("{}", admin::to_text(&created));
    }
    Ok(())
}
