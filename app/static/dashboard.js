// The delivery dashboard: every figure comes from the service's own API (/v1/stats, the read
// API), with the user's UserName and AuthenticationToken kept in sessionStorage (this tab
// only). Data is always written with textContent, never as HTML: MO texts come from phones.
"use strict";

const CREDENTIALS = "wavy-dashboard-credentials";
const charts = {};
let me = null;
// A campaign's figures move by the minute: while "Live" is ticked and the tab is in view, the
// board loads itself again this often (?refresh=N seconds overrides it; the tests use 1).
const LIVE_PERIOD_S = Number(new URLSearchParams(location.search).get("refresh")) || 30;
// Only the latest load draws: a slow background one must not overwrite what "Show" asked for.
let latestLoad = 0;

const $ = (selector) => document.querySelector(selector);

function element(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  return node;
}

function credentials() {
  const saved = sessionStorage.getItem(CREDENTIALS);
  return saved ? JSON.parse(saved) : null;
}

class Unauthorized extends Error {}

// A request with the logged-in user's headers; a 401 (or no login) throws Unauthorized.
async function authorizedFetch(path, options = {}) {
  const saved = credentials();
  if (!saved) throw new Unauthorized();
  const response = await fetch(path, {
    ...options,
    headers: {
      UserName: saved.username,
      AuthenticationToken: saved.token,
      ...(options.body ? { "Content-Type": "application/json" } : {}),
    },
  });
  if (response.status === 401) throw new Unauthorized();
  return response;
}

async function api(path, options = {}) {
  const response = await authorizedFetch(path, options);
  if (response.status === 404) return null;
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  }
  return response.json();
}

// --- figures ---------------------------------------------------------------------------------

const number = (value) => (value === null || value === undefined ? "–" : value.toLocaleString("en-US"));
const percent = (value) => (value === null || value === undefined ? "–" : `${(value * 100).toFixed(1)}%`);
const seconds = (value) => {
  if (value === null || value === undefined) return "–";
  if (value < 120) return `${value.toFixed(0)} s`;
  if (value < 7200) return `${(value / 60).toFixed(1)} min`;
  return `${(value / 3600).toFixed(1)} h`;
};

function sumCodes(codes, keep) {
  return Object.entries(codes).reduce((total, [code, count]) => total + (keep(code) ? count : 0), 0);
}

// Failed: refused before or by the carrier (any sent code but 2), or not delivered (any DLR
// code but 4).
function failedCount(figures) {
  const sentFailed = sumCodes(figures.sentStatusCodes, (code) => code !== "2" && code !== "none");
  const notDelivered = sumCodes(figures.deliveredStatusCodes, (code) => code !== "4" && code !== "none");
  return sentFailed + notDelivered;
}

function renderKpis(totals) {
  const latency = totals.timeToDeliver;
  const tiles = [
    ["messages", "Messages", totals.messages, number],
    ["accepted", "Accepted by carrier", totals.sentStatusCodes["2"] || 0, number],
    ["delivered", "Delivered", totals.deliveredStatusCodes["4"] || 0, number],
    ["failed", "Failed", failedCount(totals), number],
    ["delivery-rate", "Delivery rate", totals.deliveryRate, percent],
    ["waiting", "Waiting for DLR", totals.waitingForDlr.carrierSendsDlr, number],
    ["waiting-no-dlr", "No DLR expected (Oi, Sercomtel)", totals.waitingForDlr.carrierWithoutDlr, number],
    ["p50", "Time to deliver, median", latency.p50, seconds],
    ["p90", "Time to deliver, p90", latency.p90, seconds],
    ["replies", "Replies", totals.replies, number],
    ["reply-rate", "Reply rate", totals.replyRate, percent],
    ["optouts", "Opt-outs", totals.optOuts, number],
    ["optout-rate", "Opt-out rate", totals.optOutRate, percent],
    ["mos", "MOs received", totals.mosReceived, number],
  ];
  const box = $("#kpis");
  box.replaceChildren();
  for (const [id, label, value, format] of tiles) {
    const kind = id.startsWith("waiting") ? "waiting" : id;
    const tile = element("div", undefined, { class: `kpi ${kind}`, "data-testid": `kpi-${id}` });
    tile.append(element("div", label, { class: "label" }));
    tile.append(element("div", format(value), { class: "value", "data-value": value ?? "" }));
    box.append(tile);
  }
}

function drawChart(id, config) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart(document.getElementById(id), {
    ...config,
    options: { responsive: true, maintainAspectRatio: false, animation: false, ...config.options },
  });
}

