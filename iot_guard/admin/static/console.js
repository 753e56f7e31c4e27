// iot-guard approval console: plain DOM, no build step.
// Everything shown comes from the guard's API and, through the agent, from an LLM: it is
// untrusted text. It only ever reaches the page through textContent / attribute setters,
// never innerHTML, and the server's Content-Security-Policy forbids inline script.
"use strict";

const TOKEN_KEY = "iot-guard-admin-token";
const OPEN = new Set(["pending", "escalated"]);
const RECENT_LIMIT = 50;

const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  who: null,
  requests: new Map(),   // id -> request view
  drafts: new Map(),     // id -> reason being typed (kept across re-renders)
  cards: new Map(),      // id -> {key, node}: a card is rebuilt only when its view changed
  clockOffset: 0,        // server time - browser time, seconds
  stream: null,          // AbortController of the event stream
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function shown(value) {
  // JSON form: a string shows its quotes, so "5" and 5 read differently.
  return value === undefined ? "unknown" : JSON.stringify(value);
}

function serverNow() { return Date.now() / 1000 + state.clockOffset; }

function timeLeft(deadline) {
  if (typeof deadline !== "number") return "";
  const left = Math.round(deadline - serverNow());
  if (left <= 0) return "due now";
  const m = Math.floor(left / 60), s = left % 60;
  return m > 0 ? `${m} min ${s} s left` : `${s} s left`;
}

function when(epoch) {
  return typeof epoch === "number" ? new Date(epoch * 1000).toISOString().replace(".000", "") : "";
}

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.detail) || `HTTP ${status}`);
    this.status = status;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${state.token}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  let data = null;
  try { data = await response.json(); } catch (e) { data = null; }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// ------------------------------------------------------------------ rendering

function changesTable(view) {
  const changes = Array.isArray(view.changes) ? view.changes : [];
  if (changes.length === 0) return el("p", { class: "note" }, "no field-level change to show");
  const rows = changes.map((c) => el("tr", { class: "change" },
    el("td", { class: "field" }, c.field),
    // null: the guard does not know the device's current value.
    el("td", { class: "current" }, c.current === null ? "unknown" : shown(c.current)),
    el("td", { class: "proposed" }, c.proposed === null ? "null (remove)" : shown(c.proposed)),
    el("td", { class: `risk risk-${c.risk}` }, c.risk)));
  return el("table", { class: "diff" },
    el("thead", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "current"),
      el("th", {}, "proposed"), el("th", {}, "risk"))),
    el("tbody", {}, ...rows));
}

function rolloutBlock(rollout) {
  if (!rollout) return null;
  const counts = rollout.counts || {};
  const summary = Object.entries(counts).filter(([, n]) => n > 0)
    .map(([k, n]) => `${k} ${n}`).join(", ");
  const devices = Array.isArray(rollout.devices) ? rollout.devices : [];
  return el("details", { class: "rollout", open: true },
    el("summary", {}, `rollout: ${rollout.status} (${summary || "nothing yet"})`),
    el("table", {}, el("tbody", {}, ...devices.map((d) => el("tr", {},
      el("td", {}, d.device), el("td", { class: "rollout-status" }, d.status),
      el("td", {}, when(d.at)), el("td", {}, d.detail || ""))))));
}

