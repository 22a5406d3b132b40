// Small SVG charts for the churnflow dashboard: no dependencies, no build step.
// Every chart returns a DOM node; hover text lives in data-tip (see installTooltip).

const SVG_NS = "http://www.w3.org/2000/svg";

function fill(node, attrs, children) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null && value !== false) node.setAttribute(name, String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** An SVG element: svg("rect", {x: 1}, ...children). */
export function svg(tag, attrs, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** An HTML element: h("div", {class: "x"}, ...children). */
export function h(tag, attrs, ...children) {
  return fill(document.createElement(tag), attrs, children);
}

// ------------------------------------------------------------------ formatting

const INT = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });

export const fmt = {
  int: (n) => (n === null || n === undefined ? "–" : INT.format(n)),
  pct: (x, digits = 1) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}%`),
  num: (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits)),
  signedPct: (x, digits = 1) =>
    x === null || x === undefined ? "–" : `${x > 0 ? "+" : ""}${(100 * x).toFixed(digits)} pts`,
  money(x, currency) {
    if (x === null || x === undefined) return "–";
    try {
      return new Intl.NumberFormat("en-US", {
        style: "currency",
        currency,
        maximumFractionDigits: Math.abs(x) >= 1000 ? 0 : 2,
      }).format(x);
    } catch {
      return `${Number(x).toFixed(2)} ${currency}`;
    }
  },
  /** "1997-03-31" -> "31 Mar" (the date as written, no time zone shift). */
  day(iso) {
    const [y, m, d] = String(iso).split("-").map(Number);
    if (!y || !m || !d) return String(iso);
    const months = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(" ");
    return `${d} ${months[m - 1]}`;
  },
};

/** Round axis ticks from 0 to at least max. */
export function niceScale(max, count = 4) {
  if (!(max > 0)) return { top: 1, ticks: [0, 1] };
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  const top = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let v = 0; v <= top + step / 2; v += step) ticks.push(Number(v.toFixed(10)));
  return { top, ticks };
}

function shortNumber(v) {
  if (Math.abs(v) >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (Math.abs(v) >= 1e3) return `${+(v / 1e3).toFixed(1)}k`;
  return String(+v.toFixed(2));
}

// ------------------------------------------------------------------ colour

function hexToRgb(hex) {
  const n = parseInt(hex.slice(1), 16);
  return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
}

/** A colour between two hex colours, t in [0, 1]. */
export function mix(from, to, t) {
  const a = hexToRgb(from);
  const b = hexToRgb(to);
  const c = a.map((v, i) => Math.round(v + (b[i] - v) * Math.min(1, Math.max(0, t))));
  return `#${c.map((v) => v.toString(16).padStart(2, "0")).join("")}`;
}

// ------------------------------------------------------------------ tooltip

/** One floating tooltip for every element with data-tip (multi-line with \n). */
export function installTooltip() {
  const tip = h("div", { class: "tip", role: "tooltip", hidden: true });
  document.body.append(tip);
  let current = null;
  document.addEventListener("pointerover", (event) => {
    const target = event.target instanceof Element ? event.target.closest("[data-tip]") : null;
    current = target;
    if (!target) {
      tip.hidden = true;
      return;
    }
    tip.textContent = target.getAttribute("data-tip");
    tip.hidden = false;
  });
  document.addEventListener("pointermove", (event) => {
    if (!current) return;
    const pad = 14;
    const { innerWidth, innerHeight } = window;
    const rect = tip.getBoundingClientRect();
    let x = event.clientX + pad;
    let y = event.clientY + pad;
    if (x + rect.width > innerWidth - 4) x = event.clientX - rect.width - pad;
    if (y + rect.height > innerHeight - 4) y = event.clientY - rect.height - pad;
    tip.style.left = `${Math.max(4, x)}px`;
    tip.style.top = `${Math.max(4, y)}px`;
  });
  document.addEventListener("pointerleave", () => {
    current = null;
    tip.hidden = true;
  });
}

// ------------------------------------------------------------------ pieces

/** A legend: [{label, color}] as swatches. */
export function legend(items) {
  return h(
    "ul",
    { class: "legend" },
    items.map(({ label, color }) =>
      h(
        "li",
        {},
        svg("svg", { width: 10, height: 10, "aria-hidden": "true" }, svg("rect", { width: 10, height: 10, rx: 2, fill: color })),
        label,
      ),
    ),
  );
}

function yAxis(scale, y, left, right, format) {
  return scale.ticks.map((t) =>
    svg(
      "g",
      { class: "tick" },
      svg("line", { x1: left, x2: right, y1: y(t), y2: y(t), class: "grid" }),
      svg("text", { x: left - 6, y: y(t) + 3.5, "text-anchor": "end" }, format(t)),
    ),
  );
}