function color(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--${name}`).trim();
}

function renderFunnel(stats) {
  const groups = stats.groups;
  const label = (key) => (stats.groupBy === "hour" ? key.slice(5, 13).replace("T", " ") + "h" : key);
  drawChart("funnel-chart", {
    type: "bar",
    data: {
      labels: groups.map((g) => label(g.key)),
      datasets: [
        { label: "sent", data: groups.map((g) => g.messages), backgroundColor: color("sent") },
        { label: "carrier-accepted", data: groups.map((g) => g.sentStatusCodes["2"] || 0), backgroundColor: color("accepted") },
        { label: "delivered", data: groups.map((g) => g.deliveredStatusCodes["4"] || 0), backgroundColor: color("delivered") },
        { label: "failed", data: groups.map(failedCount), backgroundColor: color("failed") },
      ],
    },
  });
}

function renderCarriers(stats) {
  const groups = stats.groups.filter((g) => g.messages > 0);
  drawChart("carrier-chart", {
    type: "bar",
    data: {
      labels: groups.map((g) => g.key || "(unknown)"),
      datasets: [
        { label: "delivery rate %", data: groups.map((g) => (g.carrierSendsDlr === false ? null : (g.deliveryRate ?? 0) * 100)), backgroundColor: color("delivered") },
        // A share of the carrier's messages, on the same scale: a count on an axis of its own
        // made 2 failures look like a full bar.
        { label: "failed %", data: groups.map((g) => (100 * failedCount(g)) / g.messages), backgroundColor: color("failed") },
      ],
    },
    options: {
      scales: { y: { min: 0, max: 100, title: { display: true, text: "% of the carrier's messages" } } },
    },
  });
  const body = $("#carrier-table tbody");
  body.replaceChildren();
  for (const g of groups) {
    const row = element("tr", undefined, { "data-testid": `carrier-${g.key || "unknown"}` });
    const waiting = g.waitingForDlr.carrierSendsDlr + g.waitingForDlr.carrierWithoutDlr;
    for (const value of [g.key || "(unknown)", number(g.messages), number(g.sentStatusCodes["2"] || 0),
      number(g.deliveredStatusCodes["4"] || 0), g.carrierSendsDlr === false ? "no DLRs" : percent(g.deliveryRate),
      number(failedCount(g)), number(waiting)]) {
      row.append(element("td", value));
    }
    body.append(row);
  }
}

// The busiest groups first (campaigns; sub-accounts for admins, their cost centres); a click
// narrows the whole board to one of them.
const GROUPS_SHOWN = 20;
const GROUP_TABLES = {
  campaign: { table: "#campaign-table", note: "#campaign-note", field: "campaignId", noun: "campaign" },
  subAccount: { table: "#sub-account-table", note: "#sub-account-note", field: "subAccount", noun: "sub-account" },
};

function renderGroupTable(stats, kind) {
  const { table, note, field, noun } = GROUP_TABLES[kind];
  const groups = stats.groups.filter((g) => g.messages > 0).sort((a, b) => b.messages - a.messages);
  const body = $(`${table} tbody`);
  body.replaceChildren();
  for (const g of groups.slice(0, GROUPS_SHOWN)) {
    const row = element("tr", undefined, { "data-testid": `${noun}-${g.key || "none"}` });
    const name = element("td");
    if (g.key) {
      const narrow = element("button", g.key, { type: "button", class: "link", title: `Show this ${noun} only` });
      narrow.addEventListener("click", () => {
        $(`#controls input[name=${field}]`).value = g.key;
        refresh();
      });
      name.append(narrow);
    } else {
      name.textContent = "(none)";
    }
    row.append(name);
    const waiting = g.waitingForDlr.carrierSendsDlr + g.waitingForDlr.carrierWithoutDlr;
    for (const value of [number(g.messages), number(g.sentStatusCodes["2"] || 0),
      number(g.deliveredStatusCodes["4"] || 0), percent(g.deliveryRate), number(failedCount(g)),
      number(waiting), number(g.replies), percent(g.replyRate), number(g.optOuts),
      percent(g.optOutRate)]) {
      row.append(element("td", value));
    }
    body.append(row);
  }
  const hidden = groups.length - GROUPS_SHOWN;
  $(note).textContent = !groups.length
    ? "No messages in this window."
    : hidden > 0 ? `and ${number(hidden)} more ${noun}${hidden === 1 ? "" : "s"}, smaller` : "";
}

