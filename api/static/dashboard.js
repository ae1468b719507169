// The Spool dashboard: plain JS, no build step. The API key lives in sessionStorage only and
// travels in request headers, never in a URL.
"use strict";

const KEY_STORAGE = "spool.dashboard.apiKey";
const TICK_MS = 1000;
const MAX_BACKOFF_MS = 8000;
const STAGES = ["Downloading", "Muxing", "Uploading"];
const STAGE_NAMES = ["download", "mux", "upload"];
const FINAL = new Set(["Completed", "Failed", "Cancelled", "Skipped", "Warning"]);

// What each feed reads, and how often (in ticks of one second).
const FEEDS = {
  cluster: { every: 1, admin: true },
  subscriptions: { every: 3, admin: false },
  archive: { every: 5, admin: false },
  nodes: { every: 2, admin: true },
  jobs: { every: 2, admin: false },
  failures: { every: 5, admin: false },
  batch: { every: 5, admin: false }, // only while a batch is open
  accounts: { every: 10, admin: true },
  viewers: { every: 5, admin: true },
  throughput: { every: 10, admin: true },
};

const state = {
  key: null,
  admin: null, // null until the first answer of /dashboard/cluster tells
  interval: null,
  busy: false,
  failures: 0,
  retryAt: 0,
  lastRun: {},
  rows: new Map(),
  selectedJob: null,
  timelineSeen: "",
  viewerPage: 1,
  viewerPages: 0,
  // The cursor-paged lists (`Pager`, made at start): a filter change starts again from the
  // first page.
  pages: {},
  operation: null, // the bulk operation being followed: its id and action
  failuresSeen: "",
  subscriptionsSeen: "",
  checksOf: null, // the subscription whose check history is open: its id
  checksSeen: "",
  archiveSeen: "",
  archiveRemoved: new Set(), // ids removed whose row a read may still list (projection lag)
  batch: null, // the batch whose pause is shown: its id
  accountsSeen: "",
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

class Unreachable extends Error {}

// One request to the API. `bearer` sends the key as `Authorization: Bearer` (the viewer list),
// otherwise as `x-api-key` (the job API and the dashboard).
async function api(path, { method = "GET", body, bearer = false } = {}) {
  const headers = bearer ? { Authorization: `Bearer ${state.key}` } : { "x-api-key": state.key };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    });
  } catch (e) {
    throw new Unreachable("The Spool API cannot be reached");
  }
  let data = null;
  try {
    data = await response.json();
  } catch (e) {
    data = null;
  }
  if (!response.ok) {
    const said = data && (data.error || data.message);
    throw new ApiError(response.status, said || `HTTP ${response.status}`);
  }
  return data;
}

// -- the banner --------------------------------------------------------------------------

function showBanner(kind, text) {
  const banner = $("banner");
  banner.className = kind;
  banner.textContent = text;
  banner.hidden = false;
}

function clearBanner() {
  $("banner").hidden = true;
  $("banner").textContent = "";
}

// -- the key ------------------------------------------------------------------------------

function connect(key) {
  state.key = key;
  state.admin = null;
  state.failures = 0;
  state.retryAt = 0;
  state.lastRun = {};
  state.rows.clear();
  $("jobs-body").replaceChildren(emptyRow(JOB_COLUMNS, "No jobs yet."));
  state.failuresSeen = "";
  state.accountsSeen = "";
  closeBatch();
  // Another key may be another account's: its lists start again from their first pages.
  for (const pages of Object.values(state.pages)) pages.reset();
  state.subscriptionsSeen = "";
  state.archiveSeen = "";
  state.archiveRemoved.clear();
  closeChecks();
  $("key-form").hidden = true;
  $("session").hidden = false;
  $("session-kind").textContent = "connected";
  $("board").hidden = false;
  $("board").classList.remove("stale");
  $("welcome").hidden = true;
  clearBanner();
  startPolling();
}

function disconnect() {
  stopPolling();
  sessionStorage.removeItem(KEY_STORAGE);
  state.key = null;
  $("key-form").hidden = false;
  $("session").hidden = true;
  $("board").hidden = true;
  $("welcome").hidden = false;
}

function keyRefused(error) {
  disconnect();
  showBanner(
    "error",
    `The API key was refused (${error.status}: ${error.message}). Paste a valid key to continue.`,
  );
  $("api-key").focus();
}

// -- polling: every second while the tab is visible, cleared when it is hidden -------------

function startPolling() {
  stopPolling();
  if (!state.key || document.hidden) return;
  state.interval = setInterval(tick, TICK_MS);
  tick();
}

function stopPolling() {
  if (state.interval) {
    clearInterval(state.interval);
    state.interval = null;
  }
}

function due(name, now) {
  const feed = FEEDS[name];
  if (feed.admin && state.admin !== true) return false;
  const last = state.lastRun[name];
  return last === undefined || now - last >= feed.every * TICK_MS - 100;
}

const POLLERS = {
  cluster: pollCluster,
  nodes: pollNodes,
  jobs: pollJobs,
  subscriptions: pollSubscriptions,
  archive: pollArchive,
  failures: pollFailures,
  batch: pollBatch,
  accounts: pollAccounts,
  viewers: pollViewers,
  throughput: pollThroughput,
};

async function tick() {
  if (document.hidden || state.busy || !state.key) return;
  const now = Date.now();
  if (now < state.retryAt) return;
  // Until the key is known to be admin or not, ask /dashboard/cluster alone.
  const names = state.admin === null ? ["cluster"] : Object.keys(FEEDS).filter((n) => due(n, now));
  if (names.length === 0) return;
  state.busy = true;
  try {
    const results = await Promise.allSettled(names.map((n) => POLLERS[n]()));
    // A refused key or a server that is gone stops the whole page (then backs off); an error
    // of one endpoint shows in its own panel, which tries again at its own pace.
    let stop = null;
    names.forEach((name, i) => {
      const result = results[i];
      if (result.status === "rejected" && (isDown(result.reason) || isRefused(result.reason))) {
        stop = stop || result.reason;
        return;
      }
      state.lastRun[name] = now;
      panelError(name, result.status === "rejected" ? result.reason : null);
    });
    if (stop) failed(stop);
    else recovered();
  } finally {
    state.busy = false;
  }
  if (state.admin !== null && names.length === 1 && names[0] === "cluster" && !state.lastRun.jobs) {
    tick(); // the key's kind is known now: fill every panel at once
  }
}

function isDown(error) {
  // 502-504 come from a proxy in front of a server that is not answering.
  return error instanceof Unreachable || (error instanceof ApiError && [502, 503, 504].includes(error.status));
}

function isRefused(error) {
  return error instanceof ApiError && error.status === 401;
}

const PANEL_NOTES = {
  cluster: "cluster-note",
  nodes: "nodes-note",
  throughput: "throughput-note",
  viewers: "viewers-note",
  failures: "failures-note",
  accounts: "accounts-note",
  subscriptions: "subscriptions-note",
  archive: "archive-note",
};

function panelError(name, error) {
  if (name === "jobs") {
    const message = $("jobs-message");
    if (error) {
      message.textContent = `Jobs could not be read: ${error.message}`;
      message.dataset.error = "1";
    } else if (message.dataset.error) {
      message.textContent = "";
      delete message.dataset.error;
    }
    return;
  }
  if (name === "batch") {
    if (error) $("batch-state").textContent = `could not be read: ${error.message}`;
    return;
  }
  const note = $(PANEL_NOTES[name]);
  if (error) {
    note.textContent = `Could not read this panel: ${error.message}`;
    note.hidden = false;
  } else if (state.admin || !FEEDS[name].admin) {
    note.hidden = true;
  }
}