/**
 * Stacked bars: labels along x, one stack of series values per label.
 * normalize: shares of each bar's total instead of counts.
 * tip(i, s): hover text of series s in bar i.
 */
export function stackedBars({ labels, series, width, height = 200, normalize = false, tip, xLabel, yFormat }) {
  const m = { left: 46, right: 8, top: 8, bottom: xLabel ? 34 : 22 };
  const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
  const scale = normalize ? { top: 1, ticks: [0, 0.25, 0.5, 0.75, 1] } : niceScale(Math.max(0, ...totals));
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const band = plotW / Math.max(1, labels.length);
  const barW = Math.max(2, band * 0.78);
  const y = (v) => m.top + plotH - (v / scale.top) * plotH;
  const format = yFormat || (normalize ? (v) => `${Math.round(v * 100)}%` : shortNumber);
  const every = Math.max(1, Math.ceil(labels.length / Math.max(1, Math.floor(plotW / 46))));
  const bars = labels.map((label, i) => {
    let acc = 0;
    const x = m.left + i * band + (band - barW) / 2;
    const rects = series.map((s, si) => {
      const raw = s.values[i] || 0;
      const v = normalize ? (totals[i] ? raw / totals[i] : 0) : raw;
      const top = y(acc + v);
      const rect = svg("rect", {
        x: x.toFixed(2),
        y: top.toFixed(2),
        width: barW.toFixed(2),
        height: Math.max(0, y(acc) - top).toFixed(2),
        fill: s.color,
        "data-series": s.name,
        "data-index": i,
        "data-value": raw,
        "data-tip": tip ? tip(i, si) : `${label}\n${s.name}: ${fmt.int(raw)}`,
      });
      acc += v;
      return rect;
    });
    return svg("g", { class: "bar", "data-label": label }, rects);
  });
  const xLabels = labels.map((label, i) =>
    i % every === 0
      ? svg("text", { x: m.left + i * band + band / 2, y: height - m.bottom + 14, "text-anchor": "middle" }, label)
      : null,
  );
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img" },
    yAxis(scale, y, m.left, width - m.right, format),
    bars,
    svg("g", { class: "xlabels" }, xLabels),
    xLabel ? svg("text", { x: m.left + plotW / 2, y: height - 4, "text-anchor": "middle", class: "axis-title" }, xLabel) : null,
  );
}

/** A sparkline of values (own scale), the last point marked. */
export function sparkline(values, color, width = 120, height = 34) {
  if (values.length < 2) return svg("svg", { width, height, class: "spark", "aria-hidden": "true" });
  const lo = Math.min(...values);
  const hi = Math.max(...values);
  const span = hi - lo || 1;
  const pts = values.map((v, i) => [
    2 + (i / (values.length - 1)) * (width - 6),
    height - 3 - ((v - lo) / span) * (height - 8),
  ]);
  const line = pts.map(([x, yv]) => `${x.toFixed(1)},${yv.toFixed(1)}`).join(" ");
  const [lx, ly] = pts[pts.length - 1];
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, class: "spark", "aria-hidden": "true" },
    svg("polygon", { points: `${pts[0][0]},${height} ${line} ${lx},${height}`, fill: color, "fill-opacity": 0.12 }),
    svg("polyline", { points: line, fill: "none", stroke: color, "stroke-width": 1.8, "stroke-linejoin": "round" }),
    svg("circle", { cx: lx, cy: ly, r: 2.6, fill: color }),
  );
}

/**
 * Cohort retention heatmap. rows: [{cohort, size, active: [..]}]; cell colour by
 * retention = active[k] / size, scaled to the largest retention after period 0.
 */
