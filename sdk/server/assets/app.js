// The Cairn dashboard: a small single-page app over the HTTP API, with no dependencies
// and nothing fetched from outside the host. Views: overview, instances (filters kept in
// the URL, live), one instance (timeline, history, actions its viewer may take), the
// task inbox and one task (a form drawn from the decision's JSON Schema), and process
// maps mined from the histories (with BPMN and SVG downloads), reports (with CSV),
// schedules (pause, resume, run now), and batch actions over what the instance filters
// select.
"use strict";

const TOKEN_KEY = "cairn-token";
const main = document.getElementById("main");
let me = null;
let liveRefresh = null; // the current view's refresh, called when commits happen

// ------------------------------------------------------------------ helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    // Through the CSSOM, which the page's content security policy allows.
    else if (k === "style") el.style.cssText = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// `replaceChildren` would print a null as the text "null".
function fill(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

function fmtTime(ms) {
  if (!ms) return "—";
  const d = new Date(ms);
  const today = new Date();
  const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (d.toDateString() === today.toDateString()) return time;
  const date = d.toLocaleDateString(undefined, { month: "short", day: "numeric", year: d.getFullYear() === today.getFullYear() ? undefined : "numeric" });
  return `${date}, ${time}`;
}

function fmtDur(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
  const m = s / 60;
  if (m < 60) return `${m.toFixed(m < 10 ? 1 : 0)} min`;
  const hrs = m / 60;
  if (hrs < 48) return `${hrs.toFixed(1)} h`;
  return `${(hrs / 24).toFixed(1)} d`;
}

function badge(status) {
  return h("span", { class: `badge ${status}` }, status.replace(/_/g, " "));
}

function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

class ApiError extends Error {
  constructor(status, body) {
    super(body && body.message ? body.message : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
  }
}

async function api(method, path, body, extraHeaders) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  Object.assign(headers, extraHeaders || {});
  const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (response.status === 401) { signOut(); throw new ApiError(401, data); }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

function errorBox(err) {
  const code = err.code ? `${err.code}: ` : "";
  return h("div", { class: "error", role: "alert" }, code + err.message);
}

function setActive(page) {
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
}

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query] = raw.split("?");
  return { parts: path ? path.split("/").map(decodeURIComponent) : [], params: new URLSearchParams(query || "") };
}

function go(path, params) {
  const q = params && [...params].length ? `?${params}` : "";
  location.hash = `#/${path}${q}`;
}

// ------------------------------------------------------------------ sign-in

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  me = null;
  renderWho();
  renderLogin();
}

function renderWho() {
  const who = document.getElementById("who");
  fill(who);
  document.getElementById("nav").style.visibility = me ? "visible" : "hidden";
  if (!me) return;
  who.append(
    h("span", { "data-testid": "who" }, `${me.id}`, h("span", { class: "muted" }, me.roles.length ? ` · ${me.roles.join(", ")}` : "")),
    h("button", { onclick: signOut }, "Sign out"),
  );
}

function renderLogin(message) {
  setActive(null);
  liveRefresh = null;
  const input = h("input", { type: "password", id: "token", placeholder: "cairn_…", autocomplete: "off" });
  const form = h("form", {
    class: "card login",
    onsubmit: async (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, input.value.trim());
      try {
        me = await api("GET", "/api/v1/me");
        renderWho();
        route();
      } catch (err) {
        sessionStorage.removeItem(TOKEN_KEY);
        renderLogin("That token is not known to this host.");
      }
    },
  },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "Paste the access token your administrator gave you. The demo host prints one per role when it starts."),
    message ? h("div", { class: "error" }, message) : null,
    h("label", { for: "token" }, "Token"),
    input,
    h("button", { class: "primary", type: "submit" }, "Sign in"),
  );
  fill(main, form);
  input.focus();
}

// ------------------------------------------------------------------ live updates

let liveOn = false;
function liveBadge() {
  return h("span", { class: `live ${liveOn ? "on" : ""}`, id: "live" }, liveOn ? "live" : "connecting");
}

async function followCommits() {
  // Server-sent events over fetch, so the token travels in a header, not the URL.
  for (;;) {
    try {
      const token = sessionStorage.getItem(TOKEN_KEY);
      if (!token) { await new Promise((r) => setTimeout(r, 1000)); continue; }
      const response = await fetch("/api/v1/stream", { headers: { authorization: `Bearer ${token}` } });
      if (!response.ok || !response.body) throw new Error(`stream ${response.status}`);
      liveOn = true;
      const live = document.getElementById("live");
      if (live) { live.classList.add("on"); live.textContent = "live"; }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let at;
        while ((at = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, at);
          buffer = buffer.slice(at + 2);
          if (frame.includes("event: commit") && liveRefresh) liveRefresh();
        }
      }
    } catch (_) {
      // Reconnect below.
    }
    liveOn = false;
    const live = document.getElementById("live");
    if (live) { live.classList.remove("on"); live.textContent = "reconnecting"; }
    await new Promise((r) => setTimeout(r, 2000));
  }
}

// Coalesces refreshes: at most one in flight, one queued.
function throttled(fn) {
  let running = false, again = false;
  return async function run() {
    if (running) { again = true; return; }
    running = true;
    try { await fn(); } finally {
      running = false;
      if (again) { again = false; run(); }
    }
  };
}

// ------------------------------------------------------------------ overview

async function renderOverview() {
  setActive("overview");
  const box = h("div", {});
  fill(main, 
    h("div", { class: "row" }, h("div", { class: "grow" }, h("h1", {}, "Overview"), h("p", { class: "sub" }, "What is running, stuck or late on this host.")), liveBadge()),
    box,
  );
  const draw = async () => {
    let o;
    try { o = await api("GET", "/api/v1/overview"); } catch (err) { fill(box, errorBox(err)); return; }
    const t = o.totals;
    const stat = (n, label, cls, href) => h(href ? "a" : "div", { class: `stat ${cls || ""}`, href }, h("div", { class: "n" }, n.toLocaleString()), h("div", { class: "l" }, label));
    const types = o.by_type.length
      ? h("table", {},
        h("thead", {}, h("tr", {}, ["Type", "Running", "Completed", "Failed", "Terminated", "Parked"].map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
        h("tbody", {}, o.by_type.map((r) => h("tr", {},
          h("td", {}, h("a", { href: `#/instances?workflow_type=${encodeURIComponent(r.workflow_type)}` }, r.workflow_type), " ", h("a", { class: "chip", href: `#/maps/${encodeURIComponent(r.workflow_type)}` }, "map")),
          ...["running", "completed", "failed", "terminated", "parked"].map((s) => h("td", { class: "num" },
            r[s] ? h("a", { href: `#/instances?workflow_type=${encodeURIComponent(r.workflow_type)}&status=${s}` }, r[s].toLocaleString()) : h("span", { class: "muted" }, "0")))))))
      : h("div", { class: "empty" }, "No instances yet. Start one through the API or your host program.");
    const parked = o.parked.length
      ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Instance"), h("th", {}, "Type"), h("th", {}, "Reason"))),
        h("tbody", {}, o.parked.map((p) => h("tr", {}, h("td", {}, h("a", { href: `#/instances/${encodeURIComponent(p.id)}` }, p.id)), h("td", {}, p.workflow_type), h("td", {}, h("code", {}, p.code), " ", p.message)))))
      : h("div", { class: "empty" }, "Nothing parked.");
    fill(box, 
      h("div", { class: "stats" },
        stat(t.running, "running", "", "#/instances?status=running"),
        stat(t.completed, "completed", "", "#/instances?status=completed"),
        stat(t.failed, "failed", t.failed ? "bad" : "", "#/instances?status=failed"),
        stat(t.parked, "parked", t.parked ? "warn" : "", "#/instances?status=parked"),
        stat(o.open_tasks, "open tasks", "", "#/tasks"),
        stat(o.overdue_tasks, "overdue tasks", o.overdue_tasks ? "warn" : ""),
      ),
      h("div", { class: "row" },
        h("div", { class: "card grow wide" }, h("h2", {}, "Instances by type"), types),
        h("div", { class: "card grow narrow" }, h("h2", {}, "Throughput, last hour"), throughputChart(o.throughput)),
      ),
      h("div", { class: "card" }, h("h2", {}, "Step latency ", h("span", { class: "muted" }, "(recent attempts on this host)")),
        o.step_latency.length
          ? h("table", { "data-testid": "step-latency" },
            h("thead", {}, h("tr", {}, ["Type", "Step", "Attempts", "Failed", "p50", "p95", "p99"].map((c, i) => h("th", { class: i > 1 ? "num" : "" }, c)))),
            h("tbody", {}, o.step_latency.slice(0, 20).map((l) => h("tr", {},
              h("td", {}, l.workflow_type), h("td", {}, l.activity),
              h("td", { class: "num" }, l.attempts.toLocaleString()),
              h("td", { class: `num ${l.failed ? "bad" : ""}` }, l.failed.toLocaleString()),
              h("td", { class: "num" }, fmtDur(l.p50_ms)), h("td", { class: "num" }, fmtDur(l.p95_ms)), h("td", { class: "num" }, fmtDur(l.p99_ms))))))
          : h("div", { class: "empty" }, "No activity has run on this host since it started.")),
      h("div", { class: "card" }, h("h2", {}, "Parked instances"), parked),
    );
  };
  liveRefresh = throttled(draw);
  await draw();
}

function svgEl(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const timeOfDay = (ms) => new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });

