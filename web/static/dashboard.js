// The hafe dashboard: one loop asks GET /admin/overview every few seconds
// and redraws everything from the answer. Rates come from the difference
// between successive answers' counters.
"use strict";

const params = new URLSearchParams(location.search);
const every = Math.max(0.5, Number(params.get("every")) || 2) * 1000; // ms between refreshes
const windowMs = 5 * 60 * 1000; // what the chart shows
const samples = []; // {t, per: {member id: {committed, aborted}}}
let wake = null; // ends the current wait early (a new token)

const $ = (id) => document.getElementById(id);

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function row(cells, attrs) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = v;
  return tr;
}

function fill(table, rows, empty) {
  $(table).querySelector("tbody").replaceChildren(...rows);
  $(empty).hidden = rows.length > 0;
}

function age(seconds) {
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function time(iso) { return iso.slice(11, 19); } // UTC hh:mm:ss

function shortID(id) { return id.slice(0, 8); }

function drawMembers(o) {
  fill("members", o.members.map((m) => {
    const state = !m.alive ? "gone" : m.draining ? "draining" : "alive";
    return row([
      cell(m.id + (m.id === o.self ? " (this)" : "")),
      cell(m.http_addr || "–"),
      cell(state, "state-" + state),
      cell(String(m.load), "num"),
      cell(m.mtcp_addr ? String(m.mtcp_connections) : "–", "num"),
      cell(String(m.committed + m.aborted), "num"),
      cell(age(m.heartbeat_age_seconds), "num"),
    ], {id: m.id, state});
  }), "no-members");
}

function drawBatches(o) {
  fill("batches", o.batches.map((b) => {
    const bar = document.createElement("span");
    bar.className = "bar";
    const done = document.createElement("i");
    done.style.width = (b.transactions ? 100 * b.slots_done / b.transactions : 0) + "%";
    bar.append(done);
    const progress = cell("");
    progress.append(bar, `${b.slots_done}/${b.transactions}`);
    progress.className = "progress";
    return row([
      cell(shortID(b.batch_id)),
      cell(b.idempotency_key || "–"),
      cell(b.state, "state-" + b.state),
      cell(b.owner || "–"),
      cell(String(b.epoch), "num"),
      progress,
      cell(String(b.committed), "num"),
      cell(String(b.aborted), "num"),
      cell(time(b.created_at)),
    ], {id: b.batch_id, state: b.state, owner: b.owner});
  }), "no-batches");
}

function drawTakeovers(o) {
  fill("takeovers", o.takeovers.map((t) => row([
    cell(time(t.at)),
    cell(shortID(t.batch_id)),
    cell(String(t.epoch), "num"),
    cell(t.previous_owner || "(released)"),
    cell(t.owner),
    cell(String(t.fenced_sessions), "num"),
  ], {batch: t.batch_id, from: t.previous_owner, to: t.owner})), "no-takeovers");
  // A takeover from a live lease is a fence: the old owner's epoch is dead.
  fill("fencing", o.takeovers.filter((t) => t.previous_owner).map((t) => row([
    cell(time(t.at)),
    cell(shortID(t.batch_id)),
    cell(String(t.epoch), "num"),
    cell(t.previous_owner),
    cell(t.owner),
    cell(String(t.fenced_sessions), "num"),
  ], {batch: t.batch_id, fenced: t.previous_owner})), "no-fencing");
  const f = o.counters.fence_terminations;
  $("fence-counters").textContent = Object.keys(f).sort().map((k) => `${k} ${f[k]}`).join(", ") || "none";
}

// delta is what the members executed between two samples: each member's
// growth, none for one that restarted (its counters start again) or is new.
function delta(a, b) {
  let tx = 0, ab = 0;
  for (const [id, m] of Object.entries(b.per)) {
    const p = a.per[id];
    if (!p || m.committed < p.committed || m.aborted < p.aborted) continue;
    tx += (m.committed + m.aborted) - (p.committed + p.aborted);
    ab += m.aborted - p.aborted;
  }
  return {tx, ab};
}

function rates() {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.t - a.t) / 1000;
    if (dt <= 0) continue;
    const d = delta(a, b);
    out.push({t: b.t, tx: d.tx / dt, ab: d.ab / dt});
  }
  return out;
}

