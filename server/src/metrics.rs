//! Prometheus metrics (`GET /metrics`), one registry per server instance (no globals, so
//! several servers can live in one test process).
//!
//! Fleet gauges (devices by admission, devices by online status, deployments by status)
//! come from counters the store keeps on writes ([`FleetCounts`]), so a scrape costs the
//! same at 1M devices as at 10, and every replica reports the same truth.

use std::time::Duration;

use kernex_common::api::DeploymentStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::FleetCounts;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdmissionLabels {
    admission: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily,
    heartbeats: Counter,
    bundle_bytes: Counter,
    devices: Family<AdmissionLabels, Gauge>,
    devices_online: Family<StatusLabels, Gauge>,
    deployments: Family<StatusLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kernex");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let heartbeats = Counter::default();
        let bundle_bytes = Counter::default();
        let devices = Family::<AdmissionLabels, Gauge>::default();
        let devices_online = Family::<StatusLabels, Gauge>::default();
        let deployments = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            latency.clone(),
        );
        registry.register(
            "heartbeats",
            "Device heartbeats received",
            heartbeats.clone(),
        );
        registry.register(
            "bundle_bytes_served",
            "Bundle bytes sent to clients",
            bundle_bytes.clone(),
        );
        registry.register("devices", "Devices by admission", devices.clone());
        registry.register(
            "devices_by_status",
            "Devices by online status (online, offline, never)",
            devices_online.clone(),
        );
        registry.register("deployments", "Deployments by status", deployments.clone());
        Metrics {
            registry,
            requests,
            latency,
            heartbeats,
            bundle_bytes,
            devices,
            devices_online,
            deployments,
        }
    }
}

/// A request method as a label (the API uses only the standard ones).
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

impl Metrics {
    pub fn observe_request(
        &self,
        route: String,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let route = RouteLabels { route };
        self.latency
            .get_or_create(&route)
            .observe(elapsed.as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                route: route.route,
                method,
                status,
            })
            .inc();
    }

    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    pub fn bundle_bytes_served(&self, n: u64) {
        self.bundle_bytes.inc_by(n);
    }

    /// Set the fleet gauges from `counts` and render the text exposition. Gauges are set,
    /// never cleared and refilled, so concurrent scrapes each see a whole fleet.
    pub fn render(&self, counts: &FleetCounts) -> String {
        let set = |gauge: &Gauge, n: u64| {
            gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        for (admission, n) in [
            ("pending", counts.devices_pending),
            ("accepted", counts.devices_accepted),
            ("rejected", counts.devices_rejected),
        ] {
            set(
                &self.devices.get_or_create(&AdmissionLabels { admission }),
                n,
            );
        }
        for (status, n) in [
            ("online", counts.online),
            ("offline", counts.offline),
            ("never", counts.never),
        ] {
            set(
                &self.devices_online.get_or_create(&StatusLabels { status }),
                n,
            );
        }
        for (status, n) in DeploymentStatus::ALL.into_iter().zip(counts.deployments) {
            set(
                &self.deployments.get_or_create(&StatusLabels {
                    status: status.as_str(),
                }),
                n,
            );
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
