// The operator console: polls the daemon's JSON API and renders it; buttons post typed decisions back.
"use strict";

const STATE_MS = 500;
const FRAME_MS = 200;
const HISTORY_MS = 2000;
const MOVE = 0.02; // workspace units per key press
const COLORS = ["#2457c5", "#1f8a4c", "#8e44ad", "#c77700", "#16a2b8", "#7f8c8d"];

const $ = (id) => document.getElementById(id);
let lastRevision = -1;
let teleopStep = null;
let gripClosed = false;

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  const res = await fetch(path, { credentials: "same-origin", ...init });
  let data = null;
  try { data = await res.json(); } catch (_) { /* empty body */ }
  if (!res.ok) {
    const details = data && data.details ? " — " + data.details.map((d) => `${d.field}: ${d.problem}`).join("; ") : "";
    throw new Error((data && data.error ? data.error : `HTTP ${res.status}`) + details);
  }
  return data;
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

// ---- state: header, steps, plot, teleop -------------------------------------------------------------------

function renderState(s) {
  $("task-id").textContent = s.task_id || "–";
  const pill = $("run-status");
  pill.textContent = s.status;
  pill.className = "pill " + s.status;
  $("camera-status").textContent = s.camera;
  $("remote-status").textContent = s.remote;
  const finished = s.steps.filter((x) => ["done", "teleoperated", "approved"].includes(x.status)).length;
  $("progress").textContent = s.steps.length ? `${finished} / ${s.steps.length}` : "";
  const list = $("steps");
  list.replaceChildren(...s.steps.map((step) => {
    const li = el("li", step.status);
    li.dataset.index = step.index;
    li.append(el("span", "n", String(step.index)), el("span", "text", step.instruction), el("span", "st", step.status));
    return li;
  }));
  const current = list.querySelector("li.running, li.holding");
  if (current) current.scrollIntoView({ block: "nearest" });
  const badge = $("queue-count");
  badge.textContent = String(s.open_escalations);
  badge.className = "badge" + (s.open_escalations ? " hot" : "");
  drawConfidence(s.confidence);
  drawPlan($("camera-plan"), s.plan);
  setLinks(s.links);
  setTeleop(s.teleop_step);
  if (s.escalation_revision !== lastRevision) {
    lastRevision = s.escalation_revision;
    refreshQueue();
    refreshHistory();
  }
}

function drawConfidence(points) {
  const canvas = $("confidence");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const pad = { l: 30, r: 8, t: 8, b: 18 };
  const names = [...new Set(points.flatMap((p) => Object.keys(p.ratios)))].sort();
  const top = Math.min(3, Math.max(2, ...points.flatMap((p) => Object.values(p.ratios))));
  const x = (i) => pad.l + (points.length < 2 ? 0 : (i / (points.length - 1)) * (w - pad.l - pad.r));
  const y = (v) => h - pad.b - (Math.min(v, top) / top) * (h - pad.t - pad.b);
  g.font = "11px system-ui, sans-serif";
  g.fillStyle = "#6b7385";
  g.strokeStyle = "#dde1e8";
  for (let v = 0; v <= top; v += 0.5) {
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
    g.fillText(v.toFixed(1), 4, y(v) + 4);
  }
  g.fillText(points.length ? `last ${points.length} chunks` : "no chunks yet", pad.l, h - 4);
  g.strokeStyle = "#c0392b"; g.setLineDash([6, 4]); g.lineWidth = 1.5;
  g.beginPath(); g.moveTo(pad.l, y(1)); g.lineTo(w - pad.r, y(1)); g.stroke();
  g.setLineDash([]); g.lineWidth = 2;
  names.forEach((name, k) => {
    g.strokeStyle = COLORS[k % COLORS.length];
    g.beginPath();
    let started = false;
    points.forEach((p, i) => {
      if (!(name in p.ratios)) return;
      if (started) g.lineTo(x(i), y(p.ratios[name])); else { g.moveTo(x(i), y(p.ratios[name])); started = true; }
    });
    g.stroke();
  });
  g.fillStyle = "#c0392b";
  points.forEach((p, i) => { if (!p.passed) { g.beginPath(); g.arc(x(i), pad.t + 3, 3, 0, 2 * Math.PI); g.fill(); } });
  $("legend").replaceChildren(...names.map((name, k) => {
    const span = el("span"); const swatch = el("i"); swatch.style.background = COLORS[k % COLORS.length];
    span.append(swatch, name); return span;
  }));
}

