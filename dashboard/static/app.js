// callmon supervisor dashboard: live grid with filters, alert feed, ended calls, live call
// timeline, opt-in alert notifications. No build step.
"use strict";

const COLORS = { neutral: "#8a94a6", happy: "#e0a030", sad: "#3b7dd8", angry: "#d1453b", fearful: "#7b4fc9" };
const SHADE = { frustration: "rgba(209,69,59,.15)", distress: "rgba(123,79,201,.15)" };
const SPARK_WINDOWS = 180;            // about three minutes at a one-second hop
const calls = new Map();              // call_id -> {summary, history: [{t, f, d}], callTime}
const alerts = new Map();             // raised alert id -> alert (with .ack, and .cleared once it ends)
let ended = [];                       // GET /api/v1/ended-calls
let source = null;
let current = null;                   // the call page: {id, detail, alerts}

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
const fmtDur = (s) => { s = Math.max(0, Math.floor(s)); return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`; };
const fmtTime = (ts) => new Date(ts * 1000).toLocaleTimeString();
const store = {
  get(key, fallback) { try { return JSON.parse(localStorage.getItem("callmon." + key)) ?? fallback; } catch { return fallback; } },
  set(key, value) { try { localStorage.setItem("callmon." + key, JSON.stringify(value)); } catch { /* private mode */ } },
};

async function api(path, options) {
  const r = await fetch(path, options);
  if (!r.ok) {
    let detail = "";
    try { detail = (await r.json()).detail || ""; } catch { /* not JSON */ }
    const error = new Error(detail || `${path}: HTTP ${r.status}`);
    error.status = r.status;
    throw error;
  }
  return r.json();
}

// ---- state loading (also after every reconnect) -----------------------------------------
// What is heard while the live calls and the feed are being fetched waits, and is applied
// after their answer, which was read before it: applied first and then replaced by the
// answer, a call that ended meanwhile came back as a live card for good, and an alert raised
// meanwhile was missing from the feed.
let heardWhileLoading = null;
async function reload() {
  // Every live call with the points its sparkline draws, in one request.
  // The feed: the last hour's alerts, the latest first if there are more (a busy hour's
  // log is mostly call events, and its earliest entries are the least useful).
  const heard = heardWhileLoading = [];
  let live, log;
  try {
    [live, log] = await Promise.all([api(`/api/v1/calls?history=${SPARK_WINDOWS}`),
                                     api("/api/v1/alerts?since=1h&type=alert&latest=true&limit=5000")]);
  } finally {
    if (heardWhileLoading === heard) heardWhileLoading = null;
    if (!log) for (const m of heard) handle(m);  // no answer: the page goes on as it was
  }
  calls.clear();
  for (const { history, call_time_s, ...summary } of live) {
    calls.set(summary.call_id, {
      summary, history: history.map(([t, f, d]) => ({ t, f, d })), callTime: call_time_s });
  }
  reorder = true;
  alerts.clear();
  for (const a of log) if (a.type === "alert") noteAlert(a);
  // An alert still active on a live call, raised before the last hour, is listed too.
  for (const c of calls.values()) {
    for (const a of Object.values(c.summary.alerts || {})) if (a.state === "raised" && !alerts.has(a.id)) noteAlert(a);
  }
  for (const m of heard) handle(m);
  await loadEnded();
  if (current) await showCall(current.id);
  render();
}

function callEntry(summary, timeline) {
  const history = historyOf(timeline);
  const callTime = timeline.reduce((t, w) => Math.max(t, w.end_s), 0);
  return { summary, history, callTime };
}

async function loadEnded() {
  ended = await api("/api/v1/ended-calls?since=4h&limit=100");
  renderEnded();
}
// Reloaded 800 ms after a call ends, the calls that end meanwhile included: at most that
// often, and never put off by the next call that ends (calls end every few hundred ms on a
// busy centre's dashboard; putting it off again each time, it never reloaded).
let endedTimer = null;
function scheduleEnded() {
  if (!endedTimer) endedTimer = setTimeout(() => { endedTimer = null; loadEnded().catch(console.error); }, 800);
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

// ---- notifications (opt-in, remembered in this browser) -----------------------------------
let notifyOn = store.get("notify", false);
let audio = null;
function showNotifyButton() {
  const b = $("notify");
  b.setAttribute("aria-pressed", String(notifyOn));
  b.textContent = notifyOn ? "Notify on alert: on" : "Notify on alert: off";
}
$("notify").addEventListener("click", async () => {
  notifyOn = !notifyOn;
  store.set("notify", notifyOn);
  showNotifyButton();
  if (notifyOn && "Notification" in window && Notification.permission === "default") {
    try { await Notification.requestPermission(); } catch { /* the sound still plays */ }
  }
});
function notify(a) {
  if (!notifyOn) return;
  document.body.dataset.notified = String(Number(document.body.dataset.notified || 0) + 1);
  try {  // a short two-tone chime: no sound file to ship
    audio = audio || new (window.AudioContext || window.webkitAudioContext)();
    for (const [i, f] of [[0, 880], [1, 660]]) {
      const o = audio.createOscillator(), g = audio.createGain();
      o.frequency.value = f; g.gain.value = 0.08;
      o.connect(g).connect(audio.destination);
      o.start(audio.currentTime + i * 0.18); o.stop(audio.currentTime + i * 0.18 + 0.15);
    }
  } catch { /* no audio device */ }
  if ("Notification" in window && Notification.permission === "granted") {
    const n = new Notification(`callmon: ${a.kind} on ${a.call_id}`, {
      body: `${a.role}, score ${a.score.toFixed(2)}, ${fmtDur(a.call_time_s)} into the call`, tag: a.id });
    n.onclick = () => { window.focus(); location.hash = `#/call/${encodeURIComponent(a.call_id)}`; };
  }
}

