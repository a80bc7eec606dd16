//! The load generator: `concurrency` slots, each one connection kept alive, sending one request
//! at a time, for a warm-up and then a measured window.
//!
//! Closed loop (no `--rate`): each slot sends its next request as soon as the previous one is
//! answered, so throughput is what the target sustains at that concurrency. Open loop
//! (`--rate R`): request *i* is due at `start + i / R`, whichever slot is free takes it, and its
//! latency counts from the time it was due, not from when it was sent. A target that falls
//! behind therefore shows the queueing delay its callers would see instead of hiding it
//! (coordinated omission). Only the timer's own wake-up lateness is left out (see [`slot`]).
//!
//! Latencies go into one HDR histogram per slot and request kind (microseconds, 3 significant
//! digits), merged at the end; answers are counted by status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::driver::{Driver, Outcome};

/// The longest latency a histogram records exactly (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 60_000_000;
/// How long an open-loop run may overrun its window to send requests that were already due.
const OPEN_LOOP_OVERRUN: Duration = Duration::from_secs(5);

/// How to load the target.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub warmup: Duration,
    pub duration: Duration,
    /// Requests per second for an open-loop run; `None` for closed loop.
    pub rate: Option<f64>,
}

/// What one run measured.
#[derive(Debug)]
pub struct Measured {
    /// The measured window (the requests counted were due in it).
    pub window: Duration,
    /// Per request kind (`validate`, `activate`, `provision`, `redis-get`, `rpc`).
    pub kinds: BTreeMap<&'static str, KindStats>,
    /// Open loop: requests that were due in the window but could not be sent before the run's
    /// overrun bound (the target fell too far behind).
    pub unsent: u64,
}

#[derive(Debug)]
pub struct KindStats {
    pub latency: Histogram<u64>,
    /// Answers by status (`"200"`, `"429"`), plus `"io"` (connection failed) and `"timeout"`.
    pub outcomes: BTreeMap<String, u64>,
}

impl KindStats {
    fn new() -> KindStats {
        KindStats { latency: new_histogram(), outcomes: BTreeMap::new() }
    }

    fn merge(&mut self, other: KindStats) {
        self.latency.add(&other.latency).expect("histograms share their bounds");
        for (outcome, n) in other.outcomes {
            *self.outcomes.entry(outcome).or_default() += n;
        }
    }
}

impl Measured {
    /// Requests counted in the window, every kind together.
    pub fn requests(&self) -> u64 {
        self.kinds.values().map(|k| k.latency.len()).sum()
    }

    /// All kinds merged.
    pub fn total(&self) -> KindStats {
        let mut total = KindStats::new();
        for kind in self.kinds.values() {
            total.merge(KindStats { latency: kind.latency.clone(), outcomes: kind.outcomes.clone() });
        }
        total
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// The clock of one run, shared by every slot.
struct Clock {
    start: Instant,
    /// Requests due before this are warm-up: sent, not counted.
    measure_from: Instant,
    end: Instant,
    /// Open loop: time between two due times.
    interval: Option<Duration>,
    /// The next request's sequence number, shared so every request of a run is distinct.
    next: AtomicU64,
    unsent: AtomicU64,
}

/// Runs `shape` against the drivers (one per slot, already connected or able to connect).
pub async fn run(shape: Shape, drivers: Vec<Driver>) -> Measured {
    let start = Instant::now();
    let clock = Arc::new(Clock {
        start,
        measure_from: start + shape.warmup,
        end: start + shape.warmup + shape.duration,
        interval: shape.rate.map(|r| Duration::from_secs_f64(1.0 / r)),
        next: AtomicU64::new(0),
        unsent: AtomicU64::new(0),
    });
    let mut slots = tokio::task::JoinSet::new();
    for driver in drivers {
        slots.spawn(slot(driver, clock.clone()));
    }
    let mut kinds: BTreeMap<&'static str, KindStats> = BTreeMap::new();
    while let Some(joined) = slots.join_next().await {
        // A slot that panicked loses its figures; the others still report.
        let Ok(stats) = joined else { continue };
        for (kind, s) in stats {
            kinds.entry(kind).or_insert_with(KindStats::new).merge(s);
        }
    }
    Measured { window: shape.duration, kinds, unsent: clock.unsent.load(Ordering::Relaxed) }
}

async fn slot(mut driver: Driver, clock: Arc<Clock>) -> BTreeMap<&'static str, KindStats> {
    let mut stats: BTreeMap<&'static str, KindStats> = BTreeMap::new();
    loop {
        let seq = clock.next.fetch_add(1, Ordering::Relaxed);
        let due = match clock.interval {
            None => {
                let now = Instant::now();
                if now >= clock.end {
                    break;
                }
                now
            }
            Some(interval) => {
                let due = clock.start + interval.mul_f64(seq as f64);
                if due >= clock.end {
                    break;
                }
                if Instant::now() > clock.end + OPEN_LOOP_OVERRUN {
                    if due >= clock.measure_from {
                        clock.unsent.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                if due > Instant::now() {
                    // Not due yet: the slot waits on the timer, whose own lateness (up to a
                    // millisecond) is the generator's, not the target's, so the clock starts
                    // when the slot wakes. A request already overdue (every slot was busy)
                    // keeps its due time: that wait is the target's backlog.
                    tokio::time::sleep_until(due).await;
                    Instant::now()
                } else {
                    due
                }
            }
        };
        let (kind, outcome) = driver.call(seq).await;
        if due < clock.measure_from {
            continue;
        }
        let latency = Instant::now().saturating_duration_since(due);
        let s = stats.entry(kind).or_insert_with(KindStats::new);
        s.latency.saturating_record((latency.as_micros() as u64).max(1));
        let label = match outcome {
            Outcome::Status(status) => status.to_string(),
            Outcome::Unexpected(status) => format!("{status} (unexpected body)"),
            Outcome::Io => "io".to_owned(),
            Outcome::Timeout => "timeout".to_owned(),
        };
        *s.outcomes.entry(label).or_default() += 1;
    }
    stats
}