function throughputChart(series, label = timeOfDay, empty = "No activity in the last hour.") {
  if (!series.length || series.every((b) => !b.started && !b.completed && !b.failed)) {
    return h("div", { class: "empty" }, empty);
  }
  const W = 560, H = 170, left = 30, bottom = 22, top = 22;
  const max = Math.max(1, ...series.map((b) => Math.max(b.started, b.completed, b.failed)));
  const slot = (W - left) / series.length;
  const bar = Math.max(2, (slot - 6) / 3);
  const y = (v) => H - bottom - (v * (H - bottom - top)) / max;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "instances started, completed and failed per period" });
  svg.append(svgEl("line", { x1: left, x2: W, y1: H - bottom, y2: H - bottom, stroke: "#d1d5db" }));
  svg.append(svgEl("text", { x: 0, y: top + 4, "font-size": 11, fill: "#6b7280" }, String(max)));
  svg.append(svgEl("text", { x: 0, y: H - bottom, "font-size": 11, fill: "#6b7280" }, "0"));
  const colors = { started: "#2563eb", completed: "#15803d", failed: "#b91c1c" };
  series.forEach((b, i) => {
    ["started", "completed", "failed"].forEach((key, k) => {
      if (!b[key]) return;
      const x = left + i * slot + 3 + k * bar;
      const rect = svgEl("rect", { x, y: y(b[key]), width: bar - 1, height: H - bottom - y(b[key]), fill: colors[key], rx: 1 });
      rect.append(svgEl("title", {}, `${b[key]} ${key}`));
      svg.append(rect);
    });
    const every = Math.max(1, Math.ceil(series.length / 6));
    if (i % every === 0) {
      svg.append(svgEl("text", { x: left + i * slot + 2, y: H - 6, "font-size": 11, fill: "#6b7280" }, label(b.at_ms)));
    }
  });
  let x = left;
  for (const key of ["started", "completed", "failed"]) {
    svg.append(svgEl("rect", { x, y: 4, width: 10, height: 10, fill: colors[key], rx: 2 }));
    svg.append(svgEl("text", { x: x + 14, y: 13, "font-size": 11, fill: "#374151" }, key));
    x += 86;
  }
  return svg;
}

// ------------------------------------------------------------------ instances

const STATUSES = ["running", "completed", "failed", "terminated", "parked", "continued_as_new"];

async function renderInstances(params) {
  setActive("instances");
  const filters = {
    workflow_type: params.get("workflow_type") || "",
    status: params.get("status") || "",
    attribute: params.get("attribute") || "",
    id: params.get("id") || "",
    waiting: params.get("waiting") || "",
  };
  const cursor = params.get("cursor") || "";
  const apply = (changes) => {
    const next = new URLSearchParams();
    const merged = { ...filters, ...changes };
    for (const [k, v] of Object.entries(merged)) if (v) next.set(k, v);
    go("instances", next);
  };
  const typeInput = h("input", { value: filters.workflow_type, placeholder: "any", name: "workflow_type", list: "types" });
  const statusSelect = h("select", { name: "status" }, h("option", { value: "" }, "any"), STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s.replace(/_/g, " "))));
  const idInput = h("input", { value: filters.id, placeholder: "contains…", name: "id" });
  const WAITS = [["", "anything"], ["person", "a person"], ["overdue", "an overdue task"], ["timer", "a timer"], ["signal", "a signal (with a deadline)"], ["child", "a child workflow"], ["retrying", "a retry"]];
  const waitingSelect = h("select", { name: "waiting" }, WAITS.map(([v, label]) => h("option", { value: v, selected: v === filters.waiting }, label)));
  const form = h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); apply({ workflow_type: typeInput.value.trim(), status: statusSelect.value, id: idInput.value.trim(), waiting: waitingSelect.value }); } },
    h("label", {}, "Workflow type", typeInput),
    h("label", {}, "Status", statusSelect),
    h("label", {}, "Id", idInput),
    h("label", {}, "Waiting on", waitingSelect),
    filters.attribute ? h("label", {}, "Attribute", h("span", { class: "chip" }, filters.attribute, " ", h("a", { href: "#", onclick: (e) => { e.preventDefault(); apply({ attribute: "" }); } }, "×"))) : null,
    h("button", { class: "primary", type: "submit" }, "Apply"),
    h("button", { type: "button", onclick: () => go("instances") }, "Clear"),
  );
  const table = h("div", {});
  const batch = h("details", { class: "card batch-card" }, h("summary", {}, "Batch action on these instances…"), batchPanel(filters));
  fill(main, 
    h("div", { class: "row" }, h("div", { class: "grow" }, h("h1", {}, "Instances"), h("p", { class: "sub" }, "Filters are kept in the address: share it, bookmark it.")), liveBadge()),
    h("div", { class: "card" }, viewsBar(filters), form, table),
    batch,
  );
  const draw = async () => {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(filters)) if (v) q.set(k === "id" ? "id_contains" : k, v);
    if (cursor) q.set("cursor", cursor);
    q.set("limit", "50");
    let page;
    try {
      page = await api("GET", `/api/v1/instances?${q}`);
      // A page examines a bounded part of the index, so a filter that keeps few rows
      // (parked, say) can give an empty page that is not the end: look a little further.
      for (let hops = 0; !page.instances.length && page.next && hops < 10; hops++) {
        q.set("cursor", page.next);
        page = await api("GET", `/api/v1/instances?${q}`);
      }
    } catch (err) { fill(table, errorBox(err)); return; }
    const next = page.next ? new URLSearchParams([...Object.entries(filters).filter(([, v]) => v), ["cursor", page.next]]) : null;
    if (!page.instances.length) {
      fill(table, next
        ? h("div", { class: "empty" }, "None matched among the instances looked at so far. ",
            h("button", { onclick: () => go("instances", next) }, "Look further →"))
        : h("div", { class: "empty" }, cursor ? "No more instances." : "No instance matches these filters."));
      return;
    }
    const attrChips = (attrs) => Object.entries(attrs).map(([k, v]) =>
      h("a", { class: "chip", href: "#", title: "List the instances that share this value", onclick: (e) => { e.preventDefault(); apply({ attribute: `${k}:${JSON.stringify(v)}` }); } }, `${k}: ${v}`));
    fill(table, 
      h("table", { "data-testid": "instances" },
        h("thead", {}, h("tr", {}, h("th", {}, "Id"), h("th", {}, "Type"), h("th", {}, "Status"), h("th", { class: "hide-narrow" }, "Attributes"), h("th", { class: "hide-narrow" }, "Started"), h("th", {}, "Updated"))),
        h("tbody", {}, page.instances.map((i) => h("tr", { "data-id": i.id },
          h("td", { class: "id" }, h("a", { href: `#/instances/${encodeURIComponent(i.id)}` }, i.id)),
          h("td", {}, i.workflow_type),
          h("td", { "data-status": i.status }, badge(i.status)),
          h("td", { class: "hide-narrow" }, attrChips(i.attributes)),
          h("td", { class: "hide-narrow muted when" }, fmtTime(i.created_at_ms)),
          h("td", { class: "muted when" }, fmtTime(i.updated_at_ms)))))),
      h("div", { class: "actions", style: "margin-top:12px" },
        cursor ? h("button", { onclick: () => history.back() }, "← Previous") : null,
        next ? h("button", { onclick: () => go("instances", next) }, "Next →") : null),
    );
  };
  liveRefresh = throttled(draw);
  await draw();
}

