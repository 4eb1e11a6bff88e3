// tarn's web UI: hash-routed pages for live dashboards (panels fed by server-sent events),
// the query console, the collections list with schemas, and the new-collection form.
"use strict";

const API = "/v1/orgs/self";
const main = document.getElementById("main");
let cleanup = [];

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) el.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// An API key, when the server requires one, kept in this browser.
function apiKey() {
  return localStorage.getItem("tarn.apikey") || "";
}

function askForKey(message) {
  const input = h("input", { id: "apikey", placeholder: "tarn_...", size: 50 });
  const save = () => { localStorage.setItem("tarn.apikey", input.value.trim()); route(); };
  main.replaceChildren(h("h1", {}, "API key"), h("p", {}, message),
    h("p", {}, input, " ", h("button", { onclick: save }, "Use this key")),
    h("p", { class: "muted" }, "Create one with `tarn apikey create NAME`."));
}

async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (apiKey()) opts.headers["Authorization"] = "ApiKey " + apiKey();
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(API + path, opts);
  const v = await r.json().catch(() => ({ message: r.statusText }));
  if (!r.ok) {
    const e = new Error(v.message || r.statusText);
    e.body = v;
    e.status = r.status;
    throw e;
  }
  return v;
}

function fmtValue(v) {
  if (v === null || v === undefined) return "";
  if (typeof v === "object") return JSON.stringify(v);
  return String(v);
}

function hashtagHref(tag) {
  return "#/d/hashtag?hashtag=" + encodeURIComponent(tag);
}

// Text with #hashtags made into links to the hashtag view.
function linkified(text) {
  const out = [];
  let last = 0;
  const re = /#(\w+)/gu;
  let m;
  while ((m = re.exec(text)) !== null) {
    out.push(text.slice(last, m.index));
    out.push(h("a", { class: "tag", href: hashtagHref(m[1]) }, m[0]));
    last = m.index + m[0].length;
  }
  out.push(text.slice(last));
  return out;
}

function columnsOf(payload) {
  if (payload.column_fields && payload.column_fields.length) return payload.column_fields.map((c) => c.name);
  return payload.results.length ? Object.keys(payload.results[0]) : [];
}

function renderTable(rows, columns, link) {
  const head = h("tr", {}, columns.map((c) => h("th", {}, c)));
  const body = rows.map((r) =>
    h("tr", {}, columns.map((c) => {
      const v = r[c];
      if (link && c === link.column && v !== null && v !== undefined) {
        return h("td", {}, h("a", { class: "tag", href: "#/d/" + link.dashboard + "?" + link.param + "=" + encodeURIComponent(v) }, fmtValue(v)));
      }
      return h("td", {}, typeof v === "string" ? linkified(v) : fmtValue(v));
    })));
  return h("table", {}, h("thead", {}, head), h("tbody", {}, body));
}

// ---- dashboards ------------------------------------------------------------------------

function chartOptions(width, title, series, extra) {
  return Object.assign({ width, height: 240, title, legend: { show: false }, series }, extra || {});
}

