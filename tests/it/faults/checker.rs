//! The one checker of every fault scenario. Once the load has ended and the fault is over, it
//! waits (bounded) for every accepted task to have its final result and a delivered callback and
//! for NATS to be quiet, then counts, per task id: final results, callbacks, model runs. What
//! must hold: nothing accepted is lost, each accepted task has exactly the outcome its model run
//! deserves (no FAILURE caused by infrastructure), every callback reports that outcome, no
//! submission answered with an error ran, and no task ran twice unless an earlier run was cut
//! off by the fault (it began within the fault's window, in a scenario whose fault cuts runs).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::load::{Outcome, Submitted};
use crate::support::topology::Topology;

/// How long the checker waits for the results and callbacks of a scenario.
const SETTLE: Duration = Duration::from_secs(60);
/// A run that began this long before a fault may still have been cut off by it.
const CUT_OFF_MARGIN: Duration = Duration::from_secs(2);

/// The outcome a task deserves, by its args.
pub enum Expected {
    Success(Value),
    /// FAILURE whose recorded reason contains this.
    Failure(&'static str),
}

/// When a fault was in force: runs that began in it may have been cut off by it.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub from: SystemTime,
    pub to: SystemTime,
}

impl Window {
    fn holds(&self, time: SystemTime) -> bool {
        let from = self.from - CUT_OFF_MARGIN;
        (from..=self.to).contains(&time)
    }
}

/// One scenario's counts: a row of the table.
#[derive(Default)]
pub struct Row {
    pub scenario: String,
    pub accepted: usize,
    pub errors: usize,
    /// Sends beyond the first, where resending was safe (a broken connection, an unconfirmed
    /// task).
    pub resent: usize,
    pub finals: usize,
    /// Accepted tasks with at least one delivered callback.
    pub called_back: usize,
    /// Tasks whose callback was delivered more than once.
    pub duplicate_callbacks: usize,
    pub lost: usize,
    pub model_runs: usize,
    /// Tasks that ran more than once, each after a run the fault cut off.
    pub rerun_after_cut: usize,
    /// Everything that must not happen, one line each.
    pub violations: Vec<String>,
}

