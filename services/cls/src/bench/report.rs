//! What `cls bench` prints: a table for people, or one JSON document (`--json`) for scripts.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use super::driver::Outcome;
use super::load::{KindStats, Measured};
use super::probes::{DbCounters, ReadModelCounters};
use super::procs::Memory;

/// The whole invocation.
#[derive(Debug, Serialize)]
pub struct Report {
    pub url: String,
    /// The fixture's run id (brand slug when the benchmark created its brand).
    pub fixture: String,
    pub validation_keys: usize,
    pub activation_keys: usize,
    pub cpus: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Open-loop rate (requests per second), if any.
    pub rate: Option<f64>,
    pub runs: Vec<Run>,
    /// How the cluster's processes were found.
    pub processes_found_by: String,
    /// After the last run.
    pub memory: Vec<Memory>,
    /// Seconds of load (warm-up included) the cluster had served when `memory` was read.
    pub load_seconds: f64,
    pub targets: Vec<Target>,
}

/// One scenario (or reference) at one concurrency.
#[derive(Debug, Serialize)]
pub struct Run {
    pub scenario: String,
    pub concurrency: usize,
    pub requests: u64,
    /// Requests per second over the measured window.
    pub throughput: f64,
    pub latency_ms: Latency,
    /// Answers by status (`"200"`), `"io"`, `"timeout"`, `"<status> (unexpected body)"`.
    pub outcomes: BTreeMap<String, u64>,
    pub errors: u64,
    /// Open loop: requests due in the window that were never sent (the target fell behind).
    pub unsent: u64,
    /// Per request kind, when the scenario mixes kinds.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub kinds: BTreeMap<String, KindRun>,
    /// The reference run this one is compared with, and throughput / reference throughput.
    pub reference: Option<String>,
    pub ratio: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresEvidence>,
}