// A batch action over what the list's filters select: count first, then apply, then
// follow its progress. Only running (and parked) instances are acted on.
function batchPanel(filters) {
  const body = { workflow_type: filters.workflow_type || null, attribute: filters.attribute || null, id_contains: filters.id || null, parked_only: filters.status === "parked", waiting: filters.waiting || null };
  const panel = h("div", { class: "batch", "data-testid": "batch" });
  if (filters.status && !["running", "parked"].includes(filters.status)) {
    fill(panel, h("p", { class: "muted" }, "Batch actions apply to running instances; this list shows none."));
    return panel;
  }
  const action = h("select", { id: "batch-action" }, ["cancel", "terminate", "signal"].map((a) => h("option", { value: a }, a)));
  const signal = h("input", { id: "batch-signal", placeholder: "signal name" });
  const signalBody = h("input", { id: "batch-body", placeholder: "JSON body, e.g. \"go\"" });
  const reason = h("input", { id: "batch-reason", placeholder: "why (recorded in every history)", size: 36 });
  const out = h("div", { "data-testid": "batch-result" });
  const signalFields = h("span", { class: "filters", style: "display:none;margin:0" }, h("label", {}, "Signal", signal), h("label", {}, "Body", signalBody));
  action.addEventListener("change", () => { signalFields.style.display = action.value === "signal" ? "flex" : "none"; fill(out); });
  const request = (dryRun) => {
    const r = { action: action.value, filter: body, reason: reason.value.trim(), dry_run: dryRun };
    if (action.value === "signal") {
      r.signal = signal.value.trim();
      if (signalBody.value.trim()) r.body = JSON.parse(signalBody.value);
    }
    return r;
  };
  const follow = async (id) => {
    for (;;) {
      let b;
      try { b = await api("GET", `/api/v1/batches/${encodeURIComponent(id)}`); } catch (err) { fill(out, errorBox(err)); return; }
      const total = Math.max(b.matched, 1);
      fill(out,
        h("div", { class: b.failed ? "error" : b.finished ? "ok" : "note" },
          `Batch ${b.id}: ${b.action} ${b.finished ? "finished" : "running"} — ${b.done} done, ${b.skipped} skipped, ${b.failed} failed of ${b.matched}.`,
          b.errors.length ? h("ul", {}, b.errors.map((e) => h("li", {}, e))) : null),
        h("div", { class: "progress" }, h("span", { style: `width:${Math.round(((b.done + b.skipped + b.failed) / total) * 100)}%` })));
      if (b.finished) { if (liveRefresh) liveRefresh(); return; }
      await new Promise((resolve) => setTimeout(resolve, 500));
    }
  };
  const count = async () => {
    let r;
    try { r = await api("POST", "/api/v1/batches", request(true)); } catch (err) { fill(out, errorBox(err)); return; }
    if (!r.matched) { fill(out, h("p", { class: "muted" }, "No running instance you may act on matches these filters.")); return; }
    fill(out,
      h("p", {}, h("strong", { "data-testid": "batch-count" }, r.matched.toLocaleString()), ` running instance${r.matched === 1 ? "" : "s"} match. This ${action.value}s every one of them and records your name and the reason in each history.`),
      h("button", { class: "danger", "data-testid": "batch-apply", onclick: async (e) => {
        e.target.disabled = true;
        let started;
        try { started = await api("POST", "/api/v1/batches", request(false)); } catch (err) { fill(out, errorBox(err)); return; }
        follow(started.id);
      } }, `${action.value[0].toUpperCase()}${action.value.slice(1)} ${r.matched.toLocaleString()} instance${r.matched === 1 ? "" : "s"}`));
  };
  fill(panel,
    h("form", { class: "filters", onsubmit: (e) => { e.preventDefault(); count(); } },
      h("label", {}, "Batch action", action), signalFields, h("label", {}, "Reason", reason),
      h("button", { type: "submit", "data-testid": "batch-count-button" }, "Count matching")),
    out);
  return panel;
}

// Saved views: named instance-list queries, the viewer's own and those shared with
// their roles; saving offers the viewer's roles to share with.
function viewsBar(filters) {
  const bar = h("div", { class: "views", "data-testid": "views" });
  const current = new URLSearchParams(Object.entries(filters).filter(([, v]) => v)).toString();
  const form = h("span", {});
  const showSave = () => {
    const name = h("input", { id: "view-name", placeholder: "name of this view", maxlength: 80 });
    const roles = (me.roles || []).map((r) => h("label", { class: "check" }, h("input", { type: "checkbox", value: r }), ` ${r}`));
    const status = h("span", {});
    fill(form, h("form", { class: "filters inline", onsubmit: async (e) => {
      e.preventDefault();
      const shared = roles.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value);
      try { await api("POST", "/api/v1/views", { name: name.value, query: current, roles: shared }); } catch (err) { fill(status, errorBox(err)); return; }
      draw();
    } }, name, roles.length ? h("span", { class: "muted" }, "share with") : null, roles, h("button", { class: "primary", type: "submit", "data-testid": "save-view-submit" }, "Save"), status));
    name.focus();
  };
  const draw = async () => {
    let views = [];
    try { views = await api("GET", "/api/v1/views"); } catch (err) { fill(bar, errorBox(err)); return; }
    fill(form);
    fill(bar,
      h("span", { class: "muted" }, "Saved views:"),
      views.length
        ? views.map((v) => h("span", { class: `chip${v.query === current ? " on" : ""}`, "data-view": v.name },
          h("a", { href: `#/instances?${v.query}`, title: v.roles.length ? `shared with ${v.roles.join(", ")} by ${v.owner}` : "only you" }, v.name),
          v.owner === me.id ? h("a", { href: "#", class: "x", title: "Delete this view", onclick: async (e) => {
            e.preventDefault();
            try { await api("DELETE", `/api/v1/views/${encodeURIComponent(v.id)}`); } catch (err) { fill(form, errorBox(err)); return; }
            draw();
          } }, "×") : null))
        : h("span", { class: "muted" }, "none yet"),
      current ? h("button", { type: "button", "data-testid": "save-view", onclick: showSave }, "Save this view…") : null,
      form);
  };
  draw();
  return bar;
}

// ------------------------------------------------------------------ one instance

