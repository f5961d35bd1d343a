// callmon supervisor dashboard: live grid, alert feed, call timeline. No build step.
"use strict";

const COLORS = { neutral: "#8a94a6", happy: "#e0a030", sad: "#3b7dd8", angry: "#d1453b", fearful: "#7b4fc9" };
const SPARK_WINDOWS = 180;            // about three minutes at a one-second hop
const calls = new Map();              // call_id -> {summary, history: [{t, f, d}]}
const alerts = new Map();             // raised alert id -> alert (with .ack, and .cleared once it ends)
let source = null;

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmtDur = (s) => { s = Math.max(0, Math.floor(s)); return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`; };
const fmtTime = (ts) => new Date(ts * 1000).toLocaleTimeString();

async function api(path, options) {
  const r = await fetch(path, options);
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

// ---- state loading (also after every reconnect) -----------------------------------------
async function reload() {
  const [live, log] = await Promise.all([api("/api/v1/calls"), api("/api/v1/alerts?since=1h")]);
  calls.clear();
  for (const c of live) {
    const detail = await api(`/api/v1/calls/${encodeURIComponent(c.call_id)}?tail=${SPARK_WINDOWS * 2}`);
    calls.set(c.call_id, { summary: c, history: historyOf(detail.timeline) });
  }
  alerts.clear();
  for (const a of log) if (a.type === "alert") noteAlert(a);
  render();
}

// One row per alert: a "cleared" message (score fell, or the call ended) closes its raise.
function noteAlert(m) {
  if (m.state === "raised") {
    const known = alerts.get(m.id);
    alerts.set(m.id, known ? { ...m, ack: m.ack || known.ack, cleared: known.cleared } : m);
  } else if (m.raised_id) {
    const raised = alerts.get(m.raised_id);
    if (raised) raised.cleared = m;
  }
}

function historyOf(timeline) {
  return timeline.filter((w) => w.role === "customer" && w.frustration !== null)
    .map((w) => ({ t: w.end_s, f: w.frustration, d: w.distress })).slice(-SPARK_WINDOWS);
}

// ---- live updates ------------------------------------------------------------------------
function connect() {
  if (source) source.close();
  source = new EventSource("/api/v1/events");
  source.onopen = () => { $("status").className = "status on"; reload().catch(console.error); };
  source.onerror = () => { $("status").className = "status off"; };
  source.onmessage = (e) => handle(JSON.parse(e.data));
}

// A call this page does not know yet (its call_started raced with a reload, or came before
// the page connected): fetch it once, then its window events land normally.
const fetching = new Set();
function ensureCall(id) {
  if (calls.has(id) || fetching.has(id)) return;
  fetching.add(id);
  api(`/api/v1/calls/${encodeURIComponent(id)}?tail=${SPARK_WINDOWS * 2}`)
    .then((detail) => {
      if (detail.live && !calls.has(id)) calls.set(id, { summary: detail, history: historyOf(detail.timeline) });
      scheduleRender();
    })
    .catch(console.error)
    .finally(() => fetching.delete(id));
}

function handle(m) {
  if (m.type === "window") {
    const c = calls.get(m.call_id);
    if (!c) { ensureCall(m.call_id); return; }
    c.summary.last = c.summary.last || {};
    if (m.scores) c.summary.last[m.role] = m;  // a silent window keeps the last emotion shown
    if (m.role === "customer" && m.frustration !== null) {
      c.history.push({ t: m.end_s, f: m.frustration, d: m.distress });
      if (c.history.length > SPARK_WINDOWS) c.history.shift();
    }
    scheduleRender();
  } else if (m.type === "alert") {
    noteAlert(m);
    const c = calls.get(m.call_id);
    if (c) c.summary.alerts[`${m.role}:${m.kind}`] = m;
    scheduleRender();
  } else if (m.type === "ack") {
    const a = alerts.get(m.alert_id);
    if (a) a.ack = { by: m.by, at: m.at };
    for (const c of calls.values()) for (const a2 of Object.values(c.summary.alerts)) if (a2.id === m.alert_id) a2.ack = { by: m.by, at: m.at };
    scheduleRender();
  } else if (m.type === "call_started") {
    calls.set(m.call_id, { summary: { call_id: m.call_id, start: m, agent: (m.metadata || {}).agent, last: {}, alerts: {}, live: true }, history: [] });
    scheduleRender();
  } else if (m.type === "call_ended") {
    calls.delete(m.call_id);
    scheduleRender();
  }
}

let pending = false;
function scheduleRender() { if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; render(); }); } }

// ---- rendering ---------------------------------------------------------------------------
function risk(c) {
  const active = Object.values(c.summary.alerts || {}).some((a) => a.state === "raised" && !a.ack);
  const last = (c.summary.last || {}).customer || {};
  return (active ? 2 : 0) + Math.max(last.frustration || 0, last.distress || 0);
}

function spark(history, thresholds) {
  if (history.length < 2) return '<svg class="spark"></svg>';
  const n = history.length, w = 260, h = 46;
  const pts = (key) => history.map((p, i) => `${(i / (n - 1) * w).toFixed(1)},${(h - 2 - p[key] * (h - 4)).toFixed(1)}`).join(" ");
  // Each kind's alert threshold (from the call's start event), dashed in the kind's colour.
  const line = (on, colour) => on == null ? "" : `<line x1="0" x2="${w}" y1="${(h - 2 - on * (h - 4)).toFixed(1)}" y2="${(h - 2 - on * (h - 4)).toFixed(1)}" stroke="${colour}" stroke-opacity="0.45" stroke-dasharray="3 3"><title>${colour === "var(--frus)" ? "frustration" : "distress"} alert threshold ${on}</title></line>`;
  const t = thresholds || {};
  return `<svg class="spark" viewBox="0 0 ${w} ${h}" preserveAspectRatio="none" role="img" aria-label="frustration and distress">
    ${line(t.frustration, "var(--frus)")}${line(t.distress, "var(--dist)")}
    <polyline fill="none" stroke="var(--dist)" stroke-width="1.5" points="${pts("d")}"/>
    <polyline fill="none" stroke="var(--frus)" stroke-width="2" points="${pts("f")}"/></svg>`;
}

function badges(summary) {
  return Object.values(summary.alerts || {}).filter((a) => a.state === "raised")
    .map((a) => `<span class="badge ${a.kind}${a.ack ? " acked" : ""}" title="${a.ack ? "acknowledged by " + esc(a.ack.by) : "unacknowledged"}">${a.kind}</span>`).join("");
}

function render() {
  if (location.hash.startsWith("#/call/")) return;
  const list = [...calls.values()].sort((a, b) => risk(b) - risk(a));
  const raised = [...alerts.values()].filter((a) => !a.ack && !a.cleared).length;
  $("summary").textContent = `${list.length} live call${list.length === 1 ? "" : "s"} · ${raised} unacknowledged alert${raised === 1 ? "" : "s"}`;
  setHTML("calls", list.length ? list.map(card).join("") : '<p class="empty">No live calls.</p>');
  const feed = [...alerts.values()].sort((a, b) => b.ts - a.ts).slice(0, 200);
  setHTML("alerts", feed.length ? feed.map(alertItem).join("") : '<li class="empty">No alerts in the last hour.</li>');
}

const rendered = {};
function setHTML(id, html) {
  // Touch the DOM only when something changed: buttons under the pointer stay put.
  if (rendered[id] !== html) { rendered[id] = html; $(id).innerHTML = html; }
}

// Agent, queue and caller, where the platform (or `callmon stream --metadata`) sent them.
function who(s) {
  const m = (s.start && s.start.metadata) || {};
  const parts = [];
  const agent = s.agent || m.agent;
  if (agent) parts.push("agent " + esc(agent));
  if (m.queue) parts.push("queue " + esc(m.queue));
  const caller = m.caller || m.from || m.caller_number;
  if (caller) parts.push("caller " + esc(caller));
  return parts.join(" · ");
}

function card(c) {
  const s = c.summary, last = (s.last || {}).customer;
  const started = s.start ? s.start.ts : Date.now() / 1000;
  const alerting = Object.values(s.alerts || {}).some((a) => a.state === "raised" && !a.ack);
  const emotion = last && last.emotion ? `${esc(last.emotion)} <span class="conf">${Math.round(last.confidence * 100)}%</span>` : '<span class="conf">listening…</span>';
  const scores = last && last.frustration !== null ? `frustration ${last.frustration.toFixed(2)} · distress ${last.distress.toFixed(2)}` : "";
  return `<div class="card${alerting ? " alerting" : ""}" data-call="${esc(s.call_id)}" onclick="location.hash='#/call/${encodeURIComponent(s.call_id)}'">
    <div class="top"><span class="id">${esc(s.call_id)}</span><span class="dur">${fmtDur(Date.now() / 1000 - started)}</span></div>
    <div class="agent">${who(s) || "&nbsp;"}</div>
    <div class="emotion">${emotion}</div>
    <div>${badges(s)}</div>
    ${spark(c.history, s.start && s.start.alert_thresholds)}
    <div class="scores">${scores}</div></div>`;
}

function alertItem(a) {
  // Raised at (wall clock and call time), how long it has been or was active, how it ended,
  // and who acknowledged it. A resolved alert needs no acknowledgement.
  const c = a.cleared;
  const status = c
    ? `<span class="ended">${c.reason === "call_ended" ? "call ended" : "cleared"} after ${fmtDur(c.call_time_s - a.call_time_s)}</span>`
    : `<span class="active">active ${fmtDur(Date.now() / 1000 - a.ts)}</span>`;
  const ack = a.ack
    ? `<div class="acked-by">acknowledged by ${esc(a.ack.by)} at ${fmtTime(a.ack.at)}</div>`
    : c ? "" : `<button class="ack" data-alert="${esc(a.id)}" onclick="event.stopPropagation(); ackAlert('${esc(a.id)}')">Acknowledge</button>`;
  return `<li class="${esc(a.kind)} raised${c ? " resolved" : ""}" data-alert="${esc(a.id)}">
    <span class="when">${fmtTime(a.ts)}</span> <span class="kind">${esc(a.kind)}</span>
    · <a href="#/call/${encodeURIComponent(a.call_id)}">${esc(a.call_id)}</a> (${esc(a.role)}) · score ${a.score.toFixed(2)} at ${fmtDur(a.call_time_s)} into the call · ${status}${ack}</li>`;
}

async function ackAlert(id) {
  const a = await api(`/api/v1/alerts/${encodeURIComponent(id)}/ack`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  handle({ type: "ack", alert_id: id, by: a.by, at: a.at });
}
window.ackAlert = ackAlert;

// ---- call page ---------------------------------------------------------------------------
async function showCall(id) {
  const c = await api(`/api/v1/calls/${encodeURIComponent(id)}`);
  $("call-title").textContent = `Call ${c.call_id}${c.live ? " (live)" : " (ended)"}`;
  $("call-meta").textContent = `${c.agent ? "agent " + c.agent + " · " : ""}${fmtDur(c.duration_s)} · ${c.start.protocol}, ${c.start.sample_rate} Hz ${c.start.encoding}`;
  const log = await api("/api/v1/alerts?since=0&limit=5000");
  const callAlerts = log.filter((a) => a.type === "alert" && a.call_id === id);
  const roles = c.start.roles;
  $("call-charts").innerHTML = roles.map((r) => `<h3>${esc(r)}</h3>` + timelineChart(c.timeline.filter((w) => w.role === r), callAlerts.filter((a) => a.role === r), c.duration_s)).join("");
  $("legend").innerHTML = Object.entries(COLORS).map(([k, v]) => `<span><i style="background:${v}"></i>${k}</span>`).join("") + '<span><i style="background:rgba(209,69,59,.15);height:10px"></i>alert</span>';
}

function timelineChart(windows, callAlerts, duration) {
  // Audio time, not wall time: a live call's axis ends at its latest window.
  const lastEnd = Math.max(3, ...windows.map((x) => x.end_s));
  const w = 900, h = 200, pad = 28, end = windows.length ? lastEnd : Math.max(duration, 3);
  const x = (t) => pad + (t / end) * (w - pad - 8), y = (p) => h - 20 - p * (h - 30);
  let shade = "";
  const raised = callAlerts.filter((a) => a.state === "raised");
  for (const a of raised) {
    const clear = callAlerts.find((b) => b.state === "cleared" && b.raised_id === a.id);
    const t1 = clear ? clear.call_time_s : end;
    const color = a.kind === "frustration" ? "rgba(209,69,59,.15)" : "rgba(123,79,201,.15)";
    shade += `<rect class="alert-period" x="${x(a.call_time_s)}" y="6" width="${Math.max(2, x(t1) - x(a.call_time_s))}" height="${h - 26}" fill="${color}"><title>${a.kind} ${fmtTime(a.ts)}</title></rect>`;
  }
  // One line per run of consecutive scored windows: silence is a gap, not a straight line.
  const runs = [];
  for (const s of windows.slice().sort((a, b) => a.window_index - b.window_index)) {
    if (!s.scores) { runs.push([]); continue; }
    if (!runs.length) runs.push([]);
    runs[runs.length - 1].push(s);
  }
  const lines = runs.filter((r) => r.length).flatMap((run) => Object.entries(COLORS).map(([label, color]) => {
    const pts = run.map((s) => `${x(s.end_s).toFixed(1)},${y(s.scores[label] || 0).toFixed(1)}`).join(" ");
    const width = label === "angry" || label === "fearful" ? 2 : 1.3;
    return run.length === 1
      ? `<circle cx="${x(run[0].end_s)}" cy="${y(run[0].scores[label] || 0)}" r="1.8" fill="${color}"><title>${label}</title></circle>`
      : `<polyline fill="none" stroke="${color}" stroke-width="${width}" points="${pts}"><title>${label}</title></polyline>`;
  })).join("");
  const ticks = [];
  for (let t = 0; t <= end; t += Math.max(10, Math.round(end / 8 / 10) * 10)) ticks.push(`<text x="${x(t)}" y="${h - 4}" font-size="10" fill="#6b7385">${fmtDur(t)}</text>`);
  return `<svg viewBox="0 0 ${w} ${h}" role="img" aria-label="per-class probabilities">${shade}
    <line x1="${pad}" x2="${w - 8}" y1="${y(0)}" y2="${y(0)}" stroke="#ccc"/><line x1="${pad}" x2="${w - 8}" y1="${y(1)}" y2="${y(1)}" stroke="#eee"/>
    <text x="2" y="${y(1) + 4}" font-size="10" fill="#6b7385">1.0</text><text x="2" y="${y(0) + 4}" font-size="10" fill="#6b7385">0</text>
    ${lines}${ticks.join("")}</svg>`;
}

// ---- routing -----------------------------------------------------------------------------
function route() {
  const m = location.hash.match(/^#\/call\/(.+)$/);
  $("grid-view").hidden = !!m;
  $("call-view").hidden = !m;
  if (m) showCall(decodeURIComponent(m[1])).catch((e) => { $("call-title").textContent = String(e); });
  else render();
}
window.addEventListener("hashchange", route);
setInterval(() => { if (!location.hash.startsWith("#/call/")) render(); }, 1000);  // durations tick
connect();
route();