// ---- live updates ------------------------------------------------------------------------
function connect() {
  if (source) source.close();
  source = new EventSource("/api/v1/events");
  source.onopen = () => { $("status").className = "status on"; reload().catch(console.error); };
  source.onerror = () => { $("status").className = "status off"; };
  source.onmessage = (e) => {
    let m;
    try { m = JSON.parse(e.data); } catch { m = null; }
    if (readable(m)) handle(m);
    else console.warn("left out a live message this page cannot read:", e.data.slice(0, 200));
  };
}

// Whether a live message holds what this page reads of it. One that does not (a broken
// writer's, another version's) threw on every redraw of its card, which stopped the whole
// grid's redraw, and left a point that is not a number in its sparkline.
const isNumber = (v) => typeof v === "number" && Number.isFinite(v);
const strings = (m, ...keys) => keys.every((k) => typeof m[k] === "string");
function readable(m) {
  if (!m || typeof m !== "object") return false;
  if (m.type === "ack") return strings(m, "alert_id", "by") && isNumber(m.at);
  if (!strings(m, "call_id")) return false;
  if (m.type === "window") {
    return isNumber(m.end_s) && [m.frustration, m.distress].every((v) => v === null || isNumber(v));
  }
  if (m.type === "alert") {
    return strings(m, "id", "role", "kind", "state") && isNumber(m.score) && isNumber(m.call_time_s) && isNumber(m.ts);
  }
  return strings(m, "id", "type") && isNumber(m.ts);  // call_started, call_ended
}

// A call this page does not know yet (its call_started raced with a reload, or came before
// the page connected): fetch it once, then its window events land normally. (Results heard
// while the live calls were being fetched wait for that answer, which holds their calls:
// every live call's next result fetching it meanwhile was tens of requests on opening a page
// of 100 calls.)
const fetching = new Set();
function ensureCall(id) {
  if (calls.has(id) || fetching.has(id)) return;
  fetching.add(id);
  api(`/api/v1/calls/${encodeURIComponent(id)}?tail=${SPARK_WINDOWS * 2}`)
    .then((detail) => {
      if (detail.live && !calls.has(id)) { calls.set(id, callEntry(detail, detail.timeline)); reorder = true; }
      scheduleRender();
    })
    .catch(console.error)
    .finally(() => fetching.delete(id));
}