function recovered() {
  if (state.failures > 0) {
    state.failures = 0;
    state.lastRun = {}; // everything is stale after an outage: read it all again
    $("board").classList.remove("stale");
    clearBanner();
  }
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function failed(error) {
  if (isRefused(error)) {
    keyRefused(error);
    return;
  }
  state.failures += 1;
  $("board").classList.add("stale"); // what is shown is as old as the last answer
  const wait = Math.min(TICK_MS * 2 ** (state.failures - 1), MAX_BACKOFF_MS);
  state.retryAt = Date.now() + wait;
  const why =
    isDown(error)
      ? "Cannot reach the Spool API: the server may be down."
      : `The Spool API answered an error (${error.status || "?"}: ${error.message}).`;
  showBanner("error", `${why} Retrying in ${Math.round(wait / 1000)} s…`);
}

// -- cluster counters ------------------------------------------------------------------------

async function pollCluster() {
  let stats;
  try {
    stats = await api("/dashboard/cluster");
  } catch (error) {
    if (error instanceof ApiError && error.status === 403) {
      setAdmin(false);
      return;
    }
    throw error;
  }
  setAdmin(true);
  $("downloading").textContent = stats.total_downloading;
  $("muxing").textContent = stats.total_muxing;
  $("uploading").textContent = stats.total_uploading;
  showIntake((await api("/api/v1/config/intake")).data.paused);
}

// The cluster's intake of new work (admin keys): paused, no job that has not started starts.
function showIntake(paused) {
  $("intake").hidden = false;
  $("intake-state").textContent = paused
    ? "Intake paused: no new download starts; work under way goes on."
    : "Intake open: jobs start as the nodes have room.";
  $("intake-toggle").textContent = paused ? "Resume intake" : "Pause intake";
  $("intake-toggle").dataset.paused = paused ? "1" : "";
}

async function toggleIntake() {
  const action = $("intake-toggle").dataset.paused ? "resume" : "pause";
  try {
    showIntake((await api(`/api/v1/config/intake/${action}`, { method: "POST" })).data.paused);
  } catch (error) {
    $("intake-state").textContent = `Could not ${action} the intake: ${error.message}`;
  }
}

function setAdmin(admin) {
  if (state.admin === admin) return;
  state.admin = admin;
  $("session-kind").textContent = admin ? "connected · admin key" : "connected · user key";
  const note = "This key is not an admin key: the cluster-wide panels need one. Your own jobs are below.";
  for (const id of ["cluster-note", "nodes-note", "throughput-note", "viewers-note"]) {
    $(id).textContent = admin ? "" : note;
    $(id).hidden = admin;
  }
  $("viewers-note").textContent = admin ? "" : "The viewer list shows every client's address, so it needs an admin key.";
  $("viewers-filters").hidden = !admin;
  $("accounts").hidden = !admin; // pausing an account is an admin's: others see no control
}

// -- nodes ------------------------------------------------------------------------------------

function emptyRow(columns, text) {
  const tr = document.createElement("tr");
  tr.className = "empty";
  const td = cell(text);
  td.colSpan = columns;
  tr.append(td);
  return tr;
}

function cell(content, className) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content);
  else td.textContent = content === null || content === undefined ? "–" : String(content);
  if (className) td.className = className;
  return td;
}

function meter(percent, label, extraClass) {
  const box = document.createElement("div");
  box.className = `meter ${extraClass || ""}`.trim();
  const fill = document.createElement("span");
  const value = percent === null || percent === undefined ? 0 : Math.max(0, Math.min(100, percent));
  fill.style.width = `${value}%`;
  const text = document.createElement("em");
  text.textContent = label !== undefined ? label : percent === null || percent === undefined ? "–" : `${Math.round(percent)}%`;
  box.append(fill, text);
  return box;
}

async function pollNodes() {
  const answer = await api("/dashboard/nodes");
  const body = $("nodes-body");
  if (answer.nodes.length === 0) {
    body.replaceChildren(emptyRow(5, "No node has reported in the last hour."));
    return;
  }
  body.replaceChildren(
    ...answer.nodes.map((n) => {
      const tr = document.createElement("tr");
      tr.dataset.nodeId = n.node_id;
      const name = document.createElement("span");
      const dot = document.createElement("span");
      dot.className = n.online ? "dot online" : "dot";
      dot.title = n.online ? "online" : "offline";
      name.append(dot, `${n.hostname} (${n.node_id}) ${n.ip}`);
      if (n.state !== "active") {
        // Quarantined, draining or below its disk floor: it finishes what it runs and takes
        // nothing new; the badge's title says why (docs/cluster-api.md).
        const state = document.createElement("span");
        state.className = `badge node-state ${n.state}`;
        state.textContent = n.state.replace("_", " ");
        if (n.state_reason) state.title = n.state_reason;
        name.append(" ", state);
      }
      const age = n.heartbeat_age_seconds === null ? "never" : `${n.heartbeat_age_seconds.toFixed(1)} s ago`;
      tr.append(
        cell(name),
        cell(age, "heartbeat"),
        cell(meter(n.cpu_percent, undefined, n.cpu_percent > 90 ? "hot" : "")),
        cell(meter(n.memory_percent, undefined, n.memory_percent > 90 ? "hot" : "")),
        cell(`${n.downloading} / ${n.muxing} / ${n.uploading}`, "stage-counts"),
      );
      return tr;
    }),
  );
}

// -- jobs ---------------------------------------------------------------------------------------

function stagePercents(job) {
  if (job.status === "Completed") return [100, 100, 100];
  const at = STAGES.indexOf(job.step);
  return STAGES.map((_, i) => {
    if (at < 0 || i > at) return 0;
    if (i < at) return 100;
    return job.progress && job.progress.percent !== null ? job.progress.percent : 0;
  });
}

function jobRow(job) {
  const tr = document.createElement("tr");
  tr.dataset.jobId = job.id;
  const idCell = cell(job.id.slice(0, 8), "job-id");
  idCell.title = job.id;
  if (job.batch_id) {
    // The job's batch: its pause is shown and set in the batch line above the list.
    const batch = button(`batch ${job.batch_id.slice(0, 8)}`, "batch-link", () => openBatch(job.batch_id));
    batch.title = `Batch ${job.batch_id}: show its pause`;
    batch.dataset.batchId = job.batch_id;
    idCell.append(batch);
  }
  const url = cell(job.url, "url");
  url.title = job.url;
  const status = document.createElement("span");
  const stages = document.createElement("div");
  stages.className = "stages";
  const actions = document.createElement("td");
  const cancel = button("Cancel", "cancel danger", () => jobAction(job.id, "cancel"));
  const retry = button("Retry", "retry", () => jobAction(job.id, "retry"));
  const pause = button("Pause", "pause", () => jobAction(job.id, "pause"));
  const resume = button("Resume", "resume", () => jobAction(job.id, "resume"));
  actions.append(cancel, retry, pause, resume, fileLink("Play", "play"), fileLink("Download", "download"));
  tr.append(idCell, url, cell(status, "status"), cell(stages, "progress"), cell(time(job.created_at), "created"), actions);
  tr.addEventListener("click", () => selectJob(job.id));
  return tr;
}

function button(text, className, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = className;
  b.textContent = text;
  b.addEventListener("click", (event) => {
    event.stopPropagation();
    onClick();
  });
  return b;
}

// A link to a completed job's file (its `s3_url`: presigned, SAS or a signed Spool link). The
// list of jobs carries no links, so a row asks for its job once, when it is first seen done.
function fileLink(text, className) {
  const a = document.createElement("a");
  a.className = `file-link ${className}`;
  a.textContent = text;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  a.hidden = true;
  if (className === "download") a.download = "";
  a.addEventListener("click", (event) => event.stopPropagation());
  return a;
}