/// Checks a scenario's `submitted` tasks in `topology`, the fault having been in force over
/// `windows`; `cuts_runs` when the fault may cut a model run off (a repeat is then allowed).
pub async fn check(
    scenario: &str,
    topology: &Topology,
    submitted: &[Submitted],
    expected: fn(&Value) -> Expected,
    windows: &[Window],
    cuts_runs: bool,
) -> Row {
    let mut row = Row {
        scenario: scenario.to_owned(),
        ..Row::default()
    };
    let mut accepted: HashMap<String, &Submitted> = HashMap::new();
    for submission in submitted {
        row.resent += submission.resent as usize;
        match &submission.outcome {
            Outcome::Accepted(task_id) => {
                accepted.insert(task_id.clone(), submission);
            }
            Outcome::Refused(status, body) => {
                row.errors += 1;
                if !refusal_allowed(&submission.args, *status, body) {
                    let x = submission.x;
                    row.violations
                        .push(format!("x = {x} answered {status} {body}"));
                }
            }
        }
    }
    row.accepted = accepted.len();

    let finals = wait_for_finals(topology, &accepted).await;
    row.finals = finals.len();
    for (task_id, submission) in &accepted {
        let Some(record) = finals.get(task_id) else {
            row.violations.push(format!(
                "task {task_id} (x = {}) has no final result",
                submission.x
            ));
            continue;
        };
        if let Some(wrong) = judge(expected(&submission.args), record) {
            let x = submission.x;
            row.violations.push(format!("x = {x}: {wrong}"));
        }
    }

    let callbacks = wait_for_callbacks(topology, &accepted).await;
    for (task_id, submission) in &accepted {
        let delivered = callbacks
            .get(task_id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        row.called_back += usize::from(!delivered.is_empty());
        row.duplicate_callbacks += usize::from(delivered.len() > 1);
        if delivered.is_empty() {
            let x = submission.x;
            row.violations
                .push(format!("task {task_id} (x = {x}) was never called back"));
        }
        let status = finals.get(task_id).map(|record| &record["status"]);
        for body in delivered {
            if Some(&body["status"]) != status {
                row.violations.push(format!(
                    "task {task_id}: a callback reports {} where GET answers {status:?}",
                    body["status"]
                ));
            }
        }
    }
    row.lost = accepted
        .keys()
        .filter(|id| !finals.contains_key(*id) || !callbacks.contains_key(*id))
        .count();

    topology.nats.wait_quiet(SETTLE).await;
    count_runs(&mut row, topology, &accepted, windows, cuts_runs);
    row
}

/// A final error answer is allowed when the README documents it: 413 for a body over the limit,
/// and a 503 without a task id, when the task certainly was not queued.
fn refusal_allowed(args: &Value, status: u16, body: &Value) -> bool {
    match status {
        413 => args["blob"].is_string(),
        503 => body["task_id"].is_null() && body["detail"].is_string(),
        _ => false,
    }
}

/// What is wrong with `record` for a task that deserves `expected`, if anything.
fn judge(expected: Expected, record: &Value) -> Option<String> {
    match expected {
        Expected::Success(result) if record["status"] == "SUCCESS" => (record["result"]
            != json!({ "result": result }))
        .then(|| format!("wrong result: {record}")),
        Expected::Failure(reason) if record["status"] == "FAILURE" => {
            let recorded = record["result"].as_str().unwrap_or_default();
            (!recorded.contains(reason)).then(|| format!("FAILURE for another reason: {record}"))
        }
        _ => Some(format!(
            "ended otherwise than its model run deserves: {record}"
        )),
    }
}

/// The final records of the accepted tasks, as GET answers them, once all are final or the
/// bound has passed.
async fn wait_for_finals(
    topology: &Topology,
    accepted: &HashMap<String, &Submitted>,
) -> HashMap<String, Value> {
    let gateway = topology.gateway();
    let mut finals = HashMap::new();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while finals.len() < accepted.len() && tokio::time::Instant::now() < deadline {
        for task_id in accepted.keys() {
            if finals.contains_key(task_id) {
                continue;
            }
            let (_, record) = gateway.get(&format!("/v1/async-tasks/{task_id}")).await;
            if matches!(record["status"].as_str(), Some("SUCCESS" | "FAILURE")) {
                finals.insert(task_id.clone(), record);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    finals
}

/// The delivered (2xx) callbacks' bodies per task, once every accepted task has one or the
/// bound has passed.
async fn wait_for_callbacks(
    topology: &Topology,
    accepted: &HashMap<String, &Submitted>,
) -> HashMap<String, Vec<Value>> {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        let mut delivered: HashMap<String, Vec<Value>> = HashMap::new();
        for received in topology.receiver.received() {
            if received.answered.is_success() {
                let task_id = received.body["task_id"].as_str().unwrap_or_default();
                delivered
                    .entry(task_id.to_owned())
                    .or_default()
                    .push(received.body);
            }
        }
        let done = accepted.keys().all(|id| delivered.contains_key(id));
        if done || tokio::time::Instant::now() > deadline {
            return delivered;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Model runs per task id: every accepted task ran; one ran again only after a run the fault
/// cut off; nothing else ran.
fn count_runs(
    row: &mut Row,
    topology: &Topology,
    accepted: &HashMap<String, &Submitted>,
    windows: &[Window],
    cuts_runs: bool,
) {
    let mut runs: BTreeMap<String, Vec<SystemTime>> = BTreeMap::new();
    for run in topology.runs.timed_runs() {
        runs.entry(run.task_id).or_default().push(run.began);
    }
    row.model_runs = runs.values().map(Vec::len).sum();
    for (task_id, began) in &runs {
        let Some(submission) = accepted.get(task_id) else {
            row.violations.push(format!(
                "task {task_id} ran {} times but no client was given it",
                began.len()
            ));
            continue;
        };
        let Some((_, earlier)) = began.split_last() else {
            continue;
        };
        if earlier.is_empty() {
            continue;
        }
        let cut = |time: &SystemTime| cuts_runs && windows.iter().any(|w| w.holds(*time));
        if earlier.iter().all(cut) {
            row.rerun_after_cut += 1;
        } else {
            let x = submission.x;
            row.violations
                .push(format!("x = {x} ran {} times", began.len()));
        }
    }
}

/// The table of every scenario's row, as Markdown.
pub fn table(rows: &[Row]) -> String {
    let mut table = String::from(
        "| scenario | accepted | errors | resent | final | called back | duplicate callbacks | lost | model runs | rerun after a cut-off run | violations |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let _ = writeln!(
            table,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.scenario,
            row.accepted,
            row.errors,
            row.resent,
            row.finals,
            row.called_back,
            row.duplicate_callbacks,
            row.lost,
            row.model_runs,
            row.rerun_after_cut,
            row.violations.len(),
        );
    }
    table
}
