//! `cls bench` (issue 8): load a running cluster as its users do and report throughput,
//! latency percentiles, answers by status, whether warm validations reach Postgres, and the
//! resident memory of every CLS process.
//!
//! Each scenario is compared with a reference run made in the same invocation, at the same
//! concurrency, by the same load generator ([`reference`]): validation against one Redis GET
//! behind a minimal hyper server, writes against a bare RabbitMQ request/reply round trip with
//! publisher confirms. Ratios to those ceilings survive a noisy machine better than absolute
//! figures do.
//!
//! The benchmark creates its own data first ([`setup`]), then, for each `--concurrency`, runs
//! the references and scenarios in turn ([`load`]), each for a warm-up and a measured window.

mod driver;
mod load;
mod probes;
mod procs;
mod reference;
mod report;
mod setup;
mod workload;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use cls_runtime::Secret;
use hyper::StatusCode;

use driver::{Driver, HttpSlot, RpcSlot};
use load::Shape;
use reference::{RabbitReference, RedisReference};
use report::{PostgresEvidence, Report, Run};
use setup::{Credential, Fixture};
use workload::{Validations, Workload, Writes};

/// Pause between two runs, so the previous run's background work (events being projected,
/// outbox rows being relayed) does not spill into the next measurement.
const SETTLE: Duration = Duration::from_secs(1);

/// `cls bench`'s command line. Rate limits: the benchmark sends far more than the default
/// limits allow from one address, so run the cluster under test with `CLS_RATE_IP`,
/// `CLS_RATE_LICENSE_KEY` and `CLS_RATE_API_KEY` set high (the limiter still runs) or to 0 (off).
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The gateway's base URL.
    #[arg(long, env = "CLS_BENCH_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The operator token: the benchmark creates its own brand, API key, products and licenses.
    #[arg(long, env = "CLS_ADMIN_TOKEN", hide_env_values = true, conflicts_with = "api_key")]
    admin_token: Option<String>,
    /// Instead of the admin token: an API key with licenses:write; the benchmark's products and
    /// licenses are created in that key's brand.
    #[arg(long, env = "CLS_BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    scenario: Scenario,
    /// Connections (one request in flight each), comma-separated for several runs per scenario.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    concurrency: Vec<usize>,
    /// Measured window per run, e.g. 10s, 500ms, 1m.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Unmeasured load before each measured window.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    warmup: Duration,
    /// Open loop: send this many requests per second (over all connections) and measure latency
    /// from each request's due time. Default: closed loop.
    #[arg(long)]
    rate: Option<f64>,
    /// License keys the validate scenario checks (each with two licenses and one active instance).
    #[arg(long, default_value_t = 100)]
    keys: usize,
    /// High-seat licenses the activate scenario spreads its activations over.
    #[arg(long, default_value_t = 64)]
    activation_keys: usize,
    /// Skip the reference runs (no ratios).
    #[arg(long)]
    no_reference: bool,
    /// Processes whose memory to report (default: found from the gateway's port).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// The query service's metrics (its ops listener; `cls up` puts it on --ops-base-port + 1).
    #[arg(long, default_value = "http://127.0.0.1:9101/metrics")]
    query_metrics: String,
    /// The cluster's database, for its transaction counters during the validate run.
    #[arg(long, env = "CLS_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432/cls")]
    database_url: String,
    /// Redis for the read-path reference.
    #[arg(long, env = "CLS_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// RabbitMQ for the write-path reference.
    #[arg(long, env = "CLS_AMQP_URL", default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    /// Prefix of the reference's Redis key and queue.
    #[arg(long, env = "CLS_NAMESPACE", default_value = "cls")]
    namespace: String,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the JSON document to this file (the table still goes to stdout).
    #[arg(long, value_name = "FILE")]
    json_out: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Warm validations (product and instance checks).
    Validate,
    /// New activations on high-seat licenses.
    Activate,
    /// New customers' licenses.
    Provision,
    /// 95 % validations, 5 % writes.
    Mixed,
    /// Every scenario.
    All,
}