function actions(view) {
  if (!OPEN.has(view.status) || !state.who) return null;
  if (!state.who.levels.includes(view.level)) {
    // The guard would refuse it anyway (403); say who decides instead of offering buttons.
    const who = Array.isArray(view.approvers_at_level) ? view.approvers_at_level.join(", ") : "";
    return el("p", { class: "note not-yours" },
      `waiting for level ${view.level}${who ? ` (${who})` : ""}: you decide at level ` +
      `${state.who.levels.join(", ") || "none"}`);
  }
  const reason = el("input", {
    type: "text", class: "reason", placeholder: "reason (required to deny)",
    value: state.drafts.get(view.id) || "", maxLength: 1000,
  });
  reason.addEventListener("input", () => state.drafts.set(view.id, reason.value));
  const message = el("span", { class: "error action-error", role: "alert" });
  const decide = async (verb) => {
    const text = reason.value.trim();
    if (verb === "deny" && !text) { message.textContent = "give a reason to deny"; return; }
    message.textContent = "";
    buttons.forEach((b) => { b.disabled = true; });
    try {
      const updated = await api("POST", `/api/approvals/${encodeURIComponent(view.id)}/${verb}`,
        text ? { reason: text } : {});
      state.drafts.delete(view.id);
      upsert(updated);
    } catch (err) {
      message.textContent = `${verb} refused: ${err.message}`;
      buttons.forEach((b) => { b.disabled = false; });
    }
  };
  const approve = el("button", { type: "button", class: "approve" }, "Approve");
  const deny = el("button", { type: "button", class: "deny" }, "Deny");
  const buttons = [approve, deny];
  approve.addEventListener("click", () => decide("approve"));
  deny.addEventListener("click", () => decide("deny"));
  return el("div", { class: "actions" }, reason, approve, deny, message);
}

function card(view) {
  const open = OPEN.has(view.status);
  const devices = Array.isArray(view.devices) ? view.devices : [];
  const history = Array.isArray(view.history) ? view.history : [];
  const approvers = Array.isArray(view.approvers_at_level) ? view.approvers_at_level : [];
  const payload = view.payload_encoding === "base64"
    ? `(binary, base64) ${view.payload}` : view.payload;
  const left = el("span", { class: "left" });
  if (open) left.setAttribute("data-deadline", String(view.level_deadline ?? view.expires_at));
  return el("article", { class: `request${open ? " open" : ""}`, "data-id": view.id },
    el("h3", {},
      el("span", { class: `status status-${view.status}` }, view.status),
      el("span", { class: "id" }, view.id),
      el("span", { class: `risk risk-${view.risk}` }, `${view.risk} risk`),
      open ? el("span", { class: "level" }, `level ${view.level}`) : null,
      left),
    el("dl", {},
      el("dt", {}, "agent"), el("dd", { class: "agent" }, view.agent_id),
      el("dt", {}, "tool"), el("dd", { class: "tool" }, view.tool),
      el("dt", {}, "topic"), el("dd", { class: "topic" }, view.topic),
      el("dt", {}, "why held"), el("dd", { class: "why" }, view.reason),
      view.outcome ? el("dt", {}, "outcome") : null,
      view.outcome ? el("dd", { class: "outcome" }, view.outcome) : null,
      el("dt", {}, "rule"), el("dd", {}, view.rule || ""),
      el("dt", {}, "devices"),
      el("dd", { class: "devices" }, `${devices.length}: ${devices.join(", ")}`),
      open ? el("dt", {}, "may decide now") : null,
      open ? el("dd", {}, approvers.join(", ")) : null,
      el("dt", {}, "created"), el("dd", {}, when(view.created_at)),
      el("dt", {}, "digest"), el("dd", { class: "digest" }, view.digest || "")),
    changesTable(view),
    el("details", {}, el("summary", {}, "payload"), el("pre", { class: "payload" }, payload)),
    rolloutBlock(view.rollout),
    history.length ? el("details", {}, el("summary", {}, "history"),
      el("ul", {}, ...history.map((h) => el("li", {},
        `${when(h.at)} ${h.who}: ${h.action}${h.reason ? ` (${h.reason})` : ""}`)))) : null,
    actions(view));
}

