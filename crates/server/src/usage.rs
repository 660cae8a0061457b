//! What each running sandbox used over time: coved samples every running sandbox's usage (the
//! same measure as `GET /v1/sandboxes/{id}/metrics`) every [`INTERVAL`] and keeps the last
//! [`KEPT`] samples of each in memory, so a caller can read a time series (E2B's metrics)
//! without asking the guest anything. A restart of coved starts the series again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use cove_host::SandboxRecord;

use crate::app::App;

/// How often each running sandbox is sampled.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per sandbox: an hour's.
pub const KEPT: usize = 720;

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When, milliseconds since the epoch.
    pub at_ms: i64,
    /// CPU time used since the previous sample, as a percentage of the sandbox's vCPUs.
    pub cpu_pct: f64,
    /// CPU seconds used so far.
    pub cpu_seconds: f64,
    /// Resident memory.
    pub memory_bytes: u64,
    /// Memory size.
    pub memory_limit_bytes: u64,
    /// Disk blocks held.
    pub disk_bytes: u64,
    /// Disk size.
    pub disk_limit_bytes: u64,
}

/// The samples of every sandbox, by id.
#[derive(Debug, Default)]
pub struct History {
    series: Mutex<HashMap<String, VecDeque<Sample>>>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl History {
    /// A sample of `r` now, its CPU share measured against `before`.
    async fn take(app: &App, r: &SandboxRecord, before: Option<Sample>) -> Option<Sample> {
        let u = app.host.usage(&r.id).await.ok()?;
        let at_ms = now_ms();
        let cpu_pct = match before {
            Some(b) if at_ms > b.at_ms && u.cpu_seconds >= b.cpu_seconds => {
                let wall = (at_ms - b.at_ms) as f64 / 1000.0;
                (u.cpu_seconds - b.cpu_seconds) / wall / f64::from(r.cpus.max(1)) * 100.0
            }
            _ => 0.0,
        };
        Some(Sample {
            at_ms,
            cpu_pct: cpu_pct.clamp(0.0, 100.0),
            cpu_seconds: u.cpu_seconds,
            memory_bytes: u.memory_bytes,
            memory_limit_bytes: u.memory_limit_bytes,
            disk_bytes: u.disk_bytes,
            disk_limit_bytes: u.disk_limit_bytes,
        })
    }

    fn last(&self, id: &str) -> Option<Sample> {
        self.series
            .lock()
            .expect("lock")
            .get(id)
            .and_then(|s| s.back().copied())
    }

    fn push(&self, id: &str, s: Sample) {
        let mut all = self.series.lock().expect("lock");
        let q = all.entry(id.to_string()).or_default();
        if q.len() == KEPT {
            q.pop_front();
        }
        q.push_back(s);
    }

    /// `r`'s samples, oldest first, with one taken now when it runs.
    pub async fn series(&self, app: &App, r: &SandboxRecord) -> Vec<Sample> {
        let mut out: Vec<Sample> = self
            .series
            .lock()
            .expect("lock")
            .get(&r.id)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default();
        if r.state.is_active()
            && let Some(s) = Self::take(app, r, out.last().copied()).await
        {
            out.push(s);
        }
        out
    }

    /// Samples every running sandbox, for ever; forgets the ones that are gone.
    pub async fn run(app: App) {
        let mut tick = tokio::time::interval(INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // As recorded: sampling changes nothing (coved's watcher reconciles).
            let a = app.clone();
            let Ok(Ok(all)) = tokio::task::spawn_blocking(move || a.host.records()).await else {
                continue;
            };
            let live: std::collections::HashSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
            app.usage
                .series
                .lock()
                .expect("lock")
                .retain(|id, _| live.contains(id.as_str()));
            for r in all.iter().filter(|r| r.state.is_active()) {
                if let Some(s) = Self::take(&app, r, app.usage.last(&r.id)).await {
                    app.usage.push(&r.id, s);
                }
            }
        }
    }
}