async function loadLinks(tr, id) {
  tr.dataset.links = "loading";
  try {
    const full = await api(`/jobs/${encodeURIComponent(id)}`);
    if (!full.s3_url) {
      tr.dataset.links = "none";
      return;
    }
    for (const a of tr.querySelectorAll("a.file-link")) {
      a.href = full.s3_url;
      a.hidden = false;
    }
    tr.dataset.links = "ready";
  } catch {
    delete tr.dataset.links; // asked again at the next poll
  }
}

function updateRow(tr, job) {
  const status = tr.querySelector(".status span");
  status.className = `badge ${job.status}`;
  status.textContent = job.status === "Processing" ? `${job.status} · ${job.step}` : job.status;
  // A pause is not a status: it is shown beside it, with what holds the job back.
  if (job.paused) status.textContent += ` · paused (${job.paused_by})`;
  status.title = job.error || "";
  const stages = tr.querySelector(".stages");
  const percents = stagePercents(job);
  stages.replaceChildren(
    ...percents.map((p, i) => meter(p, `${STAGE_NAMES[i]} ${Math.round(p)}%`, p >= 100 ? "done" : "")),
  );
  tr.querySelector(".cancel").hidden = !(job.status === "Pending" || job.status === "Processing");
  tr.querySelector(".retry").hidden = !(job.status === "Failed" || job.status === "Cancelled");
  const unfinished = job.status === "Pending" || job.status === "Processing";
  tr.querySelector(".pause").hidden = !unfinished || job.paused_by === "job";
  tr.querySelector(".resume").hidden = job.paused_by !== "job";
  const hasFile = job.status === "Completed" && !job.file_deleted;
  if (hasFile && !tr.dataset.links) loadLinks(tr, job.id);
  if (!hasFile) {
    for (const a of tr.querySelectorAll("a.file-link")) a.hidden = true;
    delete tr.dataset.links;
  }
  tr.classList.toggle("selected", job.id === state.selectedJob);
}

async function pollJobs() {
  const query = jobQuery().toString();
  const page = await api(`/jobs?${query}`);
  // A poll that left before a filter change or a page turn answers for another view: drop it.
  if (query !== jobQuery().toString()) return;
  state.pages.jobs.shown(page.jobs.length, page.next_cursor);
  const body = $("jobs-body");
  if (page.jobs.length === 0) {
    const filtered = Object.keys(jobFilters()).length > 0;
    body.replaceChildren(emptyRow(JOB_COLUMNS, filtered ? "No job matches these filters." : "No jobs yet: submit one above."));
    state.rows.clear();
    return;
  }
  const rows = page.jobs.map((job) => {
    let tr = state.rows.get(job.id);
    if (!tr) {
      tr = jobRow(job);
      addBrowserCells(tr);
      state.rows.set(job.id, tr);
    } else if (FINAL.has(job.status) && tr.dataset.status !== job.status) {
      state.lastRun.throughput = undefined; // a job just finished: its minute's bar grew
      state.lastRun.failures = undefined; // and it may have joined a failure group
    }
    tr.dataset.status = job.status;
    updateRow(tr, job);
    updateBrowserCells(tr, job);
    return tr;
  });
  const shown = new Set(page.jobs.map((j) => j.id));
  for (const id of state.rows.keys()) if (!shown.has(id)) state.rows.delete(id);
  // Re-append in order: existing rows move, so buttons under the pointer stay the same nodes.
  rows.forEach((tr, i) => {
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] || null);
  });
  while (body.children.length > rows.length) body.lastElementChild.remove();
  const selected = page.jobs.find((j) => j.id === state.selectedJob);
  if (selected) {
    const seen = `${selected.status}/${selected.step}/${selected.progress ? selected.progress.percent : ""}`;
    if (seen !== state.timelineSeen || !FINAL.has(selected.status)) await loadTimeline(selected.id, seen);
  }
}

// -- the job browser: columns, filters, paging ------------------------------------------------

const JOB_COLUMNS = 10;
const REASON_CHARS = 80;

// The columns the browser adds to a row that `jobRow` made: title (with the job's labels),
// format and size beside the source, the failure reason after the status. Every text goes in
// through textContent: titles, labels and errors are the users' (or their sources') words.
function addBrowserCells(tr) {
  const title = cell("", "title");
  title.append(document.createElement("span"), document.createElement("span"));
  title.firstChild.className = "title-text";
  title.lastChild.className = "labels";
  tr.insertBefore(title, tr.querySelector(".url"));
  const status = tr.querySelector(".status");
  tr.insertBefore(cell("", "format"), status);
  tr.insertBefore(cell("", "size"), status);
  status.after(cell("", "reason"));
}

