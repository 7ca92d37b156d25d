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

// --- time ------------------------------------------------------------------------------------

// One zone for the whole page, named on it: the reader's own, or UTC (chosen in the controls,
// kept for this browser). Tables, charts, the status line and the replay field all use it.
const BROWSER_TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
const ZONE_CHOICE = "wavy-dashboard-zone";

function zone() {
  const chosen = $("#controls select[name=zone]");
  return chosen && chosen.value === "UTC" ? "UTC" : BROWSER_TIME_ZONE;
}

function zoneParts(moment) {
  const parts = new Intl.DateTimeFormat("en-US", {
    timeZone: zone(), year: "numeric", month: "2-digit", day: "2-digit",
    hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
  }).formatToParts(moment);
  return Object.fromEntries(parts.map((part) => [part.type, part.value]));
}

// "2026-12-06 17:11:02" in the page's zone; "–" for none.
function when(iso) {
  if (!iso) return "–";
  const p = zoneParts(new Date(iso));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

function hourLabel(moment) {
  const p = zoneParts(moment);
  return `${p.month}-${p.day} ${p.hour}h`;
}

function dayLabel(moment) {
  const p = zoneParts(moment);
  return `${p.year}-${p.month}-${p.day}`;
}

// A datetime-local field's value, read in the page's zone.
function fromZoneField(local) {
  return zone() === "UTC" ? new Date(`${local}Z`) : new Date(local);
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
    ["replies", "Replies to these messages", totals.replies, number],
    ["reply-rate", "Reply rate (messages replied to)", totals.replyRate, percent],
    ["optouts", "Opt-out replies in the window", totals.optOuts, number],
    ["optout-rate", "Opt-out rate (per message)", totals.optOutRate, percent],
    ["mos", "MOs received in the window", totals.mosReceived, number],
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

// Counts have whole-number axes from zero: an empty window showed 0.1, 0.2... and no labels.
const COUNT_AXIS = { beginAtZero: true, ticks: { precision: 0 } };

function drawChart(id, config) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart(document.getElementById(id), {
    ...config,
    options: {
      responsive: true, maintainAspectRatio: false, animation: false,
      scales: { y: COUNT_AXIS },
      ...config.options,
    },
  });
}

// Every hour (or day) of the window, in the page's zone, whether or not it had traffic: a 24 h
// chart showed only the hours that had some.
function windowSlots(stats) {
  const label = stats.groupBy === "hour" ? hourLabel : dayLabel;
  const slots = [];
  for (let t = Date.parse(stats.from); t <= Date.parse(stats.to); t += 3600e3) {
    const slot = label(new Date(t));
    if (slots[slots.length - 1] !== slot) slots.push(slot);
  }
  const byLabel = new Map(stats.groups.map((g) => [stats.groupBy === "hour" ? hourLabel(new Date(g.key)) : g.key, g]));
  return { labels: slots, groups: slots.map((slot) => byLabel.get(slot)) };
}

function color(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--${name}`).trim();
}

function renderFunnel(stats) {
  const { labels, groups } = windowSlots(stats);
  const each = (count) => groups.map((g) => (g ? count(g) : 0));
  drawChart("funnel-chart", {
    type: "bar",
    data: {
      labels,
      datasets: [
        { label: "sent", data: each((g) => g.messages), backgroundColor: color("sent") },
        { label: "carrier-accepted", data: each((g) => g.sentStatusCodes["2"] || 0), backgroundColor: color("accepted") },
        { label: "delivered", data: each((g) => g.deliveredStatusCodes["4"] || 0), backgroundColor: color("delivered") },
        { label: "failed", data: each(failedCount), backgroundColor: color("failed") },
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
  // Every group with something to count: a sub-account with replies and opt-outs but no
  // message in the window was hidden, and the KPIs above then outnumbered the table. (MOs
  // received count for a sub-account only: the stats keep them under no campaign.)
  const active = (g) => g.messages > 0 || g.replies > 0 || g.optOuts > 0
    || (kind === "subAccount" && g.mosReceived > 0);
  const groups = stats.groups.filter(active).sort((a, b) => b.messages - a.messages || b.optOuts - a.optOuts);
  const body = $(`${table} tbody`);
  body.replaceChildren();
  for (const g of groups.slice(0, GROUPS_SHOWN)) {
    const testId = g.key === null ? "unanswered" : g.key || "none";
    const row = element("tr", undefined, { "data-testid": `${noun}-${testId}` });
    const name = element("td");
    if (g.key === null) {
      name.textContent = "(replies to no known message)";
    } else if (g.key) {
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
      percent(g.optOutRate), ...(kind === "subAccount" ? [number(g.mosReceived)] : [])]) {
      row.append(element("td", value));
    }
    body.append(row);
  }
  const hidden = groups.length - GROUPS_SHOWN;
  $(note).textContent = !groups.length
    ? "Nothing in this window."
    : hidden > 0 ? `and ${number(hidden)} more ${noun}${hidden === 1 ? "" : "s"}, smaller` : "";
  labelCells();
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
    // Every bucket named, on a phone too (skipped labels once hid the tallest bar's).
    options: { scales: { y: COUNT_AXIS, x: { ticks: { autoSkip: false, maxRotation: 90 } } } },
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
    row.append(element("td", when(mo.receivedDate)));
    row.append(element("td", mo.messageText || "", { class: "text" }));
    row.append(element("td", mo.source || "–"));
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
  labelCells();
}

// Each cell carries its column's name: on a phone a table's rows become cards, each value
// under its name, so the columns that matter are never off-screen.
function labelCells() {
  for (const table of document.querySelectorAll("table.cards")) {
    const names = [...table.querySelectorAll("thead th")].map((th) => th.textContent);
    for (const row of table.querySelectorAll("tbody tr")) {
      [...row.children].forEach((cell, index) => {
        if (names[index] && !cell.hasAttribute("colspan")) cell.dataset.label = names[index];
      });
    }
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
    ["sent", `${detail.sentStatusCode ?? "–"} ${detail.sentStatus ?? ""} ${detail.sentDate ? when(detail.sentDate) : ""}`],
    ["delivered", `${detail.deliveredStatusCode ?? "–"} ${detail.deliveredStatus ?? ""} ${detail.deliveredDate ? when(detail.deliveredDate) : ""}`],
  ];
  const list = element("p", undefined, { class: "muted" });
  list.textContent = facts.map(([k, v]) => `${k}: ${v ?? "–"}`).join(" · ");
  box.append(list);
  const table = element("table", undefined, { "data-testid": "history-events", class: "cards" });
  const head = element("tr");
  for (const title of ["received", "kind", "sent code", "delivered code", "from"]) head.append(element("th", title));
  const thead = element("thead");
  thead.append(head);
  const tbody = element("tbody");
  table.append(thead, tbody);
  for (const event of detail.events) {
    const row = element("tr");
    const from = event.reconciled ? "reconciled (asked of Wavy)" : "Wavy's webhook";
    for (const value of [when(event.receivedDate || event.receivedAt), event.kind, event.sentStatusCode ?? "–", event.deliveredStatusCode ?? "–", from]) {
      row.append(element("td", value));
    }
    tbody.append(row);
  }
  const wrap = element("div", undefined, { class: "scroll" });
  wrap.append(table);
  box.append(wrap);
  labelCells();
  if (detail.replies.length) {
    box.append(element("p", `Replies: ${detail.replies.map((r) => r.messageText).join(" · ")}`));
  }
}

// A phone number as people write it: digits with +, spaces, dashes, dots or brackets.
const PHONE = /^\+?[\d\s().-]{8,}$/;

async function search(q) {
  const box = $("#search-results");
  box.replaceChildren();
  $("#history").replaceChildren();
  // By the search API, which answers an unknown id with an empty list: a lookup by GET
  // answered 404 for every phone number or correlationId typed, and the console showed it.
  const found = await api("/v1/sms/status/search", { method: "POST", body: JSON.stringify({ ids: [q] }) });
  if (found.smsStatuses.length) return showHistory(q);
  const destination = PHONE.test(q) ? q.replace(/\D/g, "") : q;
  const matches = [];
  for (const [field, value] of [["correlationId", q], ["destination", destination]]) {
    const page = await api(`/v1/sms/status?${new URLSearchParams({ [field]: value, limit: "20" })}`);
    matches.push(...page.items.filter((item) => !matches.some((m) => m.id === item.id)));
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
  $("#optout-size").textContent = `${number(size)} number${size === 1 ? "" : "s"} on the lists now (all time)`;
  // The list's size as a line on its own axis, each day's changes as bars on theirs: drawn as
  // three lines on one axis, a day's opt-outs hid under the list's size.
  drawChart("optout-chart", {
    type: "bar",
    data: {
      labels: days.map((d) => d.day),
      datasets: [
        { type: "line", label: "numbers on the lists", data: days.map((d) => d.size), borderColor: color("failed"), backgroundColor: color("failed"), yAxisID: "y", order: 0 },
        { label: "opted out that day", data: days.map((d) => d.optedOut), backgroundColor: color("waiting"), yAxisID: "y1", order: 1 },
        { label: "opted back in that day", data: days.map((d) => d.optedIn), backgroundColor: color("delivered"), yAxisID: "y1", order: 1 },
      ],
    },
    options: {
      scales: {
        y: { ...COUNT_AXIS, position: "left", title: { display: true, text: "numbers on the lists" } },
        y1: { ...COUNT_AXIS, position: "right", grid: { drawOnChartArea: false }, title: { display: true, text: "changes that day" } },
      },
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
  labelCells();
  $("#optout-note").textContent = recent.items.length
    ? (recent.next ? `the ${RECENT_OPTOUTS} latest; download the list for the rest` : "")
    : "Nobody opted out.";
}

// --- reconciliation ----------------------------------------------------------------------------

const OVERDUE_SHOWN = 10;

async function loadReconciliation(params) {
  const scope = new URLSearchParams();
  if (params.get("subAccount")) scope.set("subAccount", params.get("subAccount"));
  const state = await api(`/v1/reconciliation?${scope}`);
  const minutes = (seconds) => seconds >= 3600 ? `${seconds / 3600} h` : `${seconds / 60} min`;
  $("#reconcile-state").textContent = (state.enabled
    ? "Reconciliation is on: Wavy's status search is asked about what is overdue."
    : "Reconciliation is off (set WAVY_API_USERNAME and WAVY_API_TOKEN to ask Wavy); what is overdue is listed all the same.")
    + ` Overdue: no callback after ${minutes(state.callbackAfterSeconds)}, no DLR after ${minutes(state.dlrAfterSeconds)} (never from ${state.noDlrCarriers.join(", ")}); given up after ${state.window}.`
    + ` Scope: ${state.subAccount ?? "every sub-account"}.`;
  const rows = [["callback", "callback"], ["DLR", "dlr"]].map(([label, kind]) => {
    const row = element("tr", undefined, { "data-testid": `reconcile-${kind}` });
    row.append(element("td", label), element("td", number(state.overdue[kind])), element("td", number(state.givenUp[kind])));
    return row;
  });
  $("#reconcile-counts tbody").replaceChildren(...rows);
  // Its own day: the server counts recoveries by the UTC day, whatever zone the page shows.
  $("#recovered-today").textContent = `Recovered from Wavy today (${state.timeZone} day): ${number(state.recoveredToday)}`;
  const listed = [];
  for (const kind of ["callback", "dlr"]) {
    const query = new URLSearchParams(scope);
    query.set("kind", kind);
    query.set("limit", String(OVERDUE_SHOWN));
    listed.push(await api(`/v1/sms/status/overdue?${query}`));
  }
  const items = listed.flatMap((page) => page.items).slice(0, OVERDUE_SHOWN);
  $("#overdue-table tbody").replaceChildren(...items.map((item) => {
    const row = element("tr", undefined, { "data-testid": "overdue-row" });
    row.append(
      element("td", item.id ?? `(timed out: ${item.correlationId ?? "no correlationId"})`),
      element("td", item.kind === "dlr" ? "DLR" : "callback"),
      element("td", item.destination),
      element("td", when(item.sentAt)),
      element("td", item.givenUp ? `${number(item.checks)} (given up)` : number(item.checks)),
      element("td", when(item.lastCheckedAt)),
      element("td", item.subAccount || "–"),
    );
    return row;
  }));
  const total = listed.reduce((sum, page) => sum + page.total, 0);
  $("#overdue-note").textContent = total === 0 ? "Nothing is overdue."
    : total > items.length ? `the ${items.length} longest waiting of ${number(total)}; all of them: GET /v1/sms/status/overdue` : "";
  labelCells();
}

// --- endpoints ---------------------------------------------------------------------------------

let shownEndpoint = null;

async function loadEndpoints() {
  const endpoints = await api("/v1/endpoints");
  const rows = endpoints.map((endpoint) => {
    const row = element("tr", undefined, { class: "clickable", "data-endpoint": endpoint.id });
    // Failing while any failed delivery waits for its retry, not only until one success.
    const failing = Boolean(endpoint.failingSince) || endpoint.retrying > 0;
    const state = endpoint.disabled
      ? `disabled (${endpoint.disabledReason})`
      : failing && endpoint.retrying > 0 ? `failing (${number(endpoint.retrying)} to retry)`
      : failing ? "failing" : "enabled";
    row.append(
      element("td", endpoint.id),
      element("td", endpoint.url, { class: "url" }),
      element("td", state, { class: endpoint.disabled || failing ? "state-disabled" : "", "data-testid": "state" }),
      element("td", number(endpoint.backlog), { "data-testid": "backlog" }),
      element("td", when(endpoint.nextAttemptAt), { "data-testid": "next-retry" }),
      element("td", when(endpoint.lastSuccessAt)),
      element("td", when(endpoint.failingSince), { class: endpoint.failingSince ? "failing" : "" }),
      element("td", number(endpoint.failed), { "data-testid": "failed" }),
      element("td", endpoint.subAccount || "(all)"),
    );
    if (endpoint.id === shownEndpoint) row.classList.add("selected");
    row.addEventListener("click", () => showAttempts(endpoint).catch((error) => {
      $("#endpoint-note").textContent = `Could not load the attempts: ${error.message}`;
    }));
    return row;
  });
  $("#endpoint-table tbody").replaceChildren(...rows);
  $("#endpoint-note").textContent = endpoints.length ? "" : "No endpoint yet.";
  labelCells();
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
      element("td", result, { class: attempt.statusCode >= 200 && attempt.statusCode < 300 ? "" : "failing" }),
      element("td", attempt.error || attempt.response || "", { class: "text" }),
      element("td", attempt.eventType || ""),
      element("td", attempt.latencyMs),
      element("td", attempt.webhookId),
    );
    return row;
  });
  $("#attempt-table tbody").replaceChildren(...rows);
  labelCells();
  if (!$("#replay-form input[name=since]").value) {
    // An hour ago, written in the page's zone (the field has no zone of its own).
    $("#replay-form input[name=since]").value = when(new Date(Date.now() - 3600e3).toISOString()).replace(" ", "T");
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
    body: JSON.stringify({ since: fromZoneField(local).toISOString() }),
  });
  $("#replay-status").textContent = `${number(response.queued)} deliveries queued again`;
}

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
  // Days and hours in the page's zone (a day in São Paulo starts at 03:00 UTC).
  params.set("tz", zone());
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
    await loadReconciliation(params);
    const loadedAt = when(new Date().toISOString()).slice(11);
    $("#status").textContent = `${when(overTime.from).slice(0, 16)} to ${when(overTime.to).slice(0, 16)}: times, days and hours in ${overTime.tz}; loaded at ${loadedAt}`;
    for (const named of document.querySelectorAll("[data-zone-name]")) named.textContent = overTime.tz;
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
  const zoneChoice = $("#controls select[name=zone]");
  zoneChoice.options[0].textContent = `your zone (${BROWSER_TIME_ZONE})`;
  zoneChoice.value = localStorage.getItem(ZONE_CHOICE) === "UTC" ? "UTC" : "local";
  zoneChoice.addEventListener("change", () => {
    localStorage.setItem(ZONE_CHOICE, zoneChoice.value);
    $("#replay-form input[name=since]").value = "";
    refresh();
  });
  $("#live-period").textContent = `${LIVE_PERIOD_S} s`;
  refreshWhileLive();
  if (credentials()) showBoard().catch(() => showLogin());
  else showLogin();
});
