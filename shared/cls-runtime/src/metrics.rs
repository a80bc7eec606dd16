//! Metrics every HTTP-serving CLS process exports the same way, so one dashboard reads them all.

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

/// A latency histogram family: 0.5 ms doubling to ~16 s.
pub type LatencyFamily = Family<Labels, Histogram, fn() -> Histogram>;

pub fn latency_family() -> LatencyFamily {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)))
}

/// `cls_http_requests_total{route,status}` and `cls_http_request_duration_seconds{route}`.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<Labels, Counter>,
    latency: LatencyFamily,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics { requests: Family::default(), latency: latency_family() }
    }
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("http_requests", "HTTP requests by route and status", self.requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", self.latency.clone());
    }

    /// Counts one answered request. `route` must come from a closed set (a route name or a path
    /// template), never from raw input, or the label set grows without bound.
    pub fn observe(&self, route: &str, status: u16, elapsed: Duration) {
        self.requests.get_or_create(&vec![("route".to_owned(), route.to_owned()), ("status".to_owned(), status.to_string())]).inc();
        self.latency.get_or_create(&vec![("route".to_owned(), route.to_owned())]).observe(elapsed.as_secs_f64());
    }
}
