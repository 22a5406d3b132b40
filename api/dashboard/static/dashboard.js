// The churnflow dashboard: one store, its API key, every number from the /v1 routes.
import {
  calibrationCurve,
  fmt,
  funnel,
  h,
  heatmap,
  installTooltip,
  intervalPlot,
  legend,
  miniFunnel,
  probabilityBar,
  sparkline,
  stackedBars,
} from "./charts.js";

const SEGMENTS = ["new", "active", "silent", "churned", "returned"];
const AT_RISK_SEGMENTS = ["silent", "active", "returned", "new"];
const SEGMENT_COLORS = {
  prospect: "#9aa5b1",
  new: "#4c9be8",
  active: "#2ba84a",
  silent: "#f2a93b",
  churned: "#d64545",
  returned: "#8a63d2",
};
const SEGMENT_HINTS = {
  new: "one order, still within their allowance",
  active: "ordering at their usual rhythm",
  silent: "quiet for longer than usual",
  churned: "no order within the churn horizon",
  returned: "won back after churning",
};
const TIER_COLORS = { low: "#c7d7e8", mid: "#7fa7cf", high: "#2f6fae" };
const STAGES = ["sent", "delivered", "opened", "clicked", "converted"];

const params = new URLSearchParams(location.search);
const POLL_MS = Math.max(500, Number(params.get("poll")) || 3000);
const WEEKS = 12;
const store = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop() || "");
const currency = document.querySelector('meta[name="cf-currency"]')?.content || "USD";
const keyName = `churnflow:key:${store}`;

const $ = (id) => document.getElementById(id);
let apiKey = null;
let timer = null;
let paused = false;
let generation = 0; // bumps on sign-in/out so stale responses are dropped
let polling = false; // one poll at a time; a request meanwhile runs right after
let pollAgain = false;
let cohortPeriod = "month";
const rendered = {}; // section -> signature of what is drawn
const latest = {}; // source -> last response

class AuthError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ------------------------------------------------------------------ data

async function api(path) {
  const response = await fetch(`/v1/stores/${encodeURIComponent(store)}${path}`, {
    headers: { Authorization: `Bearer ${apiKey}`, Accept: "application/json" },
    cache: "no-store",
  });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const message = body?.error?.message || `HTTP ${response.status}`;
  if (response.status === 401 || response.status === 403) throw new AuthError(response.status, message);
  if (response.ok) return { ok: true, body };
  // FastAPI's own 404 ("Not Found") means the route itself is not on this server.
  return { ok: false, status: response.status, missing: response.status === 404 && message === "Not Found", message };
}

const SOURCES = {
  segments: () => "/segments",
  lifecycle: () => `/lifecycle?weeks=${WEEKS}`,
  cohorts: () => `/cohorts?period=${cohortPeriod}`,
  risk: () => "/risk?bins=20",
  model: () => "/model",
  campaigns: () => "/campaigns",
  ...Object.fromEntries(
    AT_RISK_SEGMENTS.map((s) => [`members:${s}`, () => `/segments/${s}/customers?order=desc&limit=200`]),
  ),
};

async function fetchAll() {
  const names = Object.keys(SOURCES);
  const settled = await Promise.allSettled(names.map((name) => api(SOURCES[name]())));
  const out = {};
  let offline = false;
  settled.forEach((result, i) => {
    if (result.status === "fulfilled") out[names[i]] = result.value;
    else if (result.reason instanceof AuthError) throw result.reason;
    else offline = true;
  });
  return { out, offline };
}

// ------------------------------------------------------------------ sections

function empty(container, title, detail) {
  container.replaceChildren(h("div", { class: "empty" }, h("strong", {}, title), detail ? h("p", {}, detail) : null));
}

function unavailable(container, response, what) {
  if (!response) return empty(container, "Loading…");
  if (response.missing) return empty(container, `No ${what} yet`, `This server does not serve ${what} yet.`);
  return empty(container, `No ${what} yet`, response.message);
}

function widthOf(container) {
  return Math.max(260, Math.floor(container.clientWidth || container.parentElement?.clientWidth || 600));
}

/** Draw a section only when its data (or its width) changed. */
function draw(section, data, paint) {
  const container = $(section);
  const signature = JSON.stringify(data) + "|" + widthOf(container);
  if (rendered[section] === signature) return;
  rendered[section] = signature;
  paint(container);
}

function lifecycleWeeks() {
  const r = latest.lifecycle;
  return r && r.ok && Array.isArray(r.body?.weeks) ? r.body.weeks : [];
}