function updateBrowserCells(tr, job) {
  const text = job.title || job.filename || "";
  const title = tr.querySelector(".title-text");
  if (title.textContent !== text) title.textContent = text;
  title.parentElement.title = text;
  const labels = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`);
  const shown = tr.querySelector(".labels");
  if (shown.dataset.labels !== JSON.stringify(labels)) {
    shown.dataset.labels = JSON.stringify(labels);
    shown.replaceChildren(
      ...labels.map((pair) => {
        const chip = document.createElement("span");
        chip.className = "label";
        chip.textContent = pair;
        return chip;
      }),
    );
  }
  tr.querySelector(".format").textContent = job.format || "–";
  tr.querySelector(".size").textContent = job.file_size === null || job.file_size === undefined ? "–" : bytes(job.file_size);
  showReason(tr.querySelector(".reason"), job.error);
}

// An error a source or a node wrote, as text: its first characters, the whole in the tooltip.
function showReason(el, error) {
  const text = error || "";
  el.textContent = text.length > REASON_CHARS ? `${text.slice(0, REASON_CHARS - 1)}…` : text;
  el.title = text;
}

const STATUS_NAMES = ["Pending", "Processing", "Completed", "Failed", "Cancelled", "Skipped"];

// The filters as the controls hold them: names as GET /jobs takes them, only those given.
function jobFilters() {
  const f = {};
  const q = $("filter-q").value.trim();
  if (q) f.q = q;
  const statuses = [...$("filter-status").querySelectorAll("input:checked")].map((i) => i.value);
  if (statuses.length) f.status = statuses.join(",");
  const label = $("filter-label").value.trim();
  if (label) f.label = label;
  const host = $("filter-host").value.trim();
  if (host) f.host = host;
  for (const [name, id] of [["created_after", "filter-created-after"], ["created_before", "filter-created-before"]]) {
    const value = $(id).value;
    const at = value ? new Date(value).getTime() : NaN; // the browser's local time
    if (!Number.isNaN(at)) f[name] = String(at);
  }
  if ($("filter-error-type").value) f.error_type = $("filter-error-type").value;
  const group = $("filter-group").dataset.value;
  if (group) f.failure_group = group;
  const subscription = $("filter-subscription").dataset.value;
  if (subscription) f.subscription_id = subscription;
  return f;
}

// GET /jobs's query for the page shown: the filters, the page size and this page's cursor.
function jobQuery() {
  const q = new URLSearchParams(jobFilters());
  q.set("limit", $("jobs-limit").value);
  return state.pages.jobs.apply(q);
}

// The same filters as a bulk action's `filter` object (docs/job-api.md, Bulk actions).
function actionFilter() {
  const f = jobFilters();
  const filter = {};
  if (f.q) filter.q = f.q;
  if (f.status) filter.status = f.status.split(",");
  if (f.label) {
    const at = f.label.indexOf("=");
    filter.labels = { [f.label.slice(0, at < 0 ? f.label.length : at)]: at < 0 ? "" : f.label.slice(at + 1) };
  }
  if (f.host) filter.host = f.host;
  if (f.created_after) filter.created_after = new Date(Number(f.created_after)).toISOString();
  if (f.created_before) filter.created_before = new Date(Number(f.created_before)).toISOString();
  if (f.error_type) filter.error_type = f.error_type;
  if (f.failure_group) filter.failure_group = f.failure_group;
  if (f.subscription_id) filter.subscription_id = f.subscription_id;
  return filter;
}

// The view goes into the URL's hash (never to the server, never the key), so a reload or a
// shared link opens the same filters and page size.
function writeFilterHash() {
  const q = new URLSearchParams(jobFilters());
  if ($("jobs-limit").value !== "20") q.set("limit", $("jobs-limit").value);
  const hash = q.toString();
  if (location.hash.slice(1) !== hash) history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
}

function readFilterHash() {
  const q = new URLSearchParams(location.hash.slice(1));
  $("filter-q").value = q.get("q") || "";
  const statuses = new Set((q.get("status") || "").split(",").filter(Boolean));
  for (const box of $("filter-status").querySelectorAll("input")) box.checked = statuses.has(box.value);
  $("filter-label").value = q.get("label") || "";
  $("filter-host").value = q.get("host") || "";
  $("filter-created-after").value = localInput(q.get("created_after"));
  $("filter-created-before").value = localInput(q.get("created_before"));
  $("filter-error-type").value = ["error", "warning"].includes(q.get("error_type")) ? q.get("error_type") : "";
  setChip("filter-group", q.get("failure_group") || "");
  setChip("filter-subscription", q.get("subscription_id") || "");
  const limit = q.get("limit") || "20";
  $("jobs-limit").value = [...$("jobs-limit").options].some((o) => o.value === limit) ? limit : "20";
}

// ms since the epoch as a datetime-local input's value (the browser's local time).
function localInput(ms) {
  if (!ms || Number.isNaN(Number(ms))) return "";
  const at = new Date(Number(ms));
  const pad = (n) => String(n).padStart(2, "0");
  return `${at.getFullYear()}-${pad(at.getMonth() + 1)}-${pad(at.getDate())}T${pad(at.getHours())}:${pad(at.getMinutes())}`;
}

// A filter the job browser shows as a chip above the list (a failure group, a subscription):
// set by a click elsewhere on the page or by the hash, cleared by its ×.
function setChip(id, value) {
  const chip = $(id);
  if (value) chip.dataset.value = value;
  else delete chip.dataset.value;
  $(`${id}-id`).textContent = value;
  chip.hidden = !value;
}

function jobFiltersChanged() {
  state.pages.jobs.reset();
  writeFilterHash();
  refresh("jobs");
}

// One filter alone in the job browser, from the first page (a failure group, a subscription's
// jobs, an archived item's URL): `set` sets it on the cleared controls.
function showJobsOf(set) {
  $("job-filters").reset();
  setChip("filter-group", "");
  setChip("filter-subscription", "");
  set();
  jobFiltersChanged();
}

// A list read a page at a time with `next_cursor`: the cursors of the pages before this one
// (the first page's is null) and this page's, with its "‹ previous" / "next ›" buttons and its
// line (`<prefix>-prev`, `-next`, `-page`); `read` reads the page shown again.
class Pager {
  constructor(prefix, noun, read) {
    this.prefix = prefix;
    this.noun = noun;
    this.read = read;
    this.reset();
    $(`${prefix}-prev`).addEventListener("click", () => this.turn(false));
    $(`${prefix}-next`).addEventListener("click", () => this.turn(true));
  }

  reset() {
    this.before = [];
    this.cursor = null;
    this.next = null;
  }

  // `params` (URLSearchParams) with this page's cursor.
  apply(params) {
    if (this.cursor) params.set("cursor", this.cursor);
    return params;
  }

  shown(count, next) {
    this.next = next;
    const number = this.before.length + 1;
    $(`${this.prefix}-page`).textContent = `page ${number} · ${count} ${this.noun}${count === 1 ? "" : "s"}`;
    $(`${this.prefix}-prev`).disabled = number === 1;
    $(`${this.prefix}-next`).disabled = !next;
  }

  turn(forward) {
    if (forward) {
      if (!this.next) return;
      this.before.push(this.cursor);
      this.cursor = this.next;
    } else {
      if (this.before.length === 0) return;
      this.cursor = this.before.pop();
    }
    this.next = null;
    $(`${this.prefix}-next`).disabled = true;
    $(`${this.prefix}-prev`).disabled = true;
    this.read();
  }
}

// The jobs panel's message line: what the last action did.
function say(text) {
  const message = $("jobs-message");
  message.textContent = text;
  delete message.dataset.error;
}

async function jobAction(id, action) {
  try {
    const answer =
      action === "cancel"
        ? await api(`/jobs/${encodeURIComponent(id)}`, { method: "DELETE" })
        : await api(`/jobs/${encodeURIComponent(id)}/${action}`, { method: "POST" });
    const done = { cancel: "cancelled", retry: "retried", pause: "paused", resume: "resumed" }[action];
    say(`Job ${id.slice(0, 8)}: ${done} (now ${answer.status}).`);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return keyRefused(error);
    say(`Could not ${action} job ${id.slice(0, 8)}: ${error.message}`);
  }
  refresh("jobs");
}

async function submitJob(event) {
  event.preventDefault();
  const body = { url: $("job-url").value.trim() };
  if ($("job-format").value) body.format = $("job-format").value;
  if ($("job-audio-only").checked) body.audio_only = true;
  if ($("job-folder").value.trim()) body.folder = $("job-folder").value.trim();
  if ($("job-filename").value.trim()) body.filename = $("job-filename").value.trim();
  try {
    const answer = await api("/jobs", { method: "POST", body });
    say(
      answer.job_id
        ? `Created job ${answer.job_id}.`
        : `Created batch ${answer.batch_id} (${answer.total_episodes} jobs).`,
    );
    $("job-url").value = "";
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return keyRefused(error);
    say(`The job was not created: ${error.message}`);
  }
  refresh("jobs");
}

function selectJob(id) {
  state.selectedJob = id;
  state.timelineSeen = "";
  for (const [jobId, tr] of state.rows) tr.classList.toggle("selected", jobId === id);
  loadTimeline(id, "").catch(() => {});
}

async function loadTimeline(id, seen) {
  const page = await api(`/jobs/${encodeURIComponent(id)}/events?limit=1000`);
  if (state.selectedJob !== id) return;
  state.timelineSeen = seen;
  $("timeline").hidden = false;
  $("timeline-job").textContent = id;
  $("timeline-list").replaceChildren(
    ...page.events.map((e) => {
      const li = document.createElement("li");
      li.dataset.type = e.type;
      const at = document.createElement("time");
      at.dateTime = e.recorded_at;
      at.textContent = new Date(e.recorded_at).toLocaleTimeString([], { hour12: false }) + "." + String(new Date(e.recorded_at).getMilliseconds()).padStart(3, "0");
      const what = document.createElement("strong");
      what.textContent = e.type;
      li.append(at, what, eventDetail(e));
      return li;
    }),
  );
}

function eventDetail(e) {
  const parts = [];
  const d = e.data || {};
  for (const name of ["stage", "attempt", "percent", "bytes", "error", "reason", "status"]) {
    if (d[name] !== undefined && d[name] !== null && typeof d[name] !== "object") parts.push(`${name} ${d[name]}`);
  }
  if (e.metadata && e.metadata.node_id) parts.push(`on ${e.metadata.node_id}`);
  const span = document.createElement("span");
  span.className = "muted";
  span.textContent = parts.length ? ` — ${parts.join(", ")}` : "";
  return span;
}

function time(ms) {
  return ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : "–";
}

// -- why jobs fail: GET /jobs/failures ----------------------------------------------------------

async function pollFailures() {
  const answer = await api("/jobs/failures?limit=20");
  // Unchanged groups keep their rows: a button under the pointer or a focused row stays.
  const seen = JSON.stringify(answer.groups);
  if (seen === state.failuresSeen) return;
  state.failuresSeen = seen;
  const body = $("failures-body");
  if (answer.groups.length === 0) {
    body.replaceChildren(emptyRow(6, "No failed jobs."));
    return;
  }
  const chosen = $("filter-group").dataset.value;
  body.replaceChildren(
    ...answer.groups.map((g) => {
      const tr = document.createElement("tr");
      tr.dataset.groupId = g.group_id;
      tr.title = "Show these jobs";
      tr.classList.toggle("selected", g.group_id === chosen);
      const retry = button("Retry all", "retry-group", () => bulkAction("retry", { failure_group: g.group_id }));
      tr.append(
        cell(g.count, "count"),
        cell(g.error_type, "error-type"),
        cell(g.message, "message"),
        cell(dateTime(g.first_failed_at), "first"),
        cell(dateTime(g.last_failed_at), "last"),
        cell(retry),
      );
      tr.tabIndex = 0; // a group is reachable from the keyboard too: Enter shows its jobs
      tr.addEventListener("click", () => showFailureGroup(g.group_id));
      tr.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && event.target === tr) showFailureGroup(g.group_id);
      });
      return tr;
    }),
  );
}

// Clicking a group shows its jobs: the group's filter alone, from the first page.
function showFailureGroup(group) {
  showJobsOf(() => setChip("filter-group", group));
  for (const tr of $("failures-body").children) tr.classList.toggle("selected", tr.dataset.groupId === group);
}

function dateTime(ms) {
  return ms ? new Date(ms).toLocaleString([], { hour12: false }) : "–";
}

// -- a batch's pause: GET /batch/{id}, POST /batch/{id}/pause, /resume, /start ------------------

function openBatch(id) {
  state.batch = id;
  $("batch").hidden = false;
  $("batch-id").textContent = id;
  $("batch-state").textContent = "reading…";
  $("batch-toggle").hidden = true;
  refresh("batch");
}

function closeBatch() {
  state.batch = null;
  $("batch").hidden = true;
  delete $("batch").dataset.paused;
}

async function pollBatch() {
  const id = state.batch;
  if (!id) return;
  const view = await api(`/batch/${encodeURIComponent(id)}`);
  if (state.batch === id) showBatch(view);
}

// What the batch's own state lets one do: start one created paused, pause one that runs,
// resume one paused after its start; a finished batch is only shown.
function showBatch(view) {
  const counts = Object.entries(view.counts).map(([s, n]) => `${n} ${s}`).join(", ");
  const jobs = `${view.total_jobs} job${view.total_jobs === 1 ? "" : "s"}${counts ? ` (${counts})` : ""}`;
  let words;
  let action = null;
  if (view.status === "paused") {
    words = "created paused: its jobs wait until it is started";
    action = "start";
  } else if (view.paused) {
    words = "paused: its jobs that have not started wait; running ones finish";
    action = "resume";
  } else if (view.status === "processing") {
    words = "running";
    action = "pause";
  } else {
    words = view.status;
  }
  $("batch-state").textContent = `${words} · ${jobs}`;
  $("batch").dataset.paused = view.paused ? "1" : "";
  const toggle = $("batch-toggle");
  toggle.hidden = action === null;
  toggle.dataset.action = action || "";
  toggle.textContent = { start: "Start batch", pause: "Pause batch", resume: "Resume batch" }[action] || "";
}

async function batchAction() {
  const id = state.batch;
  const action = $("batch-toggle").dataset.action;
  if (!id || !action) return;
  try {
    await api(`/batch/${encodeURIComponent(id)}/${action}`, { method: "POST" });
  } catch (error) {
    if (isRefused(error)) return keyRefused(error);
    $("batch-state").textContent = `Could not ${action} the batch: ${error.message}`;
    return;
  }
  refresh("batch");
  refresh("jobs"); // what holds its jobs (paused_by) changed
}

// -- accounts (admin keys): GET /admin/accounts, POST /admin/accounts/{id}/pause, /resume --------

async function pollAccounts() {
  const answer = await api("/admin/accounts");
  const seen = JSON.stringify(answer.accounts.map((a) => [a.account_id, a.paused, a.keys]));
  if (seen === state.accountsSeen) return; // unchanged rows stay: a button under the pointer too
  state.accountsSeen = seen;
  const body = $("accounts-body");
  if (answer.accounts.length === 0) {
    body.replaceChildren(emptyRow(4, "No accounts."));
    return;
  }
  body.replaceChildren(...answer.accounts.map(accountRow));
}

function accountRow(account) {
  const tr = document.createElement("tr");
  tr.dataset.accountId = account.account_id;
  tr.dataset.paused = account.paused ? "1" : "";
  const keys = account.keys
    .filter((k) => !k.revoked)
    .map((k) => `${k.name || k.hint || k.key_id}${k.admin ? " (admin)" : ""}`)
    .join(", ");
  const words = account.paused ? "paused: its jobs that have not started wait" : "active";
  const action = account.paused ? "resume" : "pause";
  const toggle = button(account.paused ? "Resume account" : "Pause account", `account-toggle ${action}`, () =>
    accountAction(account.account_id, action),
  );
  tr.append(cell(account.account_id, "account-id"), cell(keys || "–", "keys"), cell(words, "account-state"), cell(toggle));
  return tr;
}

async function accountAction(id, action) {
  let answer;
  try {
    answer = await api(`/admin/accounts/${encodeURIComponent(id)}/${action}`, { method: "POST" });
  } catch (error) {
    if (isRefused(error)) return keyRefused(error);
    const row = $("accounts-body").querySelector(`tr[data-account-id="${CSS.escape(id)}"] .account-state`);
    if (row) row.textContent = `Could not ${action} the account: ${error.message}`;
    return;
  }
  const row = $("accounts-body").querySelector(`tr[data-account-id="${CSS.escape(id)}"]`);
  if (row) row.replaceWith(accountRow(answer));
  state.accountsSeen = ""; // the next poll redraws every row
  refresh("jobs"); // what holds its jobs (paused_by) changed
}

// -- subscriptions: GET /subscriptions, POST, pause / resume / DELETE, GET .../checks ------------

const SUB_COLUMNS = 6;

function subscriptionsSay(text, error) {
  const line = $("subscriptions-message");
  line.textContent = text;
  line.classList.toggle("error-text", Boolean(error));
}

function subscriptionQuery() {
  return state.pages.subscriptions.apply(new URLSearchParams({ limit: "20" })).toString();
}

async function pollSubscriptions() {
  const query = subscriptionQuery();
  const page = await api(`/subscriptions?${query}`);
  if (query !== subscriptionQuery()) return; // answered for a page no longer shown
  state.pages.subscriptions.shown(page.subscriptions.length, page.next_cursor);
  // Unchanged rows stay: a button under the pointer stays the same node.
  const seen = JSON.stringify([query, page.subscriptions]);
  if (seen === state.subscriptionsSeen) return;
  state.subscriptionsSeen = seen;
  const body = $("subscriptions-body");
  if (page.subscriptions.length === 0) {
    body.replaceChildren(emptyRow(SUB_COLUMNS, "No subscriptions yet: subscribe to a feed, playlist or channel above."));
  } else {
    body.replaceChildren(...page.subscriptions.map(subscriptionRow));
  }
  // The open check history follows its subscription: a check that started or ended shows.
  if (state.checksOf && page.subscriptions.some((s) => s.subscription_id === state.checksOf)) loadChecks();
}

// How the last check went, in words: when it started, how it ended, what it saw and made.
function lastCheckWords(check) {
  if (!check) return "not checked yet";
  const when = dateTime(check.started_at);
  if (check.finished_at === null) return `${when}: running`;
  const ended = check.error ? "failed" : "finished";
  return `${when}: ${ended} · ${check.seen} seen · ${check.new} new`;
}

function subscriptionRow(s) {
  const tr = document.createElement("tr");
  tr.dataset.subscriptionId = s.subscription_id;
  tr.dataset.status = s.status;
  tr.classList.toggle("selected", s.subscription_id === state.checksOf);
  // The URL as the API shows it to its owner, as text and never a link: it is the user's text,
  // and it may carry a token of the source's.
  const url = cell(s.url, "url");
  url.title = s.url;
  const status = document.createElement("span");
  status.className = `badge ${s.status}`;
  status.textContent = s.checking ? `${s.status} · checking` : s.status;
  const last = document.createElement("div");
  const words = document.createElement("span");
  words.className = "check-words";
  words.textContent = lastCheckWords(s.last_check);
  const error = document.createElement("span");
  error.className = "check-error";
  showReason(error, s.last_check && s.last_check.error);
  last.append(words, error);
  const next = s.status === "paused" ? "none while paused" : dateTime(s.next_check_at);
  const jobs = document.createElement("a");
  jobs.className = "subscription-jobs";
  jobs.href = `#${new URLSearchParams({ subscription_id: s.subscription_id })}`;
  jobs.textContent = `${s.items} job${s.items === 1 ? "" : "s"}`;
  jobs.title = "Show the jobs its checks created in the job browser";
  jobs.addEventListener("click", (event) => {
    event.preventDefault();
    showJobsOf(() => setChip("filter-subscription", s.subscription_id));
    $("jobs").scrollIntoView();
  });
  const action = s.status === "paused" ? "resume" : "pause";
  const toggle = button(action === "pause" ? "Pause" : "Resume", `subscription-toggle ${action}`, () =>
    subscriptionAction(s, action),
  );
  const checks = button("Checks", "subscription-checks", () => openChecks(s));
  const remove = button("Delete", "subscription-delete danger", () => subscriptionAction(s, "delete"));
  const actions = document.createElement("td");
  actions.className = "actions";
  actions.append(toggle, checks, remove);
  tr.append(
    url,
    cell(status, "subscription-status"),
    cell(last, "last-check"),
    cell(next, "next-check"),
    cell(jobs, "items"),
    actions,
  );
  return tr;
}

