// twin live view: the fleet tree, live over one websocket. No framework, no build step.
// Protocol (docs/live-view.md): the server sends tree, rollup, assets, transitions, dispatches,
// clock and error messages; we send subscribe/unsubscribe for the rows on screen and site for
// the drilled-down site.
"use strict";

const state = {
  token: null,
  ws: null,
  retryMs: 1000,
  now: null,                 // the fleet's clock, from the server
  nodes: new Map(),          // path -> {node, row, children, expanded, rollup, history}
  subscribed: new Set(),
  site: null,                // drilled-down site path
  assets: null,              // last assets message
};

const $ = (selector) => document.querySelector(selector);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};

// -- formatting: honest about what we do not know ------------------------------------------

function mw(kw) {
  const text = (kw / 1000).toFixed(2);
  return text === "-0.00" ? "0.00" : text;
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 1) return "now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function clockText(t) {
  return new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

function kw(value) {
  if (value === null || value === undefined) return null;
  if (typeof value !== "number") return String(value);
  const text = value.toLocaleString("en", {maximumFractionDigits: 1});
  return text === "-0" ? "0" : text;       // a tiny draw rounds to 0, not to "-0"
}

// -- the tree ---------------------------------------------------------------------------

function depth(path, level) {
  return level === "group" ? 0 : path.split("/").length - 1;
}

function buildTree(nodes) {
  const old = state.nodes;
  state.nodes = new Map();
  const small = nodes.length <= 200;
  for (const node of nodes) {
    const before = old.get(node.path);
    state.nodes.set(node.path, {
      node, children: [], row: null,
      expanded: before ? before.expanded : small && node.level !== "site",
      rollup: before ? before.rollup : null, history: before ? before.history : [],
    });
  }
  for (const entry of state.nodes.values()) {
    const parent = entry.node.parent && state.nodes.get(entry.node.parent);
    if (parent) parent.children.push(entry.node.path);
  }
  const body = $("#tree tbody");
  body.replaceChildren();
  for (const entry of state.nodes.values()) {
    entry.row = makeRow(entry);
    body.appendChild(entry.row);
    if (entry.rollup) renderRow(entry);
  }
  if (state.site && !state.nodes.has(state.site)) closeSite();
  refreshVisibility();
}

function makeRow(entry) {
  const {node} = entry;
  const row = el("tr");
  row.dataset.path = node.path;
  row.dataset.level = node.level;
  const name = el("td", "name");
  name.style.paddingLeft = `${0.45 + 1.2 * depth(node.path, node.level)}rem`;
  if (entry.children.length || node.level === "owner" || node.level === "region") {
    const toggle = el("button", "toggle");
    toggle.type = "button";
    toggle.addEventListener("click", (event) => {
      event.stopPropagation();
      entry.expanded = !entry.expanded;
      refreshVisibility();
    });
    name.appendChild(toggle);
  } else {
    name.appendChild(el("span", "toggle", node.level === "site" ? "›" : ""));
  }
  name.appendChild(document.createTextNode(node.name));
  row.appendChild(name);
  for (const cls of ["reporting num", "power num", "capacity num", "offline num count",
                     "unknown num count", "quarantined num count", "spark", "missing"]) {
    row.appendChild(el("td", cls));
  }
  if (node.level === "site") row.addEventListener("click", () => openSite(node.path));
  return row;
}

function visible(entry) {
  let parent = entry.node.parent;
  while (parent) {
    const up = state.nodes.get(parent);
    if (!up) return true;
    if (!up.expanded) return false;
    parent = up.node.parent;
  }
  return true;
}

function refreshVisibility() {
  const want = new Set();
  for (const entry of state.nodes.values()) {
    const shown = visible(entry);
    entry.row.hidden = !shown;
    const toggle = entry.row.querySelector("button.toggle");
    if (toggle) toggle.textContent = entry.expanded ? "▾" : "▸";
    if (shown) want.add(entry.node.path);
  }
  const add = [...want].filter((p) => !state.subscribed.has(p));
  const drop = [...state.subscribed].filter((p) => !want.has(p));
  state.subscribed = want;
  if (add.length) send({type: "subscribe", paths: add});
  if (drop.length) send({type: "unsubscribe", paths: drop});
}