function renderLatency(totals) {
  const latency = totals.timeToDeliver;
  let lower = 0;
  const labels = latency.histogram.map((bucket) => {
    const text = bucket.le === null ? `≥ ${seconds(lower)}` : `< ${seconds(bucket.le)}`;
    lower = bucket.le ?? lower;
    return text;
  });
  drawChart("latency-chart", {
    type: "bar",
    data: { labels, datasets: [{ label: "messages delivered", data: latency.histogram.map((b) => b.count), backgroundColor: color("delivered") }] },
  });
  // Only deliveries whose sent and delivered times are both known can be timed: say so, or the
  // count reads as a second, different number of deliveries.
  $("#latency-summary").textContent =
    `timed from ${number(latency.count)} of the deliveries (both times known) · median ${seconds(latency.p50)} · p90 ${seconds(latency.p90)} · p99 ${seconds(latency.p99)}`;
}

// --- replies and search --------------------------------------------------------------------

async function fetchReplies(params) {
  let found = [];
  for (const hours of [1, 24, 24 * 7, 24 * 30]) {
    const start = new Date(Date.now() - hours * 3600e3).toISOString();
    const query = new URLSearchParams({ start, limit: "1000" });
    if (params.get("subAccount")) query.set("subAccount", params.get("subAccount"));
    const page = await api(`/v1/sms/receive/search?${query}`);
    found = page.messages;
    if (found.length >= 10 || page.next) break;
  }
  const recent = found.slice(-10).reverse();
  const answered = recent.map((mo) => mo.mt && mo.mt.id).filter(Boolean);
  const statuses = answered.length
    ? (await api("/v1/sms/status/search", { method: "POST", body: JSON.stringify({ ids: answered }) })).smsStatuses
    : [];
  return { recent, byId: Object.fromEntries(statuses.map((s) => [s.id, s])) };
}

function renderReplies({ recent, byId }) {
  const body = $("#replies tbody");
  body.replaceChildren();
  for (const mo of recent) {
    const row = element("tr", undefined, { "data-testid": "reply" });
    row.append(element("td", mo.receivedDate ? mo.receivedDate.replace("T", " ").slice(0, 19) : "–"));
    row.append(element("td", mo.source || "–"));
    row.append(element("td", mo.messageText || "", { class: "text" }));
    const target = mo.mt && mo.mt.id;
    const status = target && byId[target];
    const answers = element("td", target
      ? `${target}${status ? ` (to ${status.destination || "?"}, campaign ${status.campaignId || "–"})` : ""}`
      : "–");
    if (target) {
      row.classList.add("clickable");
      row.addEventListener("click", () => showHistory(target));
    }
    row.append(answers);
    body.append(row);
  }
  if (!recent.length) {
    const row = element("tr");
    row.append(element("td", "No replies in the last 30 days.", { colspan: "4" }));
    body.append(row);
  }
}

async function showHistory(id) {
  const box = $("#history");
  box.replaceChildren(element("p", "Loading…", { class: "muted" }));
  const detail = await api(`/v1/sms/status/${encodeURIComponent(id)}`);
  box.replaceChildren();
  if (!detail) {
    box.append(element("p", `No message ${id} (in your scope).`, { class: "muted" }));
    return;
  }
  box.append(element("h2", `Message ${detail.id}`, { "data-testid": "history-title" }));
  const facts = [
    ["correlationId", detail.correlationId], ["destination", detail.destination],
    ["carrier", detail.carrierName], ["campaign", detail.campaignId],
    ["sent", `${detail.sentStatusCode ?? "–"} ${detail.sentStatus ?? ""} ${detail.sentDate ?? ""}`],
    ["delivered", `${detail.deliveredStatusCode ?? "–"} ${detail.deliveredStatus ?? ""} ${detail.deliveredDate ?? ""}`],
  ];
  const list = element("p", undefined, { class: "muted" });
  list.textContent = facts.map(([k, v]) => `${k}: ${v ?? "–"}`).join(" · ");
  box.append(list);
  const table = element("table", undefined, { "data-testid": "history-events" });
  const head = element("tr");
  for (const title of ["received", "kind", "sent code", "delivered code"]) head.append(element("th", title));
  const thead = element("thead");
  thead.append(head);
  const tbody = element("tbody");
  table.append(thead, tbody);
  for (const event of detail.events) {
    const row = element("tr");
    for (const value of [event.receivedDate || event.receivedAt, event.kind, event.sentStatusCode ?? "–", event.deliveredStatusCode ?? "–"]) {
      row.append(element("td", value));
    }
    tbody.append(row);
  }
  const wrap = element("div", undefined, { class: "scroll" });
  wrap.append(table);
  box.append(wrap);
  if (detail.replies.length) {
    box.append(element("p", `Replies: ${detail.replies.map((r) => r.messageText).join(" · ")}`));
  }
}

