// The runs dashboard: run folders, metric charts (overlaid, refreshed while running,
// guard events marked), the rollout inspector and the pipeline's report. Text from the
// runs (prompts, responses, tokens, config values) goes in with textContent only, and
// into a chart (metric names, run ids, event messages) through plotText only.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const COLORS = ["#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#f08c00"];
  const SKIP = new Set(["step", "time", "epoch", "iteration"]);
  const PRIORITY = ["objective/scores", "gold/score", "objective/kl", "objective/beta", "loss",
    "rewards/margins", "rewards/accuracies", "objective/entropy", "policy/clipfrac",
    "completions/mean_length", "eval_loss", "eval_rewards/accuracies", "eval_gold/score"];
  const MAX_CHARTS = 12;
  const EVENT_STYLE = {
    guard: { color: "#e67700", dash: "dash" }, rollback: { color: "#c92a2a", dash: "solid" },
    stop: { color: "#212529", dash: "solid" }, checkpoint: { color: "#adb5bd", dash: "dot" },
  };
  const FIGURE_LABELS = { logratio: "log π − log π_ref", advantage: "advantage", value: "value",
    entropy: "entropy", kl: "KL estimate (per token; k1 can be < 0)", logp: "log π", ref_logp: "log π_ref" };

  let listing = { runs: [], pipelines: [] };
  let primary = null;                  // the run shown in detail
  const selected = new Map();          // id -> {records, next, events, status}
  let timer = null;

  async function get(url) {
    const response = await fetch(url);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }
  const q = (id) => encodeURIComponent(id);
  // Plotly reads <b>, <a href>, <br> in every label as markup; its entities are how a
  // chart shows a run folder's text as the text it is.
  const plotText = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  };
  const fmt = (v) => (typeof v === "number" ? (Math.abs(v) >= 1000 || (Math.abs(v) < 1e-3 && v !== 0) ? v.toExponential(3) : v.toFixed(4)) : String(v));

  // ---------------------------------------------------------------- the list

  async function loadList() {
    listing = await get("/api/runs");
    const list = $("run-list");
    list.replaceChildren();
    $("rn-empty").hidden = listing.runs.length > 0;
    let lastPipeline = null;
    for (const run of listing.runs) {
      if (run.pipeline && run.pipeline !== lastPipeline) {
        const head = el("li", "rn-pipeline-head");
        const link = el("a", null, "▸ pipeline " + run.pipeline);
        link.href = "#";
        link.addEventListener("click", (e) => { e.preventDefault(); showPipeline(run.pipeline); });
        head.append(link);
        list.append(head);
      }
      lastPipeline = run.pipeline;
      const item = el("li", "rn-run-item" + (run.pipeline ? " in-pipeline" : ""));
      item.dataset.id = run.id;
      const box = el("input");
      box.type = "checkbox";
      box.title = "overlay on the charts";
      box.checked = selected.has(run.id);
      box.addEventListener("change", () => toggleOverlay(run.id, box.checked));
      const name = el("button", "rn-run-name", run.pipeline ? run.id.slice(run.pipeline.length + 1) : run.id);
      name.addEventListener("click", () => selectRun(run.id));
      const meta = el("span", "rn-run-meta", `${run.kind} · ${run.steps} steps`);
      const status = el("span", "rn-dot rn-" + run.status);
      status.title = run.status;
      item.append(box, status, name, meta);
      if (run.problems.length) {
        const damaged = el("span", "rn-damaged", "damaged");
        damaged.title = run.problems.join("\n");
        item.append(damaged);
      }
      list.append(item);
    }
    markActive();
  }

  function markActive() {
    document.querySelectorAll(".rn-run-item").forEach((item) => {
      item.classList.toggle("active", item.dataset.id === primary);
      item.querySelector("input").checked = selected.has(item.dataset.id);
    });
  }

  function writeUrl() {
    const params = new URLSearchParams();
    if (primary) params.set("run", primary);
    const others = [...selected.keys()].filter((id) => id !== primary);
    if (others.length) params.set("overlay", others.join(","));
    const tab = document.querySelector(".rn-tabs button.active");
    if (tab && tab.dataset.tab !== "charts") params.set("tab", tab.dataset.tab);
    window.history.replaceState(null, "", "/runs" + (params.toString() ? "?" + params : ""));
  }

  // ---------------------------------------------------------------- a run

  async function fetchRun(id) {
    const [details, metrics] = await Promise.all([
      get(`/api/runs/run?id=${q(id)}`), get(`/api/runs/metrics?id=${q(id)}&since=0`),
    ]);
    selected.set(id, { details, records: metrics.records, next: metrics.next, status: metrics.status });
  }

  async function selectRun(id) {
    primary = id;
    if (!selected.has(id)) await fetchRun(id);
    $("rn-pipeline").hidden = true;
    $("rn-run").hidden = false;
    $("rn-empty").hidden = true;
    showSummary(selected.get(id).details);
    drawCharts();
    showConfig(selected.get(id).details);
    loadInspector(selected.get(id).details);
    markActive();
    writeUrl();
    schedule();
  }

  async function toggleOverlay(id, on) {
    if (on) {
      if (!selected.has(id)) await fetchRun(id);
      if (!primary) return selectRun(id);
    } else if (id !== primary) {
      selected.delete(id);
    }
    drawCharts();
    markActive();
    writeUrl();
  }

  function showSummary(d) {
    $("rn-title").textContent = d.id;
    $("rn-kind").textContent = d.kind.toUpperCase();
    $("rn-status").textContent = d.status;
    $("rn-status").className = "rn-chip rn-status-" + d.status;
    const problems = $("rn-problems");
    problems.replaceChildren(...d.problems.map((p) => el("li", null, p)));
    problems.hidden = d.problems.length === 0;
    const facts = $("rn-facts");
    facts.replaceChildren();
    const c = d.config;
    const shown = [["model", c.model], ["dataset", c.dataset], ["steps", c.max_steps],
      ["learning rate", c.learning_rate], ["β", c.beta ?? c.kl_coef], ["KL target", c.kl_target],
      ["checkpoints", d.checkpoints.length], ["guard events", d.events.filter((e) => e.event === "guard").length]];
    for (const [k, v] of shown) {
      if (v === undefined || v === null) continue;
      const box = el("div");
      box.append(el("span", "muted", k), el("b", null, String(v)));
      facts.append(box);
    }
  }

  // ---------------------------------------------------------------- charts

  function metricKeys() {
    const keys = new Set();
    for (const run of selected.values()) {
      for (const r of run.records) for (const [k, v] of Object.entries(r)) if (!SKIP.has(k) && typeof v === "number") keys.add(k);
    }
    const rank = (k) => (PRIORITY.includes(k) ? PRIORITY.indexOf(k) : 100);
    return [...keys].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  }

  function eventShapes(events) {
    const shapes = [], notes = [];
    for (const e of events) {
      const style = EVENT_STYLE[e.event];
      if (!style) continue;
      shapes.push({ type: "line", xref: "x", yref: "paper", x0: e.step, x1: e.step, y0: 0, y1: 1,
        line: { color: style.color, width: e.event === "checkpoint" ? 1 : 2, dash: style.dash } });
      if (e.event !== "checkpoint") {
        notes.push({ x: e.step, y: 1, yref: "paper", text: e.event === "guard" ? "⚠" : e.event,
          showarrow: false, yanchor: "bottom", font: { color: style.color, size: 12 },
          hovertext: plotText(`${e.event} at step ${e.step}: ${e.message || ""}`) });
      }
    }
    return { shapes, notes };
  }

  function drawCharts() {
    const box = $("charts");
    const filter = $("metric-filter").value.trim().toLowerCase();
    const keys = metricKeys().filter((k) => !filter || k.toLowerCase().includes(filter));
    const shownKeys = keys.slice(0, filter ? 40 : MAX_CHARTS);
    $("metric-count").textContent = `${shownKeys.length} of ${metricKeys().length} metrics` +
      (keys.length > shownKeys.length ? " — filter to see the others" : "");
    const main = selected.get(primary);
    const { shapes, notes } = main ? eventShapes(main.details.events) : { shapes: [], notes: [] };
    const existing = new Map([...box.children].map((c) => [c.dataset.key, c]));
    box.replaceChildren();
    const runs = [...selected.entries()].sort(([a], [b]) => (a === primary ? -1 : b === primary ? 1 : 0));
    shownKeys.forEach((key) => {
      let div = existing.get(key);
      if (!div) {
        div = el("div", "panel rn-chart");
        div.dataset.key = key;
      }
      box.append(div);
      const traces = runs.map(([id, run], k) => {
        const rows = run.records.filter((r) => typeof r[key] === "number");
        return { x: rows.map((r) => r.step), y: rows.map((r) => r[key]), name: plotText(id), mode: rows.length > 1 ? "lines" : "markers",
          line: { color: COLORS[k % COLORS.length], width: 2 }, marker: { size: 6 } };
      });
      Plotly.react(div, traces, {
        title: { text: plotText(key), font: { size: 13 } }, height: 230, margin: { l: 50, r: 10, t: 32, b: 30 },
        showlegend: runs.length > 1, legend: { orientation: "h", y: -0.25, font: { size: 10 } },
        shapes, annotations: notes, xaxis: { title: { text: "step", standoff: 2 } },
        font: { family: "system-ui, sans-serif", size: 11 },
      }, { displayModeBar: false, responsive: true });
    });
    box.dataset.charts = shownKeys.length;
    requestAnimationFrame(() => box.querySelectorAll(".rn-chart").forEach((div) => Plotly.Plots.resize(div)));
  }

  // ---------------------------------------------------------------- refresh

  function schedule() {
    if (timer) clearInterval(timer);
    timer = setInterval(refresh, 3000);
  }

  async function refresh() {
    if (!$("auto-refresh").checked) return;
    let changed = false;
    for (const [id, run] of selected) {
      if (run.status !== "running" && run.status !== "idle") continue;
      const data = await get(`/api/runs/metrics?id=${q(id)}&since=${run.next}`);
      if (data.records.length || data.status !== run.status) {
        run.records.push(...data.records);
        run.next = data.next;
        run.status = data.status;
        run.details = await get(`/api/runs/run?id=${q(id)}`);
        changed = true;
      }
    }
    if (changed) {
      drawCharts();
      if (selected.has(primary)) {
        showSummary(selected.get(primary).details);
        showConfig(selected.get(primary).details);
      }
    }
  }

  // ---------------------------------------------------------------- config, events

  function table(target, head, rows) {
    const t = $(target);
    t.replaceChildren();
    if (head) {
      const tr = el("tr");
      for (const h of head) tr.append(el("th", null, h));
      t.append(tr);
    }
    for (const row of rows) {
      const tr = el("tr");
      for (const cell of row) tr.append(el("td", null, cell));
      t.append(tr);
    }
  }

  function showConfig(d) {
    table("config-table", null, Object.entries(d.config).map(([k, v]) => [k, typeof v === "object" ? JSON.stringify(v) : String(v)]));
    table("events-table", ["step", "event", "message"], d.events.map((e) => [String(e.step), e.event + (e.detector ? ` (${e.detector})` : ""), e.message || ""]));
    table("checkpoints-table", ["checkpoint", "step", "size"], d.checkpoints.map((c) => [c.name, String(c.step), (c.bytes / 1e6).toFixed(1) + " MB"]));
    if (!d.checkpoints.length) table("checkpoints-table", null, [["no checkpoints kept"]]);
  }

  // ---------------------------------------------------------------- the inspector

  let samples = [];
  let current = null;
  let colourBy = "logratio";

  async function loadInspector(d) {
    $("inspector-online").hidden = !d.has_rollouts;
    $("inspector-preference").hidden = d.kind !== "dpo";
    $("inspector-none").hidden = d.has_rollouts || d.kind === "dpo";
    if (d.has_rollouts) {
      const data = await get(`/api/runs/rollouts?id=${q(d.id)}`);
      samples = data.samples;
      renderSamples();
      if (samples.length) showSample(samples[samples.length - 1].index);
    } else if (d.kind === "dpo") {
      loadPairs(d.id);
    }
  }

  function renderSamples() {
    const order = $("sample-sort").value;
    const sorted = [...samples];
    if (order === "score") sorted.sort((a, b) => (b.score ?? -Infinity) - (a.score ?? -Infinity));
    else if (order === "kl") sorted.sort((a, b) => b.kl - a.kl);
    else sorted.sort((a, b) => (a.iteration ?? 0) - (b.iteration ?? 0) || a.index - b.index);
    const list = $("sample-list");
    list.replaceChildren();
    for (const s of sorted) {
      const item = el("li", "rn-sample-item");
      item.dataset.index = s.index;
      const top = el("div", "rn-sample-top");
      top.append(el("b", null, `step ${s.iteration}`), el("span", null, `score ${fmt(s.score)}`), el("span", null, `KL ${fmt(s.kl)}`));
      item.append(top, el("div", "rn-sample-text", s.response || "(empty)"));
      item.addEventListener("click", () => showSample(s.index));
      list.append(item);
    }
    markSample();
  }

  function markSample() {
    document.querySelectorAll(".rn-sample-item").forEach((i) => i.classList.toggle("active", current && Number(i.dataset.index) === current.summary.index));
  }

  function colour(value, scale, diverging) {
    if (typeof value !== "number" || !scale) return "transparent";
    const t = Math.max(-1, Math.min(1, value / scale));
    if (!diverging) return `rgba(174, 62, 201, ${Math.abs(t) * 0.55})`;
    return t >= 0 ? `rgba(43, 138, 62, ${t * 0.55})` : `rgba(201, 42, 42, ${-t * 0.55})`;
  }

  function renderTokens(target, tokens, figure, tipTarget) {
    const box = $(target);
    box.replaceChildren();
    const diverging = !["entropy", "kl"].includes(figure);
    const values = tokens.map((t) => t[figure]).filter((v) => typeof v === "number");
    const scale = Math.max(...values.map(Math.abs), 1e-6);
    for (const t of tokens) {
      const span = el("span", "rn-token", t.token);
      span.style.background = colour(t[figure], scale, diverging);
      const lines = Object.entries(t).filter(([k]) => k !== "token").map(([k, v]) => `${FIGURE_LABELS[k] || k}: ${fmt(v)}`);
      span.title = `${JSON.stringify(t.token)}\n${lines.join("\n")}`;
      span.dataset.value = t[figure];
      span.addEventListener("mouseenter", () => { $(tipTarget).textContent = `token ${JSON.stringify(t.token)} — ${lines.join(" · ")}`; });
      box.append(span);
    }
    return scale;
  }

  function legend(figure, scale) {
    const diverging = !["entropy", "kl"].includes(figure);
    $("legend").textContent = diverging
      ? `red −${fmt(scale)} · 0 · green +${fmt(scale)}`
      : `0 · purple ${fmt(scale)}`;
  }

  async function showSample(index) {
    current = await get(`/api/runs/rollout?id=${q(primary)}&index=${index}`);
    const figures = current.figures.filter((f) => ["logratio", "advantage", "value", "entropy", "kl"].includes(f));
    if (!current.figures.includes("advantage") && typeof current.summary.advantage === "number") figures.push("advantage");
    if (!figures.includes(colourBy)) colourBy = figures[0] || "logp";
    const seg = $("colour-by");
    seg.replaceChildren();
    for (const f of figures) {
      const b = el("button", f === colourBy ? "active" : "", FIGURE_LABELS[f] || f);
      b.dataset.figure = f;
      b.addEventListener("click", () => { colourBy = f; drawSample(); seg.querySelectorAll("button").forEach((x) => x.classList.toggle("active", x === b)); });
      seg.append(b);
    }
    drawSample();
    markSample();
  }

  function drawSample() {
    const s = current.summary;
    $("sample-prompt").textContent = s.prompt + (s.user_group ? `  [user group: ${s.user_group}]` : "");
    // GRPO logs one advantage per sample: every token carries it.
    const tokens = current.tokens.map((t) => (t.advantage === undefined && typeof s.advantage === "number" ? { ...t, advantage: s.advantage } : t));
    const scale = renderTokens("tokens", tokens, colourBy, "token-tip");
    legend(colourBy, scale);
    const rows = [["score", fmt(s.score)]];
    for (const [k, v] of Object.entries(s.score_parts || {})) rows.push(["  " + k, fmt(v)]);
    rows.push(["KL (sum over tokens)", fmt(s.kl)]);
    if (typeof s.advantage === "number") rows.push(["advantage", fmt(s.advantage)]);
    if (current.group_scores) rows.push(["group's scores", current.group_scores.map((v) => v.toFixed(3)).join(", ")]);
    table("score-parts", null, rows);
    const same = $("same-prompt");
    same.replaceChildren();
    for (const o of current.same_prompt) {
      const item = el("li", o.index === s.index ? "active" : "");
      item.append(el("b", null, `step ${o.iteration}`), el("span", null, ` score ${fmt(o.score)} · KL ${fmt(o.kl)} — `), el("span", "rn-same-text", o.response));
      item.addEventListener("click", () => showSample(o.index));
      same.append(item);
    }
  }

  async function loadPairs(id) {
    $("pair-status").textContent = "reading the run's data…";
    try {
      const data = await get(`/api/runs/pairs?id=${q(id)}`);
      const pick = $("pair-pick");
      pick.replaceChildren();
      for (const p of data.pairs) {
        const option = el("option", null, `${p.index}: ${p.prompt.slice(0, 70)}`);
        option.value = p.index;
        pick.append(option);
      }
      if (data.pairs.length) showPair(id, 0);
    } catch (error) {
      $("pair-status").textContent = error.message;
    }
  }

  async function showPair(id, index) {
    $("pair-status").textContent = "scoring with the run's model and its reference…";
    try {
      const p = await get(`/api/runs/pair?id=${q(id)}&index=${index}`);
      $("pair-prompt").textContent = p.prompt;
      for (const side of ["chosen", "rejected"]) {
        renderTokens(side + "-tokens", p[side].tokens, "logratio", "pair-tip");
        $(side + "-sum").textContent = `log π ${fmt(p[side].logp)} · log π_ref ${fmt(p[side].ref_logp)} · log-ratio ${fmt(p[side].logratio)}`;
      }
      $("pair-status").textContent = `β·margin (DPO's implicit reward margin) = ${fmt(p.implicit_reward_margin)}`;
    } catch (error) {
      $("pair-status").textContent = error.message;
    }
  }

  // ---------------------------------------------------------------- pipelines

  async function showPipeline(id) {
    const p = await get(`/api/runs/pipeline?id=${q(id)}`);
    $("rn-run").hidden = true;
    $("rn-pipeline").hidden = false;
    $("pipeline-title").textContent = "Pipeline " + id + (p.stages.length ? ` — stages done: ${p.stages.join(", ")}` : "");
    const link = $("pipeline-report");
    link.hidden = !p.has_report;
    link.href = `/runs/report?id=${q(id)}`;
    $("pipeline-summary").textContent = p.summary ? JSON.stringify(p.summary, null, 1)
      : p.problems.length ? `(${p.problems.join("; ")})` : "(no summary.json yet)";
  }

  // ---------------------------------------------------------------- wiring

  function setTab(tab) {
    document.querySelectorAll(".rn-tabs button").forEach((b) => b.classList.toggle("active", b.dataset.tab === tab));
    for (const t of ["charts", "inspector", "config"]) $("tab-" + t).hidden = t !== tab;
    if (tab === "charts") window.dispatchEvent(new Event("resize"));
  }

  async function main() {
    document.querySelectorAll(".rn-tabs button").forEach((b) => b.addEventListener("click", () => { setTab(b.dataset.tab); writeUrl(); }));
    $("metric-filter").addEventListener("input", drawCharts);
    $("sample-sort").addEventListener("change", renderSamples);
    $("pair-pick").addEventListener("change", () => showPair(primary, Number($("pair-pick").value)));
    await loadList();
    const params = new URLSearchParams(window.location.search);
    const ids = new Set(listing.runs.map((r) => r.id));
    for (const id of (params.get("overlay") || "").split(",")) if (ids.has(id)) await fetchRun(id);
    const first = params.get("run");
    if (first && ids.has(first)) await selectRun(first);
    else if (listing.runs.length) await selectRun(listing.runs[0].id);
    if (params.get("tab")) setTab(params.get("tab"));
    setInterval(loadList, 15000);
    document.body.dataset.ready = "1";
  }

  main().catch((error) => {
    const box = $("rn-empty");
    box.hidden = false;
    box.textContent = "Error: " + error.message;
  });
})();
