// The console's pages. Each draws into `main` once, then updates its figures in place while
// shown (`page.every`), so links and buttons keep the reader's focus.

import { api } from "./api.js";
import { facts, h, json, liveTable, percent, seconds, statusBadge, time } from "./dom.js";

const enc = encodeURIComponent;
const TASK_STATUSES = ["PENDING", "STARTED", "SUCCESS", "FAILURE", "CANCELLED"];
const FINAL = new Set(["SUCCESS", "FAILURE", "CANCELLED"]);

const heading = (text) => h("h1", { tabindex: "-1" }, text);
const taskLink = (id) => h("a", { href: `#/tasks/${enc(id)}` }, h("code", {}, id));
const endpointLink = (endpoint) => h("a", { href: `#/endpoints/${enc(endpoint.id)}` }, endpoint.name);

function backlogText(stats) {
  if (!stats?.backlog) return "—";
  return `${stats.backlog.queued} queued, ${stats.backlog.in_flight} running`;
}

function workersText(stats, endpoint) {
  const ready = stats?.workers.ready ?? endpoint.deployment_state.available_workers;
  return `${ready} ready of ${stats?.workers.desired ?? "—"}`;
}

function stateCell(endpoint) {
  return [statusBadge(endpoint.status), endpoint.status_reason ? h("div", { class: "reason" }, endpoint.status_reason) : null];
}

async function statsOf(endpoint) {
  return api("GET", `/v1/model-endpoints/${enc(endpoint.id)}/stats`).catch(() => null);
}

export function endpointsPage(main, page) {
  const updated = h("p", { class: "updated" });
  const table = liveTable("Your team's endpoints, updated every 2 seconds", [
    "Endpoint", "Type", "State", "Workers", "Backlog", "Oldest task", "Callback success (1 h)", "Dead letters (1 h)",
  ]);
  const empty = h("p", { hidden: true }, "Your team has no endpoints.");
  main.append(heading("Endpoints"), page.notice, table.element, empty, updated);
  page.every(2000, async () => {
    const { model_endpoints: endpoints } = await api("GET", "/v1/model-endpoints");
    const stats = await Promise.all(endpoints.map(statsOf));
    const rows = endpoints.map((endpoint, i) => ({ endpoint, stats: stats[i] }));
    table.update(rows, (row) => row.endpoint.id, ({ endpoint, stats }) => [
      endpointLink(endpoint),
      endpoint.endpoint_type,
      stateCell(endpoint),
      workersText(stats, endpoint),
      backlogText(stats),
      seconds(stats?.oldest_task_age_seconds),
      percent(stats?.callbacks_last_hour.success_rate),
      stats ? h("a", { href: `#/dead-letters?endpoint=${enc(endpoint.id)}` }, String(stats.callbacks_last_hour.dead_lettered)) : "—",
    ]);
    empty.hidden = endpoints.length > 0;
    updated.replaceChildren("Updated ", time(Date.now()));
  });
}

export function endpointPage(main, page, id) {
  const title = heading("Endpoint");
  const summary = facts({
    id: "Id", type: "Type", state: "State", workers: "Workers", backlog: "Backlog",
    oldest: "Oldest task", callbacks: "Callbacks (1 h)",
  });
  const tasks = recentTasks(page, id);
  main.append(title, page.notice, summary.element, submitForm(page, id), tasks.element,
    h("p", {}, h("a", { href: `#/dead-letters?endpoint=${enc(id)}` }, "Dead letters of this endpoint")));
  page.every(2000, async () => {
    const [endpoint, stats] = await Promise.all([api("GET", `/v1/model-endpoints/${enc(id)}`), statsOf({ id })]);
    title.textContent = `Endpoint ${endpoint.name}`;
    summary.set("id", h("code", {}, endpoint.id));
    summary.set("type", endpoint.endpoint_type);
    summary.set("state", ...stateCell(endpoint).filter(Boolean));
    summary.set("workers", workersText(stats, endpoint));
    summary.set("backlog", backlogText(stats));
    summary.set("oldest", seconds(stats?.oldest_task_age_seconds));
    const last = stats?.callbacks_last_hour;
    summary.set("callbacks", !last ? "—" : last.success_rate === null ? "no attempts"
      : `${percent(last.success_rate)} of attempts delivered: ${last.delivered} delivered, ${last.retried} retried, ${last.dead_lettered} dead-lettered`);
    await tasks.refresh();
  });
}