function renderKpis() {
  const counts = latest.segments?.ok ? latest.segments.body.segments : null;
  const weeks = lifecycleWeeks();
  draw("kpis", { counts, weeks }, (container) => {
    container.replaceChildren(
      ...SEGMENTS.map((segment) => {
        const series = weeks.map((w) => w.counts?.[segment] ?? 0);
        const now = counts ? counts[segment] : series.length ? series[series.length - 1] : null;
        let delta = null;
        if (series.length >= 2) delta = series[series.length - 1] - series[series.length - 2];
        const deltaText =
          delta === null ? "" : delta === 0 ? "no change this week" : `${delta > 0 ? "▲" : "▼"} ${fmt.int(Math.abs(delta))} this week`;
        return h(
          "div",
          { class: `kpi seg-${segment}`, "data-segment": segment, "data-count": now ?? "" },
          h("div", { class: "kpi-head" }, h("span", { class: "kpi-name" }, segment), sparkline(series, SEGMENT_COLORS[segment])),
          h("div", { class: "kpi-value" }, fmt.int(now)),
          h("div", { class: "kpi-foot", "data-tip": SEGMENT_HINTS[segment] }, deltaText || SEGMENT_HINTS[segment]),
        );
      }),
    );
  });
}

function renderLifecycle() {
  const weeks = lifecycleWeeks();
  const response = latest.lifecycle;
  draw("lifecycle", { weeks, missing: response?.missing, ok: response?.ok }, (container) => {
    if (!weeks.length) return unavailable(container, response && !response.ok ? response : response ? { message: "No weeks recorded yet." } : null, "lifecycle history");
    const labels = weeks.map((w) => fmt.day(w.week_start));
    const series = SEGMENTS.map((s) => ({ name: s, color: SEGMENT_COLORS[s], values: weeks.map((w) => w.counts?.[s] ?? 0) }));
    const totals = weeks.map((w) => SEGMENTS.reduce((sum, s) => sum + (w.counts?.[s] ?? 0), 0));
    container.replaceChildren(
      stackedBars({
        labels,
        series,
        width: widthOf(container),
        height: 210,
        normalize: true,
        tip: (i, si) => {
          const v = series[si].values[i];
          return `week of ${weeks[i].week_start}\n${series[si].name}: ${fmt.int(v)} (${fmt.pct(totals[i] ? v / totals[i] : 0)})`;
        },
      }),
      legend(SEGMENTS.map((s) => ({ label: s, color: SEGMENT_COLORS[s] }))),
    );
  });
}

function renderTiers() {
  const weeks = lifecycleWeeks();
  const response = latest.lifecycle;
  draw("tiers", { weeks, missing: response?.missing, ok: response?.ok }, (container) => {
    if (!weeks.length) return unavailable(container, response && !response.ok ? response : response ? { message: "No weeks recorded yet." } : null, "value tiers");
    const tiers = ["low", "mid", "high"];
    const last = weeks[weeks.length - 1].tiers || {};
    const series = tiers.map((t) => ({ name: t, color: TIER_COLORS[t], values: weeks.map((w) => w.tiers?.[t] ?? 0) }));
    container.replaceChildren(
      h(
        "div",
        { class: "tier-now" },
        tiers.map((t) => h("div", { class: "tier", "data-tier": t }, h("span", { class: "muted" }, t), h("b", {}, fmt.int(last[t] ?? 0)))),
      ),
      stackedBars({
        labels: weeks.map((w) => fmt.day(w.week_start)),
        series,
        width: widthOf(container),
        height: 150,
        tip: (i, si) => `week of ${weeks[i].week_start}\n${tiers[si]} value: ${fmt.int(series[si].values[i])}`,
      }),
      legend(tiers.map((t) => ({ label: `${t} value`, color: TIER_COLORS[t] }))),
    );
  });
}

function renderCohorts() {
  const response = latest.cohorts;
  const cohorts = response?.ok && Array.isArray(response.body?.cohorts) ? response.body.cohorts : [];
  draw("cohorts", { cohorts, period: cohortPeriod, ok: response?.ok, missing: response?.missing }, (container) => {
    if (!cohorts.length) return unavailable(container, response && !response.ok ? response : response ? { message: "No first orders recorded yet." } : null, "cohorts");
    container.replaceChildren(heatmap({ rows: cohorts, width: widthOf(container), periodName: cohortPeriod }));
  });
}

