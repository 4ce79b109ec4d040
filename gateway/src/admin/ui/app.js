// Tandem's dashboard: reads /ui/api/summary (the admin key as a bearer token when one is
// stored) and draws cards, two SVG charts and tables. No dependencies, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const MODES = ["local", "cloud", "cascade", "speculative", "cache", "none"];
const SVG = "http://www.w3.org/2000/svg";

const fmt = {
  int: (n) => Number(n).toLocaleString("en-US"),
  usd: (n) => "$" + Number(n).toFixed(6),
  pct: (n) => (100 * Number(n)).toFixed(1) + "%",
  secs: (n) => (n === null || n === undefined) ? "-" : Number(n).toFixed(3) + " s",
  ms: (n) => (n === null || n === undefined) ? "-" : (1000 * Number(n)).toFixed(1) + " ms",
  joules: (n) => Number(n).toFixed(3) + " J",
};

function text(id, value) {
  const el = document.querySelector(`[data-testid="${id}"]`);
  if (el) el.textContent = value;
}

function query() {
  const p = new URLSearchParams();
  p.set("window", $("window").value);
  for (const [name, id] of [["key", "f-key"], ["route", "f-route"], ["decision", "f-decision"]]) {
    const v = $(id).value.trim();
    if (v) p.set(name, v);
  }
  return p.toString();
}

async function load() {
  const headers = {};
  const key = sessionStorage.getItem("tandem-admin-key");
  if (key) headers["authorization"] = "Bearer " + key;
  let r;
  try {
    r = await fetch("/ui/api/summary?" + query(), { headers, cache: "no-store" });
  } catch (e) {
    text("status", "unreachable");
    return;
  }
  if (r.status === 401 || r.status === 403) {
    $("login").hidden = false;
    text("status", "admin key needed");
    return;
  }
  if (!r.ok) {
    text("status", "error " + r.status);
    return;
  }
  render(await r.json());
}

function render(s) {
  const t = s.totals;
  text("total-requests", fmt.int(t.requests));
  text("total-input-tokens", fmt.int(t.input_tokens));
  text("total-output-tokens", fmt.int(t.output_tokens));
  text("total-paid", fmt.usd(t.paid));
  text("total-reference", fmt.usd(t.reference));
  text("total-saved", fmt.usd(t.saved));
  text("total-saved-share", t.reference > 0 ? fmt.pct(t.saved / t.reference) + " of always-cloud" : "");
  text("total-cpu", fmt.secs(t.cpu_seconds));
  text("total-energy", fmt.joules(t.energy_joules));
  text("total-cache-hits", fmt.int(t.cache_hits));
  text("total-spec-accepted", fmt.int(t.spec_accepted) + " / " + fmt.int(t.spec_drafted));
  const w = s.window;
  text("win-requests", fmt.int(w.totals.requests));
  text("win-error-rate", fmt.pct(w.error_rate));
  text("win-fallback-rate", fmt.pct(w.fallback_rate));
  text("win-spec-acceptance", w.totals.spec_drafted > 0 ? fmt.pct(w.spec_acceptance) : "-");
  text("win-cpu-per-request", fmt.secs(w.cpu_per_local_request));
  text("win-energy-per-request", fmt.joules(w.energy_per_local_request));
  text("win-energy-per-token", fmt.joules(w.energy_per_output_token));
  text("win-saved", fmt.usd(w.totals.saved));
  mixChart(w.series);
  costChart(w.series);
  pairs(w.by_pair);
  latency(w.latency);
  recent(s.recent);
  const replicas = s.replicas ? `, ${s.replicas} replicas` : "";
  text("status", "updated " + new Date(s.now_ms).toLocaleTimeString() + replicas);
}

function el(name, attrs, parent) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

const W = 600, H = 220, L = 40, B = 20, T = 8;

function axes(svg, max, label) {
  el("line", { x1: L, y1: H - B, x2: W, y2: H - B, class: "axis" }, svg);
  el("line", { x1: L, y1: T, x2: L, y2: H - B, class: "axis" }, svg);
  const top = el("text", { x: 2, y: T + 8 }, svg);
  top.textContent = label(max);
  const zero = el("text", { x: 2, y: H - B }, svg);
  zero.textContent = label(0);
}