function renderRow(entry) {
  const r = entry.rollup;
  const cells = entry.row.cells;
  const reporting = cells[1];
  reporting.textContent = `${r.reporting}/${r.expected}`;
  reporting.classList.toggle("full", r.reporting === r.expected);
  reporting.classList.toggle("degraded", r.reporting < r.expected && r.reporting > 0);
  reporting.classList.toggle("none", r.reporting === 0 && r.expected > 0);
  reporting.title = r.reporting < r.expected
    ? `only ${r.reporting} of the ${r.expected} assets we expect are reporting`
    : `all ${r.expected} expected assets are reporting`;
  if (r.reporting === 0) {
    cells[2].textContent = "–";
    cells[2].className = "power num unknown-value";
    cells[2].title = "no asset is reporting: the power is unknown, not zero";
  } else {
    cells[2].textContent = mw(r.power_kw);
    cells[2].className = "power num";
    cells[2].title = `over the ${r.reporting} reporting assets`;
  }
  cells[3].textContent = mw(r.capacity_kw);
  for (const [i, key] of [[4, "offline"], [5, "unknown"], [6, "quarantined"]]) {
    cells[i].textContent = String(r[key]);
    cells[i].classList.toggle("zero", r[key] === 0);
    cells[i].classList.toggle("bad", r[key] > 0);
  }
  cells[7].replaceChildren(sparkline(entry.history, r));
  const shown = r.missing.slice(0, 4).join(", ");
  const more = r.missing_count - Math.min(4, r.missing.length);
  cells[8].textContent = shown + (more > 0 ? `, +${more}` : "");
  cells[8].title = r.missing.join(", ") + (r.missing_count > r.missing.length ? ", …" : "");
  // reporting, but not doing what they were asked: under the missing, only when there are some
  if (r.not_following) {
    const ids = r.not_following_ids || [];
    const following = el("span", "following", `${r.not_following} not following`);
    following.title = `not following their setpoint: ${ids.join(", ")}` +
                      (r.not_following > ids.length ? ", …" : "");
    cells[8].appendChild(following);
  }
}