async function search(q) {
  const box = $("#search-results");
  box.replaceChildren();
  $("#history").replaceChildren();
  const direct = await api(`/v1/sms/status/${encodeURIComponent(q)}`);
  if (direct) return showHistory(q);
  const matches = [];
  for (const field of ["correlationId", "destination"]) {
    const page = await api(`/v1/sms/status?${new URLSearchParams({ [field]: q, limit: "20" })}`);
    matches.push(...page.items);
  }
  if (!matches.length) {
    box.append(element("p", `Nothing found for “${q}”.`, { class: "muted" }));
    return;
  }
  if (matches.length === 1) return showHistory(matches[0].id);
  const table = element("table");
  const tbody = element("tbody");
  for (const m of matches) {
    const row = element("tr", undefined, { class: "clickable" });
    for (const value of [m.id, m.correlationId, m.destination, m.deliveredStatus || m.sentStatus]) {
      row.append(element("td", value ?? "–"));
    }
    row.addEventListener("click", () => showHistory(m.id));
    tbody.append(row);
  }
  table.append(tbody);
  box.append(table);
}

// A downloaded CSV is opened by double-click in a spreadsheet, which splits it on its locale's
// list separator: a semicolon wherever the decimal mark is a comma (pt-BR, es), else a comma.
// Excel also needs the UTF-8 mark to show accents ("Não") as typed.
function spreadsheetParams() {
  const decimal = new Intl.NumberFormat().formatToParts(1.5).find((part) => part.type === "decimal");
  const delimiter = decimal && decimal.value === "," ? "semicolon" : "comma";
  return new URLSearchParams({ delimiter, bom: "true" });
}