// ---- the plan: K sampled trajectories and the chosen one, in image fractions (x right, y down) -------------

function drawPlan(canvas, plan) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * ratio) { canvas.width = w * ratio; canvas.height = h * ratio; }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  canvas.dataset.samples = plan ? String(plan.samples.length) : "0";
  canvas.dataset.passed = plan ? String(plan.passed) : "";
  if (!plan) return;
  const path = (points) => {
    g.beginPath();
    points.forEach(([x, y], i) => { if (i) g.lineTo(x * w, y * h); else g.moveTo(x * w, y * h); });
    g.stroke();
  };
  g.lineCap = "round"; g.lineJoin = "round";
  g.strokeStyle = "rgba(255, 255, 255, 0.55)"; g.lineWidth = Math.max(1, w / 200);
  plan.samples.forEach(path);
  g.strokeStyle = plan.passed ? "#28c850" : "#e62828"; g.lineWidth = Math.max(2, w / 90);
  path(plan.chosen);
  const [x0, y0] = plan.chosen[0];
  g.beginPath(); g.arc(x0 * w, y0 * h, Math.max(3, w / 50), 0, 2 * Math.PI); g.stroke();
}

function setLinks(links) {
  const metrics = $("link-metrics"), rerun = $("link-rerun"), file = $("rerun-file");
  metrics.hidden = !(links && links.metrics);
  if (!metrics.hidden) metrics.href = links.metrics;
  rerun.hidden = !(links && links.rerun_viewer);
  if (!rerun.hidden) rerun.href = links.rerun_viewer;
  file.hidden = !(links && links.rerun_file);
  if (!file.hidden) file.textContent = "Rerun → " + links.rerun_file;
}

// ---- escalation queue --------------------------------------------------------------------------------------

async function refreshQueue() {
  let data;
  try { data = await api("/api/escalations"); } catch (_) { return; }
  const queue = $("queue");
  const open = data.escalations;
  const keep = new Set(open.map((e) => e.id));
  queue.querySelectorAll(".card").forEach((card) => { if (!keep.has(card.dataset.id)) card.remove(); });
  queue.querySelector(".empty")?.remove();
  if (!open.length) { queue.append(el("p", "dim empty", "Nothing to answer.")); return; }
  for (const esc of open) {
    if (queue.querySelector(`.card[data-id="${esc.id}"]`)) continue;
    queue.append(makeCard(esc, data.plans[esc.id] || null));
  }
}

function makeCard(esc, plan) {
  const card = $("escalation-card").content.firstElementChild.cloneNode(true);
  card.dataset.id = esc.id;
  card.dataset.kind = esc.kind;
  card.querySelector(".kind").textContent = esc.kind.replace("_", " ");
  card.querySelector(".step").textContent = `step ${esc.step_index}`;
  card.querySelector(".age").textContent = new Date(esc.created_at * 1000).toLocaleTimeString();
  const img = card.querySelector(".frame");
  if (esc.frame_jpeg_b64) img.src = "data:image/jpeg;base64," + esc.frame_jpeg_b64; else img.alt = "no frame";
  card.querySelector(".instruction").textContent = esc.instruction;
  card.querySelector(".reason").textContent = esc.reason;
  if (plan) {
    card.dataset.plan = "1";
    requestAnimationFrame(() => drawPlan(card.querySelector("canvas.plan"), plan));
    card.querySelector(".plan-note").textContent =
      `refused plan drawn: ${plan.samples.length} samples (white), the chunk it would run (red)`;
  }
  const table = card.querySelector(".figures");
  for (const [name, value] of Object.entries(esc.confidence)) {
    const row = table.insertRow();
    row.insertCell().textContent = name;
    row.insertCell().textContent = Number(value).toPrecision(3);
  }
  const chooser = card.querySelector(".choose-step");
  const select = chooser.querySelector("select");
  if (esc.steps.length > 1) {
    for (const i of esc.steps) select.append(new Option(String(i), String(i), false, i === esc.step_index));
  } else chooser.hidden = true;
  card.querySelectorAll(".actions button").forEach((button) => {
    button.addEventListener("click", () => decide(card, esc, button.dataset.action));
  });
  return card;
}