function handle(m) {
  if (heardWhileLoading) { heardWhileLoading.push(m); return; }
  if (current && m.call_id === current.id) onCurrentCall(m);
  if (m.type === "window") {
    const c = calls.get(m.call_id);
    if (!c) { ensureCall(m.call_id); return; }
    c.summary.last = c.summary.last || {};
    c.callTime = Math.max(c.callTime, m.end_s);
    if (m.scores) c.summary.last[m.role] = m;  // a silent window keeps the last emotion shown
    const newest = c.history.length ? c.history[c.history.length - 1].t : -Infinity;
    if (m.role === "customer" && m.frustration !== null && m.end_s > newest) {  // once each
      c.history.push({ t: m.end_s, f: m.frustration, d: m.distress });
      if (c.history.length > SPARK_WINDOWS) c.history.shift();
    }
    changed(c);
  } else if (m.type === "alert") {
    if (m.state === "raised" && !alerts.has(m.id)) notify(m);
    noteAlert(m);
    const c = calls.get(m.call_id);
    if (c) { c.summary.alerts[`${m.role}:${m.kind}`] = m; changed(c, true); }
    scheduleRender();
  } else if (m.type === "ack") {
    const ack = { by: m.by, at: m.at, note: m.note };
    const a = alerts.get(m.alert_id);
    if (a) a.ack = ack;
    for (const c of calls.values()) {
      for (const a2 of Object.values(c.summary.alerts)) if (a2.id === m.alert_id) { a2.ack = ack; changed(c, true); }
    }
    if (current && current.alerts.some((a2) => a2.id === m.alert_id)) {
      for (const a2 of current.alerts) if (a2.id === m.alert_id) a2.ack = ack;
      scheduleCall();
    }
    scheduleRender();
  } else if (m.type === "call_started") {
    // A call announced again (its node does after every Redis outage) keeps what it shows.
    const c = calls.get(m.call_id);
    if (c) c.summary.start = m;
    else calls.set(m.call_id, { summary: { call_id: m.call_id, start: m, agent: (m.metadata || {}).agent, last: {}, alerts: {}, live: true }, history: [], callTime: 0 });
    reorder = true;
    scheduleRender();
  } else if (m.type === "call_ended") {
    calls.delete(m.call_id);
    reorder = true;
    scheduleEnded();
    scheduleRender();
  }
}

// A hundred calls send a hundred window results a second: the grid is drawn at most
// RENDER_EVERY_MS apart, only the cards whose call changed are rebuilt, and the order (most
// at risk first) is taken again every REORDER_EVERY_MS, or at once when a call comes or goes,
// an alert is raised, cleared or acknowledged, or a filter changes: cards do not jump under
// the pointer with every score. (Rebuilding the whole grid on every result kept the page's
// main thread 90 % busy at 100 calls: docs/results/bench_dashboard_render.json.)
const RENDER_EVERY_MS = 250;
const REORDER_EVERY_MS = 2000;
let reorder = true, orderedAt = 0, order = [];
let pending = false, renderedAt = 0;
function changed(c, urgent = false) {
  c.v = (c.v || 0) + 1;
  if (urgent) reorder = true;
  scheduleRender();
}
function scheduleRender() {
  if (pending) return;
  pending = true;
  setTimeout(() => requestAnimationFrame(() => { pending = false; renderedAt = Date.now(); render(); }),
             Math.max(0, renderedAt + RENDER_EVERY_MS - Date.now()));
}

// ---- filters (remembered in this browser) ------------------------------------------------
const FILTERS = ["search", "queue", "agent", "kind", "alerting"];
let filters = store.get("filters", {});
function readFilters() {
  filters = { search: $("f-search").value.trim(), queue: $("f-queue").value, agent: $("f-agent").value,
              kind: $("f-kind").value, alerting: $("f-alerting").checked };
  store.set("filters", filters);
  reorder = true;
  scheduleRender();
}
function restoreFilters() {
  $("f-search").value = filters.search || "";
  $("f-kind").value = filters.kind || "";
  $("f-alerting").checked = !!filters.alerting;
  for (const k of FILTERS) {
    const el = $("f-" + k);
    el.addEventListener(el.type === "search" ? "input" : "change", readFilters);
  }
}
const metaOf = (s) => (s.start && s.start.metadata) || {};
const agentOf = (s) => s.agent || metaOf(s).agent || "";
const activeAlerts = (s) => Object.values(s.alerts || {}).filter((a) => a.state === "raised");

