//! Metrics every HTTP-serving CLS process exports the same way, so one dashboard reads them all.

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

/// A latency histogram family: 0.5 ms doubling to ~16 s.
pub type LatencyFamily = Family<Labels, Histogram, fn() -> Histogram>;

pub fn latency_family() -> LatencyFamily {
    Family::new_with_constructor(latency_histogram)
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// `route` and `status` of a request: typed labels, so counting a request allocates nothing when
/// the route name is static (the gateway's) and never formats the status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: Cow<'static, str>,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOnly {
    route: Cow<'static, str>,
}

/// `cls_http_requests_total{route,status}` and `cls_http_request_duration_seconds{route}`.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<RouteStatus, Counter>,
    latency: Family<RouteOnly, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics { requests: Family::default(), latency: Family::new_with_constructor(latency_histogram) }
    }
}

impl HttpMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("http_requests", "HTTP requests by route and status", self.requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency by route", self.latency.clone());
    }

    /// Counts one answered request. `route` must come from a closed set (a route name or a path
    /// template), never from raw input, or the label set grows without bound.
    pub fn observe(&self, route: impl Into<Cow<'static, str>>, status: u16, elapsed: Duration) {
        let route = route.into();
        self.latency.get_or_create(&RouteOnly { route: route.clone() }).observe(elapsed.as_secs_f64());
        self.requests.get_or_create(&RouteStatus { route, status }).inc();
    }
}