function render() {
  const views = [...state.requests.values()]
    .sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
  const pending = views.filter((v) => OPEN.has(v.status));
  const recent = views.filter((v) => !OPEN.has(v.status)).slice(0, RECENT_LIMIT);
  // Keep the caret where the approver was typing.
  const focused = document.activeElement;
  const focusId = focused && focused.classList && focused.classList.contains("reason")
    ? focused.closest(".request").getAttribute("data-id") : null;
  $("pending").replaceChildren(...(pending.length ? pending.map(cached)
    : [el("p", { class: "note" }, "nothing is waiting")]));
  $("recent").replaceChildren(...recent.map(cached));
  $("pending-count").textContent = `(${pending.length})`;
  const shownIds = new Set([...pending, ...recent].map((v) => v.id));
  for (const id of [...state.cards.keys()]) if (!shownIds.has(id)) state.cards.delete(id);
  if (focusId !== null) {
    for (const node of document.querySelectorAll(".request")) {
      if (node.getAttribute("data-id") === focusId) {
        const input = node.querySelector("input.reason");
        if (input) { input.focus(); input.setSelectionRange(input.value.length, input.value.length); }
      }
    }
  }
  tick();
}

// The same view keeps its card (and whatever the approver is doing in it).
function cached(view) {
  const key = JSON.stringify(view);
  const hit = state.cards.get(view.id);
  if (hit && hit.key === key) return hit.node;
  const node = card(view);
  state.cards.set(view.id, { key, node });
  return node;
}

function tick() {
  for (const node of document.querySelectorAll(".left[data-deadline]")) {
    const deadline = Number(node.getAttribute("data-deadline"));
    node.textContent = timeLeft(deadline);
    node.classList.toggle("late", deadline - serverNow() < 60);
  }
}

function upsert(view) {
  if (!view || typeof view.id !== "string") return;
  state.requests.set(view.id, view);
  render();
}

// ------------------------------------------------------------------ data

async function reload() {
  try {
    const data = await api("GET", "/api/approvals?limit=200");
    state.clockOffset = data.server_time - Date.now() / 1000;
    state.requests = new Map(data.requests.map((v) => [v.id, v]));
    $("error").textContent = "";
    render();
  } catch (err) {
    if (err.status === 401 || err.status === 403) logout(err.message);
    else $("error").textContent = `cannot load requests: ${err.message}`;
  }
}

function handleEvent(name, data) {
  if (name === "approval") upsert(data);
  else if (name === "hello") { state.clockOffset = data.server_time - Date.now() / 1000; }
  else if (name === "resync") reload();
  else if (name === "expired") logout("your token expired: paste a new one");
}

async function stream() {
  // fetch, not EventSource: EventSource cannot send the bearer token.
  const controller = new AbortController();
  state.stream = controller;
  while (state.stream === controller) {
    try {
      const response = await fetch("/api/events", {
        headers: { Authorization: `Bearer ${state.token}` }, signal: controller.signal,
      });
      if (response.status === 401 || response.status === 403) {
        const body = await response.json().catch(() => ({}));
        logout(body.detail || "not allowed");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      $("live").textContent = "live";
      $("live").classList.remove("down");
      await reload();  // anything that happened while the stream was down
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) {
            try { handleEvent(name, JSON.parse(data)); } catch (e) { /* ignore a bad event */ }
          }
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    $("live").textContent = "reconnecting";
    $("live").classList.add("down");
    await new Promise((resolve) => setTimeout(resolve, 3000));
  }
}

// ------------------------------------------------------------------ login

async function login(token) {
  state.token = token;
  try {
    state.who = await api("GET", "/api/whoami");
  } catch (err) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("login-error").textContent = `login refused: ${err.message}`;
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-error").textContent = "";
  $("login").hidden = true;
  $("console").hidden = false;
  $("logout").hidden = false;
  const levels = state.who.levels.length ? `level ${state.who.levels.join(", ")}` : "view only";
  $("who").textContent = `${state.who.id} (${state.who.role}, ${levels})`;
  await reload();
  stream();
}

function logout(message) {
  if (state.stream) state.stream.abort();
  state.stream = null;
  state.token = null;
  state.who = null;
  state.requests.clear();
  state.cards.clear();
  sessionStorage.removeItem(TOKEN_KEY);
  $("console").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("who").textContent = "";
  $("live").textContent = "";
  $("login-error").textContent = message || "";
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (token) login(token);
  });
  $("logout").addEventListener("click", () => logout(""));
  setInterval(tick, 1000);
  if (state.token) login(state.token);
});