function passes(c) {
  const s = c.summary;
  if (filters.search && !s.call_id.toLowerCase().includes(filters.search.toLowerCase())) return false;
  if (filters.queue && metaOf(s).queue !== filters.queue) return false;
  if (filters.agent && agentOf(s) !== filters.agent) return false;
  const active = activeAlerts(s);
  if (filters.alerting && !active.length) return false;
  if (filters.kind && !active.some((a) => a.kind === filters.kind)) return false;
  return true;
}

function options(id, label, values) {
  // Keep the chosen value listed even when no live call has it now.
  const chosen = $(id).value || filters[id.slice(2)] || "";
  const all = [...new Set([...values, chosen].filter(Boolean))].sort();
  setHTML(id, `<option value="">${label}</option>` + all.map((v) => `<option${v === chosen ? " selected" : ""}>${esc(v)}</option>`).join(""));
}

// ---- rendering ---------------------------------------------------------------------------
function risk(c) {
  const active = activeAlerts(c.summary).some((a) => !a.ack);
  const last = (c.summary.last || {}).customer || {};
  return (active ? 2 : 0) + Math.max(last.frustration || 0, last.distress || 0);
}

function spark(history, thresholds) {
  const w = 260, h = 52, left = 18, top = 4, bottom = 4;
  const y = (v) => (top + (1 - v) * (h - top - bottom)).toFixed(1);
  const t = thresholds || {};
  // Scale: 0 and 1 on the left; each kind's alert threshold dashed and labelled.
  let svg = `<text x="0" y="${+y(1) + 4}" class="axis">1</text><text x="0" y="${+y(0)}" class="axis">0</text>
    <line x1="${left}" x2="${w}" y1="${y(0)}" y2="${y(0)}" class="base"/>`;
  // The higher threshold is labelled above its line, the lower one below: never on top of each other.
  const kinds = [["frustration", "var(--frus)"], ["distress", "var(--dist)"]].filter(([k]) => t[k] != null)
    .sort((a, b) => t[b[0]] - t[a[0]]);
  kinds.forEach(([kind, colour], i) => {
    const on = t[kind];
    const ty = i === 0 ? +y(on) - 2 : +y(on) + 8;
    svg += `<line x1="${left}" x2="${w}" y1="${y(on)}" y2="${y(on)}" stroke="${colour}" stroke-opacity="0.5" stroke-dasharray="3 3"/>
      <text x="${w - 2}" y="${ty}" class="threshold" fill="${colour}" text-anchor="end">${kind} alert ${on.toFixed(2)}</text>`;
  });
  if (history.length >= 2) {
    const n = history.length;
    const pts = (key) => history.map((p, i) => `${(left + i / (n - 1) * (w - left)).toFixed(1)},${y(p[key])}`).join(" ");
    svg += `<polyline fill="none" stroke="var(--dist)" stroke-width="1.5" points="${pts("d")}"/>
      <polyline fill="none" stroke="var(--frus)" stroke-width="2" points="${pts("f")}"/>`;
  }
  return `<svg class="spark" viewBox="0 0 ${w} ${h}" role="img" aria-label="frustration (red) and distress (purple), last three minutes">${svg}</svg>`;
}

function badges(summary) {
  return activeAlerts(summary)
    .map((a) => `<span class="badge ${a.kind}${a.ack ? " acked" : ""}" title="${a.ack ? "acknowledged by " + esc(a.ack.by) : "unacknowledged"}">${a.kind}</span>`).join("");
}

function showSummary() {
  const raised = [...alerts.values()].filter((a) => !a.ack && !a.cleared).length;
  $("summary").textContent = `${calls.size} live call${calls.size === 1 ? "" : "s"} · ${raised} unacknowledged alert${raised === 1 ? "" : "s"}`;
}