function renderPanelBody(state, payload) {
  const { panel, body } = state;
  if (payload.error) {
    body.replaceChildren(h("div", { class: "error" }, "query error: " + payload.error.message));
    return;
  }
  const rows = payload.results || [];
  const width = Math.max(300, body.clientWidth - 10);
  if (panel.viz === "number") {
    const col = panel.y || columnsOf(payload)[0];
    body.replaceChildren(h("div", { class: "number" }, rows.length ? fmtValue(rows[0][col]) : "–"));
  } else if (panel.viz === "bar") {
    const labels = rows.map((r) => fmtValue(r[panel.x]));
    const values = rows.map((r) => Number(r[panel.y]) || 0);
    const data = [labels.map((_, i) => i), values];
    const opts = chartOptions(width, null, [{}, { label: panel.y, fill: "#4c8bd6", stroke: "#2f6db5", paths: uPlot.paths.bars({ size: [0.7, 60] }), points: { show: false } }], {
      scales: { x: { time: false, range: [-0.5, Math.max(labels.length - 0.5, 0.5)] }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
      axes: [{ values: (u, splits) => splits.map((s) => (Number.isInteger(s) && labels[s] !== undefined ? labels[s] : "")), rotate: 0, size: 40 }, {}],
    });
    if (state.chart && state.chartKind === "bar" && state.chart.width === width) {
      state.labels = labels;
      state.chart.setData(data);
    } else {
      if (state.chart) state.chart.destroy();
      body.replaceChildren();
      state.chart = new uPlot(opts, data, body);
      state.chartKind = "bar";
      state.chart.over.addEventListener("click", () => {
        const i = state.chart.cursor.idx;
        if (panel.link && i !== null && i !== undefined && state.labels[i] !== undefined) {
          location.hash = "#/d/" + panel.link.dashboard + "?" + panel.link.param + "=" + encodeURIComponent(state.labels[i]);
        }
      });
      state.labels = labels;
      state.labelsDiv = h("div", { class: "labels" });
      body.append(state.labelsDiv);
    }
    // The values as text too, each a link when the panel links to a view.
    state.labelsDiv.replaceChildren(...rows.map((r) => {
      const label = fmtValue(r[panel.x]);
      const text = label + " (" + fmtValue(r[panel.y]) + ")";
      return panel.link
        ? h("a", { class: "tag", href: "#/d/" + panel.link.dashboard + "?" + panel.link.param + "=" + encodeURIComponent(label) }, text)
        : h("span", {}, text + " ");
    }));
  } else if (panel.viz === "timeseries" || panel.viz === "line") {
    let xs = rows.map((r) => Number(r[panel.x]));
    if (panel.viz === "timeseries") xs = xs.map((x) => x / 1000);
    const ys = rows.map((r) => Number(r[panel.y]) || 0);
    const data = [xs, ys];
    if (state.chart && state.chartKind === "line" && state.chart.width === width) {
      state.chart.setData(data);
    } else {
      if (state.chart) state.chart.destroy();
      body.replaceChildren();
      state.chart = new uPlot(chartOptions(width, null, [{}, { label: panel.y, stroke: "#2f6db5", width: 2, fill: "rgba(76,139,214,0.15)" }], {
        scales: { x: { time: panel.viz === "timeseries" } },
      }), data, body);
      state.chartKind = "line";
    }
    body.dataset.points = String(xs.length);
    body.dataset.lastX = xs.length ? String(xs[xs.length - 1]) : "";
  } else {
    body.replaceChildren(renderTable(rows, columnsOf(payload), panel.link));
  }
  body.dataset.rows = String(rows.length);
}

function panelView(panel) {
  const meta = h("div", { class: "meta" }, "connecting…");
  const body = h("div", { class: "body", "data-rows": "0" });
  const el = h("section", { class: "panel", id: "panel-" + panel.id, "data-viz": panel.viz }, h("h2", {}, panel.title), meta, body);
  return { panel, el, body, meta, chart: null, last: null };
}

function updateMeta(state) {
  const p = state.last;
  if (!p || p.error) return;
  const age = p.newest_ms ? ((Date.now() - p.newest_ms) / 1000).toFixed(1) + " s" : "–";
  state.meta.textContent = `query ${Number(p.elapsed_ms).toFixed(1)} ms · newest document ${age} ago · refreshed every ${(state.panel.refresh_ms / 1000).toFixed(0)} s`;
  state.meta.dataset.latency = String(p.elapsed_ms);
}

function renderDashboard(d, params) {
  const controls = d.params.map((p) => {
    const input = h("input", { id: "param-" + p.name, value: params[p.name] });
    const go = () => { location.hash = "#/d/" + d.name + "?" + p.name + "=" + encodeURIComponent(input.value.replace(/^#/, "")); };
    input.addEventListener("keydown", (e) => { if (e.key === "Enter") go(); });
    return h("span", {}, h("label", { for: "param-" + p.name }, p.name + " "), input, " ", h("button", { onclick: go }, "Show"));
  });
  const title = d.title + (d.params.length ? " — " + d.params.map((p) => "#" + params[p.name]).join(" ") : "");
  const panels = new Map(d.panels.map((p) => [p.id, panelView(p)]));
  main.replaceChildren(
    h("h1", {}, title),
    h("div", { class: "params" }, controls, d.name !== "tweets" ? h("a", { href: "#/d/tweets" }, "← Tweets view") : null),
    h("div", { class: "grid" }, [...panels.values()].map((s) => s.el)),
  );
  return panels;
}

// One event stream per view (the browser allows six connections per server, so one per
// panel would starve other tabs): a `dashboard` event with the document and the parameter
// values, then a `panel` event for each result.
function showDashboard(name, query) {
  const qp = new URLSearchParams(query);
  if (apiKey()) qp.set("apikey", apiKey());
  const qs = qp.toString();
  const es = new EventSource(API + "/dashboards/" + encodeURIComponent(name) + "/live" + (qs ? "?" + qs : ""));
  let panels = null;
  let left = false;
  es.addEventListener("dashboard", (ev) => {
    // A reconnect sends the document again: keep the panels already drawn.
    if (panels) return;
    const { dashboard, params } = JSON.parse(ev.data);
    panels = renderDashboard(dashboard, params);
  });
  es.addEventListener("panel", (ev) => {
    const payload = JSON.parse(ev.data);
    const state = panels && panels.get(payload.panel);
    if (!state) return;
    state.last = payload;
    renderPanelBody(state, payload);
    updateMeta(state);
  });
  es.onerror = async () => {
    if (panels) {
      panels.forEach((s) => { s.meta.textContent = "reconnecting…"; });
      return;
    }
    // Refused before it began (an unknown dashboard, a missing key): the document's own
    // endpoint says why.
    es.close();
    try {
      await api("GET", "/dashboards/" + encodeURIComponent(name));
      if (!left) main.replaceChildren(h("div", { class: "error" }, "the live feed of dashboard " + name + " could not be opened"));
    } catch (e) {
      if (left) return;
      if (e.status === 401) askForKey(e.message);
      else main.replaceChildren(h("div", { class: "error" }, e.message));
    }
  };
  const timer = setInterval(() => panels && panels.forEach(updateMeta), 500);
  cleanup.push(() => { left = true; es.close(); clearInterval(timer); if (panels) panels.forEach((s) => s.chart && s.chart.destroy()); });
}

async function showDashboards() {
  const list = (await api("GET", "/dashboards")).data;
  main.replaceChildren(h("h1", {}, "Dashboards"), h("ul", {}, list.map((d) =>
    h("li", {}, h("a", { href: "#/d/" + d.name }, d.title || d.name), " ", h("span", { class: "muted" }, d.description || "", ` (${d.panels.length} panels)`)))));
}

// ---- console ---------------------------------------------------------------------------

function offsetOf(text, line, column) {
  const lines = text.split("\n");
  let off = 0;
  for (let i = 0; i < line - 1 && i < lines.length; i++) off += lines[i].length + 1;
  return off + Math.max(0, column - 1);
}

function showConsole() {
  const sql = h("textarea", { id: "sql", rows: 8, spellcheck: "false" });
  sql.value = localStorage.getItem("tarn.sql") || 'SELECT count(*) FROM "twitter-kinesis-demo"';
  const out = h("div", { id: "console-output" });
  let view = "table";
  let last = null;
  const draw = () => {
    if (!last) return;
    if (last.error) {
      const e = last.error;
      const where = e.line ? `Line ${e.line}, column ${e.column}: ` : "";
      out.replaceChildren(h("div", { class: "error", id: "query-error" }, where + e.message));
      return;
    }
    const r = last.result;
    const head = h("div", { class: "meta", id: "query-stats" }, `${r.results.length} rows · ${r.stats.elapsed_time_ms} ms on the server · ${last.roundTrip.toFixed(0)} ms round trip`);
    const warnings = (r.warnings || []).map((w) => h("div", { class: "warn" }, "warning: " + w));
    const tabs = h("div", { class: "tabs" },
      h("button", { class: view === "table" ? "" : "secondary", onclick: () => { view = "table"; draw(); } }, "Table"),
      h("button", { class: view === "json" ? "" : "secondary", id: "json-tab", onclick: () => { view = "json"; draw(); } }, "JSON"));
    const content = view === "table"
      ? h("div", { id: "result-table" }, renderTable(r.results, columnsOf(r), null))
      : h("pre", { id: "result-json" }, JSON.stringify(r.results, null, 2));
    out.replaceChildren(head, ...warnings, tabs, content);
  };
  const run = async () => {
    localStorage.setItem("tarn.sql", sql.value);
    const started = performance.now();
    try {
      const result = await api("POST", "/queries", { sql: { query: sql.value } });
      last = { result, roundTrip: performance.now() - started };
    } catch (e) {
      last = { error: e.body || { message: e.message } };
      if (last.error.line) {
        const off = offsetOf(sql.value, last.error.line, last.error.column);
        sql.focus();
        sql.setSelectionRange(off, off + 1);
      }
    }
    draw();
  };
  sql.addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); run(); } });
  main.replaceChildren(h("h1", {}, "Console"), sql, h("div", {}, h("button", { id: "run", onclick: run }, "Run (Ctrl+Enter)")), out);
  sql.focus();
}