// The export needs the credentials' headers, so it is fetched here and handed to the browser
// as a file, rather than linked.
async function downloadCsv(path, params, note) {
  note.textContent = "Preparing…";
  const query = new URLSearchParams([...new URLSearchParams(params), ...spreadsheetParams()]);
  let response;
  try {
    response = await authorizedFetch(`${path}?${query}`);
  } catch (error) {
    if (error instanceof Unauthorized) return showLogin("Please log in again.");
    throw error;
  }
  if (!response.ok) {
    note.textContent = `Could not download: HTTP ${response.status}`;
    return;
  }
  const blob = await response.blob();
  const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") || "");
  const link = element("a", undefined, { href: URL.createObjectURL(blob), download: named ? named[1] : "export.csv" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
  note.textContent = "";
}

// --- the page ------------------------------------------------------------------------------

// --- opt-outs ---------------------------------------------------------------------------------

const RECENT_OPTOUTS = 20;

async function loadOptouts(params) {
  const scope = new URLSearchParams({ from: params.get("from"), tz: params.get("tz") });
  if (params.get("subAccount")) scope.set("subAccount", params.get("subAccount"));
  const { days } = await api(`/v1/optouts/days?${scope}`);
  const listed = new URLSearchParams({ limit: String(RECENT_OPTOUTS) });
  if (params.get("subAccount")) listed.set("subAccount", params.get("subAccount"));
  const recent = await api(`/v1/optouts?${listed}`);
  const size = days.length ? days[days.length - 1].size : 0;
  $("#optout-size").textContent = `${number(size)} number${size === 1 ? "" : "s"} opted out now`;
  drawChart("optout-chart", {
    type: "line",
    data: {
      labels: days.map((d) => d.day),
      datasets: [
        { label: "numbers opted out", data: days.map((d) => d.size), borderColor: color("failed"), yAxisID: "y" },
        { label: "opted out that day", data: days.map((d) => d.optedOut), borderColor: color("waiting"), yAxisID: "y" },
        { label: "opted back in", data: days.map((d) => d.optedIn), borderColor: color("delivered"), yAxisID: "y" },
      ],
    },
  });
  const rows = recent.items.map((entry) => {
    const row = element("tr", undefined, { "data-testid": "optout-row" });
    row.append(
      element("td", entry.number),
      element("td", entry.subAccount || "(account-wide)"),
      element("td", when(entry.since)),
      element("td", entry.source),
      element("td", entry.keyword || "–"),
      element("td", entry.reason || "", { class: "text" }),
    );
    return row;
  });
  $("#optout-table tbody").replaceChildren(...rows);
  $("#optout-note").textContent = recent.items.length
    ? (recent.next ? `the ${RECENT_OPTOUTS} latest; download the list for the rest` : "")
    : "Nobody opted out.";
}

// --- endpoints ---------------------------------------------------------------------------------

let shownEndpoint = null;
const when = (iso) => (iso ? iso.slice(0, 19).replace("T", " ") : "–");

async function loadEndpoints() {
  const endpoints = await api("/v1/endpoints");
  const rows = endpoints.map((endpoint) => {
    const row = element("tr", undefined, { class: "clickable", "data-endpoint": endpoint.id });
    const state = endpoint.disabled ? `disabled (${endpoint.disabledReason})` : "enabled";
    row.append(
      element("td", endpoint.id),
      element("td", endpoint.url, { class: "url" }),
      element("td", endpoint.subAccount || "(all)"),
      element("td", state, { class: endpoint.disabled ? "state-disabled" : "" }),
      element("td", when(endpoint.lastSuccessAt)),
      element("td", when(endpoint.failingSince), { class: endpoint.failingSince ? "failing" : "" }),
      element("td", number(endpoint.backlog), { "data-testid": "backlog" }),
      element("td", number(endpoint.failed), { "data-testid": "failed" }),
    );
    if (endpoint.id === shownEndpoint) row.classList.add("selected");
    row.addEventListener("click", () => showAttempts(endpoint).catch((error) => {
      $("#endpoint-note").textContent = `Could not load the attempts: ${error.message}`;
    }));
    return row;
  });
  $("#endpoint-table tbody").replaceChildren(...rows);
  $("#endpoint-note").textContent = endpoints.length ? "" : "No endpoint yet.";
}

async function showAttempts(endpoint) {
  shownEndpoint = endpoint.id;
  const page = await api(`/v1/endpoints/${endpoint.id}/attempts?limit=50`);
  $("#endpoint-title").textContent = `Endpoint ${endpoint.id}: latest attempts (${endpoint.url})`;
  const rows = page.items.map((attempt) => {
    const row = element("tr");
    const result = attempt.statusCode === null ? "no answer" : String(attempt.statusCode);
    row.append(
      element("td", when(attempt.attemptedAt)),
      element("td", attempt.webhookId),
      element("td", attempt.eventType || ""),
      element("td", result, { class: attempt.statusCode >= 200 && attempt.statusCode < 300 ? "" : "failing" }),
      element("td", attempt.latencyMs),
      element("td", attempt.error || attempt.response || "", { class: "text" }),
    );
    return row;
  });
  $("#attempt-table tbody").replaceChildren(...rows);
  const since = new Date(Date.now() - 3600e3 - new Date().getTimezoneOffset() * 60e3);
  if (!$("#replay-form input[name=since]").value) {
    $("#replay-form input[name=since]").value = since.toISOString().slice(0, 19);
  }
  $("#replay-status").textContent = "";
  $("#endpoint-detail").hidden = false;
  for (const row of document.querySelectorAll("#endpoint-table tr[data-endpoint]")) {
    row.classList.toggle("selected", Number(row.dataset.endpoint) === endpoint.id);
  }
}

async function replay(event) {
  event.preventDefault();
  const local = new FormData(event.target).get("since");
  const response = await api(`/v1/endpoints/${shownEndpoint}/replay`, {
    method: "POST",
    body: JSON.stringify({ since: new Date(local).toISOString() }),
  });
  $("#replay-status").textContent = `${number(response.queued)} deliveries queued again`;
}

const BROWSER_TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";

function windowParams() {
  const form = new FormData($("#controls"));
  const hours = Number(form.get("window"));
  const params = new URLSearchParams({
    from: new Date(Date.now() - hours * 3600e3).toISOString(),
  });
  for (const name of ["subAccount", "campaignId"]) {
    const value = (form.get(name) || "").trim();
    if (value) params.set(name, value);
  }
  // Days and hours as the reader lives them (a day in São Paulo starts at 03:00 UTC).
  params.set("tz", BROWSER_TIME_ZONE);
  return { params, groupBy: hours <= 48 ? "hour" : "day" };
}

async function refresh({ quiet = false } = {}) {
  const load = ++latestLoad;
  const { params, groupBy } = windowParams();
  if (!quiet) $("#status").textContent = "Loading…";
  try {
    const overTime = await api(`/v1/stats?${params}&groupBy=${groupBy}`);
    const byCarrier = await api(`/v1/stats?${params}&groupBy=carrier`);
    const byCampaign = await api(`/v1/stats?${params}&groupBy=campaign`);
    const admin = !$("#sub-accounts").hidden;
    const bySubAccount = admin ? await api(`/v1/stats?${params}&groupBy=subAccount`) : null;
    const replies = await fetchReplies(params);
    if (load !== latestLoad) return;
    renderKpis(overTime.totals);
    renderFunnel(overTime);
    renderCarriers(byCarrier);
    renderGroupTable(byCampaign, "campaign");
    if (bySubAccount) renderGroupTable(bySubAccount, "subAccount");
    renderLatency(overTime.totals);
    renderReplies(replies);
    await loadOptouts(params);
    await loadEndpoints();
    const loadedAt = new Date().toISOString().slice(11, 19);
    const days = overTime.tz === "UTC" ? "" : `, days and hours in ${overTime.tz}`;
    $("#status").textContent = `${overTime.from.slice(0, 16).replace("T", " ")} to ${overTime.to.slice(0, 16).replace("T", " ")} UTC${days}, loaded at ${loadedAt}`;
    document.body.dataset.loaded = params.toString();
    document.body.dataset.loads = String(load);
  } catch (error) {
    if (load !== latestLoad) return;
    if (error instanceof Unauthorized) return showLogin("Please log in again.");
    $("#status").textContent = `Could not load: ${error.message}`;
  }
}

function refreshWhileLive() {
  setInterval(() => {
    const live = $("#controls input[name=live]").checked;
    if (live && !document.hidden && !$("#board").hidden) refresh({ quiet: true });
  }, LIVE_PERIOD_S * 1000);
}

function showLogin(message = "") {
  sessionStorage.removeItem(CREDENTIALS);
  $("#board").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  $("#who").textContent = "";
  $("#login-error").textContent = message;
}

async function showBoard() {
  me = await api("/v1/me");
  $("#login").hidden = true;
  $("#board").hidden = false;
  $("#logout").hidden = false;
  $("#who").textContent = `${me.userName} (${me.role}${me.subAccount ? `, ${me.subAccount}` : ""})`;
  // Users see their own sub-account only; admins choose.
  $("#sub-account-field").hidden = me.role !== "admin";
  $("#sub-accounts").hidden = me.role !== "admin";
  await refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    sessionStorage.setItem(CREDENTIALS, JSON.stringify({
      username: form.get("username").trim(), token: form.get("token").trim(),
    }));
    try {
      await showBoard();
    } catch (error) {
      showLogin(error instanceof Unauthorized ? "Wrong UserName or token." : error.message);
    }
  });
  $("#logout").addEventListener("click", () => showLogin());
  $("#controls").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  $("#download-csv").addEventListener("click", () => {
    const note = $("#download-status");
    downloadCsv("/v1/sms/status/export", windowParams().params, note)
      .catch((error) => { note.textContent = `Could not download: ${error.message}`; });
  });
  $("#download-replies").addEventListener("click", () => {
    const note = $("#download-replies-status");
    const { params } = windowParams();
    const replies = new URLSearchParams({ start: params.get("from") });
    if (params.get("subAccount")) replies.set("subAccount", params.get("subAccount"));
    downloadCsv("/v1/sms/receive/export", replies, note)
      .catch((error) => { note.textContent = `Could not download: ${error.message}`; });
  });
  $("#download-optouts").addEventListener("click", () => {
    const note = $("#download-optouts-status");
    const scope = new URLSearchParams();
    const subAccount = windowParams().params.get("subAccount");
    if (subAccount) scope.set("subAccount", subAccount);
    downloadCsv("/v1/optouts/export", scope, note)
      .catch((error) => { note.textContent = `Could not download: ${error.message}`; });
  });
  $("#replay-form").addEventListener("submit", (event) => {
    replay(event).catch((error) => { $("#replay-status").textContent = `Could not replay: ${error.message}`; });
  });
  $("#search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    search(new FormData(event.target).get("q").trim()).catch((error) => {
      $("#search-results").replaceChildren(element("p", error.message, { class: "error" }));
    });
  });
  $("#live-period").textContent = `${LIVE_PERIOD_S} s`;
  refreshWhileLive();
  if (credentials()) showBoard().catch(() => showLogin());
  else showLogin();
});
