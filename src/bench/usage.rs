//! What a run cost: the CPU time and memory of each measured process (Linux `/proc`), and the
//! NATS server's work from its monitoring endpoints — messages in and out (`/varz`), JetStream
//! API calls and messages stored in streams (`/jsz`) — read before and after the run and
//! reported per task.

use serde_json::{Value, json};

/// The counters read when a run starts.
pub(super) struct Usage {
    pids: Vec<u32>,
    cpu_before: Vec<f64>,
    nats: Option<(url::Url, NatsCounts)>,
}

/// The server's counters since it started.
#[derive(Clone, Copy, Default)]
struct NatsCounts {
    messages_in: u64,
    messages_out: u64,
    api_calls: u64,
    /// Messages ever stored in the account's streams: each stream's last sequence, summed.
    stored: u64,
}

impl Usage {
    /// Reads the counters of `pids` and, when given, of the server whose monitoring endpoints
    /// `monitor` serves.
    pub(super) async fn start(
        http: &reqwest::Client,
        pids: &[u32],
        monitor: Option<&url::Url>,
    ) -> anyhow::Result<Self> {
        let nats = match monitor {
            Some(url) => Some((url.clone(), NatsCounts::read(http, url).await?)),
            None => None,
        };
        Ok(Usage {
            pids: pids.to_vec(),
            cpu_before: pids.iter().map(|pid| cpu_seconds(&[*pid])).collect(),
            nats,
        })
    }

    /// CPU per task, summed and per process with its memory, and the server's work per task,
    /// over the `tasks` finished since [`Usage::start`].
    pub(super) async fn report(&self, http: &reqwest::Client, tasks: u64) -> anyhow::Result<Value> {
        let per_task = |total: f64| total / tasks.max(1) as f64;
        let mut report = json!({});
        if !self.pids.is_empty() {
            let mut total = 0.0;
            let processes: Vec<Value> = self
                .pids
                .iter()
                .zip(&self.cpu_before)
                .map(|(pid, before)| {
                    let cpu = cpu_seconds(&[*pid]) - before;
                    total += cpu;
                    let memory = crate::metrics::memory_kib_of(*pid);
                    json!({
                        "pid": pid,
                        "process": process_name(*pid),
                        "cpu_ms_per_task": per_task(cpu * 1000.0),
                        "rss_mib": memory.map(|(rss, _)| rss as f64 / 1024.0),
                        "peak_rss_mib": memory.map(|(_, peak)| peak as f64 / 1024.0),
                    })
                })
                .collect();
            report["cpu_ms_per_task"] = json!(per_task(total * 1000.0));
            report["processes"] = json!(processes);
        }
        if let Some((url, before)) = &self.nats {
            let after = NatsCounts::read(http, url).await?;
            let delta =
                |pick: fn(&NatsCounts) -> u64| per_task((pick(&after) - pick(before)) as f64);
            report["nats_per_task"] = json!({
                "api_calls": delta(|counts| counts.api_calls),
                "messages_in": delta(|counts| counts.messages_in),
                "messages_out": delta(|counts| counts.messages_out),
                "stored_messages": delta(|counts| counts.stored),
            });
        }
        Ok(report)
    }
}

impl NatsCounts {
    async fn read(http: &reqwest::Client, monitor: &url::Url) -> anyhow::Result<Self> {
        let get = |path: &str| {
            let url = monitor.join(path);
            async move {
                let value: Value = http
                    .get(url?)
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                anyhow::Ok(value)
            }
        };
        let varz = get("varz").await?;
        let jsz = get("jsz?accounts=true&streams=true").await?;
        let count = |value: &Value| value.as_u64().unwrap_or(0);
        let stored = jsz["account_details"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .map(|stream| count(&stream["state"]["last_seq"]))
            .sum();
        Ok(NatsCounts {
            messages_in: count(&varz["in_msgs"]),
            messages_out: count(&varz["out_msgs"]),
            api_calls: count(&jsz["api"]["total"]),
            stored,
        })
    }
}

/// `report` with the fields of `used` (a [`Usage::report`]) added.
pub(super) fn extend(report: &mut Value, used: Value) {
    if let (Some(report), Value::Object(used)) = (report.as_object_mut(), used) {
        report.extend(used);
    }
}

/// User plus system CPU seconds the processes have used so far.
pub(super) fn cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| crate::metrics::cpu_seconds_of(*pid))
        .sum()
}

/// The program and its subcommand, as `ferry dev` or `nats-server`.
fn process_name(pid: u32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline
        .split(|byte| *byte == 0)
        .map(|arg| String::from_utf8_lossy(arg).into_owned());
    let program = args.next().unwrap_or_default();
    let program = program.rsplit('/').next().unwrap_or_default().to_owned();
    match args
        .next()
        .filter(|arg| !arg.is_empty() && !arg.starts_with('-'))
    {
        Some(subcommand) => format!("{program} {subcommand}"),
        None => program,
    }
}
