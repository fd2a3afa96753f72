// omgw technician page. Hand-written, no third-party code: fetch + EventSource + small SVG charts.
// Everything shown comes from the health process's /api/ endpoints (docs/web.md).
"use strict";

const WINDOW_MS = 10 * 60 * 1000;
const state = { csrf: null, user: null, points: [], source: null, lastTick: 0 };
const $ = (sel) => document.querySelector(sel);

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined) continue;
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}
const fmt = (v, digits = 1, unit = "") => (v === null || v === undefined || Number.isNaN(v)) ? "–" :
  (typeof v === "number" ? v.toFixed(digits) : String(v)) + (unit ? " " + unit : "");
const ago = (s) => s === null || s === undefined ? "–" : s < 90 ? `${s.toFixed(0)} s ago` :
  s < 5400 ? `${(s / 60).toFixed(0)} min ago` : `${(s / 3600).toFixed(1)} h ago`;
const dur = (s) => s === null || s === undefined ? "–" : s < 120 ? `${s.toFixed(0)} s` :
  s < 7200 ? `${(s / 60).toFixed(0)} min` : s < 172800 ? `${(s / 3600).toFixed(1)} h` : `${(s / 86400).toFixed(1)} d`;
const bytes = (b) => b === null || b === undefined ? "–" : b < 1024 ? `${b} B` : b < 1048576 ? `${(b / 1024).toFixed(1)} KiB` :
  b < 1073741824 ? `${(b / 1048576).toFixed(1)} MiB` : `${(b / 1073741824).toFixed(2)} GiB`;
const timeOf = (ns) => ns ? new Date(ns / 1e6).toLocaleTimeString() : "–";

async function api(path, opts = {}) {
  const headers = Object.assign({ "Accept": "application/json" }, opts.headers || {});
  if (opts.method === "POST") {
    headers["Content-Type"] = "application/json";
    if (state.csrf) headers["X-CSRF-Token"] = state.csrf;
  }
  const r = await fetch(path, Object.assign({ credentials: "same-origin", cache: "no-store" }, opts, { headers }));
  let body = null;
  try { body = await r.json(); } catch (e) { body = null; }
  return { status: r.status, ok: r.ok, body, retryAfter: r.headers.get("Retry-After") };
}

// ---- login ---------------------------------------------------------------------------------

function showLogin(message) {
  stopLive();
  state.user = state.csrf = null;
  $("#app").hidden = true; $("#logout").hidden = true; $("#who").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
}

async function login(ev) {
  ev.preventDefault();
  const btn = $("#login-submit");
  btn.disabled = true;
  try {
    const r = await api("/api/login", { method: "POST",
      body: JSON.stringify({ user: $("#login-user").value, password: $("#login-password").value }) });
    if (r.ok) { $("#login-password").value = ""; startApp(r.body); return; }
    const msg = r.body && r.body.error ? r.body.error : `login failed (${r.status})`;
    $("#login-error").textContent = r.status === 429 ? `Locked: ${msg}` : msg;
    $("#login-error").dataset.status = String(r.status);
  } finally { btn.disabled = false; }
}

async function logout() {
  await api("/api/logout", { method: "POST", body: "{}" });
  showLogin("Logged out.");
}

// ---- data ----------------------------------------------------------------------------------

async function startApp(session) {
  state.user = session.user; state.csrf = session.csrf;
  $("#login").hidden = true; $("#app").hidden = false; $("#logout").hidden = false;
  $("#who").textContent = session.user;
  const [t, c, h, s] = await Promise.all([api("/api/telemetry?minutes=10"), api("/api/chargers"),
    api("/api/health"), api("/api/snapshots")]);
  if ([t, c, h, s].some((r) => r.status === 401)) { showLogin("Session ended; log in again."); return; }
  state.points = t.body ? t.body.points : [];
  renderChargers(c.body); renderHealth(h.body); renderSnapshots(s.body); renderCharts();
  startLive();
  setInterval(refreshSnapshots, 5000);
}

async function refreshSnapshots() {
  if (!state.user) return;
  const r = await api("/api/snapshots");
  if (r.ok) renderSnapshots(r.body);
}

function startLive() {
  stopLive();
  const src = new EventSource("/api/stream");
  state.source = src;
  src.addEventListener("tick", (e) => {
    const doc = JSON.parse(e.data);
    state.lastTick = Date.now();
    $("#live").classList.add("on");
    if (doc.point && (!state.points.length || doc.point.t > state.points[state.points.length - 1].t)) {
      state.points.push(doc.point);
      const cutoff = doc.point.t - WINDOW_MS;
      while (state.points.length && state.points[0].t < cutoff) state.points.shift();
    }
    renderChargers(doc.chargers); renderHealth(doc.health); renderCharts();
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  });
  src.addEventListener("logout", () => showLogin("Session ended; log in again."));
  src.onerror = () => { $("#live").classList.remove("on"); };
}
function stopLive() { if (state.source) { state.source.close(); state.source = null; } }