function render() {
  showSummary();
  if (current) return;
  const all = [...calls.values()];
  options("f-queue", "All queues", all.map((c) => metaOf(c.summary).queue));
  options("f-agent", "All agents", all.map((c) => agentOf(c.summary)));
  if (reorder || Date.now() - orderedAt >= REORDER_EVERY_MS) {
    order = all.filter(passes).sort((a, b) => risk(b) - risk(a)).map((c) => c.summary.call_id);
    reorder = false;
    orderedAt = Date.now();
  }
  const list = order.map((id) => calls.get(id)).filter(Boolean);
  $("f-count").textContent = list.length === all.length ? "" : `showing ${list.length} of ${all.length}`;
  drawCards(list, all.length);
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
  const m = metaOf(s);
  const parts = [];
  if (agentOf(s)) parts.push("agent " + esc(agentOf(s)));
  if (m.queue) parts.push("queue " + esc(m.queue));
  const caller = m.caller || m.from || m.caller_number;
  if (caller) parts.push("caller " + esc(caller));
  return parts.join(" · ");
}

// The cards in `list`'s order, each element kept while its call lives and rebuilt only
// when the call changed (or the entry was replaced by a reload).
const cardEls = new Map();  // call_id -> {el, entry, v}
function drawCards(list, total) {
  const box = $("calls");
  if (!list.length) {
    cardEls.clear();
    setHTML("calls", `<p class="empty">${total ? "No live call matches the filters." : "No live calls."}</p>`);
    return;
  }
  if (!cardEls.size) { box.innerHTML = ""; delete rendered.calls; }  // the "no calls" line
  const keep = new Set(list.map((c) => c.summary.call_id));
  for (const [id, k] of cardEls) if (!keep.has(id)) { k.el.remove(); cardEls.delete(id); }
  let prev = null;
  for (const c of list) {
    const id = c.summary.call_id;
    let k = cardEls.get(id);
    if (!k) { k = { el: document.createElement("div") }; cardEls.set(id, k); }
    if (k.entry !== c || k.v !== c.v) { fillCard(k.el, c); k.entry = c; k.v = c.v; }
    const at = prev ? prev.nextSibling : box.firstChild;
    if (at !== k.el) box.insertBefore(k.el, at);
    prev = k.el;
  }
}

function fillCard(el, c) {
  const s = c.summary, last = (s.last || {}).customer;
  const alerting = activeAlerts(s).some((a) => !a.ack);
  const emotion = last && last.emotion ? `${esc(last.emotion)} <span class="conf">${Math.round(last.confidence * 100)}%</span>` : '<span class="conf">listening…</span>';
  const scores = last && last.frustration !== null ? `frustration ${last.frustration.toFixed(2)} · distress ${last.distress.toFixed(2)}` : "";
  el.className = `card${alerting ? " alerting" : ""}`;
  el.dataset.call = s.call_id;
  el.onclick = () => { location.hash = `#/call/${encodeURIComponent(s.call_id)}`; };
  el.innerHTML = `<div class="top"><span class="id">${esc(s.call_id)}</span><span class="dur" title="call time: audio received so far">${fmtDur(c.callTime)}</span></div>
    <div class="agent">${who(s) || "&nbsp;"}</div>
    <div class="emotion">${emotion}</div>
    <div>${badges(s)}</div>
    ${spark(c.history, s.start && s.start.alert_thresholds)}
    <div class="scores">${scores}</div>`;
}