// ---- collections -----------------------------------------------------------------------

function sourceSummary(s) {
  const kind = s.kinesis ? "kinesis:" + s.kinesis.stream_name : s.kafka ? "kafka:" + s.kafka.kafka_topic_name : "source";
  const st = s.status || {};
  return `${kind} ${st.state || ""} · ${st.records_processed || 0} records` + (st.last_error ? ` · last error: ${st.last_error.message}` : "");
}

async function showCollections() {
  const list = (await api("GET", "/collections")).data;
  const rows = list.map((c) => h("tr", {},
    h("td", {}, h("a", { href: "#/collections/" + c.workspace + "/" + c.name }, c.workspace + "." + c.name)),
    h("td", {}, c.stats.doc_count), h("td", {}, (c.stats.total_size / 1e6).toFixed(1) + " MB"),
    h("td", {}, (c.sources || []).map(sourceSummary).join("; ") || "documents API"),
    h("td", {}, c.stats.ingest_error_count)));
  main.replaceChildren(h("h1", {}, "Collections"),
    h("table", { id: "collections" }, h("thead", {}, h("tr", {}, ["Collection", "Documents", "Size", "Ingest", "Ingest errors"].map((t) => h("th", {}, t)))), h("tbody", {}, rows)),
    h("p", {}, h("a", { href: "#/collections/new" }, "Create a collection")));
}

