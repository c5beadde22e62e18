//! Prometheus metrics (`GET /metrics`), one registry per server instance (no globals, so
//! several servers can live in one test process).
//!
//! Fleet gauges (devices by admission and online status, deployments by status) are read
//! from the store at scrape time, so every replica reports the same truth.

use std::time::Duration;

use chrono::Utc;
use kernex_common::api::TargetStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::{Store, StoreError};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviceLabels {
    admission: &'static str,
    status: &'static str,
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
    devices: Family<DeviceLabels, Gauge>,
    deployments: Family<StatusLabels, Gauge>,
    /// One render at a time: a render clears and refills the fleet gauges.
    render: std::sync::Mutex<()>,
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
        let devices = Family::<DeviceLabels, Gauge>::default();
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
        registry.register(
            "devices",
            "Devices by admission and online status",
            devices.clone(),
        );
        registry.register("deployments", "Deployments by status", deployments.clone());
        Metrics {
            registry,
            requests,
            latency,
            heartbeats,
            bundle_bytes,
            devices,
            deployments,
            render: std::sync::Mutex::new(()),
        }
    }
}

impl Metrics {
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn heartbeat(&self) {
        self.heartbeats.inc();
    }

    pub fn bundle_bytes_served(&self, n: u64) {
        self.bundle_bytes.inc_by(n);
    }

    /// Refresh the fleet gauges from the store and render the text exposition.
    pub fn render(&self, store: &Store) -> Result<String, StoreError> {
        let _one_at_a_time = self.render.lock().unwrap_or_else(|p| p.into_inner());
        let now = Utc::now();
        self.devices.clear();
        for device in store.all_devices() {
            let d = device?;
            self.devices
                .get_or_create(&DeviceLabels {
                    admission: d.admission.as_str(),
                    status: d.online_status(now).as_str(),
                })
                .inc();
        }
        self.deployments.clear();
        for status in TargetStatus::ALL {
            self.deployments
                .get_or_create(&StatusLabels {
                    status: status.as_str(),
                })
                .set(0);
        }
        for dep in store.list_deployments(None, usize::MAX)? {
            self.deployments
                .get_or_create(&StatusLabels {
                    status: dep.status.as_str(),
                })
                .inc();
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        Ok(out)
    }
}