async function subscriptionAction(s, action) {
  const id = s.subscription_id;
  const path = `/subscriptions/${encodeURIComponent(id)}`;
  try {
    if (action === "delete") {
      const yes = await confirmAction(
        "Delete this subscription?",
        `${s.url} is never checked again; the ${s.items} job${s.items === 1 ? "" : "s"} it created stay.`,
      );
      if (!yes) {
        subscriptionsSay("Nothing was done.");
        return;
      }
      await api(path, { method: "DELETE" });
      if (state.checksOf === id) closeChecks();
    } else {
      await api(`${path}/${action}`, { method: "POST" });
    }
  } catch (error) {
    if (isRefused(error)) return keyRefused(error);
    subscriptionsSay(`Could not ${action} subscription ${id}: ${error.message}`, true);
    return;
  }
  const done = { pause: "paused", resume: "resumed", delete: "deleted" }[action];
  subscriptionsSay(`Subscription ${id}: ${done}.`);
  state.subscriptionsSeen = ""; // the next read redraws every row
  refresh("subscriptions");
}

// The form: URL, interval (minutes), max items per check, format; the API's refusal is shown
// as it words it (a 400 naming the field, a 403 past the account's bound).
async function subscribe(event) {
  event.preventDefault();
  const body = {
    url: $("subscription-url").value.trim(),
    interval: Math.round(Number($("subscription-interval").value) * 60),
  };
  const most = $("subscription-max-items").value.trim();
  if (most) body.max_items = Number(most);
  if ($("subscription-format").value) body.format = $("subscription-format").value;
  let made;
  try {
    made = await api("/subscriptions", { method: "POST", body });
  } catch (error) {
    if (isRefused(error)) return keyRefused(error);
    subscriptionsSay(`The subscription was not made: ${error.message}`, true);
    return;
  }
  subscriptionsSay(`Subscribed: ${made.subscription_id}. Its first check runs now.`);
  $("subscription-url").value = "";
  state.pages.subscriptions.reset(); // newest first: it is on the first page
  refresh("subscriptions");
}