export function heatmap({ rows, width, periodName = "month" }) {
  const maxCols = Math.max(...rows.map((r) => r.active.length));
  const labelW = 64;
  const sizeW = 58;
  const left = labelW + sizeW;
  const cellW = Math.max(10, Math.min(52, (width - left - 4) / Math.max(1, maxCols)));
  const cellH = rows.length > 30 ? 14 : 24;
  const top = 20;
  const legendH = 30;
  const height = top + rows.length * cellH + legendH + 6;
  const later = rows.flatMap((r) => r.active.slice(1).map((a) => (r.size ? a / r.size : 0)));
  const scaleMax = Math.max(0.0001, ...later);
  const lo = "#eef4fb";
  const hi = "#17508a";
  const colour = (retention) => mix(lo, hi, Math.sqrt(Math.min(1, retention / scaleMax)));
  const showText = cellW >= 30 && cellH >= 20;
  const header = Array.from({ length: maxCols }, (_, k) =>
    k % Math.max(1, Math.ceil(22 / cellW)) === 0
      ? svg("text", { x: left + k * cellW + cellW / 2, y: 13, "text-anchor": "middle", class: "muted" }, `+${k}`)
      : null,
  );
  const body = rows.map((row, r) => {
    const y = top + r * cellH;
    const cells = row.active.map((active, k) => {
      const retention = row.size ? active / row.size : 0;
      const x = left + k * cellW;
      const text =
        retention >= 0.995 ? "100%" : retention >= 0.1 ? `${Math.round(retention * 100)}%` : `${(retention * 100).toFixed(1)}%`;
      const tip =
        `cohort ${row.cohort}, ${periodName} +${k}\n` +
        `${fmt.int(active)} of ${fmt.int(row.size)} customers ordered (${fmt.pct(retention)})`;
      const dark = Math.sqrt(Math.min(1, retention / scaleMax)) > 0.55;
      return svg(
        "g",
        {
          class: "cell",
          "data-cohort": row.cohort,
          "data-k": k,
          "data-active": active,
          "data-size": row.size,
          "data-retention": retention.toFixed(4),
          "data-tip": tip,
        },
        svg("rect", { x: x + 0.5, y: y + 0.5, width: cellW - 1, height: cellH - 1, rx: 2, fill: colour(retention) }),
        showText
          ? svg("text", { x: x + cellW / 2, y: y + cellH / 2 + 3.5, "text-anchor": "middle", class: dark ? "on-dark" : "on-light" }, text)
          : null,
      );
    });
    return svg(
      "g",
      { class: "cohort-row", "data-cohort": row.cohort },
      svg("text", { x: 0, y: y + cellH / 2 + 4, class: "row-label" }, row.cohort),
      svg("text", { x: left - 8, y: y + cellH / 2 + 4, "text-anchor": "end", class: "muted" }, fmt.int(row.size)),
      cells,
    );
  });
  const gradientId = `heat-${Math.random().toString(36).slice(2, 8)}`;
  const ly = top + rows.length * cellH + 12;
  const legendW = Math.min(180, width - left - 60);
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart heatmap", role: "img", "aria-label": "cohort retention" },
    svg(
      "defs",
      {},
      svg(
        "linearGradient",
        { id: gradientId },
        [0, 0.25, 0.5, 0.75, 1].map((t) => svg("stop", { offset: t, "stop-color": mix(lo, hi, Math.sqrt(t)) })),
      ),
    ),
    svg("text", { x: 0, y: 13, class: "muted" }, "cohort"),
    svg("text", { x: left - 8, y: 13, "text-anchor": "end", class: "muted" }, "size"),
    header,
    body,
    svg("text", { x: left, y: ly + 9, class: "muted" }, "0%"),
    svg("rect", { x: left + 22, y: ly, width: legendW, height: 10, rx: 2, fill: `url(#${gradientId})` }),
    svg("text", { x: left + 28 + legendW, y: ly + 9, class: "muted" }, `≥ ${fmt.pct(scaleMax, 0)} retained`),
  );
}

/** Calibration: mean predicted vs observed churn rate per bin, with the diagonal. */
export function calibrationCurve(table, width, height = 200) {
  const m = { left: 40, right: 10, top: 10, bottom: 30 };
  const plotW = width - m.left - m.right;
  const plotH = height - m.top - m.bottom;
  const x = (v) => m.left + v * plotW;
  const y = (v) => m.top + plotH - v * plotH;
  const points = table.filter((b) => b.count > 0 && b.mean_predicted !== null && b.observed_rate !== null);
  const most = Math.max(1, ...points.map((b) => b.count));
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": "calibration curve" },
    ticks.map((t) =>
      svg(
        "g",
        { class: "tick" },
        svg("line", { x1: m.left, x2: width - m.right, y1: y(t), y2: y(t), class: "grid" }),
        svg("text", { x: m.left - 6, y: y(t) + 3.5, "text-anchor": "end" }, `${t * 100}%`),
        svg("text", { x: x(t), y: height - m.bottom + 14, "text-anchor": "middle" }, `${t * 100}%`),
      ),
    ),
    svg("line", { x1: x(0), y1: y(0), x2: x(1), y2: y(1), class: "diagonal" }),
    svg("polyline", {
      points: points.map((b) => `${x(b.mean_predicted).toFixed(1)},${y(b.observed_rate).toFixed(1)}`).join(" "),
      class: "calibration-line",
    }),
    points.map((b) =>
      svg("circle", {
        cx: x(b.mean_predicted),
        cy: y(b.observed_rate),
        r: 2.5 + 5 * Math.sqrt(b.count / most),
        class: "calibration-point",
        "data-bin": b.bin,
        "data-tip": `scores ${b.bin}: ${fmt.int(b.count)} examples\npredicted ${fmt.pct(b.mean_predicted)}, observed ${fmt.pct(b.observed_rate)}`,
      }),
    ),
    svg("text", { x: m.left + plotW / 2, y: height - 3, "text-anchor": "middle", class: "axis-title" }, "predicted churn probability → observed churn rate"),
  );
}