function timelineOf(events) {
  // One row per step: from its first event to its outcome; waits, failures and tasks
  // get their own colour. Events without a step (signals, cancellation) are marks.
  const steps = new Map();
  const start = events.length ? events[0].recorded_at_ms : 0;
  const end = events.length ? events[events.length - 1].recorded_at_ms : 0;
  // A step records nothing when it begins (an activity records its outcome): it began
  // when the run recorded what came before it.
  let previous = start;
  for (const e of events) {
    const step = e.body && e.body.step;
    const at = e.recorded_at_ms;
    if (step === undefined || step === null || e.event === "StepAbandoned") { previous = at; continue; }
    let s = steps.get(step);
    if (!s) {
      s = { step, from: Math.min(previous, at), to: at, name: "", kind: "step", attempts: 0, failed: false, done: false };
      steps.set(step, s);
    }
    previous = at;
    s.to = e.recorded_at_ms;
    const b = e.body;
    if (b.activity) { s.name = b.activity; s.kind = "activity"; }
    if (e.event === "ActivityAttemptFailed") s.attempts += 1;
    if (e.event === "ActivityFailed") { s.failed = true; }
    if (e.event === "TimerStarted") { s.name = "sleep"; s.kind = "wait"; }
    if (e.event.startsWith("Signal")) { s.name = `signal ${b.name}`; s.kind = "wait"; }
    if (e.event === "TaskCreated") { s.name = `task ${b.task && b.task.name ? b.task.name : ""}`; s.kind = "task"; }
    if (e.event === "ChildStarted") { s.name = `child ${b.child_id}`; s.kind = "wait"; }
    if (e.event === "SideEffect") { s.name = b.label; }
    if (e.event === "Notified") { s.name = `notify ${b.topic}`; }
    if (e.event === "StatePublished") { s.name = `publish ${b.name}`; }
    if (e.event === "UpdateAnswered") { s.name = `answer ${b.name}`; }
    if (e.event === "AttributesSet") { s.name = "attributes"; s.kind = "marker"; }
    if (e.event === "PatchMarker") { s.name = `patch ${b.patch_id}`; }
    if (!s.name) s.name = e.event;
  }
  const shown = [...steps.values()].filter((s) => s.kind !== "marker");
  return { start, end, steps: shown.sort((a, b) => a.from - b.from || a.step - b.step) };
}

function renderTimeline(events) {
  const t = timelineOf(events);
  if (!t.steps.length) return h("div", { class: "empty" }, "No steps recorded yet.");
  const span = Math.max(1, t.end - t.start);
  return h("div", { class: "timeline", "data-testid": "timeline" }, t.steps.map((s) => {
    const left = ((s.from - t.start) / span) * 100;
    const width = Math.max(0.4, ((s.to - s.from) / span) * 100);
    const cls = s.failed ? "fail" : s.kind === "wait" ? "wait" : s.kind === "task" ? "task" : "";
    return h("div", { class: "tl-row" },
      h("div", { class: "tl-name", title: s.name }, h("span", { class: "muted" }, `${s.step} `), s.name, s.attempts ? h("span", { class: "badge failed", style: "margin-left:6px" }, `${s.attempts} retr${s.attempts > 1 ? "ies" : "y"}`) : null),
      h("div", { class: "tl-track" }, h("div", { class: `tl-bar ${cls}`, style: `left:${left}%;width:${width}%` })),
      h("div", { class: "tl-dur" }, fmtDur(s.to - s.from)));
  }));
}

async function renderInstance(id) {
  setActive("instances");
  const box = h("div", {});
  fill(main, h("p", {}, h("a", { href: "#/instances" }, "← Instances")), box);
  const draw = async () => {
    let inst, events, docs;
    try {
      [inst, events, docs] = await Promise.all([
        api("GET", `/api/v1/instances/${encodeURIComponent(id)}`),
        api("GET", `/api/v1/instances/${encodeURIComponent(id)}/history`),
        api("GET", `/api/v1/instances/${encodeURIComponent(id)}/documents`)]);
    } catch (err) { fill(box, errorBox(err)); return; }
    const docFeedback = h("div", {});
    const documents = h("div", { class: "card" }, h("h2", {}, "Documents"), docFeedback,
      docs.length
        ? h("table", { "data-testid": "documents" }, h("thead", {}, h("tr", {}, h("th", {}, "Name"), h("th", { class: "num" }, "Version"), h("th", {}, "Type"), h("th", { class: "num" }, "Size"), h("th", { class: "hide-narrow" }, "SHA-256"), h("th", {}, ""))),
          h("tbody", {}, docs.slice().reverse().map((d) => h("tr", {},
            h("td", {}, d.name), h("td", { class: "num" }, d.version), h("td", {}, d.content_type),
            h("td", { class: "num" }, d.bytes.toLocaleString()), h("td", { class: "hide-narrow mono muted" }, `${d.sha256.slice(0, 16)}…`),
            h("td", {}, h("button", { onclick: () => download(`/api/v1/instances/${encodeURIComponent(id)}/documents/${encodeURIComponent(d.name)}?version=${d.version}`, d.name).catch((err) => fill(docFeedback, errorBox(err))) }, "Download"))))))
        : h("div", { class: "empty" }, "No documents attached."));
    const feedback = h("div", {});
    const act = async (what, fn) => {
      try { await fn(); fill(feedback, h("div", { class: "ok" }, `${what} recorded.`)); draw(); } catch (err) { fill(feedback, errorBox(err)); }
    };
    const allowed = new Set(inst.allowed_actions || []);
    const running = inst.status === "running" || inst.status === "parked";
    const signalName = h("input", { placeholder: "signal name" });
    const signalBody = h("input", { placeholder: "JSON body, e.g. true", class: "mono" });
    const actions = running && (allowed.has("signal") || allowed.has("cancel") || allowed.has("terminate"))
      ? h("div", { class: "card" }, h("h2", {}, "Actions"), feedback,
        allowed.has("signal") ? h("form", { class: "filters", onsubmit: (e) => {
          e.preventDefault();
          let body;
          try { body = JSON.parse(signalBody.value || "null"); } catch (_) { fill(feedback, h("div", { class: "error" }, "The body is not JSON.")); return; }
          act("The signal", () => api("POST", `/api/v1/instances/${encodeURIComponent(id)}/signals/${encodeURIComponent(signalName.value)}`, body));
        } }, h("label", {}, "Signal", signalName), h("label", {}, "Body", signalBody), h("button", { type: "submit" }, "Send")) : null,
        h("div", { class: "actions" },
          allowed.has("cancel") ? h("button", { onclick: () => { const reason = prompt("Why cancel?"); if (reason) act("The cancellation", () => api("POST", `/api/v1/instances/${encodeURIComponent(id)}/cancel`, { reason })); } }, "Cancel…") : null,
          allowed.has("terminate") ? h("button", { class: "danger", onclick: () => { const reason = prompt("Why terminate? No more workflow code will run."); if (reason) act("The termination", () => api("POST", `/api/v1/instances/${encodeURIComponent(id)}/terminate`, { reason })); } }, "Terminate…") : null))
      : null;
    const attrs = Object.entries(inst.attributes);
    fill(box, 
      h("div", { class: "row" }, h("div", { class: "grow" }, h("h1", {}, inst.id, " ", badge(inst.status)), h("p", { class: "sub" }, inst.workflow_type)), liveBadge()),
      inst.parked ? h("div", { class: "error" }, h("strong", {}, "Parked: "), h("code", {}, inst.parked.code), " ", inst.parked.message) : null,
      h("div", { class: "row" },
        h("div", { class: "card grow" }, h("h2", {}, "Details"), h("dl", { class: "kv" },
          h("dt", {}, "Started"), h("dd", {}, fmtTime(inst.created_at_ms)),
          h("dt", {}, "Updated"), h("dd", {}, fmtTime(inst.updated_at_ms)),
          h("dt", {}, "Events"), h("dd", {}, inst.events),
          h("dt", {}, "Attributes"), h("dd", {}, attrs.length ? attrs.map(([k, v]) => h("a", { class: "chip", href: `#/instances?attribute=${encodeURIComponent(`${k}:${JSON.stringify(v)}`)}` }, `${k}: ${v}`)) : h("span", { class: "muted" }, "none")))),
        actions ? h("div", { class: "grow" }, actions) : null),
      h("div", { class: "card" }, h("h2", {}, "Timeline"), renderTimeline(events)),
      documents,
      h("div", { class: "card" }, h("h2", {}, "History"),
        h("table", { class: "events" }, h("thead", {}, h("tr", {}, h("th", {}, "Seq"), h("th", {}, "Event"), h("th", { class: "hide-narrow" }, "When"), h("th", {}, "By"), h("th", {}, "Details"))),
          h("tbody", {}, events.map((e) => h("tr", {},
            h("td", {}, e.seq), h("td", {}, e.event), h("td", { class: "hide-narrow muted" }, fmtTime(e.recorded_at_ms)),
            h("td", {}, e.actor ? e.actor.id : h("span", { class: "muted" }, "—")), h("td", {}, json(e.body))))))),
    );
  };
  liveRefresh = throttled(draw);
  await draw();
}