/// What one run loads: a scenario of the cluster or a reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    RedisReference,
    RabbitReference,
    Scenario(Scenario),
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::RedisReference => "ref-redis",
            Step::RabbitReference => "ref-rabbitmq",
            Step::Scenario(Scenario::Validate) => "validate",
            Step::Scenario(Scenario::Activate) => "activate",
            Step::Scenario(Scenario::Provision) => "provision",
            Step::Scenario(Scenario::Mixed) => "mixed",
            Step::Scenario(Scenario::All) => "all",
        }
    }

    /// The reference a scenario is compared with.
    fn reference(self) -> Option<Step> {
        match self {
            Step::Scenario(Scenario::Validate | Scenario::Mixed) => Some(Step::RedisReference),
            Step::Scenario(Scenario::Activate | Scenario::Provision) => Some(Step::RabbitReference),
            _ => None,
        }
    }
}

/// The runs of one concurrency, references next to the scenarios they bound.
fn steps(scenario: Scenario, references: bool) -> Vec<Step> {
    let wanted = |s: Scenario| scenario == Scenario::All || scenario == s;
    let mut steps = Vec::new();
    let reads = [Scenario::Validate, Scenario::Mixed].into_iter().filter(|s| wanted(*s));
    let writes = [Scenario::Activate, Scenario::Provision].into_iter().filter(|s| wanted(*s));
    for (reference, group) in [(Step::RedisReference, reads.collect::<Vec<_>>()), (Step::RabbitReference, writes.collect())] {
        if group.is_empty() {
            continue;
        }
        if references {
            steps.push(reference);
        }
        steps.extend(group.into_iter().map(Step::Scenario));
    }
    steps
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs whole numbers of at least 1");
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        bail!("--rate must be a positive number of requests per second");
    }
    let base_url = args.url.trim_end_matches('/').to_owned();
    let gateway = gateway_addr(&base_url).await?;
    let credential = match (&args.admin_token, &args.api_key) {
        (_, Some(key)) => Credential::ApiKey(Secret::new(key.clone())),
        (Some(token), None) => Credential::Admin(Secret::new(token.clone())),
        (None, None) => bail!("the benchmark needs --admin-token (or CLS_ADMIN_TOKEN) or --api-key to create its data"),
    };
    let client = crate::http::client();
    match crate::http::probe(&client, &format!("{base_url}/ready")).await {
        Some(answer) if answer.status == StatusCode::OK => {}
        Some(answer) => bail!("the gateway at {base_url} is not ready ({})", answer.status),
        None => bail!("nothing answers at {base_url} (is `cls up` running?)"),
    }

    let writes_wanted = matches!(args.scenario, Scenario::All | Scenario::Activate | Scenario::Mixed);
    let activation_keys = if writes_wanted { args.activation_keys.max(1) } else { 0 };
    progress(&args, &format!("setting up {} validation keys and {activation_keys} activation licenses...", args.keys.max(1)));
    let fixture = setup::prepare(&base_url, &credential, args.keys.max(1), activation_keys).await?;
    let validations = Arc::new(Validations::new(&fixture));
    let watched = procs::discover(gateway, &args.pids);

    let references = !args.no_reference;
    let mut redis_reference = None;
    let mut rabbit_reference = None;
    let plan = steps(args.scenario, references);
    if plan.contains(&Step::RedisReference) {
        let sample = validation_answer(&client, &base_url, &validations).await?;
        let key = format!("{}:bench-ref:{}", args.namespace, fixture.run_id);
        redis_reference = Some(RedisReference::start(&args.redis_url, key, sample).await.context("cannot start the hyper + Redis reference")?);
    }
    if plan.contains(&Step::RabbitReference) {
        let queue = format!("{}.bench-ref.{}", args.namespace, fixture.run_id);
        rabbit_reference = Some(RabbitReference::start(&args.amqp_url, queue).await.context("cannot start the RabbitMQ reference")?);
    }

    let mut runs: Vec<Run> = Vec::new();
    let mut load_seconds = 0.0;
    let outcome = async {
        for &concurrency in &args.concurrency {
            let shape = Shape { warmup: args.warmup, duration: args.duration, rate: args.rate };
            for step in &plan {
                progress(&args, &format!("{} @{concurrency}...", step.name()));
                let drivers = match step {
                    Step::RedisReference => {
                        let addr = redis_reference.as_ref().expect("started for this plan").addr;
                        http_slots(addr, Arc::new(Workload::RedisReference(validations.sample())), concurrency).await?
                    }
                    Step::RabbitReference => {
                        let caller = rabbit_reference.as_ref().expect("started for this plan").caller.clone();
                        (0..concurrency).map(|_| Driver::Rpc(RpcSlot { caller: caller.clone() })).collect()
                    }
                    Step::Scenario(s) => http_slots(gateway, Arc::new(workload(*s, &fixture, &validations, concurrency)), concurrency).await?,
                };
                let evidence = match step {
                    Step::Scenario(Scenario::Validate) => Some(Evidence::start(&args, &client).await),
                    _ => None,
                };
                let measured = load::run(shape, drivers).await;
                load_seconds += (args.warmup + args.duration).as_secs_f64();
                let mut run = Run::new(step.name(), concurrency, &measured);
                if let Some(evidence) = evidence {
                    let validations = measured.kinds.get("validate").map_or(0, |k| k.latency.len());
                    run.postgres = Some(evidence.finish(&client, validations).await);
                }
                if let Some(reference) = step.reference() {
                    let base = runs.iter().rev().find(|r| r.scenario == reference.name() && r.concurrency == concurrency);
                    if let Some(base) = base.filter(|b| b.throughput > 0.0) {
                        run.reference = Some(base.scenario.clone());
                        run.ratio = Some(run.throughput / base.throughput);
                    }
                }
                runs.push(run);
                tokio::time::sleep(SETTLE).await;
            }
        }
        anyhow::Ok(())
    }
    .await;
    if let Some(r) = redis_reference {
        r.stop().await;
    }
    if let Some(r) = rabbit_reference {
        r.stop().await;
    }
    outcome?;

    let memory = procs::sample(&watched);
    let targets = report::judge(&runs, &memory, load_seconds);
    let report = Report {
        url: base_url,
        fixture: fixture.run_id.clone(),
        validation_keys: fixture.validation_keys.len(),
        activation_keys: fixture.activation_keys.len(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        rate: args.rate,
        runs,
        processes_found_by: watched.found_by.to_owned(),
        memory,
        load_seconds,
        targets,
    };
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report::text(&report));
    }
    Ok(())
}

