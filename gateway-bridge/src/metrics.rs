//! Per-tenant counters, served as Prometheus text on the admin listener.
//! Counters are atomics behind a read-mostly map: a request takes the read
//! lock once to find its tenant's counters, then counts without locking.
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

#[derive(Default)]
pub struct TenantCounters {
    requests: AtomicU64,
    upstream_errors: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    latency_micros_sum: AtomicU64,
    upgrades: AtomicU64,
}

impl TenantCounters {
    pub fn request(&self, latency: Duration, upstream_error: bool) {
        self.requests.fetch_add(1, Relaxed);
        self.latency_micros_sum.fetch_add(latency.as_micros() as u64, Relaxed);
        if upstream_error {
            self.upstream_errors.fetch_add(1, Relaxed);
        }
    }

    pub fn upgraded(&self) {
        self.upgrades.fetch_add(1, Relaxed);
    }

    pub fn bytes(&self, inbound: u64, outbound: u64) {
        if inbound > 0 {
            self.bytes_in.fetch_add(inbound, Relaxed);
        }
        if outbound > 0 {
            self.bytes_out.fetch_add(outbound, Relaxed);
        }
    }
}

#[derive(Default)]
pub struct Metrics {
    tenants: RwLock<HashMap<String, Arc<TenantCounters>>>,
    /// Requests answered without a tenant (404, 401, ...), by status.
    refused: Mutex<BTreeMap<u16, u64>>,
    /// Connections closed at accept: the address held its share.
    refused_connections: AtomicU64,
}

impl Metrics {
    /// The counters of one tenant, created on first use.
    pub fn tenant(&self, tenant: &str) -> Arc<TenantCounters> {
        if let Some(counters) = self.tenants.read().unwrap().get(tenant) {
            return counters.clone();
        }
        self.tenants.write().unwrap().entry(tenant.to_string()).or_default().clone()
    }

    pub fn refused(&self, status: u16) {
        *self.refused.lock().unwrap().entry(status).or_default() += 1;
    }

    pub fn refused_connection(&self) {
        self.refused_connections.fetch_add(1, Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let tenants: BTreeMap<String, Arc<TenantCounters>> =
            self.tenants.read().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut out = String::new();
        let series: [(&str, &str, fn(&TenantCounters) -> f64); 6] = [
            ("clawplane_bridge_upgrades_total", "WebSocket (and other) upgrades relayed.", |c| {
                c.upgrades.load(Relaxed) as f64
            }),
            ("clawplane_bridge_requests_total", "Requests forwarded to the tenant.", |c| {
                c.requests.load(Relaxed) as f64
            }),
            (
                "clawplane_bridge_upstream_errors_total",
                "Forwarded requests whose host or gateway did not answer.",
                |c| c.upstream_errors.load(Relaxed) as f64,
            ),
            ("clawplane_bridge_request_bytes_total", "Request body bytes sent to the tenant.", |c| {
                c.bytes_in.load(Relaxed) as f64
            }),
            ("clawplane_bridge_response_bytes_total", "Response body bytes sent to users.", |c| {
                c.bytes_out.load(Relaxed) as f64
            }),
            (
                "clawplane_bridge_response_seconds_sum",
                "Total time until the tenant's response headers (divide by requests for the mean).",
                |c| c.latency_micros_sum.load(Relaxed) as f64 / 1e6,
            ),
        ];
        for (name, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (tenant, counters) in &tenants {
                let _ = writeln!(out, "{name}{{tenant=\"{tenant}\"}} {}", value(counters));
            }
        }
        let _ = writeln!(
            out,
            "# HELP clawplane_bridge_refused_total Requests answered by the bridge itself, by status.\n# TYPE clawplane_bridge_refused_total counter"
        );
        for (status, count) in self.refused.lock().unwrap().iter() {
            let _ = writeln!(out, "clawplane_bridge_refused_total{{status=\"{status}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP clawplane_bridge_refused_connections_total Connections closed at accept (per-address cap).\n# TYPE clawplane_bridge_refused_connections_total counter\nclawplane_bridge_refused_connections_total {}",
            self.refused_connections.load(Relaxed)
        );
        out
    }
}