// ------------------------------------------------------------------ tasks

async function renderTasks() {
  setActive("tasks");
  const box = h("div", {});
  fill(main, 
    h("div", { class: "row" }, h("div", { class: "grow" }, h("h1", {}, "Tasks"), h("p", { class: "sub" }, "What you hold, and what you may claim by name or role.")), liveBadge()),
    h("div", { class: "card" }, box),
  );
  const draw = async () => {
    let page;
    try { page = await api("GET", "/api/v1/tasks?limit=100"); } catch (err) { fill(box, errorBox(err)); return; }
    if (!page.tasks.length) { fill(box, h("div", { class: "empty" }, "Your inbox is empty.")); return; }
    fill(box, h("table", { "data-testid": "tasks" },
      h("thead", {}, h("tr", {}, h("th", {}, "Task"), h("th", {}, "Instance"), h("th", {}, "Holder"), h("th", { class: "hide-narrow" }, "Offered to"), h("th", {}, "Due"))),
      h("tbody", {}, page.tasks.map((t) => h("tr", {},
        h("td", {}, h("a", { href: `#/tasks/${encodeURIComponent(t.instance)}/${t.step}` }, t.title || t.kind), t.overdue ? h("span", { class: "badge overdue", style: "margin-left:6px" }, "overdue") : null, t.escalations ? h("span", { class: "badge parked", style: "margin-left:6px" }, `escalated ×${t.escalations}`) : null),
        h("td", {}, h("a", { href: `#/instances/${encodeURIComponent(t.instance)}` }, t.instance)),
        h("td", {}, t.assignee || h("span", { class: "muted" }, "unclaimed")),
        h("td", { class: "hide-narrow" }, [...t.candidates.roles.map((r) => h("span", { class: "chip" }, r)), ...t.candidates.users.map((u) => h("span", { class: "chip" }, `@${u}`))]),
        h("td", { class: "muted" }, t.due_at_ms ? fmtTime(t.due_at_ms) : "—"))))));
  };
  liveRefresh = throttled(draw);
  await draw();
}