async function showCollection(ws, name) {
  const c = (await api("GET", `/ws/${ws}/collections/${name}`)).data;
  const schema = (await api("GET", `/ws/${ws}/collections/${name}/schema`)).data;
  const errors = await api("GET", `/ws/${ws}/collections/${name}/ingest-errors`);
  main.replaceChildren(
    h("h1", {}, ws + "." + name),
    h("p", {}, `${c.stats.doc_count} documents · ${(c.stats.total_size / 1e6).toFixed(1)} MB · ${c.stats.segment_count} segments`),
    h("h2", {}, "Ingest"),
    h("ul", {}, (c.sources || []).map((s) => h("li", {}, sourceSummary(s)))),
    h("h2", {}, "Schema"),
    h("table", { id: "schema" }, h("thead", {}, h("tr", {}, ["Field", "Type", "Documents"].map((t) => h("th", {}, t)))),
      h("tbody", {}, schema.map((f) => h("tr", {}, h("td", {}, f.path), h("td", {}, f.type), h("td", {}, f.count))))),
    h("h2", {}, `Ingest errors (${errors.count})`),
    h("table", {}, h("tbody", {}, errors.data.map((e) => h("tr", {}, h("td", {}, e.time), h("td", {}, e.source), h("td", {}, e.position), h("td", {}, e.message))))),
  );
}