function alertItem(a) {
  // Raised at (wall clock, and call time), how long it has been or was active, how it
  // ended, and who acknowledged it. A resolved alert needs no acknowledgement.
  const c = a.cleared;
  const status = c
    ? `<span class="ended">${c.reason === "call_ended" ? "call ended" : "cleared"} after ${fmtDur(c.call_time_s - a.call_time_s)}</span>`
    : `<span class="active">active ${fmtDur(Date.now() / 1000 - a.ts)}</span>`;
  const ack = a.ack
    ? `<div class="acked-by">acknowledged by ${esc(a.ack.by)} at ${fmtTime(a.ack.at)}${a.ack.note ? ": " + esc(a.ack.note) : ""}</div>`
    : c ? "" : `<button class="ack" data-alert="${esc(a.id)}" onclick="event.stopPropagation(); ackAlert('${esc(a.id)}')">Acknowledge</button>`;
  return `<li class="${esc(a.kind)} raised${c ? " resolved" : ""}" data-alert="${esc(a.id)}">
    <span class="when">${fmtTime(a.ts)}</span> <span class="kind">${esc(a.kind)}</span>
    · <a href="#/call/${encodeURIComponent(a.call_id)}">${esc(a.call_id)}</a> (${esc(a.role)}) · score ${a.score.toFixed(2)} at ${fmtDur(a.call_time_s)} into the call · ${status}${ack}</li>`;
}

const score = (v) => v == null ? "–" : v.toFixed(2);
function renderEnded() {
  setHTML("ended-rows", ended.length ? ended.map((e) => `<tr data-call="${esc(e.call_id)}"${e.alerts_raised ? ' class="had-alerts"' : ""}>
    <td><a href="#/call/${encodeURIComponent(e.call_id)}">${esc(e.call_id)}</a></td><td>${fmtTime(e.ended_at)}</td>
    <td>${fmtDur(e.duration_s || 0)}</td><td>${esc(e.agent || "")}</td><td>${esc(e.metadata.queue || "")}</td>
    <td>${esc(e.reason)}</td><td>${e.alerts_raised}</td><td>${score(e.peak_frustration)}</td><td>${score(e.peak_distress)}</td></tr>`).join("")
    : '<tr><td colspan="9" class="empty">No calls ended in the last 4 hours.</td></tr>');
}