// A form for a JSON Schema object: booleans, strings (enums as selects), numbers and
// integers get their own inputs; anything else is edited as JSON.
function schemaForm(schema) {
  const root = resolve(schema, schema);
  const fields = [];
  const required = new Set(root.required || []);
  const props = root.properties || {};
  const container = h("div", {});
  for (const [name, raw] of Object.entries(props)) {
    const prop = resolve(schema, raw);
    const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== "null") : prop.type;
    const id = `field-${name}`;
    let input, read;
    if (prop.enum) {
      input = h("select", { id }, h("option", { value: "" }, "choose…"), prop.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))));
      read = () => (input.value ? JSON.parse(input.value) : undefined);
    } else if (type === "boolean") {
      input = h("select", { id }, h("option", { value: "" }, "choose…"), h("option", { value: "true" }, "Yes"), h("option", { value: "false" }, "No"));
      read = () => (input.value === "" ? undefined : input.value === "true");
    } else if (type === "integer" || type === "number") {
      input = h("input", { id, type: "number", step: type === "integer" ? "1" : "any" });
      read = () => (input.value === "" ? undefined : Number(input.value));
    } else if (type === "string") {
      input = (prop.maxLength && prop.maxLength <= 80) ? h("input", { id }) : h("textarea", { id, rows: 3 });
      read = () => (input.value === "" && !required.has(name) ? undefined : input.value);
    } else {
      input = h("textarea", { id, class: "mono", rows: 3, placeholder: "JSON" });
      read = () => { if (!input.value.trim()) return undefined; return JSON.parse(input.value); };
    }
    const err = h("div", { class: "field-error", "data-error-for": name });
    const field = h("div", { class: "form-field", "data-field": name },
      h("label", { for: id }, prop.title || name, required.has(name) ? " *" : ""),
      input, prop.description ? h("div", { class: "hint" }, prop.description) : null, err);
    fields.push({ name, read, field, err });
    container.append(field);
  }
  return {
    element: container,
    read() {
      const value = {};
      for (const f of fields) {
        f.field.classList.remove("invalid"); f.err.textContent = "";
        let v;
        try { v = f.read(); } catch (_) { f.field.classList.add("invalid"); f.err.textContent = "Not valid JSON."; throw new Error("invalid"); }
        if (v !== undefined) value[f.name] = v;
      }
      return value;
    },
    showErrors(message) {
      // The server names each problem with where it is ("at `/approve`: ...").
      let placed = false;
      for (const f of fields) {
        const marks = [`/${f.name}\``, `"${f.name}" is a required property`];
        if (marks.some((m) => message.includes(m))) {
          f.field.classList.add("invalid");
          const part = message.split("; ").find((p) => marks.some((m) => p.includes(m))) || message;
          f.err.textContent = part
            .replace(/^\[CAIRN-E\d+\][^:]*: /, "")
            .replace(/\. The task stays open$/, "")
            .replace(/^".*" is a required property$/, "Required.")
            .replace(/^at `[^`]*`: /, "");
          placed = true;
        }
      }
      return placed;
    },
  };
}

// A flat object as a definition list; anything deeper as JSON.
function caseData(value) {
  if (!value || typeof value !== "object" || Array.isArray(value) || Object.values(value).some((v) => v && typeof v === "object")) return json(value);
  return h("dl", { class: "kv" }, Object.entries(value).flatMap(([k, v]) => [h("dt", {}, k.replace(/_/g, " ")), h("dd", {}, String(v))]));
}

function resolve(root, schema) {
  if (schema && schema.$ref && schema.$ref.startsWith("#/")) {
    return schema.$ref.slice(2).split("/").reduce((s, k) => (s ? s[k] : undefined), root) || {};
  }
  return schema || {};
}

async function renderTask(instance, step) {
  setActive("tasks");
  const box = h("div", {});
  fill(main, h("p", {}, h("a", { href: "#/tasks" }, "← Tasks")), box);
  const path = `/api/v1/tasks/${encodeURIComponent(instance)}/${step}`;
  const draw = async (notice) => {
    let task;
    try { task = await api("GET", path); } catch (err) { fill(box, errorBox(err)); return; }
    const feedback = h("div", {}, notice || null);
    const mine = task.assignee === me.id;
    const open = task.status === "open";
    const form = schemaForm(task.decision_schema || {});
    const complete = async (e) => {
      e.preventDefault();
      let decision;
      try { decision = form.read(); } catch (_) { return; }
      try {
        await api("POST", `${path}/complete`, { decision });
        draw(h("div", { class: "ok" }, "Decision recorded; the process goes on."));
      } catch (err) {
        const placed = err.code === "CAIRN-E0024" && form.showErrors(err.message);
        fill(feedback, placed ? h("div", { class: "error", role: "alert" }, "Some answers need attention.") : errorBox(err));
      }
    };
    const act = async (what, verb) => {
      try { await api("POST", `${path}/${verb}`); draw(h("div", { class: "ok" }, `${what}.`)); } catch (err) { fill(feedback, errorBox(err)); }
    };
    fill(box, 
      h("h1", {}, task.title || task.kind, " ", badge(task.status)),
      h("p", { class: "sub" }, h("a", { href: `#/instances/${encodeURIComponent(task.instance)}` }, task.instance), ` · ${task.workflow_type} · ${task.kind}`),
      feedback,
      h("div", { class: "row" },
        h("div", { class: "card grow" },
          h("h2", {}, "Case"),
          task.description ? h("p", {}, task.description) : null,
          caseData(task.input),
          h("dl", { class: "kv", style: "margin-top:12px" },
            h("dt", {}, "Holder"), h("dd", {}, task.assignee || "unclaimed"),
            h("dt", {}, "Offered to"), h("dd", {}, [...task.candidates.roles.map((r) => h("span", { class: "chip" }, r)), ...task.candidates.users.map((u) => h("span", { class: "chip" }, `@${u}`))]),
            h("dt", {}, "Priority"), h("dd", {}, task.priority),
            h("dt", {}, "Due"), h("dd", {}, task.due_at_ms ? fmtTime(task.due_at_ms) : "—", task.overdue ? h("span", { class: "badge overdue", style: "margin-left:6px" }, "overdue") : null),
            h("dt", {}, "Escalations"), h("dd", {}, task.escalations)),
          task.comments.length ? h("div", { style: "margin-top:12px" }, h("h2", {}, "Comments"), task.comments.map((c) => h("p", {}, h("strong", {}, c.by), h("span", { class: "muted" }, ` ${fmtTime(c.at_ms)}: `), c.text))) : null),
        h("div", { class: "card grow" },
          h("h2", {}, open ? "Decision" : "Decided"),
          open
            ? (mine
              ? h("form", { onsubmit: complete, "data-testid": "decision-form" }, form.element, h("div", { class: "actions" }, h("button", { class: "primary", type: "submit" }, "Complete"), h("button", { type: "button", onclick: () => act("Released", "release") }, "Release")))
              : h("div", {}, h("p", { class: "muted" }, task.assignee ? `Held by ${task.assignee}.` : "Claim it to decide."), task.assignee ? null : h("button", { class: "primary", onclick: () => act("Claimed", "claim") }, "Claim")))
            : h("div", {}, task.decided_by ? h("p", {}, "By ", h("strong", {}, task.decided_by)) : null, task.decision ? json(task.decision) : null))),
    );
  };
  liveRefresh = null;
  await draw();
}

// ------------------------------------------------------------------ process maps

async function apiRaw(path) {
  const response = await fetch(path, { headers: { authorization: `Bearer ${sessionStorage.getItem(TOKEN_KEY) || ""}` } });
  if (response.status === 401) { signOut(); throw new ApiError(401, null); }
  if (!response.ok) {
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    throw new ApiError(response.status, data);
  }
  return response;
}

async function apiText(path) {
  return (await apiRaw(path)).text();
}

// Downloads through the API (the token goes in a header, which a plain link cannot send).
async function download(path, name, type) {
  const blob = await (await apiRaw(path)).blob();
  const url = URL.createObjectURL(type ? new Blob([blob], { type }) : blob);
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

const PERIODS = [["1h", "Last hour", 3600e3], ["24h", "Last 24 hours", 86400e3], ["7d", "Last 7 days", 7 * 86400e3], ["30d", "Last 30 days", 30 * 86400e3], ["all", "All time", 0]];

async function renderMap(type, params) {
  setActive("maps");
  let types = [];
  try { types = (await api("GET", "/api/v1/overview")).by_type.map((r) => r.workflow_type); } catch (err) { fill(main, errorBox(err)); return; }
  if (!type) {
    if (!types.length) {
      fill(main, h("h1", {}, "Process maps"), h("div", { class: "card empty" }, "No instances yet: a map is mined from recorded histories."));
      return;
    }
    go(`maps/${encodeURIComponent(types[0])}`, params);
    return;
  }
  const period = PERIODS.find((p) => p[0] === params.get("period")) || PERIODS[2];
  const query = new URLSearchParams();
  if (period[2]) query.set("created_from_ms", String(Date.now() - period[2]));
  const base = `/api/v1/types/${encodeURIComponent(type)}`;
  const q = [...query].length ? `?${query}` : "";
  const typeSelect = h("select", { id: "map-type", onchange: (e) => go(`maps/${encodeURIComponent(e.target.value)}`, params) },
    (types.includes(type) ? types : [type, ...types]).map((t) => h("option", { value: t, selected: t === type }, t)));
  const periodSelect = h("select", { id: "map-period", onchange: (e) => { const p = new URLSearchParams(params); p.set("period", e.target.value); go(`maps/${encodeURIComponent(type)}`, p); } },
    PERIODS.map(([key, label]) => h("option", { value: key, selected: key === period[0] }, label)));
  const status = h("span", { class: "muted" });
  const fail = (err) => fill(status, errorBox(err));
  const box = h("div", {}, h("p", { class: "muted" }, "Mining the recorded histories…"));
  fill(main,
    h("div", { class: "row" },
      h("div", { class: "grow" }, h("h1", {}, "Process map"), h("p", { class: "sub" }, "Mined from the recorded histories: every step as it really runs, with the paths instances took.")),
      h("div", { class: "actions" },
        h("button", { "data-testid": "download-bpmn", onclick: () => download(`${base}/map.bpmn${q}`, `${type}.bpmn`, "application/xml").catch(fail) }, "Download BPMN"),
        h("button", { onclick: () => download(`${base}/map.svg${q}`, `${type}.svg`, "image/svg+xml").catch(fail) }, "Download SVG"))),
    h("div", { class: "filters" }, h("label", {}, "Workflow type", typeSelect), h("label", {}, "Started", periodSelect), status),
    box,
  );
  let map, drawing;
  try {
    [map, drawing] = await Promise.all([api("GET", `${base}/map${q}`), apiText(`${base}/map.svg${q}`)]);
  } catch (err) { fill(box, errorBox(err)); return; }
  if (!map.runs) {
    fill(box, h("div", { class: "card empty" }, `No ${type} instances started in this period.`));
    return;
  }
  const svg = new DOMParser().parseFromString(drawing, "image/svg+xml").documentElement;
  svg.setAttribute("data-testid", "process-map");
  const label = (i) => map.nodes[i].label;
  const dur = (s) => (s ? fmtDur(s.median_ms) : "—");
  const p95 = (s) => (s ? fmtDur(s.p95_ms) : "—");
  const slow = map.edges.filter((e) => e.bottleneck).sort((a, b) => b.elapsed.median_ms - a.elapsed.median_ms);
  const steps = map.nodes.filter((n) => n.kind !== "start");
  fill(box,
    h("div", { class: "stats" },
      h("div", { class: "stat" }, h("div", { class: "n" }, map.runs.toLocaleString()), h("div", { class: "l" }, "instances mined")),
      h("div", { class: "stat" }, h("div", { class: "n" }, map.finished.toLocaleString()), h("div", { class: "l" }, "finished")),
      h("div", { class: "stat" }, h("div", { class: "n" }, String(map.distinct_variants)), h("div", { class: "l" }, "distinct paths")),
      h("div", { class: `stat ${slow.length ? "warn" : ""}` }, h("div", { class: "n" }, slow.length ? fmtDur(slow[0].elapsed.median_ms) : "—"), h("div", { class: "l" }, "slowest hand-over (median)"))),
    h("div", { class: "card map" }, svg),
    h("div", { class: "row" },
      h("div", { class: "card grow" }, h("h2", {}, "Bottlenecks"),
        slow.length ? h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "From"), h("th", {}, "To"), h("th", { class: "num" }, "Times"), h("th", { class: "num" }, "Median"), h("th", { class: "num" }, "p95"))),
          h("tbody", {}, slow.map((e) => h("tr", {}, h("td", {}, label(e.from)), h("td", {}, label(e.to)), h("td", { class: "num" }, e.count.toLocaleString()), h("td", { class: "num" }, dur(e.elapsed)), h("td", { class: "num" }, p95(e.elapsed))))))
          : h("div", { class: "empty" }, "No slow hand-overs.")),
      h("div", { class: "card grow" }, h("h2", {}, "Paths"),
        !map.variants.length ? h("div", { class: "empty" }, "No instance has finished yet.") :
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Path"), h("th", { class: "num" }, "Instances"), h("th", { class: "num" }, "Share"))),
          h("tbody", {}, map.variants.map((v) => h("tr", {},
            h("td", {}, v.path.slice(1).map(label).join(" → ")),
            h("td", { class: "num" }, v.count.toLocaleString()),
            h("td", { class: "num" }, h("span", { class: "share" }, h("span", { class: "share-bar", style: `width:${Math.round(v.share * 100)}%` })), ` ${Math.round(v.share * 100)}%`))))),
        map.distinct_variants > map.variants.length ? h("p", { class: "muted" }, `and ${map.distinct_variants - map.variants.length} rarer paths`) : null)),
    h("div", { class: "card" }, h("h2", {}, "Steps"),
      h("table", {}, h("thead", {}, h("tr", {}, ["Step", "Reached", "Instances", "Median", "p95", "Waiting for a person", "Retried", "Failed", "Escalated", "Waiting now"].map((c, i) => h("th", { class: i ? "num" : "" }, c)))),
        h("tbody", {}, steps.map((n) => h("tr", {},
          h("td", {}, n.label),
          h("td", { class: "num" }, n.count.toLocaleString()),
          h("td", { class: "num" }, n.runs.toLocaleString()),
          h("td", { class: "num" }, n.kind.match(/completed|failed|terminated|continued/) ? "—" : dur(n.duration)),
          h("td", { class: "num" }, n.kind.match(/completed|failed|terminated|continued/) ? "—" : p95(n.duration)),
          h("td", { class: "num" }, n.waiting ? `${fmtDur(n.waiting.median_ms)} (p95 ${fmtDur(n.waiting.p95_ms)})` : "—"),
          h("td", { class: "num" }, n.failed_attempts || "—"),
          h("td", { class: `num ${n.failures ? "bad" : ""}` }, n.failures || "—"),
          h("td", { class: "num" }, n.escalations || "—"),
          h("td", { class: "num" }, n.open || "—"))))))
  );
}