/** A horizontal funnel: stages [{name, value}], bars relative to the first stage. */
export function funnel(stages, width) {
  const rowH = 30;
  const labelW = 86;
  const numW = 150;
  const barMax = Math.max(40, width - labelW - numW);
  const first = stages[0]?.value || 0;
  const height = stages.length * rowH;
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, class: "chart funnel", role: "img", "aria-label": "recall funnel" },
    stages.map((stage, i) => {
      const share = first ? stage.value / first : 0;
      const barW = Math.max(first ? 2 : 0, share * barMax);
      const prev = i > 0 ? stages[i - 1] : null;
      const step = prev && prev.value ? stage.value / prev.value : null;
      const yv = i * rowH;
      return svg(
        "g",
        {
          class: "stage",
          "data-stage": stage.name,
          "data-value": stage.value,
          "data-tip": `${stage.name}: ${fmt.int(stage.value)}` + (prev ? `\n${fmt.pct(step)} of ${prev.name}` : ""),
        },
        svg("text", { x: 0, y: yv + rowH / 2 + 4, class: "row-label" }, stage.name),
        svg("rect", { x: labelW, y: yv + 4, width: barW, height: rowH - 8, rx: 3, fill: mix("#2f6fae", "#2ba84a", i / Math.max(1, stages.length - 1)) }),
        svg("text", { x: labelW + barW + 8, y: yv + rowH / 2 + 4, class: "value" }, fmt.int(stage.value)),
        prev
          ? svg("text", { x: labelW + barW + 8 + 9 * String(fmt.int(stage.value)).length + 6, y: yv + rowH / 2 + 4, class: "muted" }, `${fmt.pct(step, 0)} of ${prev.name}`)
          : null,
      );
    }),
  );
}

/** Five small bars (sent, delivered, opened, clicked, converted) relative to sent. */
export function miniFunnel(stages, width = 130, height = 30) {
  const first = stages[0]?.value || 0;
  const gap = 3;
  const barW = (width - gap * (stages.length - 1)) / stages.length;
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, class: "mini-funnel", role: "img" },
    stages.map((stage, i) => {
      const hgt = first ? Math.max(1, (stage.value / first) * (height - 2)) : 0;
      return svg("rect", {
        x: i * (barW + gap),
        y: height - hgt,
        width: barW,
        height: hgt,
        rx: 1.5,
        fill: mix("#2f6fae", "#2ba84a", i / Math.max(1, stages.length - 1)),
        "data-stage": stage.name,
        "data-value": stage.value,
        "data-tip": `${stage.name}: ${fmt.int(stage.value)}${first ? ` (${fmt.pct(stage.value / first)} of sent)` : ""}`,
      });
    }),
  );
}

/** An estimate with its interval on a shared domain [lo, hi], zero marked. */
export function intervalPlot(estimate, interval, domain, width = 150, height = 22) {
  const [lo, hi] = domain;
  const x = (v) => 6 + ((v - lo) / (hi - lo || 1)) * (width - 12);
  const cls = interval ? (interval[0] > 0 ? "good" : interval[1] < 0 ? "bad" : "unsure") : "unsure";
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, class: `interval ${cls}`, role: "img" },
    svg("line", { x1: x(0), x2: x(0), y1: 2, y2: height - 2, class: "zero" }),
    interval
      ? svg(
          "g",
          {},
          svg("line", { x1: x(interval[0]), x2: x(interval[1]), y1: height / 2, y2: height / 2, class: "ci" }),
          svg("line", { x1: x(interval[0]), x2: x(interval[0]), y1: height / 2 - 4, y2: height / 2 + 4, class: "ci" }),
          svg("line", { x1: x(interval[1]), x2: x(interval[1]), y1: height / 2 - 4, y2: height / 2 + 4, class: "ci" }),
        )
      : null,
    estimate === null || estimate === undefined ? null : svg("circle", { cx: x(estimate), cy: height / 2, r: 4, class: "est" }),
  );
}

/** A probability as a small bar. */
export function probabilityBar(p, width = 70, height = 8) {
  return svg(
    "svg",
    { width, height, viewBox: `0 0 ${width} ${height}`, class: "pbar", "aria-hidden": "true" },
    svg("rect", { width, height, rx: 3, class: "track" }),
    svg("rect", { width: Math.max(2, p * width), height, rx: 3, fill: mix("#f2a93b", "#d64545", (p - 0.5) * 2) }),
  );
}