#[derive(Debug, Serialize)]
pub struct KindRun {
    pub requests: u64,
    pub latency_ms: Latency,
    pub outcomes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Whether the warm validate run reached Postgres.
#[derive(Debug, Serialize)]
pub struct PostgresEvidence {
    /// Query service counters over the run (warm-up included); `None` if `/metrics` was not
    /// reachable.
    pub read_model: Option<ReadModelCounters>,
    /// Database activity over the run, every client included (the cluster's background work
    /// too); `None` if the database was not reachable.
    pub run: Option<DbCounters>,
    /// Those transactions per 1000 validations measured.
    pub transactions_per_1000_validations: Option<f64>,
}

/// One target of issue 8 and its verdict.
#[derive(Debug, Serialize)]
pub struct Target {
    pub target: String,
    pub measured: String,
    /// `met`, `NOT met`, or `n/a` (the run it needs was not part of this invocation).
    pub verdict: &'static str,
}

fn latency(stats: &KindStats) -> Latency {
    let h = &stats.latency;
    let ms = |us: u64| us as f64 / 1000.0;
    if h.is_empty() {
        return Latency { p50: 0.0, p95: 0.0, p99: 0.0, max: 0.0, mean: 0.0 };
    }
    Latency {
        p50: ms(h.value_at_quantile(0.50)),
        p95: ms(h.value_at_quantile(0.95)),
        p99: ms(h.value_at_quantile(0.99)),
        max: ms(h.max()),
        mean: h.mean() / 1000.0,
    }
}

fn errors(outcomes: &BTreeMap<String, u64>) -> u64 {
    outcomes.iter().filter(|(label, _)| Outcome::is_error(label)).map(|(_, n)| n).sum()
}

impl Run {
    pub fn new(scenario: &str, concurrency: usize, measured: &Measured) -> Run {
        let total = measured.total();
        let requests = measured.requests();
        let kinds = if measured.kinds.len() > 1 {
            measured
                .kinds
                .iter()
                .map(|(k, s)| ((*k).to_owned(), KindRun { requests: s.latency.len(), latency_ms: latency(s), outcomes: s.outcomes.clone() }))
                .collect()
        } else {
            BTreeMap::new()
        };
        Run {
            scenario: scenario.to_owned(),
            concurrency,
            requests,
            throughput: requests as f64 / measured.window.as_secs_f64(),
            latency_ms: latency(&total),
            errors: errors(&total.outcomes),
            outcomes: total.outcomes,
            unsent: measured.unsent,
            kinds,
            reference: None,
            ratio: None,
            postgres: None,
        }
    }
}

/// The targets of issue 8, judged from the runs of this invocation.
pub fn judge(runs: &[Run], memory: &[Memory], load_seconds: f64) -> Vec<Target> {
    let find = |scenario: &str, concurrency: usize| runs.iter().find(|r| r.scenario == scenario && r.concurrency == concurrency);
    let mut targets = Vec::new();
    let mut add = |target: &str, measured: Option<(String, bool)>| {
        let (measured, verdict) = match measured {
            Some((m, ok)) => (m, if ok { "met" } else { "NOT met" }),
            None => ("not run".to_owned(), "n/a"),
        };
        targets.push(Target { target: target.to_owned(), measured, verdict });
    };
    let validate = find("validate", 64);
    add(
        "validate @64: throughput >= 50 % of the hyper+Redis reference",
        validate.and_then(|r| r.ratio.map(|x| (format!("{:.0} %", x * 100.0), x >= 0.5))),
    );
    add("validate @64: p99 <= 5 ms", validate.map(|r| (format!("{:.2} ms", r.latency_ms.p99), r.latency_ms.p99 <= 5.0)));
    add(
        "validate: no Postgres query when warm",
        runs.iter().filter(|r| r.scenario == "validate").find_map(|r| r.postgres.as_ref()?.read_model).map(|c| {
            (format!("{} Redis hits, {} misses, {} fallbacks", c.hits, c.misses, c.fallbacks), c.misses + c.fallbacks == 0)
        }),
    );
    let activate = find("activate", 64);
    add(
        "activate @64: throughput >= 40 % of the request/reply reference",
        activate.and_then(|r| r.ratio.map(|x| (format!("{:.0} %", x * 100.0), x >= 0.4))),
    );
    add("activate @64: zero errors", activate.map(|r| (format!("{} errors", r.errors), r.errors == 0)));
    add("activate, one client: p50 <= 3 ms", find("activate", 1).map(|r| (format!("{:.2} ms", r.latency_ms.p50), r.latency_ms.p50 <= 3.0)));
    add("provision, one client: p50 <= 5 ms", find("provision", 1).map(|r| (format!("{:.2} ms", r.latency_ms.p50), r.latency_ms.p50 <= 5.0)));
    add("provision @64: zero errors", find("provision", 64).map(|r| (format!("{} errors", r.errors), r.errors == 0)));
    let largest = memory.iter().max_by_key(|m| m.rss_kib);
    add(
        "every CLS process < 64 MiB resident after a 60 s run",
        largest.filter(|_| load_seconds >= 60.0).map(|m| {
            (format!("largest {} at {:.1} MiB after {:.0} s of load", m.name, m.rss_kib as f64 / 1024.0, load_seconds), memory.iter().all(|m| m.rss_kib < 64 * 1024))
        }),
    );
    targets
}

/// The table for people.
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let mode = match report.rate {
        Some(rate) => format!(
            "open loop at {rate} requests/s (latency from each request's due time; every run sends the same rate, so compare latencies, not req/s)"
        ),
        None => "closed loop".to_owned(),
    };
    let _ = writeln!(
        out,
        "CLS bench against {} — fixture {} ({} validation keys, {} activation keys), {} CPUs\n{mode}; warm-up {}s, measured {}s per run\n",
        report.url, report.fixture, report.validation_keys, report.activation_keys, report.cpus, report.warmup_s, report.duration_s
    );
    let _ = writeln!(
        out,
        "{:<13} {:>5} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7}  {:<22} answers",
        "scenario", "conns", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors", "vs reference"
    );
    let row = |out: &mut String, name: &str, conns: String, requests_per_s: String, l: &Latency, errors: String, versus: String, outcomes: &BTreeMap<String, u64>| {
        let answers = outcomes.iter().map(|(s, n)| format!("{s}×{n}")).collect::<Vec<_>>().join(" ");
        let _ = writeln!(
            out,
            "{name:<13} {conns:>5} {requests_per_s:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {errors:>7}  {versus:<22} {answers}",
            l.p50, l.p95, l.p99, l.max
        );
    };
    for run in &report.runs {
        let versus = match (&run.reference, run.ratio) {
            (Some(reference), Some(ratio)) => format!("{:.0} % of {reference}", ratio * 100.0),
            _ => String::new(),
        };
        // Requests the open loop never sent show beside the answers (they are not answers).
        let mut outcomes = run.outcomes.clone();
        if run.unsent > 0 {
            outcomes.insert("unsent".to_owned(), run.unsent);
        }
        row(&mut out, &run.scenario, run.concurrency.to_string(), format!("{:.0}", run.throughput), &run.latency_ms, run.errors.to_string(), versus, &outcomes);
        for (kind, k) in &run.kinds {
            let per_s = k.requests as f64 / report.duration_s;
            row(&mut out, &format!("  {kind}"), String::new(), format!("{per_s:.0}"), &k.latency_ms, errors_of(&k.outcomes), String::new(), &k.outcomes);
        }
    }
    if report.runs.iter().any(|r| r.outcomes.contains_key("429")) {
        let _ = writeln!(
            out,
            "\n429 answers: the cluster's rate limits are on. Start it with CLS_RATE_IP, CLS_RATE_LICENSE_KEY and CLS_RATE_API_KEY set high (or 0 = off)."
        );
    }