function drawMigrations(o) {
  const name = {};
  for (const m of o.members) if (m.mtcp_addr) name[m.mtcp_addr] = m.id;
  const who = (addr) => name[addr] || addr || "–";
  const why = {redirect: "asked to move", origin_down: "front-end down", client: "client moved"};
  fill("migrations", (o.migrations || []).map((m) => row([
    cell(time(m.at)),
    cell(m.conn_id.slice(0, 8)),
    cell(who(m.from)),
    cell(who(m.to)),
    cell(why[m.trigger] || m.trigger),
    cell(m.mode === "eager" ? "database" : "peer"),
    cell(String(m.prepare_us), "num"),
    cell(String(m.wait_us), "num"),
    cell(String(m.reinstate_us), "num"),
    cell(m.error ? "failed: " + m.error : "ok", m.error ? "state-gone" : "state-alive"),
  ], {conn: m.conn_id, from: who(m.from), to: who(m.to), trigger: m.trigger})), "no-migrations");
}

const svgNS = "http://www.w3.org/2000/svg";

function svg(name, attrs, text) {
  const el = document.createElementNS(svgNS, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function drawChart() {
  const w = 600, h = 140, pad = 14;
  const rs = rates();
  const now = samples.length ? samples[samples.length - 1].t : 0;
  // The chart spans what has been sampled, up to windowMs.
  const span = Math.max(10000, Math.min(windowMs, samples.length ? now - samples[0].t : 0));
  const max = Math.max(1, ...rs.map((r) => r.tx));
  const x = (t) => w - (now - t) / span * w;
  const y = (v) => h - pad - v / max * (h - 2 * pad);
  const line = (key) => rs.map((r) => `${x(r.t).toFixed(1)},${y(r[key]).toFixed(1)}`).join(" ");
  const els = [
    svg("line", {class: "grid", x1: 0, x2: w, y1: y(max), y2: y(max)}),
    svg("line", {class: "grid", x1: 0, x2: w, y1: y(0), y2: y(0)}),
    svg("text", {x: 2, y: y(max) - 2}, max.toFixed(max < 10 ? 1 : 0) + "/s"),
    svg("text", {x: 2, y: h - 2}, "−" + age(span / 1000)),
    svg("text", {x: w - 24, y: h - 2}, "now"),
    svg("polyline", {class: "tx", points: line("tx")}),
    svg("polyline", {class: "ab", points: line("ab")}),
  ];
  $("chart").replaceChildren(...els);
  const last = rs[rs.length - 1];
  $("rate-tx").textContent = last ? last.tx.toFixed(1) : "–";
  $("rate-ab").textContent = last ? last.ab.toFixed(1) : "–";
  let total = 0, aborted = 0;
  for (let i = 1; i < samples.length; i++) {
    const d = delta(samples[i - 1], samples[i]);
    total += d.tx;
    aborted += d.ab;
  }
  $("abort-ratio").textContent = total > 0 ? (100 * aborted / total).toFixed(1) + " %" : "–";
}

async function refresh(token) {
  const r = await fetch("/admin/overview", {headers: {Authorization: "Bearer " + token}, cache: "no-store"});
  const body = await r.json();
  if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
  const t = Date.now();
  const per = {};
  for (const m of body.members) per[m.id] = {committed: m.committed, aborted: m.aborted};
  samples.push({t, per});
  while (samples.length > 2 && t - samples[0].t > windowMs) samples.shift();
  $("self").textContent = body.self;
  drawMembers(body);
  drawBatches(body);
  drawTakeovers(body);
  drawMigrations(body);
  drawChart();
  return body;
}

// run is the dashboard's only loop: refresh, wait, again.
async function run() {
  for (;;) {
    const token = $("token").value;
    const status = $("status");
    if (token) {
      try {
        const o = await refresh(token);
        status.textContent = `${o.self} · updated ${time(o.at)} UTC`;
        status.className = "";
        sessionStorage.setItem("hafe-admin-token", token);
      } catch (e) {
        status.textContent = String(e.message || e);
        status.className = "error";
      }
    }
    await new Promise((resolve) => { wake = resolve; setTimeout(resolve, every); });
  }
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  samples.length = 0; // another token may be another cluster
  if (wake) wake();
});
$("token").value = sessionStorage.getItem("hafe-admin-token") || "";
drawChart();
run();