/// Progress on stderr, so `--json` output stays clean on stdout.
fn progress(args: &BenchArgs, what: &str) {
    if !args.json {
        eprintln!("cls bench: {what}");
    }
}

fn workload(scenario: Scenario, fixture: &Fixture, validations: &Arc<Validations>, concurrency: usize) -> Workload {
    // Instance ids and emails must be new in every run of the invocation.
    let pass = format!("c{concurrency}");
    match scenario {
        Scenario::Validate => Workload::Validate(validations.clone()),
        Scenario::Activate => Workload::Activate(Writes::new(fixture, &pass)),
        Scenario::Provision => Workload::Provision(Writes::new(fixture, &pass)),
        Scenario::Mixed => Workload::Mixed(validations.clone(), Writes::new(fixture, &format!("m{concurrency}"))),
        Scenario::All => unreachable!("`all` is expanded into scenarios"),
    }
}

async fn http_slots(addr: SocketAddr, workload: Arc<Workload>, concurrency: usize) -> anyhow::Result<Vec<Driver>> {
    let mut slots = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let slot = HttpSlot::connect(addr, workload.clone()).await.with_context(|| format!("cannot connect to {addr}"))?;
        slots.push(Driver::Http(slot));
    }
    Ok(slots)
}

/// One real validation answer: what the reference server sends back.
async fn validation_answer(client: &crate::http::Client, base_url: &str, validations: &Validations) -> anyhow::Result<bytes::Bytes> {
    let body: serde_json::Value = serde_json::from_slice(&validations.sample())?;
    let answer = crate::http::send(client, hyper::Method::POST, &format!("{base_url}/v1/license-keys/validate"), &[], Some(&body)).await?;
    if answer.status != StatusCode::OK {
        bail!("a validation of the fixture answered {}", answer.status);
    }
    Ok(answer.body)
}