function openChecks(s) {
  state.checksOf = s.subscription_id;
  state.checksSeen = "";
  state.pages.checks.reset();
  $("checks").hidden = false;
  $("checks-url").textContent = s.url;
  $("checks-url").title = s.subscription_id;
  for (const tr of $("subscriptions-body").children) {
    tr.classList.toggle("selected", tr.dataset.subscriptionId === s.subscription_id);
  }
  $("checks-body").replaceChildren(emptyRow(6, "reading…"));
  loadChecks();
}

function closeChecks() {
  state.checksOf = null;
  $("checks").hidden = true;
  for (const tr of $("subscriptions-body").children) tr.classList.remove("selected");
}

async function loadChecks() {
  const id = state.checksOf;
  if (!id) return;
  const query = state.pages.checks.apply(new URLSearchParams({ limit: "10" })).toString();
  let page;
  try {
    page = await api(`/subscriptions/${encodeURIComponent(id)}/checks?${query}`);
  } catch (error) {
    if (isRefused(error)) return keyRefused(error);
    if (state.checksOf === id) $("checks-body").replaceChildren(emptyRow(6, `Could not read its checks: ${error.message}`));
    return;
  }
  const now = state.pages.checks.apply(new URLSearchParams({ limit: "10" })).toString();
  if (state.checksOf !== id || query !== now) return; // answered for another view
  state.pages.checks.shown(page.checks.length, page.next_cursor);
  const seen = JSON.stringify([id, query, page.checks]);
  if (seen === state.checksSeen) return;
  state.checksSeen = seen;
  if (page.checks.length === 0) {
    $("checks-body").replaceChildren(emptyRow(6, "No check yet."));
    return;
  }
  $("checks-body").replaceChildren(
    ...page.checks.map((c) => {
      const tr = document.createElement("tr");
      tr.dataset.checkId = c.check_id;
      tr.dataset.status = c.status;
      const error = cell("", "check-error");
      showReason(error, c.error);
      tr.append(
        cell(dateTime(c.started_at), "started"),
        cell(dateTime(c.finished_at), "finished"),
        cell(c.error && c.status === "finished" ? "failed" : c.status, "check-status"),
        cell(c.seen, "seen"),
        cell(c.new, "new"),
        error,
      );
      return tr;
    }),
  );
}

// -- the download archive: GET /archive?q=, DELETE /archive/{archive_id} -------------------------

const ARCHIVE_COLUMNS = 6;
const MAX_QUERY_CHARS = 200; // the longest `q` GET /jobs and GET /archive take

function archiveQuery() {
  const q = new URLSearchParams({ limit: "20" });
  const search = $("archive-q").value.trim().slice(0, MAX_QUERY_CHARS);
  if (search) q.set("q", search);
  return state.pages.archive.apply(q).toString();
}

function archiveSay(text, error) {
  const line = $("archive-message");
  line.textContent = text;
  line.classList.toggle("error-text", Boolean(error));
}

async function pollArchive() {
  const query = archiveQuery();
  const page = await api(`/archive?${query}`);
  if (query !== archiveQuery()) return; // answered for a search or a page no longer shown
  state.pages.archive.shown(page.items.length, page.next_cursor);
  // An item just removed stays out while the archive's projection catches up (a moment).
  const listed = new Set(page.items.map((i) => i.archive_id));
  for (const id of state.archiveRemoved) if (!listed.has(id)) state.archiveRemoved.delete(id);
  const items = page.items.filter((i) => !state.archiveRemoved.has(i.archive_id));
  const seen = JSON.stringify([query, items]);
  if (seen === state.archiveSeen) return;
  state.archiveSeen = seen;
  const body = $("archive-body");
  if (items.length === 0) {
    const searched = new URLSearchParams(query).has("q");
    body.replaceChildren(emptyRow(ARCHIVE_COLUMNS, searched ? "No archived item matches." : "Nothing archived yet: completed jobs land here."));
    return;
  }
  body.replaceChildren(...items.map(archiveRow));
}

