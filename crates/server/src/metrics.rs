//! Prometheus metrics (`/metrics`, text format), all prefixed `cove_`.

use std::collections::BTreeMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use cove_api::SandboxState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Op {
    op: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: String,
}

/// The metrics of one coved.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sandboxes: Family<State, Gauge>,
    operations: Family<Op, Histogram>,
    execs: Family<Outcome, Counter>,
    requests: Family<Status, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cove");
        let sandboxes = Family::<State, Gauge>::default();
        // 1 ms to about 65 s.
        let operations = Family::<Op, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 17))
        });
        let execs = Family::<Outcome, Counter>::default();
        let requests = Family::<Status, Counter>::default();
        registry.register("sandboxes", "Sandboxes by state", sandboxes.clone());
        registry.register(
            "operation_seconds",
            "Lifecycle operation latency",
            operations.clone(),
        );
        registry.register("execs", "Commands run through the API", execs.clone());
        registry.register("http_requests", "HTTP requests by status", requests.clone());
        Self {
            registry,
            sandboxes,
            operations,
            execs,
            requests,
        }
    }
}

impl Metrics {
    /// A lifecycle operation took `secs`.
    pub fn operation(&self, op: &str, secs: f64) {
        self.operations
            .get_or_create(&Op { op: op.into() })
            .observe(secs);
    }

    /// A command ran (`ok`) or could not (`error`).
    pub fn exec(&self, ok: bool) {
        self.execs
            .get_or_create(&Outcome {
                outcome: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// A response went out.
    pub fn request(&self, status: u16) {
        self.requests
            .get_or_create(&Status {
                status: status.to_string(),
            })
            .inc();
    }

    /// The text exposition, with the sandbox gauge set from `states` (state → count).
    pub fn render(&self, states: &BTreeMap<SandboxState, i64>) -> String {
        for s in SandboxState::ALL {
            self.sandboxes
                .get_or_create(&State {
                    state: s.as_str().into(),
                })
                .set(states.get(&s).copied().unwrap_or(0));
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}
