//! Per-tenant counters, served as Prometheus text on the admin listener.
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default, Clone)]
struct TenantCounters {
    requests: u64,
    upstream_errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    latency_seconds_sum: f64,
    upgrades: u64,
}

#[derive(Default)]
pub struct Metrics {
    tenants: Mutex<BTreeMap<String, TenantCounters>>,
    /// Requests answered without a tenant (404, 401, ...), by status.
    refused: Mutex<BTreeMap<u16, u64>>,
}

impl Metrics {
    pub fn request(&self, tenant: &str, latency: Duration, upstream_error: bool) {
        let mut tenants = self.tenants.lock().unwrap();
        let counters = tenants.entry(tenant.to_string()).or_default();
        counters.requests += 1;
        counters.latency_seconds_sum += latency.as_secs_f64();
        if upstream_error {
            counters.upstream_errors += 1;
        }
    }

    pub fn upgraded(&self, tenant: &str) {
        self.tenants.lock().unwrap().entry(tenant.to_string()).or_default().upgrades += 1;
    }

    pub fn bytes(&self, tenant: &str, inbound: u64, outbound: u64) {
        let mut tenants = self.tenants.lock().unwrap();
        let counters = tenants.entry(tenant.to_string()).or_default();
        counters.bytes_in += inbound;
        counters.bytes_out += outbound;
    }

    pub fn refused(&self, status: u16) {
        *self.refused.lock().unwrap().entry(status).or_default() += 1;
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let tenants = self.tenants.lock().unwrap().clone();
        let mut out = String::new();
        let series: [(&str, &str, &str, fn(&TenantCounters) -> f64); 6] = [
            ("clawplane_bridge_upgrades_total", "counter", "WebSocket (and other) upgrades relayed.", |c| {
                c.upgrades as f64
            }),
            ("clawplane_bridge_requests_total", "counter", "Requests forwarded to the tenant.", |c| c.requests as f64),
            (
                "clawplane_bridge_upstream_errors_total",
                "counter",
                "Forwarded requests whose host or gateway did not answer.",
                |c| c.upstream_errors as f64,
            ),
            ("clawplane_bridge_request_bytes_total", "counter", "Request body bytes sent to the tenant.", |c| {
                c.bytes_in as f64
            }),
            ("clawplane_bridge_response_bytes_total", "counter", "Response body bytes sent to users.", |c| {
                c.bytes_out as f64
            }),
            (
                "clawplane_bridge_response_seconds_sum",
                "counter",
                "Total time until the tenant's response headers (divide by requests for the mean).",
                |c| c.latency_seconds_sum,
            ),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
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
        out
    }
}