function renderRisk() {
  const response = latest.risk;
  const bins = response?.ok ? response.body.bins : [];
  draw("risk", { bins, ok: response?.ok }, (container) => {
    if (!response?.ok) return unavailable(container, response, "risk histogram");
    const total = response.body.total;
    if (!total) return empty(container, "No scored customers yet");
    const present = ["prospect", ...SEGMENTS].filter((s) => bins.some((b) => b.counts[s]));
    const series = present.map((s) => ({ name: s, color: SEGMENT_COLORS[s], values: bins.map((b) => b.counts[s] || 0) }));
    const high = bins.filter((b) => b.lower >= 0.7).reduce((sum, b) => sum + b.total - (b.counts.churned || 0), 0);
    container.replaceChildren(
      h("p", { class: "lead" }, h("b", { "data-high-risk": high }, fmt.int(high)), " customers not yet churned score 70% or more"),
      stackedBars({
        labels: bins.map((b) => `${Math.round(b.lower * 100)}`),
        series,
        width: widthOf(container),
        height: 190,
        xLabel: "churn probability (%)",
        tip: (i, si) => `${fmt.pct(bins[i].lower, 0)}–${fmt.pct(bins[i].upper, 0)}: ${fmt.int(bins[i].total)} customers\n${present[si]}: ${fmt.int(series[si].values[i])}`,
      }),
      legend(present.map((s) => ({ label: s, color: SEGMENT_COLORS[s] }))),
    );
  });
}

function topAtRisk(limit = 12) {
  const pool = [];
  for (const segment of AT_RISK_SEGMENTS) {
    const r = latest[`members:${segment}`];
    if (r?.ok) pool.push(...r.body.customers);
  }
  const spend = (c) => Number(c.features?.spend_total_base) || 0;
  const rank = { high: 2, mid: 1 };
  return pool
    .filter((c) => rank[c.value_tier])
    .sort((a, b) => b.churn_probability - a.churn_probability || rank[b.value_tier] - rank[a.value_tier] || spend(b) - spend(a))
    .slice(0, limit);
}