function archiveRow(item) {
  const tr = document.createElement("tr");
  tr.dataset.archiveId = item.archive_id;
  const title = cell(item.title || "–", "title");
  title.title = item.title || "";
  const id = cell(item.archive_id, "archive-id");
  id.title = item.archive_id;
  const url = cell(item.url, "url");
  url.title = item.url;
  // Its job in the job browser: the browser searches the item's URL (the job's own) and opens
  // the job's timeline.
  const search = item.url.slice(0, MAX_QUERY_CHARS);
  const job = document.createElement("a");
  job.className = "archive-job";
  job.href = `#${new URLSearchParams({ q: search })}`;
  job.textContent = item.job_id.slice(0, 8);
  job.title = `Job ${item.job_id}: show it in the job browser`;
  job.addEventListener("click", (event) => {
    event.preventDefault();
    showJobsOf(() => ($("filter-q").value = search));
    selectJob(item.job_id);
    $("jobs").scrollIntoView();
  });
  const remove = button("Remove", "archive-remove danger", () => removeArchived(item));
  tr.append(title, id, url, cell(dateTime(item.archived_at), "archived"), cell(job, "job"), cell(remove));
  return tr;
}

async function removeArchived(item) {
  const yes = await confirmAction(
    "Remove this item from the archive?",
    `${item.title || item.url} (${item.archive_id}): its next job downloads it again. Job ${item.job_id} and its file stay.`,
  );
  if (!yes) {
    archiveSay("Nothing was done.");
    return;
  }
  try {
    await api(`/archive/${encodeURIComponent(item.archive_id)}`, { method: "DELETE" });
  } catch (error) {
    if (isRefused(error)) return keyRefused(error);
    archiveSay(`Could not remove ${item.archive_id}: ${error.message}`, true);
    return;
  }
  archiveSay(`Removed ${item.archive_id} from the archive: its next job downloads it again.`);
  state.archiveRemoved.add(item.archive_id);
  state.archiveSeen = "";
  refresh("archive");
}

// -- bulk actions: POST /jobs/actions, a dry run first, then GET /operations/{id} ---------------

const ACTION_WORDS = { cancel: "Cancel", retry: "Retry", delete_file: "Delete the file of", pause: "Pause", resume: "Resume" };

function bulkSay(text) {
  $("bulk-message").textContent = text;
}

// A bulk action's filter in words, for the confirmation and the messages.
function describeFilter(filter) {
  const parts = [];
  if (filter.failure_group) parts.push(`failure group ${filter.failure_group}`);
  if (filter.subscription_id) parts.push(`subscription ${filter.subscription_id}`);
  if (filter.status) parts.push(`status ${filter.status.join(" or ")}`);
  if (filter.labels) parts.push(...Object.entries(filter.labels).map(([k, v]) => `label ${k}=${v}`));
  if (filter.host) parts.push(`host ${filter.host}`);
  if (filter.created_after) parts.push(`created from ${new Date(filter.created_after).toLocaleString([], { hour12: false })}`);
  if (filter.created_before) parts.push(`created before ${new Date(filter.created_before).toLocaleString([], { hour12: false })}`);
  if (filter.error_type) parts.push(`error type ${filter.error_type}`);
  if (filter.q) parts.push(`search "${filter.q}"`);
  return parts.length ? `Jobs matching ${parts.join(", ")}.` : "No filter: every job of yours.";
}

// Ask with the count a dry run found, then act: `filter` is a bulk action's filter object.
async function bulkAction(action, filter) {
  const what = describeFilter(filter);
  bulkSay("");
  let counted;
  try {
    counted = await api("/jobs/actions", { method: "POST", body: { action, filter, dry_run: true } });
  } catch (error) {
    if (isRefused(error)) return keyRefused(error);
    bulkSay(`${ACTION_WORDS[action]}: ${error.message}`);
    return;
  }
  if (counted.matched === 0) {
    bulkSay(`No job matches: nothing to ${action.replace("_", " ")}. ${what}`);
    return;
  }
  const yes = await confirmAction(
    `${ACTION_WORDS[action]} ${counted.matched} job${counted.matched === 1 ? "" : "s"}?`,
    what,
  );
  if (!yes) {
    bulkSay("Nothing was done.");
    return;
  }
  let asked;
  try {
    asked = await api("/jobs/actions", { method: "POST", body: { action, filter } });
  } catch (error) {
    if (isRefused(error)) return keyRefused(error);
    bulkSay(`${ACTION_WORDS[action]}: ${error.message}`);
    return;
  }
  state.operation = { id: asked.operation_id, action };
  followOperation(asked.operation_id, action);
}

// The confirmation: a modal dialog whose text is set as text; resolves true on "Yes".
function confirmAction(question, detail) {
  const dialog = $("confirm");
  $("confirm-text").textContent = question;
  $("confirm-filter").textContent = detail;
  $("confirm-yes").textContent = question.replace(/\?$/, "");
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// Show an operation's counts once a second until it is finished.
async function followOperation(id, action) {
  const line = $("operation");
  line.hidden = false;
  $("operation-problems").replaceChildren();
  line.dataset.operationId = id;
  while (state.operation && state.operation.id === id) {
    let shown;
    try {
      shown = await api(`/operations/${encodeURIComponent(id)}`);
    } catch (error) {
      if (isRefused(error)) return keyRefused(error);
      line.textContent = `Operation ${id}: cannot read its progress (${error.message}); trying again…`;
      await new Promise((r) => setTimeout(r, TICK_MS));
      continue;
    }
    const c = shown.counts;
    line.dataset.status = shown.status;
    line.textContent =
      `${ACTION_WORDS[action]} (operation ${id}): ${c.matched} matched · ${c.done} done · ` +
      `${c.skipped} skipped · ${c.failed} failed — ${shown.status}`;
    if (shown.status === "finished") {
      state.operation = null;
      showProblems(shown);
      refresh("jobs");
      refresh("failures");
      return;
    }
    await new Promise((r) => setTimeout(r, TICK_MS));
  }
}

const PROBLEMS_SHOWN = 5;

// The jobs a finished operation skipped or could not act on, with the API's reasons: the first
// few of its first page (`GET /operations/{id}?limit=100`), and how many more there are.
async function showProblems(shown) {
  const total = shown.counts.skipped + shown.counts.failed;
  if (total === 0) return;
  let page = shown;
  try {
    page = await api(`/operations/${encodeURIComponent(shown.operation_id)}?limit=100`);
  } catch {
    // The counts are shown already; the reasons are a bonus.
  }
  const problems = page.jobs.filter((j) => j.outcome !== "done").slice(0, PROBLEMS_SHOWN);
  const items = problems.map((j) => {
    const li = document.createElement("li");
    li.dataset.jobId = j.job_id;
    li.textContent = `job ${j.job_id.slice(0, 8)}: ${j.outcome}${j.reason ? ` — ${j.reason}` : ""}`;
    return li;
  });
  if (total > problems.length) {
    const more = document.createElement("li");
    more.className = "muted";
    more.textContent = `and ${total - problems.length} more (GET /operations/${shown.operation_id})`;
    items.push(more);
  }
  $("operation-problems").replaceChildren(...items);
}

// -- viewers ---------------------------------------------------------------------------------

function viewerQuery() {
  const q = new URLSearchParams({ page: String(state.viewerPage), rowsPerPage: "10" });
  const search = $("viewer-search").value.trim();
  if (search) q.set("search", search);
  if ($("viewer-harness").value) q.set("harnessType", $("viewer-harness").value);
  if ($("viewer-system").value) q.set("systemClients", $("viewer-system").value);
  return q;
}

async function pollViewers() {
  const query = viewerQuery().toString();
  const answer = await api(`/api/cluster/viewers?${query}`, { bearer: true });
  // A poll that left before a click or a filter change answers for another page: drop it, or
  // a slow first page would paint over the second one just shown.
  if (query !== viewerQuery().toString()) return;
  const data = answer.data;
  state.viewerPages = data.totalPages;
  $("viewer-page").textContent = `page ${data.currentPage} of ${Math.max(1, data.totalPages)} · ${data.totalItems} viewer${data.totalItems === 1 ? "" : "s"}`;
  $("viewer-prev").disabled = !data.hasPrevious;
  $("viewer-next").disabled = !data.hasNext;
  const body = $("viewers-body");
  if (data.list.length === 0) {
    body.replaceChildren(emptyRow(8, "No viewers match."));
    return;
  }
  body.replaceChildren(
    ...data.list.map((v) => {
      const tr = document.createElement("tr");
      tr.dataset.viewerId = v.id;
      const client = [v.remoteAddress, v.countryCode, v.deviceType, v.osName, v.browserName].filter(Boolean).join(" · ");
      tr.append(
        cell(v.id),
        cell(v.harnessType),
        cell(v.state),
        cell(v.streamKey),
        cell(client),
        cell(`${Math.round(v.duration / 1000)} s`),
        cell(`${bytes(v.outBandwidth)}/s`),
        cell(`${v.healthGrade} (${v.healthScore})`),
      );
      return tr;
    }),
  );
}

let searchTimer = null;

function viewerFiltersChanged() {
  state.viewerPage = 1;
  refreshViewers();
}

// Read one feed now (after an action or a filter change) rather than at its next turn.
function refresh(name) {
  if (!state.key || (FEEDS[name].admin && state.admin !== true)) return;
  POLLERS[name]().then(
    () => {
      state.lastRun[name] = Date.now();
      panelError(name, null);
    },
    (error) => (isDown(error) || isRefused(error) ? failed(error) : panelError(name, error)),
  );
}

function refreshViewers() {
  refresh("viewers");
}

// -- throughput charts ------------------------------------------------------------------------

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(name, attributes, text) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attributes)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