async function ackAlert(id) {
  const a = await api(`/api/v1/alerts/${encodeURIComponent(id)}/ack`, { method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" });
  handle({ type: "ack", alert_id: id, by: a.by, at: a.at, note: a.note });
}
window.ackAlert = ackAlert;

// ---- call page: follows the call live ----------------------------------------------------
async function showCall(id) {
  const shown = current = { id, detail: null, alerts: [], early: [] };
  $("call-charts").innerHTML = "";
  $("call-meta").textContent = "";
  $("legend").innerHTML = "";
  $("call-feed").hidden = true;
  $("call-title").textContent = `Call ${id}`;
  let detail;
  try {
    detail = await api(`/api/v1/calls/${encodeURIComponent(id)}`);
  } catch (e) {
    if (current !== shown) return;
    $("call-title").textContent = e.status === 404
      ? `No call ${id}: unknown, or it ended more than 24 hours ago.` : `Call ${id}: ${e.message}`;
    return;
  }
  // The user moved on meanwhile, or the page was shown again (a reload re-fetches it): that
  // answer, not this older one, is the page's.
  if (current !== shown) return;
  current.detail = detail;
  current.alerts = detail.alert_history;
  // What the call sent while the answer was on the way, unless the answer holds it.
  for (const m of current.early) if (!answered(m)) addToCall(m);
  current.early = [];
  drawCall();
}

function answered(m) {
  const d = current.detail;
  if (m.type === "window") {
    return d.timeline.some((w) => w.window_index === m.window_index && w.role === m.role && w.channel === m.channel);
  }
  if (m.type === "alert") return current.alerts.some((a) => a.id === m.id);
  return m.type === "call_ended" && !d.live;
}

function onCurrentCall(m) {
  if (!current.detail) current.early.push(m);  // kept until the page's answer comes
  else if (!answered(m) && addToCall(m)) scheduleCall();  // a message heard twice, once
}

function addToCall(m) {
  const d = current.detail;
  if (m.type === "window") d.timeline.push(m);
  else if (m.type === "alert") current.alerts.push(m);
  else if (m.type === "call_ended") { d.live = false; d.duration_s = m.duration_s; d.end = m; }
  else return false;
  return true;
}
let callTimer = null;
function scheduleCall() { if (!callTimer) callTimer = setTimeout(() => { callTimer = null; if (current) drawCall(); }, 500); }

function drawCall() {
  const c = current.detail;
  const audioTime = c.timeline.reduce((t, w) => Math.max(t, w.end_s), 0);
  const length = c.live ? audioTime : c.duration_s;
  $("call-title").textContent = `Call ${c.call_id}${c.live ? " (live)" : " (ended)"}`;
  const meta = [who(c), `${c.live ? "" : "lasted "}${fmtDur(length)} of call time`,
                `${c.start.protocol}, ${c.start.sample_rate} Hz ${c.start.encoding}`,
                `started ${fmtTime(c.start.ts)}`];
  if (c.end) meta.push(`ended ${fmtTime(c.end.ts)} (${c.end.reason})`);
  $("call-meta").innerHTML = meta.filter(Boolean).join(" · ");
  $("call-charts").innerHTML = c.start.roles.map((r) => `<h3>${esc(r)}</h3>` + timelineChart(
    c.timeline.filter((w) => w.role === r), current.alerts.filter((a) => a.role === r), length)).join("");
  // The call's alerts, newest first, each with how it ended and who acknowledged it.
  const raised = current.alerts.filter((a) => a.state === "raised").map((a) => ({
    ...a, cleared: current.alerts.find((b) => b.state === "cleared" && b.raised_id === a.id) }))
    .sort((a, b) => b.ts - a.ts);
  $("call-feed").hidden = false;
  setHTML("call-alerts", raised.length ? raised.map(alertItem).join("") : '<li class="empty">No alerts on this call.</li>');
  $("legend").innerHTML = Object.entries(COLORS).map(([k, v]) => `<span><i style="background:${v}"></i>${k}</span>`).join("")
    + Object.entries(SHADE).map(([k, v]) => `<span><i class="shade" style="background:${v}"></i>${k} alert</span>`).join("");
}

function timelineChart(windows, callAlerts, duration) {
  // Call time, not wall time: a live call's axis ends at its latest window.
  const lastEnd = Math.max(3, ...windows.map((x) => x.end_s));
  // As wide as the page (a fixed viewBox would leave margins on a wide screen).
  const w = Math.max(480, $("call-charts").clientWidth || 900), h = 200, pad = 28;
  const end = windows.length ? lastEnd : Math.max(duration, 3);
  const x = (t) => pad + (t / end) * (w - pad - 8), y = (p) => h - 20 - p * (h - 30);
  let shade = "";
  for (const a of callAlerts.filter((a) => a.state === "raised")) {
    const clear = callAlerts.find((b) => b.state === "cleared" && b.raised_id === a.id);
    const t1 = clear ? clear.call_time_s : end;
    shade += `<rect class="alert-period ${a.kind}" x="${x(a.call_time_s)}" y="6" width="${Math.max(2, x(t1) - x(a.call_time_s))}" height="${h - 26}" fill="${SHADE[a.kind]}"><title>${a.kind} from ${fmtDur(a.call_time_s)} (${fmtTime(a.ts)})</title></rect>`;
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
  return `<svg viewBox="0 0 ${w} ${h}" role="img" aria-label="per-class probabilities over call time">${shade}
    <line x1="${pad}" x2="${w - 8}" y1="${y(0)}" y2="${y(0)}" stroke="#ccc"/><line x1="${pad}" x2="${w - 8}" y1="${y(1)}" y2="${y(1)}" stroke="#eee"/>
    <text x="2" y="${y(1) + 4}" font-size="10" fill="#6b7385">1.0</text><text x="2" y="${y(0) + 4}" font-size="10" fill="#6b7385">0</text>
    ${lines}${ticks.join("")}</svg>`;
}

// ---- routing -----------------------------------------------------------------------------
function route() {
  const m = location.hash.match(/^#\/call\/(.+)$/);
  $("grid-view").hidden = !!m;
  $("call-view").hidden = !m;
  if (m) showCall(decodeURIComponent(m[1])).catch(console.error);
  else { current = null; render(); }
}
window.addEventListener("hashchange", route);
setInterval(() => { if (!current) render(); }, 1000);  // "active for" ticks
showNotifyButton();
restoreFilters();
connect();
route();