function renderAtRisk() {
  const customers = topAtRisk();
  const anyLoaded = AT_RISK_SEGMENTS.some((s) => latest[`members:${s}`]);
  draw("atrisk", { customers, anyLoaded }, (container) => {
    if (!anyLoaded) return empty(container, "Loading…");
    if (!customers.length) return empty(container, "No valuable customer at risk", "Nobody in the mid or high value tier is scored yet outside the churned segment.");
    const rows = customers.map((c) =>
      h(
        "tr",
        { "data-customer": c.customer_id },
        h("td", { class: "mono" }, c.customer_id),
        h("td", { class: "num" }, h("span", { class: "prob" }, probabilityBar(c.churn_probability), fmt.pct(c.churn_probability, 0))),
        h("td", {}, h("span", { class: `badge seg-${c.segment}` }, c.segment)),
        h("td", {}, h("span", { class: `badge tier-${c.value_tier}` }, c.value_tier)),
        h("td", { class: "num" }, fmt.money(Number(c.features?.spend_total_base) || 0, currency)),
        h(
          "td",
          { class: "reasons" },
          (c.reasons || []).slice(0, 2).map((r) => h("span", { class: `reason ${r.direction === "lowers" || (r.contribution ?? 0) < 0 ? "down" : "up"}` }, r.text)),
        ),
      ),
    );
    container.replaceChildren(
      h(
        "table",
        { class: "table" },
        h("thead", {}, h("tr", {}, ["customer", "churn risk", "segment", "value", "spend", "why"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows),
      ),
    );
  });
}

function stat(label, value, hint, attrs = {}) {
  return h("div", { class: "stat", "data-tip": hint, ...attrs }, h("span", { class: "muted" }, label), h("b", {}, value));
}

function renderModel() {
  const response = latest.model;
  draw("model", { body: response?.body, ok: response?.ok }, (container) => {
    if (!response?.ok) return unavailable(container, response, "model metrics");
    const m = response.body;
    const warm = Boolean(m.model_warm);
    const width = widthOf(container);
    container.replaceChildren(
      h(
        "div",
        { class: "model-head" },
        h("span", { class: `badge ${warm ? "ok" : "warn"}`, "data-warm": String(warm) }, warm ? "warm" : "warming up"),
        h("span", { class: "muted mono" }, m.model_version || ""),
      ),
      h(
        "div",
        { class: "stats" },
        stat("ROC AUC", fmt.num(m.roc_auc, 3), "progressive validation: each example scored before it was learned", { "data-metric": "roc_auc" }),
        stat("log loss", fmt.num(m.log_loss, 3), "lower is better", { "data-metric": "log_loss" }),
        stat("Brier", fmt.num(m.brier, 3), "mean squared error of the probability; lower is better", { "data-metric": "brier" }),
        stat("examples", fmt.int(m.examples_learned ?? m.examples), `labelled examples learned${m.warm_after !== undefined ? `; warm after ${fmt.int(m.warm_after)}` : ""}`, { "data-metric": "examples" }),
        stat("drift", fmt.int(m.drifts_detected ?? 0), "ADWIN drift detections on the log loss", { "data-metric": "drifts_detected" }),
        stat("base rate", fmt.pct(m.base_rate), "share of examples that churned", { "data-metric": "base_rate" }),
      ),
      Array.isArray(m.calibration) && m.calibration.some((b) => b.count > 0)
        ? calibrationCurve(m.calibration, width, Math.min(230, Math.round(width * 0.62)))
        : empty(h("div"), "No calibration yet"),
    );
  });
}

function campaignTotals(rows) {
  const total = Object.fromEntries(STAGES.map((s) => [s, 0]));
  let revenue = 0;
  let cost = 0;
  let incremental = 0;
  for (const r of rows) {
    for (const s of STAGES) total[s] += Number(r[s]) || 0;
    revenue += Number(r.revenue) || 0;
    cost += Number(r.offer_cost) || 0;
    incremental += Number(r.incremental_revenue) || 0;
  }
  return { total, revenue, cost, incremental };
}

function renderCampaigns() {
  const response = latest.campaigns;
  const rows = response?.ok && Array.isArray(response.body?.rows) ? response.body.rows : [];
  draw("campaigns", { rows, ok: response?.ok, missing: response?.missing }, (container) => {
    if (!response?.ok) return unavailable(container, response, "recall results");
    if (!rows.length) return empty(container, "No recall messages sent yet");
    const width = widthOf(container);
    const { total, revenue, cost, incremental } = campaignTotals(rows);
    const window = response.body.attribution_window_days;
    const bounds = rows.flatMap((r) => (r.uplift_ci ? r.uplift_ci : r.uplift !== null && r.uplift !== undefined ? [r.uplift] : []));
    const reach = Math.max(0.01, ...bounds.map((v) => Math.abs(v)));
    const domain = [-reach * 1.1, reach * 1.1];
    const sorted = [...rows].sort(
      (a, b) => String(a.rule_id).localeCompare(String(b.rule_id)) || a.step - b.step || String(a.arm ?? "").localeCompare(String(b.arm ?? "")) || String(a.channel).localeCompare(String(b.channel)),
    );
    const table = h(
      "table",
      { class: "table campaigns" },
      h(
        "thead",
        {},
        h("tr", {}, ["rule", "step", "arm", "channel", "funnel", "sent", "converted", "conv. rate", "revenue", "ROI", "uplift vs holdout (95% CI)"].map((t) => h("th", {}, t))),
      ),
      h(
        "tbody",
        {},
        sorted.map((r) => {
          const id = `${r.rule_id}/${r.step}/${r.arm ?? "-"}/${r.channel}`;
          const ci = r.uplift_ci;
          return h(
            "tr",
            { "data-row": id },
            h("td", {}, r.rule_id),
            h("td", { class: "num" }, r.step),
            h("td", {}, r.arm ?? "–"),
            h("td", {}, r.channel),
            h("td", {}, miniFunnel(STAGES.map((s) => ({ name: s, value: Number(r[s]) || 0 })))),
            h("td", { class: "num", "data-field": "sent" }, fmt.int(r.sent)),
            h("td", { class: "num", "data-field": "converted" }, fmt.int(r.converted)),
            h("td", { class: "num" }, fmt.pct(r.conversion_rate)),
            h("td", { class: "num", "data-field": "revenue" }, fmt.money(r.revenue, currency)),
            h("td", { class: "num", "data-field": "roi" }, r.roi === null || r.roi === undefined ? "–" : `${Number(r.roi).toFixed(1)}×`),
            h(
              "td",
              {
                class: "uplift",
                "data-field": "uplift",
                "data-tip":
                  `holdout: ${fmt.int(r.holdout?.converted)} of ${fmt.int(r.holdout?.intents)} converted (${fmt.pct(r.holdout_conversion_rate)})\n` +
                  `uplift ${fmt.signedPct(r.uplift)}` +
                  (ci ? `, 95% CI ${fmt.signedPct(ci[0])} to ${fmt.signedPct(ci[1])}` : ", no interval yet"),
              },
              intervalPlot(r.uplift ?? null, ci || null, domain),
              h("span", { class: "mono" }, fmt.signedPct(r.uplift)),
            ),
          );
        }),
      ),
    );
    container.replaceChildren(
      h(
        "div",
        { class: "campaign-top" },
        h("div", { class: "funnel-wrap" }, funnel(STAGES.map((s) => ({ name: s, value: total[s] })), Math.min(560, Math.floor(width * 0.55)))),
        h(
          "div",
          { class: "stats money" },
          stat("revenue", fmt.money(revenue, currency), `orders attributed within ${window ?? "?"} days of a message`, { "data-metric": "revenue" }),
          stat("incremental", fmt.money(incremental, currency), "revenue above what the holdout suggests", { "data-metric": "incremental_revenue" }),
          stat("offer cost", fmt.money(cost, currency), "cost of the offers redeemed", { "data-metric": "offer_cost" }),
          stat("ROI", cost ? `${((incremental - cost) / cost).toFixed(1)}×` : "–", "(incremental revenue − offer cost) / offer cost, all rows", { "data-metric": "roi" }),
        ),
      ),
      h("div", { class: "scroll" }, table),
    );
  });
}

function renderAll() {
  renderKpis();
  renderLifecycle();
  renderTiers();
  renderCohorts();
  renderRisk();
  renderAtRisk();
  renderModel();
  renderCampaigns();
}

// ------------------------------------------------------------------ live

function setStatus(kind, text) {
  const dot = $("live-dot");
  dot.className = `dot ${kind}`;
  $("live-text").textContent = text;
  document.body.dataset.status = kind;
}

async function poll() {
  clearTimeout(timer);
  timer = null;
  if (polling) {
    pollAgain = true;
    return;
  }
  polling = true;
  pollAgain = false;
  const mine = generation;
  try {
    const { out, offline } = await fetchAll();
    if (mine !== generation) return;
    Object.assign(latest, out);
    renderAll();
    const now = new Date().toLocaleTimeString("en-GB");
    document.body.dataset.updated = String(Date.now());
    if (offline) setStatus("warn", `Reconnecting… (last data ${now})`);
    else setStatus(paused ? "paused" : "live", `${paused ? "Paused" : "Live"} · updated ${now}`);
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof AuthError) {
      polling = false;
      return signOut(error.status === 403 ? `This key is not valid for store “${store}”.` : "That key is unknown or has been revoked.");
    }
    setStatus("warn", "Reconnecting…");
  } finally {
    polling = false;
  }
  if (pollAgain) poll();
  else if (mine === generation && !paused) timer = setTimeout(poll, POLL_MS);
}

function clearBoard() {
  for (const name of Object.keys(latest)) delete latest[name];
  for (const name of Object.keys(rendered)) delete rendered[name];
  for (const id of ["kpis", "lifecycle", "tiers", "cohorts", "risk", "atrisk", "model", "campaigns"]) $(id).replaceChildren();
}

function signIn(key) {
  apiKey = key;
  sessionStorage.setItem(keyName, key);
  generation += 1;
  $("login").hidden = true;
  $("board").hidden = false;
  $("sign-out").hidden = false;
  $("pause").hidden = false;
  setStatus("warn", "Connecting…");
  poll();
}

function signOut(message) {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  apiKey = null;
  sessionStorage.removeItem(keyName);
  clearBoard();
  $("board").hidden = true;
  $("login").hidden = false;
  $("sign-out").hidden = true;
  $("pause").hidden = true;
  $("login-error").textContent = message || "";
  $("login-error").hidden = !message;
  setStatus("off", "Not connected");
  $("key-input").focus();
}

function start() {
  document.title = `${store} · churnflow`;
  $("store-name").textContent = store;
  installTooltip();
  // A key can come in the URL fragment (never sent to the server); keep it for this tab only.
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromHash) {
    sessionStorage.setItem(keyName, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    $("key-input").value = "";
    if (key) signIn(key);
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "Resume" : "Pause";
    clearTimeout(timer);
    timer = null;
    if (!paused) poll();
    else setStatus("paused", "Paused · updates stopped");
  });
  for (const button of document.querySelectorAll("[data-period]")) {
    button.addEventListener("click", () => {
      cohortPeriod = button.dataset.period;
      for (const b of document.querySelectorAll("[data-period]")) b.setAttribute("aria-pressed", String(b === button));
      delete latest.cohorts;
      renderCohorts();
      if (apiKey) poll();
    });
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(renderAll, 150);
  });
  const saved = sessionStorage.getItem(keyName);
  if (saved) signIn(saved);
  else signOut("");
}

start();