// A bar chart of stacked series over the minutes: `series` is [[className, values], ...].
function drawBars(chart, points, series, format) {
  const width = 600;
  const height = 150;
  const top = 16;
  const bottom = 18;
  const totals = points.map((_, i) => series.reduce((sum, [, values]) => sum + values[i], 0));
  const max = Math.max(1, ...totals);
  const slot = width / Math.max(1, points.length);
  const scale = (height - top - bottom) / max;
  const shapes = [];
  points.forEach((p, i) => {
    let y = height - bottom;
    for (const [className, values] of series) {
      const h = values[i] * scale;
      if (h <= 0) continue;
      y -= h;
      const bar = svg("rect", { class: className, x: i * slot + slot * 0.1, y, width: Math.max(1, slot * 0.8), height: h });
      bar.append(svg("title", {}, `${new Date(p.minute).toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" })}: ${format(values[i])} ${className}`));
      shapes.push(bar);
    }
  });
  const first = points.length ? new Date(points[0].minute) : null;
  const last = points.length ? new Date(points[points.length - 1].minute) : null;
  const hm = (d) => d.toLocaleTimeString([], { hour12: false, hour: "2-digit", minute: "2-digit" });
  chart.replaceChildren(
    svg("line", { x1: 0, x2: width, y1: height - bottom, y2: height - bottom, stroke: "#c8ced8" }),
    svg("text", { x: 4, y: 12 }, `max ${format(max)}`),
    ...(first ? [svg("text", { x: 4, y: height - 4 }, hm(first)), svg("text", { x: width - 4, y: height - 4, "text-anchor": "end" }, hm(last))] : []),
    ...shapes,
  );
}

async function pollThroughput() {
  const minutes = $("throughput-minutes").value;
  const answer = await api(`/dashboard/throughput?minutes=${encodeURIComponent(minutes)}`);
  const points = answer.points;
  const completed = points.map((p) => p.completed);
  const failed = points.map((p) => p.failed);
  const sent = points.map((p) => p.bytes);
  const sum = (xs) => xs.reduce((a, b) => a + b, 0);
  drawBars($("jobs-chart"), points, [["completed", completed], ["failed", failed]], (n) => `${n} jobs`);
  drawBars($("bytes-chart"), points, [["bytes", sent]], bytes);
  $("throughput-totals").textContent =
    `Last ${answer.minutes} min: ${sum(completed)} completed, ${sum(failed)} failed, ${bytes(sum(sent))} stored.`;
}

// -- start -------------------------------------------------------------------------------------

function start() {
  state.pages.jobs = new Pager("jobs", "job", () => refresh("jobs"));
  state.pages.subscriptions = new Pager("subscriptions", "subscription", () => refresh("subscriptions"));
  state.pages.checks = new Pager("checks", "check", () => loadChecks());
  state.pages.archive = new Pager("archive", "item", () => refresh("archive"));
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    $("api-key").value = "";
    if (!key) {
      showBanner("error", "Paste an API key (sk_...) to connect.");
      return;
    }
    sessionStorage.setItem(KEY_STORAGE, key);
    connect(key);
  });
  $("forget-key").addEventListener("click", () => {
    disconnect();
    clearBanner();
  });
  $("submit-form").addEventListener("submit", submitJob);
  $("intake-toggle").addEventListener("click", toggleIntake);
  $("batch-toggle").addEventListener("click", batchAction);
  $("batch-close").addEventListener("click", closeBatch);
  $("throughput-minutes").addEventListener("change", () => refresh("throughput"));
  $("subscribe-form").addEventListener("submit", subscribe);
  $("checks-close").addEventListener("click", closeChecks);
  let archiveSearchTimer = null;
  $("archive-search").addEventListener("submit", (event) => event.preventDefault());
  $("archive-q").addEventListener("input", () => {
    clearTimeout(archiveSearchTimer);
    archiveSearchTimer = setTimeout(() => {
      state.pages.archive.reset();
      refresh("archive");
    }, 300);
  });
  $("viewer-search").addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(viewerFiltersChanged, 300);
  });
  readFilterHash();
  let jobSearchTimer = null;
  $("job-filters").addEventListener("submit", (event) => event.preventDefault());
  $("job-filters").addEventListener("input", (event) => {
    clearTimeout(jobSearchTimer);
    // Typing waits for a pause; a box ticked or a date picked applies at once.
    const typed = event.target.type === "search" || event.target.type === "text";
    jobSearchTimer = setTimeout(jobFiltersChanged, typed ? 300 : 0);
  });
  $("filter-group-clear").addEventListener("click", () => {
    setChip("filter-group", "");
    for (const tr of $("failures-body").children) tr.classList.remove("selected");
    jobFiltersChanged();
  });
  $("filter-subscription-clear").addEventListener("click", () => {
    setChip("filter-subscription", "");
    jobFiltersChanged();
  });
  $("filter-clear").addEventListener("click", () => showJobsOf(() => {}));
  $("jobs-limit").addEventListener("change", jobFiltersChanged);
  window.addEventListener("hashchange", () => {
    readFilterHash();
    jobFiltersChanged();
  });
  $("bulk-apply").addEventListener("click", () => {
    bulkAction($("bulk-action").value, actionFilter());
  });
  $("viewer-harness").addEventListener("change", viewerFiltersChanged);
  $("viewer-system").addEventListener("change", viewerFiltersChanged);
  $("viewer-prev").addEventListener("click", () => {
    state.viewerPage = Math.max(1, state.viewerPage - 1);
    refreshViewers();
  });
  $("viewer-next").addEventListener("click", () => {
    state.viewerPage += 1;
    refreshViewers();
  });
  // Poll only while the tab is visible: the interval is cleared when it is hidden.
  document.addEventListener("visibilitychange", () => (document.hidden ? stopPolling() : startPolling()));
  window.addEventListener("pagehide", stopPolling);
  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) connect(saved);
}

start();