async function showNewCollection() {
  const integrations = (await api("GET", "/integrations")).data;
  const name = h("input", { id: "new-name", placeholder: "my-collection" });
  const ws = h("input", { id: "new-workspace", value: "commons" });
  const kind = h("select", { id: "new-kind" }, h("option", { value: "none" }, "Empty (documents API)"), h("option", { value: "kinesis" }, "Kinesis stream"), h("option", { value: "kafka" }, "Kafka topic"));
  const integration = h("select", { id: "new-integration" });
  const stream = h("input", { id: "new-stream", placeholder: "stream or topic name" });
  const policy = h("select", { id: "new-policy" }, h("option", { value: "EARLIEST" }, "EARLIEST"), h("option", { value: "LATEST" }, "LATEST"));
  const eventField = h("input", { id: "new-event-field", placeholder: "timestamp_ms (optional)" });
  const status = h("div", { id: "new-status" });
  const sourceFields = h("div", {}, h("label", {}, "Integration"), integration, h("label", {}, "Stream / topic"), stream, h("label", {}, "Start at"), policy);
  const refresh = () => {
    sourceFields.style.display = kind.value === "none" ? "none" : "";
    integration.replaceChildren(...integrations.filter((i) => i[kind.value]).map((i) => h("option", { value: i.name }, i.name)));
  };
  kind.addEventListener("change", refresh);
  refresh();
  const submit = async (e) => {
    e.preventDefault();
    const body = { name: name.value };
    if (kind.value !== "none") {
      const src = { integration_name: integration.value };
      src[kind.value] = kind.value === "kinesis"
        ? { stream_name: stream.value, offset_reset_policy: policy.value }
        : { kafka_topic_name: stream.value, offset_reset_policy: policy.value };
      body.sources = [src];
    }
    if (eventField.value) body.event_time_info = { field: eventField.value, format: "milliseconds_since_epoch" };
    try {
      await api("POST", `/ws/${ws.value}/collections`, body);
      location.hash = `#/collections/${ws.value}/${name.value}`;
    } catch (err) {
      status.replaceChildren(h("div", { class: "error" }, err.message));
    }
  };
  main.replaceChildren(h("h1", {}, "New collection"), h("form", { onsubmit: submit, id: "new-collection" },
    h("label", {}, "Name"), name, h("label", {}, "Workspace"), ws, h("label", {}, "Data from"), kind, sourceFields,
    h("label", {}, "_event_time from field (milliseconds since the epoch)"), eventField,
    h("p", {}, h("button", { type: "submit", id: "create" }, "Create")), status));
}

// ---- routing ---------------------------------------------------------------------------

async function route() {
  cleanup.forEach((f) => f());
  cleanup = [];
  const [path, qs] = (location.hash.slice(1) || "/d/tweets").split("?");
  const query = new URLSearchParams(qs || "");
  const parts = path.split("/").filter(Boolean);
  try {
    if (parts[0] === "d" && parts[1]) await showDashboard(decodeURIComponent(parts[1]), query);
    else if (parts[0] === "dashboards") await showDashboards();
    else if (parts[0] === "console") showConsole();
    else if (parts[0] === "collections" && parts[1] === "new") await showNewCollection();
    else if (parts[0] === "collections" && parts[2]) await showCollection(parts[1], parts[2]);
    else if (parts[0] === "collections") await showCollections();
    else await showDashboard("tweets", query);
  } catch (e) {
    if (e.status === 401) askForKey(e.message);
    else main.replaceChildren(h("div", { class: "error" }, e.message));
  }
}

window.addEventListener("hashchange", route);
route();