// ---- chargers ------------------------------------------------------------------------------

function connectorsCell(conns) {
  const td = el("td", { class: "connectors" });
  const keys = Object.keys(conns || {}).sort();
  if (!keys.length) td.textContent = "–";
  for (const k of keys) {
    const c = conns[k];
    const bad = c.status === "Faulted" || (c.error_code && c.error_code !== "NoError");
    const txt = `#${k} ${c.status || "?"}` + (c.error_code && c.error_code !== "NoError" ? ` (${c.error_code})` : "") +
      (c.vendor_error_code ? ` [${c.vendor_error_code}]` : "");
    td.append(el("div", { class: bad ? "bad" : "", "data-connector": k, text: txt }));
  }
  return td;
}

function renderChargers(doc) {
  if (!doc) return;
  const tbody = $("#chargers-table tbody");
  const rows = doc.chargers.map((c) => {
    const b = c.boot || {};
    const tx = c.transaction;
    const lat = c.csms_latency_ms || {};
    const v = c.value;
    const tr = el("tr", { "data-cp": c.cp_id, "data-connected": String(!!c.connected),
      "data-frames-up": v ? String(v.frames_up) : "", "data-last-frame-ns": c.last_frame_ns || "" },
      el("th", { text: c.cp_id }),
      el("td", { class: c.connected ? "ok link" : "bad link", text: (c.connected ? "online" : "offline") +
        (c.subprotocol ? ` · ${c.subprotocol}` : "") }),
      el("td", { text: b.vendor ? `${b.vendor} ${b.model || ""} fw ${b.firmware || "?"}` +
        (c.boot_status ? ` · ${c.boot_status}` : "") : "–" }),
      connectorsCell(c.connectors),
      el("td", { class: "tx", text: tx ? `${tx.id} on #${tx.connector} · ${fmt((tx.energy_wh ?? 0) / 1000, 2, "kWh")}` : "none" }),
      el("td", { class: "num", text: lat.p50 !== undefined && lat.p50 !== null ? `p50 ${fmt(lat.p50, 0)} / p95 ${fmt(lat.p95, 0)} ms` : "–" }),
      el("td", { class: "num", text: ago(c.last_frame_age_s) }),
      el("td", { class: "num value", text: v ? `↑${v.frames_up} ↓${v.frames_down} · reconnects ${v.reconnects ?? 0}` +
        (v.invalid_frames ? ` · invalid ${v.invalid_frames}` : "") : "–" }));
    return tr;
  });
  tbody.replaceChildren(...rows);
  const vc = doc.value_channel;
  $("#value-channel").textContent = vc ? `value channel up ${dur(vc.uptime_s)}, ${vc.connected} connected; tap sent ` +
    `${vc.tap ? vc.tap.sent_records : "?"} records` : "value channel status socket not answering";
}

// ---- charts (SVG, hand-written) ------------------------------------------------------------

const PH = ["L1", "L2", "L3"];
const QUANT = [["V", "Voltage", "V"], ["I", "Current", "A"], ["P", "Active power", "W"]];

function chartBox(container, id, title) {
  let box = document.getElementById(id);
  if (!box) {
    box = el("div", { class: "chart", id },
      el("div", { class: "title" }, el("span", { text: title }), el("span", { class: "legend" })),
      document.createElementNS("http://www.w3.org/2000/svg", "svg"));
    box.querySelector("svg").setAttribute("viewBox", "0 0 300 120");
    box.querySelector("svg").setAttribute("preserveAspectRatio", "none");
    container.append(box);
  }
  return box;
}

