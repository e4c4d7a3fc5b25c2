// The board: signs in, listens to /api/v1/stream, and renders each snapshot.
"use strict";
const $ = (id) => document.getElementById(id);
let role = null, csrf = null, source = null, last = null, githubWeb = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") e.onclick = v; else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
const sha7 = (s) => (s || "").slice(0, 7);
const CLASS = { healthy: "ok", deployed: "ok", completed: "ok", accepted: "ok", deploying: "busy",
  running: "busy", "rolling out": "busy", pending: "busy", idle: "", skipped: "",
  failed: "bad", unhealthy: "bad", rolled_back: "bad", reverted: "bad", offline: "bad",
  halted: "bad", ignored: "warn", aborted: "warn", superseded: "", paused: "warn" };
const pill = (text) => el("span", { class: "pill " + (CLASS[text] ?? "") }, text || "-");
function age(iso) {
  if (!iso) return "-";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  return s < 90 ? s + "s ago" : s < 5400 ? Math.round(s / 60) + "m ago" : Math.round(s / 3600) + "h ago";
}
const commit = (repo, sha) => !sha ? "-" : !githubWeb ? el("code", {}, sha7(sha))
  : el("a", { href: githubWeb + "/" + repo + "/commit/" + sha, rel: "noreferrer", target: "_blank" }, el("code", {}, sha7(sha)));

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (csrf) headers["X-CSRF-Token"] = csrf;
  const r = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined, credentials: "same-origin" });
  const j = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(j.error || r.status + " " + r.statusText);
  return j;
}

function confirmThen(text, action) {
  const d = $("confirm");
  $("confirm-text").textContent = text;
  d.onclose = async () => {
    if (last) render(last);
    if (d.returnValue !== "yes") return;
    try { await action(); $("notice").textContent = ""; } catch (e) { $("notice").textContent = e.message; }
  };
  d.returnValue = "";
  d.showModal();
}

function signedIn(r) {
  role = r.role; csrf = r.csrf; githubWeb = r.github_web;
  $("signin").hidden = true; $("signout").hidden = false;
  $("who").hidden = false; $("who").textContent = "signed in: " + role;
  listen();
}
function signedOut(why) {
  role = csrf = null;
  if (source) { source.close(); source = null; }
  $("board").replaceChildren(); $("signin").hidden = false; $("signout").hidden = true; $("who").hidden = true;
  $("live").textContent = "offline"; $("live").className = "pill";
  $("signin-error").textContent = why || "";
}

function listen() {
  if (source) source.close();
  source = new EventSource("/api/v1/stream");
  source.addEventListener("snapshot", (e) => { last = JSON.parse(e.data); render(last); });
  source.onopen = () => { $("live").textContent = "live"; $("live").className = "pill ok"; };
  source.onerror = async () => {
    $("live").textContent = "reconnecting"; $("live").className = "pill warn";
    if (source.readyState === EventSource.CLOSED) {
      // Refused (signed out, or the gateway restarted and forgot the session): ask again.
      try { await api("GET", "/api/v1/session"); setTimeout(listen, 1000); }
      catch (_) { signedOut("Your session ended (sign-out, expiry or a gateway restart): sign in again."); }
    }
  };
}

function groups(s) {
  const g = new Map();
  const get = (repo, env) => {
    const k = repo + " / " + env;
    if (!g.has(k)) g.set(k, { repo, env, orders: [], agents: [], rollout: null, paused: false });
    return g.get(k);
  };
  for (const o of s.deployments) get(o.repo, o.env).orders.push(o);
  for (const a of s.agents) get(a.repo, a.env).agents.push(a);
  for (const r of s.rollouts) { const x = get(r.repo, r.env); if (!x.rollout) x.rollout = r; }
  for (const [repo, env] of s.paused) get(repo, env).paused = true;
  return [...g.values()].sort((a, b) => (a.repo + a.env).localeCompare(b.repo + b.env));
}

function summary(x) {
  const o = x.orders[0];
  const r = x.rollout && x.rollout.state === "running" ? x.rollout : null;
  const item = (label, value) => el("div", {}, el("b", {}, label), value);
  return el("div", { class: "summary" },
    item("desired", o ? commit(x.repo, o.sha) : "-"), item("ref", o?.ref || "-"),
    item("kind", o?.kind || "-"), item("who", o?.issued_by || "-"), item("when", o ? age(o.issued_at) : "-"),
    item("state", x.paused ? pill("paused") : pill("active")),
    item("rollout", r ? el("span", {}, pill("running"), " wave " + (r.wave + 1) + " of " + r.policy.waves.length) : "none running"));
}