function sparkline(history, rollup) {
  const width = 120, height = 24;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (!history.length) return svg;
  if (history.length === 1) history = [history[0], history[0]];   // one bucket: a flat line
  const n = history.length;
  const x = (i) => (n === 1 ? width : (i / (n - 1)) * width);
  const top = Math.max(rollup.capacity_kw, ...history.map((p) => p[1]), 1e-9);
  const bottom = Math.min(0, ...history.map((p) => p[1]));
  const y = (value) => height - 1 - ((value - bottom) / (top - bottom)) * (height - 2);
  // shade: the share reporting (green) and the share missing (red) per bucket
  let share = `M0 ${height}`, short = "M0 0";
  history.forEach((p, i) => {
    const frac = p[3] ? p[2] / p[3] : 1;
    share += ` L${x(i).toFixed(1)} ${(height - frac * height).toFixed(1)}`;
    short += ` L${x(i).toFixed(1)} ${(height - frac * height).toFixed(1)}`;
  });
  share += ` L${width} ${height} Z`;
  short += ` L${width} 0 Z`;
  for (const [cls, d] of [["share", share], ["short", short]]) {
    const path = document.createElementNS(ns, "path");
    path.setAttribute("class", cls);
    path.setAttribute("d", d);
    svg.appendChild(path);
  }
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("class", "power");
  line.setAttribute("points", history.map((p, i) => `${x(i).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
  svg.appendChild(line);
  const title = document.createElementNS(ns, "title");
  const last = history[n - 1];
  title.textContent = `${n} points since ${clockText(history[0][0])}: now ${mw(last[1])} MW, ` +
                      `${last[2]}/${last[3]} reporting`;
  svg.appendChild(title);
  return svg;
}

// -- a site's assets ----------------------------------------------------------------------

function openSite(path) {
  for (const entry of state.nodes.values()) entry.row.classList.toggle("selected", entry.node.path === path);
  state.site = path;
  state.assets = null;
  $("#site-title").textContent = path;
  $("#assets tbody").replaceChildren();
  $("#site-panel").hidden = false;
  send({type: "site", path});
}

function closeSite() {
  state.site = null;
  state.assets = null;
  $("#site-panel").hidden = true;
  for (const entry of state.nodes.values()) entry.row.classList.remove("selected");
  send({type: "site", path: null});
}

function renderAssets() {
  const message = state.assets;
  if (!message || message.site !== state.site) return;
  const now = state.now ?? message.now;
  const body = $("#assets tbody");
  body.replaceChildren();
  for (const a of message.assets) {
    const online = a.state === "online";
    const row = el("tr", online ? "" : "missing");
    row.dataset.asset = a.id;
    row.dataset.state = a.state;
    row.appendChild(el("td", "id", a.id));
    row.appendChild(el("td", "kind", a.kind));
    const st = el("td", "state-cell");
    st.appendChild(el("span", `state state-${a.state}`, a.state));
    row.appendChild(st);
    const seen = a.last_seen === null ? null : Math.max(0, now - a.last_seen);
    const seenCell = el("td", "num last-seen" + (seen === null ? " never" : online ? "" : " stale"),
                        age(seen));
    if (a.last_seen !== null) seenCell.title = clockText(a.last_seen);
    row.appendChild(seenCell);
    row.appendChild(reportedCell(a, seen, online));
    const desired = Object.entries(a.desired).map(([k, v]) => `${k}=${kw(v)}`).join(", ");
    const wayward = a.following === "not_following";
    const desiredCell = el("td", "num desired" + (desired ? "" : " zero") +
                           (wayward ? " not-following" : ""), desired || "–");
    if (a.following) desiredCell.title = wayward
      ? "the asset does not follow this setpoint" : `setpoint ${a.following}`;
    row.appendChild(desiredCell);
    row.appendChild(el("td", "num expected", kw(a.expected.rated_kw)));
    row.appendChild(qualityCell(a.quality));
    body.appendChild(row);
  }
}

function reportedCell(a, seen, online) {
  const cell = el("td", "num reported");
  const value = a.reported.power_kw;
  if (value === undefined || value === null) {
    cell.textContent = a.last_seen === null ? "never" : "–";
    cell.classList.add("never");
    return cell;
  }
  cell.textContent = kw(value);
  if (!online) {                // the last value we had, greyed, with how old it is
    cell.classList.add("stale");
    cell.appendChild(el("span", "age", ` (${age(seen)})`));
    cell.title = `last reported value; the asset is ${a.state}`;
  }
  return cell;
}

function qualityCell(quality) {
  const cell = el("td", "quality");
  const parts = Object.entries(quality).filter(([, n]) => n > 0);
  if (!parts.length) { cell.textContent = "no samples"; return cell; }
  parts.forEach(([name, n], i) => {
    if (i) cell.appendChild(document.createTextNode(" · "));
    cell.appendChild(el("span", name === "accepted" ? "" : "bad", `${n} ${name}`));
  });
  return cell;
}

// -- dispatches -------------------------------------------------------------------------------

function renderDispatches(items) {
  $("#dispatch-panel").hidden = !items.length;
  const body = $("#dispatches tbody");
  body.replaceChildren();
  for (const d of items) {
    const row = el("tr");
    row.dataset.dispatch = d.dispatch_id;
    row.appendChild(el("td", "id", d.dispatch_id));
    row.appendChild(el("td", "path", d.path));
    const target = el("td", "num target", kw(d.ramped_kw));
    if (d.target_kw !== d.ramped_kw) target.appendChild(el("span", "ramp", ` → ${kw(d.target_kw)}`));
    row.appendChild(target);
    // off target by more than 5 %: said in colour and in the tooltip, with the error
    const off = Math.abs(d.error_kw) > 0.05 * Math.abs(d.ramped_kw) + 0.1;
    const achieved = el("td", "num achieved" + (off ? " off" : ""), kw(d.achieved_kw));
    achieved.title = `error ${kw(d.error_kw)} kW`;
    row.appendChild(achieved);
    const allocated = el("td", "num allocated" + (d.ok ? "" : " short"), kw(d.allocated_kw));
    allocated.title = d.ok ? `to ${d.allocated} assets`
      : `to ${d.allocated} assets: does not cover the target (feasible ${kw(d.feasible_kw)} kW)`;
    row.appendChild(allocated);
    row.appendChild(el("td", "num eligible", `${d.eligible}/${d.members}`));
    row.appendChild(el("td", "binding" + (d.binding === "none" ? " zero" : ""),
                       d.binding === "none" ? "–" : d.binding));
    const counts = Object.entries(d.excluded_counts);
    const excluded = el("td", "excluded" + (counts.length ? "" : " zero"),
                        counts.length ? counts.map(([why, n]) => `${n} ${why}`).join(", ") : "–");
    excluded.title = Object.entries(d.excluded).map(([why, ids]) => `${why}: ${ids.join(", ")}`)
      .join("\n");
    row.appendChild(excluded);
    body.appendChild(row);
  }
}

// -- transitions ----------------------------------------------------------------------------

function renderTransitions(items) {
  const list = $("#transitions");
  list.replaceChildren();
  if (!items.length) { list.appendChild(el("li", "empty", "none yet")); return; }
  for (const t of items) {
    const item = el("li", `to-${t.new}`);
    item.dataset.asset = t.asset_id;
    item.appendChild(el("span", "at", clockText(t.at).slice(11, 19)));
    item.appendChild(document.createTextNode(`${t.asset_id} went ${t.new} (was ${t.old}; ${t.reason})`));
    list.appendChild(item);
  }
}

// -- the connection ---------------------------------------------------------------------------

function send(message) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN) state.ws.send(JSON.stringify(message));
}

function setStatus(text, cls) {
  const status = $("#status");
  status.textContent = text;
  status.className = `status ${cls || ""}`;
}

const handlers = {
  tree(m) { state.now = m.now; buildTree(m.nodes); },
  rollup(m) {                // m.now may be a few seconds old (shared encoding): ages use clock
    const entry = state.nodes.get(m.rollup.path);
    if (!entry) return;
    entry.rollup = m.rollup;
    entry.history = m.history;
    renderRow(entry);
  },
  assets(m) { state.now = m.now; state.assets = m; renderAssets(); },
  transitions(m) { renderTransitions(m.items); },
  dispatches(m) { renderDispatches(m.items); },
  clock(m) { state.now = m.now; $("#clock").textContent = clockText(m.now); renderAssets(); },
  error(m) { setStatus(`server: ${m.message}`, "down"); },
  batch(m) { for (const message of m.messages) dispatch(message); },
};

function dispatch(message) {
  const handle = handlers[message.type];
  if (handle) handle(message);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = ["twin.v1"];
  if (state.token) protocols.push(`twin.bearer.${state.token}`);
  const ws = new WebSocket(`${scheme}//${location.host}/ws`, protocols);
  state.ws = ws;
  ws.onopen = () => {
    state.retryMs = 1000;
    setStatus("live", "live");
    state.subscribed = new Set();     // a new connection knows nothing: subscribe again
    if (state.nodes.size) refreshVisibility();
    if (state.site) send({type: "site", path: state.site});
  };
  ws.onmessage = (event) => dispatch(JSON.parse(event.data));
  ws.onclose = () => {
    setStatus(`disconnected; retrying in ${Math.round(state.retryMs / 1000)} s`, "down");
    setTimeout(start, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 15000);
  };
}

async function start() {
  // the websocket cannot tell us why it was refused: ask a REST endpoint first
  const headers = state.token ? {Authorization: `Bearer ${state.token}`} : {};
  let response;
  try {
    response = await fetch("/api/rollups?level=owner", {headers});
  } catch (error) {
    setStatus("server unreachable; retrying", "down");
    setTimeout(start, state.retryMs);
    state.retryMs = Math.min(state.retryMs * 2, 15000);
    return;
  }
  if (response.status === 401 || response.status === 429) {
    const body = await response.json().catch(() => ({}));
    setStatus(body.error || `refused (${response.status})`, "down");
    $("#auth").hidden = false;
    return;
  }
  $("#auth").hidden = true;
  connect();
}

function readToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    sessionStorage.setItem("twin-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);  // off the address bar
  }
  state.token = sessionStorage.getItem("twin-token");
}

$("#auth").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#token").value.trim();
  sessionStorage.setItem("twin-token", state.token);
  start();
});
$("#site-close").addEventListener("click", closeSite);
readToken();
start();