/** The form that submits a test task, then follows it to its end. */
function submitForm(page, endpointId) {
  const args = h("textarea", { id: "task-args", name: "args", rows: 4, spellcheck: "false", "aria-describedby": "task-args-help" }, "{}");
  const callback = h("input", { id: "task-callback", name: "callback_url", type: "url", placeholder: "https://…" });
  const outcome = h("div", { class: "outcome", role: "status", "aria-live": "polite" });
  const form = h("form", { class: "submit" },
    h("h2", {}, "Submit a test task"),
    h("label", { for: "task-args" }, "Arguments (JSON)"),
    args,
    h("p", { id: "task-args-help", class: "help" }, "Sent to the model as the task's args."),
    h("label", { for: "task-callback" }, "Callback URL (optional)"),
    callback,
    h("button", { type: "submit" }, "Submit task"),
    outcome);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    let parsed;
    try {
      parsed = JSON.parse(args.value);
      args.removeAttribute("aria-invalid");
    } catch (error) {
      args.setAttribute("aria-invalid", "true");
      outcome.replaceChildren(`The arguments are not JSON: ${error.message}`);
      args.focus();
      return;
    }
    try {
      const body = { args: parsed, callback_url: callback.value.trim() || undefined };
      const { task_id: taskId } = await api("POST", "/v1/async-tasks", { query: { model_endpoint_id: endpointId }, body });
      const status = h("span", {}, statusBadge("PENDING"));
      const result = h("div");
      outcome.replaceChildren(h("p", {}, "Task ", taskLink(taskId), " ", status), result);
      page.every(1000, async () => {
        if (!status.isConnected) return false;
        const task = await api("GET", `/v1/async-tasks/${enc(taskId)}`);
        status.replaceChildren(statusBadge(task.status));
        if (!FINAL.has(task.status)) return true;
        result.replaceChildren(resultOf(task) ?? "");
        return false;
      });
    } catch (error) {
      outcome.replaceChildren(`Not submitted: ${error.message}`);
    }
  });
  return form;
}

function resultOf(task) {
  if (task.status === "SUCCESS") return json(task.result?.result ?? task.result);
  if (task.status === "FAILURE") return h("div", {}, h("p", {}, task.result ?? "failed"), task.traceback ? h("pre", {}, task.traceback) : null);
  return null;
}

/** The endpoint's tasks, newest first, a page at a time, filtered by status. */
function recentTasks(page, endpointId) {
  const filter = h("select", { id: "task-status" },
    h("option", { value: "" }, "Any status"), TASK_STATUSES.map((s) => h("option", { value: s }, s)));
  const table = liveTable("Recent tasks, newest first", ["Task", "Status", "Queued", "Finished"]);
  const older = h("button", { type: "button", hidden: true }, "Older tasks");
  const newest = h("button", { type: "button", hidden: true }, "Newest tasks");
  const missing = h("p", { hidden: true }, "This gateway does not list tasks.");
  // The page shown: its token (null for the newest) and the one after it.
  let token = null;
  let next = null;
  const refresh = async () => {
    try {
      const answer = await api("GET", "/v1/async-tasks", {
        query: { model_endpoint_id: endpointId, status: filter.value, limit: 20, page_token: token },
      });
      next = answer.next_page_token;
      table.update(answer.tasks, (task) => task.task_id, (task) => [
        taskLink(task.task_id), statusBadge(task.status), time(task.created_at), time(task.finished_at),
      ]);
      older.hidden = !next;
      newest.hidden = token === null;
    } catch (error) {
      if (!error.unavailable) throw error;
      missing.hidden = false;
      table.element.hidden = true;
    }
  };
  const reload = () => refresh().catch((error) => page.fail(error));
  filter.addEventListener("change", () => { token = null; reload(); });
  older.addEventListener("click", () => { token = next; reload(); });
  newest.addEventListener("click", () => { token = null; reload(); });
  const element = h("section", { "aria-labelledby": "tasks-title" },
    h("h2", { id: "tasks-title" }, "Recent tasks"),
    h("div", { class: "controls" }, h("label", { for: "task-status" }, "Status"), filter),
    table.element, missing, h("div", { class: "controls" }, newest, older));
  return { element, refresh };
}