    for run in report.runs.iter().filter(|r| r.postgres.is_some()) {
        let p = run.postgres.as_ref().expect("filtered");
        let _ = writeln!(out, "\nPostgres during {} @{} (warm keys):", run.scenario, run.concurrency);
        match p.read_model {
            Some(c) => {
                let _ = writeln!(
                    out,
                    "  query service, license-key documents: {} from Redis, {} misses and {} fallbacks read from Postgres",
                    c.hits, c.misses, c.fallbacks
                );
            }
            None => {
                let _ = writeln!(out, "  query service /metrics not reachable (see --query-metrics): no per-request evidence");
            }
        }
        if let (Some(db), Some(per_1000)) = (p.run, p.transactions_per_1000_validations) {
            let _ = writeln!(
                out,
                "  database: {} transactions, {} tuples returned over the run, every client and the cluster's background work included \
                 ({per_1000:.2} per 1000 validations)",
                db.transactions, db.tuples_returned
            );
        }
    }

    let _ = writeln!(out, "\nMemory of the cluster's processes after {:.0} s of load ({}):", report.load_seconds, report.processes_found_by);
    let _ = writeln!(out, "  {:<24} {:>8} {:>12} {:>12}", "process", "pid", "VmRSS MiB", "VmHWM MiB");
    for m in &report.memory {
        let _ = writeln!(out, "  {:<24} {:>8} {:>12.1} {:>12.1}", m.name, m.pid, m.rss_kib as f64 / 1024.0, m.peak_rss_kib as f64 / 1024.0);
    }
    if report.memory.is_empty() {
        let _ = writeln!(out, "  (none found: pass --pids)");
    }

    let _ = writeln!(out, "\nTargets (issue 8):");
    for t in &report.targets {
        let _ = writeln!(out, "  {:<8} {:<66} {}", t.verdict, t.target, t.measured);
    }
    out
}

fn errors_of(outcomes: &BTreeMap<String, u64>) -> String {
    errors(outcomes).to_string()
}