// ------------------------------------------------------------------ reports

function durationChart(buckets) {
  const timed = buckets.filter((b) => b.duration);
  if (!timed.length) return h("div", { class: "empty" }, "No instance finished in this period.");
  const W = 560, H = 170, left = 44, bottom = 22, top = 22;
  const max = Math.max(1, ...timed.map((b) => b.duration.p95_ms));
  const slot = (W - left) / buckets.length;
  const y = (v) => H - bottom - (v * (H - bottom - top)) / max;
  const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, width: "100%", role: "img", "aria-label": "median and 95th percentile duration per period" });
  svg.append(svgEl("line", { x1: left, x2: W, y1: H - bottom, y2: H - bottom, stroke: "#d1d5db" }));
  svg.append(svgEl("text", { x: 0, y: top + 4, "font-size": 11, fill: "#6b7280" }, fmtDur(max)));
  const line = (key, colour) => {
    const points = buckets.map((b, i) => (b.duration ? `${left + i * slot + slot / 2},${y(b.duration[key])}` : null)).filter(Boolean);
    svg.append(svgEl("polyline", { points: points.join(" "), fill: "none", stroke: colour, "stroke-width": 2 }));
    buckets.forEach((b, i) => {
      if (!b.duration) return;
      const dot = svgEl("circle", { cx: left + i * slot + slot / 2, cy: y(b.duration[key]), r: 3, fill: colour });
      dot.append(svgEl("title", {}, `${key === "median_ms" ? "median" : "p95"} ${fmtDur(b.duration[key])}`));
      svg.append(dot);
    });
  };
  line("p95_ms", "#f59e0b");
  line("median_ms", "#0f766e");
  let x = left;
  for (const [label, colour] of [["median", "#0f766e"], ["p95", "#f59e0b"]]) {
    svg.append(svgEl("rect", { x, y: 4, width: 10, height: 10, fill: colour, rx: 2 }));
    svg.append(svgEl("text", { x: x + 14, y: 13, "font-size": 11, fill: "#374151" }, label));
    x += 70;
  }
  return svg;
}