export function taskPage(main, page, id) {
  const summary = facts({
    status: "Status", endpoint: "Endpoint", queued: "Queued", started: "Started", finished: "Finished", code: "Model status code",
  });
  const result = h("section", { "aria-labelledby": "result-title" }, h("h2", { id: "result-title" }, "Result"), h("p", {}, "—"));
  const cancel = h("button", { type: "button", hidden: true }, "Cancel task");
  const callback = facts({ url: "URL", state: "State" });
  const attempts = liveTable("Every delivery attempt", ["Time", "Status code", "Latency", "Error"]);
  const redeliver = h("button", { type: "button", disabled: true }, "Redeliver callback");
  const callbackSection = h("section", { "aria-labelledby": "callback-title", hidden: true },
    h("h2", { id: "callback-title" }, "Callback"), callback.element, attempts.element, redeliver);
  main.append(heading("Task"), h("p", {}, h("code", {}, id)), page.notice, summary.element, cancel, result, callbackSection);
  const act = (button, method, path, done) => button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await api(method, path);
      page.say(done);
    } catch (error) {
      page.fail(error);
      button.disabled = false;
    }
  });
  act(cancel, "DELETE", `/v1/async-tasks/${enc(id)}`, "Task cancelled.");
  act(redeliver, "POST", `/v1/async-tasks/${enc(id)}/callback/redeliver`, "Callback queued for redelivery.");
  page.every(1000, async () => {
    const task = await api("GET", `/v1/async-tasks/${enc(id)}`);
    summary.set("status", statusBadge(task.status));
    const endpointId = task.model_endpoint_id;
    summary.set("endpoint", endpointId ? h("a", { href: `#/endpoints/${enc(endpointId)}` }, h("code", {}, endpointId)) : "—");
    summary.set("queued", time(task.created_at));
    summary.set("started", time(task.started_at));
    summary.set("finished", time(task.finished_at));
    summary.set("code", task.status_code ?? "—");
    cancel.hidden = task.status !== "PENDING";
    if (FINAL.has(task.status) && !result.dataset.shown) {
      result.dataset.shown = "true";
      result.lastChild.replaceWith(resultOf(task) ?? h("p", {}, "—"));
    }
    callbackSection.hidden = !task.callback;
    if (!task.callback) return;
    callback.set("url", h("code", {}, task.callback.url));
    callback.set("state", statusBadge(task.callback.state));
    attempts.update(task.callback.attempts, (a) => String(a.at_ms), (a) => [
      time(a.at_ms), a.status_code ?? "—", `${a.duration_ms} ms`, a.error ?? "—",
    ]);
    // Enabled only while there is a dead letter to redeliver.
    if (task.callback.state === "DEAD_LETTERED") redeliver.disabled = false;
    else if (document.activeElement !== redeliver) redeliver.disabled = true;
  });
}

export function deadLettersPage(main, page, endpointId) {
  const chooser = h("select", { id: "dead-letter-endpoint" });
  const since = h("input", { id: "redeliver-since", type: "datetime-local", required: true });
  const redeliverAll = h("form", { class: "controls" },
    h("label", { for: "redeliver-since" }, "Redeliver all dead-lettered since"), since,
    h("button", { type: "submit" }, "Redeliver all"));
  const table = liveTable("Dead-lettered callbacks of the endpoint",
    ["Task", "Callback URL", "Dead-lettered", "Attempts", "Reason", "Action"]);
  const more = h("button", { type: "button", hidden: true }, "More");
  const missing = h("p", { hidden: true }, "This gateway does not list dead letters.");
  const empty = h("p", { hidden: true }, "No dead letters.");
  main.append(heading("Dead letters"), page.notice,
    h("div", { class: "controls" }, h("label", { for: "dead-letter-endpoint" }, "Endpoint"), chooser),
    redeliverAll, table.element, empty, missing, more);
  chooser.addEventListener("change", () => { location.hash = `#/dead-letters?endpoint=${enc(chooser.value)}`; });
  let limit = 50;
  more.addEventListener("click", () => { limit += 50; });
  redeliverAll.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const from = new Date(since.value).toISOString();
      const { redelivered } = await api("POST", "/v1/callbacks/redeliver", { query: { since: from, model_endpoint_id: chooser.value } });
      page.say(`${redelivered} callback${redelivered === 1 ? "" : "s"} queued for redelivery.`);
    } catch (error) {
      page.fail(error);
    }
  });
  const redeliverOne = (taskId) => h("button", {
    type: "button",
    "aria-label": `Redeliver the callback of task ${taskId}`,
    onclick: async (event) => {
      event.currentTarget.disabled = true;
      try {
        await api("POST", `/v1/async-tasks/${enc(taskId)}/callback/redeliver`);
        page.say(`The callback of task ${taskId} is queued for redelivery.`);
      } catch (error) {
        page.fail(error);
      }
    },
  }, "Redeliver");
  page.every(2000, async () => {
    if (chooser.options.length === 0) {
      const { model_endpoints: endpoints } = await api("GET", "/v1/model-endpoints");
      chooser.append(...endpoints.map((e) => h("option", { value: e.id, selected: e.id === endpointId }, e.name)));
      if (!endpointId && endpoints.length) endpointId = endpoints[0].id;
    }
    if (!endpointId || !missing.hidden) return;
    try {
      const answer = await api("GET", "/v1/callbacks/dead-letters", { query: { model_endpoint_id: endpointId, limit } });
      more.hidden = !answer.next_page_token || limit >= 200;
      table.update(answer.dead_letters, (letter) => letter.task_id, (letter) => {
        const last = letter.attempts?.at(-1);
        const reason = letter.reason ?? (last ? last.error ?? `answered ${last.status_code}` : "—");
        return [
          taskLink(letter.task_id), letter.url ? h("code", {}, letter.url) : "—", time(letter.dead_lettered_at),
          letter.attempts?.length ?? "—", reason, redeliverOne(letter.task_id),
        ];
      });
      empty.hidden = answer.dead_letters.length > 0;
    } catch (error) {
      if (!error.unavailable) throw error;
      missing.hidden = false;
      table.element.hidden = true;
    }
  });
}