function clear(svg) {
  while (svg.firstChild) svg.removeChild(svg.firstChild);
}

function mixChart(series) {
  const svg = $("mix-chart");
  clear(svg);
  const totals = series.map((p) => MODES.reduce((a, m) => a + p[m], 0));
  const max = Math.max(1, ...totals);
  axes(svg, max, (v) => String(v));
  const bw = (W - L) / series.length;
  series.forEach((p, i) => {
    let y = H - B;
    for (const m of MODES) {
      if (!p[m]) continue;
      const h = (p[m] / max) * (H - B - T);
      y -= h;
      const r = el("rect", { x: L + i * bw + 1, y, width: Math.max(1, bw - 2), height: h, fill: `var(--${m})` }, svg);
      const tip = el("title", {}, r);
      tip.textContent = `${m}: ${p[m]}`;
    }
  });
  const legend = $("mix-legend");
  legend.innerHTML = "";
  for (const m of MODES) {
    const n = series.reduce((a, p) => a + p[m], 0);
    const span = document.createElement("span");
    span.dataset.testid = "mix-" + m;
    span.innerHTML = `<span class="sw ${m}"></span>${m} ${n}`;
    legend.appendChild(span);
  }
}

function costChart(series) {
  const svg = $("cost-chart");
  clear(svg);
  let paid = 0, reference = 0;
  const cum = series.map((p) => ({ paid: (paid += p.paid), reference: (reference += p.reference) }));
  const max = Math.max(1e-9, reference, paid);
  axes(svg, max, (v) => "$" + v.toPrecision(2));
  const step = (W - L) / Math.max(1, series.length - 1);
  for (const key of ["reference", "paid"]) {
    const pts = cum.map((c, i) => `${L + i * step},${H - B - (c[key] / max) * (H - B - T)}`).join(" ");
    el("polyline", { points: pts, fill: "none", stroke: `var(--${key})`, "stroke-width": 2 }, svg);
  }
}

function row(tbody, cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    if (c instanceof Node) td.appendChild(c);
    else if (c && typeof c === "object") {
      td.textContent = c.text;
      if (c.cls) td.className = c.cls;
    } else td.textContent = c;
    tr.appendChild(td);
  }
  tbody.appendChild(tr);
  return tr;
}

function pairs(list) {
  const tbody = $("pairs").querySelector("tbody");
  tbody.innerHTML = "";
  const max = Math.max(1, ...list.map((p) => p.requests));
  for (const p of list) {
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = (100 * p.requests / max) + "%";
    row(tbody, [p.route, p.backend, fmt.int(p.requests), fmt.int(p.input_tokens), fmt.int(p.output_tokens), fmt.usd(p.paid), bar]);
  }
}

function latency(list) {
  const tbody = $("latency").querySelector("tbody");
  tbody.innerHTML = "";
  for (const b of list) {
    row(tbody, [b.backend, fmt.int(b.requests), fmt.int(b.errors),
      fmt.ms(b.first_token.p50), fmt.ms(b.first_token.p95), fmt.ms(b.first_token.p99),
      fmt.ms(b.total.p50), fmt.ms(b.total.p95), fmt.ms(b.total.p99)]);
  }
}

function recent(list) {
  const tbody = $("recent").querySelector("tbody");
  tbody.innerHTML = "";
  for (const r of list) {
    const mode = document.createElement("span");
    mode.className = "mode " + r.mode;
    mode.textContent = r.mode;
    const tr = row(tbody, [new Date(r.ts_ms).toLocaleTimeString(), r.key || "-", r.route, r.backend, mode,
      { text: String(r.status) + (r.error ? " " + r.error : ""), cls: r.status >= 400 ? "err" : "" },
      fmt.int(r.input_tokens) + " / " + fmt.int(r.output_tokens), fmt.usd(r.paid), fmt.usd(r.saved),
      r.cpu_seconds > 0 ? fmt.secs(r.cpu_seconds) : "-", { text: r.explanation, cls: "why" }]);
    tr.title = r.id;
  }
}

$("controls").addEventListener("change", load);
$("controls").addEventListener("submit", (e) => { e.preventDefault(); load(); });
$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("tandem-admin-key", $("admin-key").value);
  $("login").hidden = true;
  load();
});
setInterval(() => { if ($("live").checked) load(); }, 5000);
load();