function periodLabel(ms, bucketMs) {
  const d = new Date(ms);
  return bucketMs >= 86400e3
    ? d.toLocaleDateString(undefined, { month: "short", day: "numeric" })
    : d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

async function renderReport(type, params) {
  setActive("reports");
  // At once, so the page left behind is never shown under the Reports tab while the
  // types are read.
  fill(main, h("h1", {}, "Reports"), h("p", { class: "muted" }, "Reading the recorded histories…"));
  let types = [];
  try { types = (await api("GET", "/api/v1/overview")).by_type.map((r) => r.workflow_type); } catch (err) { fill(main, errorBox(err)); return; }
  if (!type) {
    if (!types.length) {
      fill(main, h("h1", {}, "Reports"), h("div", { class: "card empty" }, "No instances yet: reports are computed from recorded histories."));
      return;
    }
    go(`reports/${encodeURIComponent(types[0])}`, params);
    return;
  }
  const period = PERIODS.find((p) => p[0] === params.get("period") && p[2]) || PERIODS[2];
  const now = Date.now();
  const query = new URLSearchParams({ created_from_ms: String(now - period[2]), created_until_ms: String(now), bucket: period[2] > 2 * 86400e3 ? "day" : "hour" });
  const base = `/api/v1/types/${encodeURIComponent(type)}`;
  const typeSelect = h("select", { id: "report-type", onchange: (e) => go(`reports/${encodeURIComponent(e.target.value)}`, params) },
    (types.includes(type) ? types : [type, ...types]).map((t) => h("option", { value: t, selected: t === type }, t)));
  const periodSelect = h("select", { id: "report-period", onchange: (e) => { const p = new URLSearchParams(params); p.set("period", e.target.value); go(`reports/${encodeURIComponent(type)}`, p); } },
    PERIODS.filter((p) => p[2]).map(([key, label]) => h("option", { value: key, selected: key === period[0] }, label)));
  const status = h("span", {});
  const fail = (err) => fill(status, errorBox(err));
  const box = h("div", {}, h("p", { class: "muted" }, "Reading the recorded histories…"));
  fill(main,
    h("div", { class: "row" },
      h("div", { class: "grow" }, h("h1", {}, "Reports"), h("p", { class: "sub" }, "How many instances started and how they ended, how long they took, service levels and failure reasons.")),
      h("div", { class: "actions" },
        h("button", { "data-testid": "download-csv", onclick: () => download(`${base}/report.csv?${query}`, `${type}-report.csv`, "text/csv").catch(fail) }, "Download CSV"),
        h("button", { onclick: () => { const q = new URLSearchParams(query); q.set("table", "failures"); download(`${base}/report.csv?${q}`, `${type}-failures.csv`, "text/csv").catch(fail); } }, "Failures CSV"))),
    h("div", { class: "filters" }, h("label", {}, "Workflow type", typeSelect), h("label", {}, "Started", periodSelect), status),
    box,
  );
  let r;
  try { r = await api("GET", `${base}/report?${query}`); } catch (err) { fill(box, errorBox(err)); return; }
  const t = r.totals;
  const stat = (n, label, cls) => h("div", { class: `stat ${cls || ""}` }, h("div", { class: "n" }, n), h("div", { class: "l" }, label));
  const counts = r.buckets.map((b) => ({ at_ms: b.at_ms, started: b.started, completed: b.completed, failed: b.failed }));
  const chart = throughputChart(counts, (ms) => periodLabel(ms, r.bucket_ms), "No instance started in this period.");
  fill(box,
    r.truncated ? h("div", { class: "error" }, "This period holds more instances than a report reads; the figures cover the first ones. Choose a shorter period.") : null,
    h("div", { class: "stats" },
      stat(t.started.toLocaleString(), "started"),
      stat(t.completed.toLocaleString(), "completed"),
      stat(t.failed.toLocaleString(), "failed", t.failed ? "bad" : ""),
      stat(t.duration ? fmtDur(t.duration.median_ms) : "—", "median duration"),
      stat(t.duration ? fmtDur(t.duration.p95_ms) : "—", "p95 duration"),
      stat(t.overdue_tasks.toLocaleString(), "overdue tasks", t.overdue_tasks ? "warn" : ""),
      stat(t.escalations.toLocaleString(), "escalations", t.escalations ? "warn" : "")),
    h("div", { class: "row" },
      h("div", { class: "card grow" }, h("h2", {}, `Instances per ${r.bucket_ms >= 86400e3 ? "day" : "hour"}`), chart),
      h("div", { class: "card grow" }, h("h2", {}, "Duration, start to end"), durationChart(r.buckets))),
    h("div", { class: "row" },
      h("div", { class: "card grow" }, h("h2", {}, "Failure reasons"),
        r.failure_reasons.length
          ? h("table", { "data-testid": "failure-reasons" }, h("thead", {}, h("tr", {}, h("th", {}, "Reason"), h("th", { class: "num" }, "Instances"), h("th", {}, "Example"))),
            h("tbody", {}, r.failure_reasons.map((f) => h("tr", {}, h("td", {}, f.reason), h("td", { class: "num" }, f.count.toLocaleString()), h("td", {}, h("a", { href: `#/instances/${encodeURIComponent(f.example)}` }, f.example))))))
          : h("div", { class: "empty" }, "No failures in this period.")),
      h("div", { class: "card grow" }, h("h2", {}, "Service levels"),
        h("table", {}, h("thead", {}, h("tr", {}, h("th", {}, "Period"), h("th", { class: "num" }, "Tasks"), h("th", { class: "num" }, "Overdue"), h("th", { class: "num" }, "Escalations"), h("th", { class: "num" }, "Retries"))),
          h("tbody", {}, r.buckets.filter((b) => b.started).slice(-12).reverse().map((b) => h("tr", {},
            h("td", {}, periodLabel(b.at_ms, r.bucket_ms)),
            h("td", { class: "num" }, b.tasks), h("td", { class: `num ${b.overdue_tasks ? "bad" : ""}` }, b.overdue_tasks),
            h("td", { class: "num" }, b.escalations), h("td", { class: "num" }, b.retries))))))),
  );
}

// ------------------------------------------------------------------ router

// ------------------------------------------------------------------ schedules

function fmtEvery(ms) {
  const units = [[86400000, "day"], [3600000, "hour"], [60000, "minute"], [1000, "second"]];
  for (const [size, name] of units) {
    if (ms % size === 0) {
      const n = ms / size;
      return n === 1 ? `every ${name}` : `every ${n} ${name}s`;
    }
  }
  return `every ${fmtDur(ms)}`;
}

function fmtIn(ms) {
  const d = ms - Date.now();
  return d <= 0 ? "due now" : `in ${fmtDur(d)}`;
}

async function renderSchedules() {
  setActive("schedules");
  const box = h("div", {});
  const feedback = h("div", {});
  fill(main,
    h("div", { class: "row" }, h("div", { class: "grow" }, h("h1", {}, "Schedules"), h("p", { class: "sub" }, "Recurring starts defined by the host's code: pause one, resume it, or start an occurrence now.")), liveBadge()),
    feedback, box);
  const act = async (what, fn) => {
    try { await fn(); fill(feedback, h("div", { class: "ok" }, what)); draw(); } catch (err) { fill(feedback, errorBox(err)); }
  };
  const draw = async () => {
    let list;
    try { list = (await api("GET", "/api/v1/schedules")).schedules; } catch (err) { fill(box, errorBox(err)); return; }
    if (!list.length) {
      fill(box, h("div", { class: "card" }, h("div", { class: "empty" }, "No schedules you may see. A host creates them in code (Runtime::schedule).")));
      return;
    }
    fill(box, h("div", { class: "card" }, h("table", { "data-testid": "schedules" },
      h("thead", {}, h("tr", {}, h("th", {}, "Schedule"), h("th", {}, "Starts"), h("th", {}, "When"), h("th", {}, "Next"), h("th", {}, "State"), h("th", {}, ""))),
      h("tbody", {}, list.map((sc) => {
        const allowed = new Set(sc.allowed_actions);
        const path = `/api/v1/schedules/${encodeURIComponent(sc.id)}`;
        const when = sc.every_ms ? fmtEvery(sc.every_ms) : h("span", {}, h("code", {}, sc.cron), " UTC");
        const state = sc.paused
          ? h("div", {}, h("span", { class: "badge parked" }, "paused"), h("div", { class: "muted small" }, `${sc.paused.by ? `by ${sc.paused.by}` : "by the host"}, ${fmtTime(sc.paused.at_ms)}: ${sc.paused.note}`))
          : h("span", { class: "badge running" }, "active");
        return h("tr", { "data-schedule": sc.id },
          h("td", {}, h("strong", {}, sc.id), h("div", {}, h("a", { class: "small", href: `#/instances?workflow_type=${encodeURIComponent(sc.workflow_type)}&id=${encodeURIComponent(`${sc.id}@`)}` }, "its instances"))),
          h("td", {}, sc.workflow_type),
          h("td", {}, when),
          h("td", {}, sc.paused ? h("span", { class: "muted" }, "—") : h("span", { title: fmtTime(sc.next_fire_ms) }, fmtTime(sc.next_fire_ms), h("div", { class: "muted small" }, fmtIn(sc.next_fire_ms)))),
          h("td", {}, state),
          h("td", {}, h("div", { class: "actions" },
            allowed.has("pause") ? h("button", { onclick: () => { const reason = prompt(`Why pause ${sc.id}? Nothing starts until it is resumed.`); if (reason && reason.trim()) act(`${sc.id} paused.`, () => api("POST", `${path}/pause`, { reason })); } }, "Pause…") : null,
            allowed.has("resume") ? h("button", { onclick: () => act(`${sc.id} resumed.`, () => api("POST", `${path}/resume`)) }, "Resume") : null,
            allowed.has("trigger") ? h("button", { onclick: async () => {
              try {
                const started = await api("POST", `${path}/trigger`);
                fill(feedback, h("div", { class: "ok" }, "Started ", h("a", { href: `#/instances/${encodeURIComponent(started.id)}` }, started.id), "."));
              } catch (err) { fill(feedback, errorBox(err)); }
            } }, "Run now") : null)));
      })))));
  };
  liveRefresh = throttled(draw);
  await draw();
}

async function route() {
  if (!sessionStorage.getItem(TOKEN_KEY)) { renderLogin(); return; }
  if (!me) {
    try { me = await api("GET", "/api/v1/me"); } catch (_) { return; }
    renderWho();
  }
  const { parts, params } = parseHash();
  liveRefresh = null;
  if (parts[0] === "instances" && parts[1]) return renderInstance(parts.slice(1).join("/"));
  if (parts[0] === "instances") return renderInstances(params);
  if (parts[0] === "tasks" && parts[2]) return renderTask(parts[1], parts[2]);
  if (parts[0] === "tasks") return renderTasks();
  if (parts[0] === "maps") return renderMap(parts.slice(1).join("/"), params);
  if (parts[0] === "reports") return renderReport(parts.slice(1).join("/"), params);
  if (parts[0] === "schedules") return renderSchedules();
  return renderOverview();
}

window.addEventListener("hashchange", route);
renderWho();
route();
followCommits();