async function decide(card, esc, action) {
  const error = card.querySelector(".error");
  const buttons = card.querySelectorAll(".actions button");
  buttons.forEach((b) => { b.disabled = true; });
  const body = { escalation_id: esc.id, action, operator: $("operator").value.trim() || "operator" };
  if (esc.steps.length > 1 && (action === "retry" || action === "takeover")) {
    body.step_index = Number(card.querySelector(".choose-step select").value);
  }
  try {
    await api("/api/decisions", body);
    card.remove();
    refreshQueue();
    refreshHistory();
  } catch (err) {
    error.textContent = err.message; error.hidden = false;
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// ---- history --------------------------------------------------------------------------------------------------

async function refreshHistory() {
  let data;
  try { data = await api("/api/history"); } catch (_) { return; }
  const items = data.escalations.slice().reverse().map((h) => {
    const li = el("li", h.status);
    const when = new Date((h.decided_at || h.created_at) * 1000).toLocaleTimeString();
    let text = `${h.kind.replace("_", " ")} at step ${h.step_index}: `;
    if (h.status === "decided") text += `${h.operator} → ${h.action}` + (h.chosen_step !== h.step_index ? ` (step ${h.chosen_step})` : "");
    else if (h.status === "withdrawn") text += `withdrawn (${h.note})`;
    else text += "waiting" + (h.answer_timeouts ? `, ${h.answer_timeouts} answer timeout(s), still holding` : "");
    li.append(el("span", "t", when), text);
    return li;
  });
  const log = data.events.slice(-15).reverse().map((e) => {
    const li = el("li", "event dim"); li.append(el("span", "t", `+${e.t_s.toFixed(1)}s`), e.text); return li;
  });
  $("history").replaceChildren(...items, ...log);
}

// ---- take-over --------------------------------------------------------------------------------------------------

function setTeleop(step) {
  teleopStep = step;
  const panel = $("teleop");
  const active = step !== null && step !== undefined;
  panel.className = "panel " + (active ? "active" : "inactive");
  $("teleop-step").textContent = active ? `step ${step} — you are driving` : "(inactive)";
  panel.querySelectorAll("button").forEach((b) => { b.disabled = !active; });
}

async function teleop(command) {
  if (teleopStep === null || teleopStep === undefined) return;
  try { await api("/api/teleop", command); } catch (err) { console.warn("teleop:", err.message); }
}

const MOVES = { up: [0, -MOVE], down: [0, MOVE], left: [-MOVE, 0], right: [MOVE, 0] };
const KEYS = { ArrowUp: "up", w: "up", ArrowDown: "down", s: "down", ArrowLeft: "left", a: "left", ArrowRight: "right", d: "right" };

function move(direction) { const [dx, dy] = MOVES[direction]; teleop({ dx, dy }); }
function toggleGrip() {
  gripClosed = !gripClosed;
  const button = $("grip");
  button.textContent = "grip: " + (gripClosed ? "closed" : "open");
  button.classList.toggle("closed", gripClosed);
  teleop({ grip: gripClosed ? 1 : 0 });
}

document.addEventListener("keydown", (event) => {
  if (teleopStep === null || teleopStep === undefined) return;
  if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  if (KEYS[key]) { move(KEYS[key]); event.preventDefault(); }
  else if (key === "g" || key === " ") { toggleGrip(); event.preventDefault(); }
  else if (key === "Enter") { teleop({ done: true }); event.preventDefault(); }
});

// ---- camera --------------------------------------------------------------------------------------------------------

let frameUrl = null;
async function pollFrame() {
  // fetch + object URL: one request per frame and no flicker (an <img> src swap would fetch twice).
  let wait = FRAME_MS;
  try {
    const res = await fetch("/api/frame.jpg", { credentials: "same-origin", cache: "no-store" });
    if (!res.ok) throw new Error(String(res.status));
    const url = URL.createObjectURL(await res.blob());
    $("camera").src = url;
    if (frameUrl) URL.revokeObjectURL(frameUrl);
    frameUrl = url;
    $("camera-missing").hidden = true;
  } catch (_) {
    $("camera-missing").hidden = false;
    wait = FRAME_MS * 5;
  }
  setTimeout(pollFrame, wait);
}

async function pollState() {
  try { renderState(await api("/api/state")); } catch (err) { $("run-status").textContent = "offline"; }
  setTimeout(pollState, STATE_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const name = $("operator");
  name.value = localStorage.getItem("vla-edge-operator") || name.value;
  name.addEventListener("change", () => localStorage.setItem("vla-edge-operator", name.value));
  document.querySelectorAll("[data-move]").forEach((b) => b.addEventListener("click", () => move(b.dataset.move)));
  $("grip").addEventListener("click", toggleGrip);
  $("step-done").addEventListener("click", () => teleop({ done: true }));
  pollState();
  pollFrame();
  setInterval(refreshHistory, HISTORY_MS);
});