function agentsTable(x) {
  const rows = x.agents.map((a) => el("tr", { "data-agent": a.agent },
    el("td", {}, a.agent), el("td", { class: "state" }, pill(a.state)), el("td", { class: "hide-sm" }, a.step || "-"),
    el("td", {}, el("code", {}, sha7(a.sha))), el("td", {}, el("code", { class: "running" }, sha7(a.running_sha))),
    el("td", { class: "error" }, a.error || ""), el("td", { class: "hide-sm" }, age(a.updated_at)),
    el("td", { class: "hide-sm" }, a.deploy_ms != null ? (a.deploy_ms / 1000).toFixed(1) + "s" : "-")));
  return el("div", { class: "wrap" }, el("table", {},
    el("tr", {}, ...["agent", "state", "step", "sha", "running", "error", "updated", "deploy time"].map((h) => el("th", { class: ["step", "updated", "deploy time"].includes(h) ? "hide-sm" : null }, h))),
    ...rows));
}

function historyTable(x) {
  const rows = x.orders.map((o, i) => el("tr", {},
    el("td", {}, "#" + o.seq), el("td", {}, commit(x.repo, o.sha)), el("td", {}, o.kind),
    el("td", {}, pill(o.outcome)), el("td", { class: "hide-sm" }, o.reason || ""),
    el("td", { class: "hide-sm" }, age(o.issued_at)),
    el("td", {}, role === "admin" && i > 0 && o.outcome === "deployed" && o.sha !== x.orders[0].sha
      ? el("button", { type: "button", class: "rollback", "data-sha": o.sha, onclick: () => confirmThen(
        "Roll back " + x.repo + " / " + x.env + " to " + sha7(o.sha) + "? Every agent switches to it at once.",
        () => api("POST", "/api/v1/rollback", { repo: x.repo, env: x.env, to: o.sha })) }, "Roll back to " + sha7(o.sha))
      : "")));
  return el("div", { class: "wrap" }, el("table", {},
    el("tr", {}, ...["seq", "sha", "kind", "outcome", "why", "when", ""].map((h) => el("th", {}, h))), ...rows));
}

function actions(x) {
  if (role !== "admin") return null;
  const verb = x.paused ? "resume" : "pause";
  const o = x.orders[0];
  return el("p", {},
    el("button", { type: "button", class: verb, onclick: () => confirmThen(
      (x.paused ? "Resume" : "Pause") + " deploys of " + x.repo + " / " + x.env + "?",
      () => api("POST", "/api/v1/" + verb, { repo: x.repo, env: x.env })) }, x.paused ? "Resume" : "Pause"),
    " ",
    o ? el("button", { type: "button", class: "redeploy", onclick: () => confirmThen(
      "Deploy " + sha7(o.sha) + " to " + x.repo + " / " + x.env + " again?",
      () => api("POST", "/api/v1/deploy", { repo: x.repo, env: x.env, sha: o.sha })) }, "Redeploy " + sha7(o.sha)) : null);
}

function eventsTable(s) {
  const rows = s.events.map((e) => el("tr", {},
    el("td", {}, age(e.received_at)), el("td", {}, e.event), el("td", {}, (e.repo || "-") + (e.env ? " / " + e.env : "")),
    el("td", {}, pill(e.outcome)), el("td", {}, e.reason || (e.sha ? "#" + e.seq + " " + sha7(e.sha) : ""))));
  return el("section", { class: "env" }, el("h2", {}, "Newest events"), el("div", { class: "wrap" }, el("table", {},
    el("tr", {}, ...["when", "event", "repo / env", "outcome", "why"].map((h) => el("th", {}, h))), ...rows)));
}

function render(s) {
  if ($("confirm").open) return; // keep what the person is confirming in front of them
  const parts = groups(s).map((x) => el("section", { class: "env", "data-repo": x.repo, "data-env": x.env },
    el("h2", {}, x.repo + " / " + x.env), summary(x), actions(x),
    el("h3", {}, "Agents"), agentsTable(x), el("h3", {}, "History"), historyTable(x)));
  if (!parts.length) parts.push(el("p", {}, "No deploys yet: push to a mapped branch."));
  $("board").replaceChildren(...parts, eventsTable(s));
}

$("signin").addEventListener("submit", async (e) => {
  e.preventDefault();
  try { const r = await api("POST", "/api/v1/session", { token: $("token").value }); $("token").value = ""; signedIn(r); }
  catch (err) { $("signin-error").textContent = err.message; }
});
$("signout").onclick = async () => { try { await api("DELETE", "/api/v1/session"); } finally { signedOut(); } };
setInterval(() => { if (last) render(last); }, 10000);
api("GET", "/api/v1/session").then(signedIn, () => signedOut());