// series: [{name, values: [[tMs, v|null], ...]}]; draws lines with gaps where v is null.
function drawChart(box, series, unit, tEnd) {
  const svg = box.querySelector("svg");
  const W = 300, H = 120, L = 34, R = 4, T = 6, B = 14;
  const t0 = tEnd - WINDOW_MS;
  let lo = Infinity, hi = -Infinity, n = 0, lastT = 0;
  for (const s of series) for (const [t, v] of s.values) {
    if (v === null || t < t0) continue;
    lo = Math.min(lo, v); hi = Math.max(hi, v); n++; lastT = Math.max(lastT, t);
  }
  if (!n) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { hi += 0.5; lo -= 0.5; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x = (t) => L + (t - t0) / WINDOW_MS * (W - L - R);
  const y = (v) => T + (hi - v) / (hi - lo) * (H - T - B);
  const NS = "http://www.w3.org/2000/svg";
  const kids = [];
  for (const frac of [0, 0.5, 1]) {
    const v = lo + (hi - lo) * frac;
    const line = document.createElementNS(NS, "line");
    line.setAttribute("class", "grid");
    line.setAttribute("x1", L); line.setAttribute("x2", W - R); line.setAttribute("y1", y(v)); line.setAttribute("y2", y(v));
    const label = document.createElementNS(NS, "text");
    label.setAttribute("x", 1); label.setAttribute("y", y(v) + 3); label.textContent = fmt(v, Math.abs(hi - lo) < 10 ? 1 : 0);
    kids.push(line, label);
  }
  const tl = document.createElementNS(NS, "text");
  tl.setAttribute("x", L); tl.setAttribute("y", H - 2); tl.textContent = "−10 min";
  const tr = document.createElementNS(NS, "text");
  tr.setAttribute("x", W - R - 22); tr.setAttribute("y", H - 2); tr.textContent = "now";
  kids.push(tl, tr);
  const legend = box.querySelector(".legend");
  legend.replaceChildren();
  series.forEach((s, i) => {
    let d = "", pen = false;
    for (const [t, v] of s.values) {
      if (v === null || t < t0) { pen = false; continue; }
      d += (pen ? "L" : "M") + x(t).toFixed(1) + " " + y(v).toFixed(1);
      pen = true;
    }
    const p = document.createElementNS(NS, "path");
    p.setAttribute("class", `line s${i % 6}`); p.setAttribute("d", d || "M0 0");
    kids.push(p);
    const last = [...s.values].reverse().find(([, v]) => v !== null);
    legend.append(el("span", { class: `s${i % 6}`, text: `${s.name} ${last ? fmt(last[1], 1) : "–"}${unit ? " " + unit : ""}` }));
  });
  svg.replaceChildren(...kids);
  svg.setAttribute("data-points", String(n));
  svg.setAttribute("data-last-t", String(lastT));
}

function renderCharts() {
  const pts = state.points;
  const tEnd = pts.length ? pts[pts.length - 1].t : Date.now();
  const meters = new Set(), sensors = new Set();
  for (const p of pts) { Object.keys(p.m || {}).forEach((m) => meters.add(m)); Object.keys(p.s || {}).forEach((s) => sensors.add(s)); }
  const mc = $("#meter-charts");
  for (const m of [...meters].sort()) for (const [q, title, unit] of QUANT) {
    const box = chartBox(mc, `chart-${m}-${q}`, `${m} · ${title}`);
    const series = PH.map((ph, i) => ({ name: ph, values: pts.map((p) => [p.t, p.m && p.m[m] ? p.m[m][q][i] : null]) }));
    drawChart(box, series, unit, tEnd);
  }
  const cc = $("#climate-charts");
  const ss = [...sensors].sort();
  drawChart(chartBox(cc, "chart-climate-temp", "Temperature and dew point (°C)"),
    ss.flatMap((s) => [{ name: `${s} T`, values: pts.map((p) => [p.t, p.s && p.s[s] ? p.s[s].t : null]) },
                       { name: `${s} dew`, values: pts.map((p) => [p.t, p.s && p.s[s] ? p.s[s].dp : null]) }]), "", tEnd);
  drawChart(chartBox(cc, "chart-climate-rh", "Relative humidity (%RH)"),
    ss.map((s) => ({ name: s, values: pts.map((p) => [p.t, p.s && p.s[s] ? p.s[s].rh : null]) })), "", tEnd);
}

// ---- health, gateway, snapshots ------------------------------------------------------------

function dl(target, pairs) {
  target.replaceChildren(...pairs.flatMap(([k, v, cls]) => [el("dt", { text: k }), el("dd", { class: cls || "", text: v })]));
}

function renderHealth(h) {
  if (!h) return;
  $("#gw-id").textContent = h.gateway_id || "";
  const badge = $("#state");
  badge.textContent = h.state || "?"; badge.className = `badge ${h.state || ""}`;
  $("#reasons").replaceChildren(...(h.reasons || []).map((r) => el("p", { class: "warn", text: r })));
  const soh = h.soh || {};
  const sys = soh.system || {};
  const sensors = Object.entries(soh.sensors || {});
  const pairs = [["SOH window", soh.window_s ? `${dur(soh.window_s)}, ${soh.samples} samples, ${soh.skipped_ticks} skipped` : "first window not complete yet"]];
  for (const [name, s] of sensors) {
    pairs.push([`sensor ${name}`, `${fmt(s.temperature_min_c)}…${fmt(s.temperature_max_c)} °C, RH max ${fmt(s.humidity_max_rh)} %, ` +
      `dew margin min ${fmt(s.dew_margin_min_c)} °C, errors ${fmt((s.error_rate ?? 0) * 100, 1)} %`]);
  }
  for (const [name, m] of Object.entries(soh.meters || {})) {
    pairs.push([`meter ${name}`, `${m.reads} reads, error rate ${fmt((m.error_rate ?? 0) * 100, 1)} %` + (m.last_error ? ` (last: ${m.last_error})` : ""),
      m.error_rate > 0.05 ? "warn" : ""]);
  }
  if (sys.reboots !== undefined) pairs.push(["reboots seen", String(sys.reboots)]);
  dl($("#soh"), pairs);
  dl($("#relays"), Object.entries(h.relays || {}).map(([name, r]) => [name,
    `${r.cycles ?? "–"} cycles` + (r.rated_cycles ? ` of ${r.rated_cycles} rated (${fmt((r.life_used ?? 0) * 100, 3)} % used)` : "")]));
  if (!Object.keys(h.relays || {}).length) dl($("#relays"), [["relays", "no relay watchdog configured"]]);
  dl($("#devices"), Object.entries(h.devices || {}).map(([name, d]) => [name,
    d.quality + (d.reason ? ` (${d.reason})` : ""), d.quality === "ok" ? "ok" : "bad"]));
  const rows = (h.events || []).slice(0, 30).map((e) => {
    const { ts_ns, kind, ...rest } = e;
    return el("tr", {}, el("td", { text: timeOf(ts_ns) }), el("td", { text: kind || "?" }),
      el("td", { text: JSON.stringify(rest).slice(0, 200) }));
  });
  $("#events tbody").replaceChildren(...rows);
  const up = h.uplink || {}, disk = h.disk || {}, clock = h.clock || {}, ver = h.versions || {}, u = h.uptime || {};
  dl($("#gateway-info"), [
    ["gateway", h.gateway_id || "–"],
    ["versions", `omgw ${ver.omgw} · Python ${ver.python} · ${ver.os || "?"} · kernel ${ver.kernel}`],
    ["uptime", `system ${dur(u.system_s)}, health process ${dur(u.process_s)}`],
    ["disk (state dir)", disk.disk_total_bytes ? `${bytes(disk.disk_free_bytes)} free of ${bytes(disk.disk_total_bytes)} ` +
      `(${fmt((disk.disk_used_ratio ?? 0) * 100, 1)} % used)` : "–", (disk.disk_used_ratio ?? 0) > 0.9 ? "bad" : ""],
    ["clock", clock.synced === null || clock.synced === undefined ? "unknown (adjtimex unavailable)" :
      (clock.synced ? "synchronised" : "NOT synchronised") + ` · max error ${fmt(clock.max_error_ms, 0)} ms`, clock.synced === false ? "bad" : ""],
    ["uplink", `${up.transport || "?"} ${up.connected ? "connected" : "DISCONNECTED"}` +
      (up.down_for_s ? ` for ${dur(up.down_for_s)}` : ""), up.connected ? "ok" : "bad"],
    ["spool", `${up.spool_pending ?? "–"} pending · ${up.published ?? 0} published · ${up.dropped ?? 0} dropped`],
    ["sampler", h.sampler ? `every ${h.sampler.interval_s} s · last ${h.sampler.last_sample_age_s ?? "–"} s ago · ` +
      `${h.sampler.late ?? 0} late, ${h.sampler.skipped ?? 0} skipped` : "–"],
    ["black box", h.blackbox ? `${h.blackbox.records} records · ${h.blackbox.errors} errors` +
      (h.blackbox.write_failing ? " · WRITES FAILING" : "") : "–", h.blackbox && h.blackbox.write_failing ? "bad" : ""],
  ]);
}

function renderSnapshots(doc) {
  if (!doc) return;
  const rows = doc.snapshots.map((s) => el("tr", { "data-snapshot": s.id },
    el("td", {}, el("a", { href: `/api/snapshots/${encodeURIComponent(s.id)}`, download: `${s.id}.tar.gz`, text: s.id })),
    el("td", { text: timeOf(s.trigger_ns) }),
    el("td", { text: (s.reasons || []).join(", ") || (s.readable ? "–" : "unreadable") }),
    el("td", { class: "num", text: bytes(s.size) })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "4", class: "sub", text: "no snapshots yet" })));
  $("#snapshots-table tbody").replaceChildren(...rows);
}

async function cutSnapshot() {
  const btn = $("#snapshot-btn");
  btn.disabled = true;
  try {
    const r = await api("/api/snapshot", { method: "POST", body: "{}" });
    $("#snapshot-msg").textContent = r.ok ? `requested by ${r.body.by}; ready in about ${r.body.ready_in_s} s` :
      `refused: ${r.body && r.body.error ? r.body.error : r.status}`;
    if (r.status === 401) showLogin("Session ended; log in again.");
  } finally { setTimeout(() => { btn.disabled = false; }, 3000); }
}

// ---- start ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#snapshot-btn").addEventListener("click", cutSnapshot);
  const r = await api("/api/session");
  if (r.ok && r.body && r.body.user) startApp(r.body); else showLogin("");
});