/// The gateway's socket address, from the URL (`http://host:port`).
async fn gateway_addr(base_url: &str) -> anyhow::Result<SocketAddr> {
    let uri: hyper::Uri = base_url.parse().with_context(|| format!("--url {base_url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("--url {base_url:?}: only http:// is supported");
    }
    let host = uri.host().context("--url has no host")?;
    let port = uri.port_u16().unwrap_or(80);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio::net::lookup_host((host, port)).await?.next().with_context(|| format!("{host} does not resolve"))
}

/// The Postgres readings around the validate run.
struct Evidence {
    database: Option<probes::Database>,
    read_model: Option<probes::ReadModelCounters>,
    before: Option<probes::DbCounters>,
    metrics_url: String,
}

impl Evidence {
    async fn start(args: &BenchArgs, client: &crate::http::Client) -> Evidence {
        let read_model = probes::read_model_counters(client, &args.query_metrics).await;
        let mut database = probes::Database::connect(&args.database_url).await.ok();
        let before = match database.as_mut() {
            Some(db) => db.counters().await.ok(),
            None => None,
        };
        Evidence { database, read_model, before, metrics_url: args.query_metrics.clone() }
    }

    async fn finish(mut self, client: &crate::http::Client, validations: u64) -> PostgresEvidence {
        let read_model = match (self.read_model, probes::read_model_counters(client, &self.metrics_url).await) {
            (Some(before), Some(after)) => Some(after.since(before)),
            _ => None,
        };
        let mut run = None;
        if let (Some(db), Some(before)) = (self.database.as_mut(), self.before)
            && let Ok(after) = db.counters().await
        {
            let mut delta = after.since(before);
            // Minus our own reading.
            delta.transactions = (delta.transactions - 1).max(0);
            run = Some(delta);
        }
        if let Some(db) = self.database {
            db.close().await;
        }
        let per_1000 = run.map(|r| r.transactions as f64 * 1000.0 / validations.max(1) as f64);
        PostgresEvidence { read_model, run, transactions_per_1000_validations: per_1000 }
    }
}

/// `10s`, `500ms`, `2m`, or a number of seconds.
fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (number, unit) = match value.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => value.split_at(i),
        None => (value, "s"),
    };
    let number: f64 = number.parse().map_err(|_| format!("{value:?} is not a duration like 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{value:?}: use ms, s or m")),
    };
    if !(seconds > 0.0 && seconds.is_finite()) {
        return Err(format!("{value:?} must be more than zero"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("3h").is_err());
    }

    #[test]
    fn references_run_next_to_their_scenarios() {
        let names = |s, r| steps(s, r).into_iter().map(Step::name).collect::<Vec<_>>();
        assert_eq!(names(Scenario::All, true), ["ref-redis", "validate", "mixed", "ref-rabbitmq", "activate", "provision"]);
        assert_eq!(names(Scenario::Provision, true), ["ref-rabbitmq", "provision"]);
        assert_eq!(names(Scenario::Validate, false), ["validate"]);
    }
}
