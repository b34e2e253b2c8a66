// The playground page: draws what the server computed. No RLHF math lives here: every
// step is POST /api/playground/step, which runs alignkit.ops on the server.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const DEFAULTS = JSON.parse($("pg-defaults").textContent);
  const NUMERIC = ["beta", "learning_rate", "clip_eps", "kl_target", "kl_horizon", "group_size",
    "label_noise", "proxy_flaw"];
  const INTEGER = new Set(["kl_horizon", "group_size"]);
  const STAGE_MS = { slow: 900, normal: 380, fast: 110, turbo: 0 };
  const COLORS = ["#2b8a3e", "#1971c2", "#e8590c", "#868e96", "#ae3ec9", "#c92a2a"];

  let world = null;       // prompt, answers, starting state
  let state = null;       // the policy's state, as the server returned it
  let playing = false;
  let busy = false;
  let trail = [];         // metrics after each step

  // ---------------------------------------------------------------- settings and the URL

  function settings() {
    const s = { method: document.querySelector("input[name=method]:checked").value };
    for (const name of NUMERIC) s[name] = Number($(name).value);
    s.adaptive_beta = $("adaptive_beta").checked && s.method !== "dpo";
    s.seed = DEFAULTS.seed;
    s.batch_size = DEFAULTS.batch_size;
    s.ppo_epochs = DEFAULTS.ppo_epochs;
    return s;
  }

  function writeUrl() {
    const q = new URLSearchParams();
    const s = settings();
    q.set("mode", currentMode());
    q.set("method", s.method);
    for (const name of NUMERIC) q.set(name, s[name]);
    q.set("adaptive_beta", $("adaptive_beta").checked ? "1" : "0");
    q.set("speed", $("speed").value);
    replaceUrl("?" + q.toString());
    $("share").href = "?" + q.toString();
  }

  function replaceUrl(search) {
    window.history.replaceState(null, "", window.location.pathname + search);
  }

  function readUrl() {
    const q = new URLSearchParams(window.location.search);
    const method = q.get("method") || DEFAULTS.method;
    const radio = document.querySelector(`input[name=method][value="${CSS.escape(method)}"]`);
    if (radio) radio.checked = true;
    $("learning_rate").max = DEFAULTS.learning_rate_max_by_method[radio ? method : DEFAULTS.method];
    for (const name of NUMERIC) {
      let value = q.has(name) ? q.get(name) : DEFAULTS[name];
      if (name === "learning_rate" && !q.has(name)) value = DEFAULTS.learning_rate_by_method[method];
      if (value !== null && value !== "" && !Number.isNaN(Number(value))) $(name).value = value;
    }
    $("adaptive_beta").checked = q.get("adaptive_beta") === "1";
    if (q.has("speed") && STAGE_MS[q.get("speed")] !== undefined) $("speed").value = q.get("speed");
    showOutputs();
    return q.get("mode") || "exact";
  }

  function showOutputs() {
    for (const name of NUMERIC) $(name + "-out").textContent = $(name).value;
    const s = settings();
    const adaptiveAllowed = s.method !== "dpo";
    $("adaptive_beta").disabled = !adaptiveAllowed;
    $("kl_target").disabled = !(adaptiveAllowed && $("adaptive_beta").checked);
    $("kl_horizon").disabled = $("kl_target").disabled;
    $("clip_eps").disabled = s.method === "dpo";
    $("group_size").disabled = s.method !== "grpo";
    $("label_noise").disabled = s.method !== "dpo";
  }

  // ---------------------------------------------------------------- the server

  async function post(url, body) {
    const response = await fetch(url, {
      method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  async function get(url) {
    const response = await fetch(url);
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }

  // ---------------------------------------------------------------- the answers

  function renderAnswers() {
    const list = $("answers");
    list.replaceChildren();
    world.answers.forEach((answer, i) => {
      const item = document.createElement("li");
      item.className = "pg-answer";
      item.dataset.index = i;
      item.dataset.key = answer.key;
      const head = document.createElement("div");
      head.className = "pg-answer-head";
      const name = document.createElement("b");
      name.textContent = answer.key;
      name.style.color = COLORS[i];
      head.append(name);
      for (const trait of answer.traits) {
        const chip = document.createElement("span");
        chip.className = "pg-trait pg-trait-" + trait.replace(/[^a-z]/g, "");
        chip.textContent = trait;
        head.append(chip);
      }
      const badge = document.createElement("span");
      badge.className = "pg-badge";
      head.append(badge);
      const text = document.createElement("p");
      text.className = "pg-answer-text";
      text.textContent = answer.text;
      text.title = answer.text;
      const bar = document.createElement("div");
      bar.className = "pg-bar";
      const fill = document.createElement("div");
      fill.className = "pg-bar-fill";
      fill.style.background = COLORS[i];
      const ref = document.createElement("div");
      ref.className = "pg-bar-ref";
      ref.style.left = (answer.reference_prob * 100) + "%";
      ref.title = "π_ref = " + answer.reference_prob.toFixed(2);
      bar.append(fill, ref);
      const nums = document.createElement("div");
      nums.className = "pg-answer-nums";
      const prob = document.createElement("span");
      prob.className = "pg-prob";
      const rewards = document.createElement("span");
      rewards.className = "pg-rewards";
      rewards.textContent = `proxy ${answer.proxy.toFixed(2)} · gold ${answer.gold.toFixed(2)} · ${answer.words} words`;
      nums.append(prob, rewards);
      item.append(head, text, bar, nums);
      list.append(item);
    });
  }

  function setProbs(probs) {
    document.querySelectorAll(".pg-answer").forEach((item, i) => {
      item.querySelector(".pg-bar-fill").style.width = (probs[i] * 100).toFixed(2) + "%";
      item.querySelector(".pg-prob").textContent = "π = " + probs[i].toFixed(3);
      item.dataset.prob = probs[i].toFixed(6);
    });
  }

  function clearMarks() {
    document.querySelectorAll(".pg-answer").forEach((item) => {
      item.classList.remove("sampled", "chosen", "rejected", "up", "down");
      item.querySelector(".pg-badge").textContent = "";
    });
  }

  function mark(index, cls, badge) {
    const item = document.querySelector(`.pg-answer[data-index="${index}"]`);
    item.classList.add(cls);
    if (badge !== undefined) item.querySelector(".pg-badge").textContent = badge;
  }

  function setFigures(m) {
    $("fig-step").textContent = m.step;
    $("fig-proxy").textContent = m.proxy.toFixed(3);
    $("fig-gold").textContent = m.gold.toFixed(3);
    $("fig-kl").textContent = m.kl.toFixed(3);
    $("fig-beta").textContent = m.beta.toFixed(3);
    $("figures").dataset.gold = m.gold;
    $("figures").dataset.proxy = m.proxy;
    $("figures").dataset.step = m.step;
  }

  // ---------------------------------------------------------------- the stages

  function highlight(stage) {
    document.querySelectorAll(".pg-stage").forEach((el) => {
      el.classList.toggle("active", el.dataset.stage === stage);
    });
    $("prompt-box").classList.toggle("active", stage === "prompt");
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const name = (i) => world.answers[i].key;

  function counts(samples) {
    const c = new Map();
    for (const i of samples) c.set(i, (c.get(i) || 0) + 1);
    return c;
  }

  function describeSamples(trace) {
    if (trace.method === "dpo") {
      const [w, l] = trace.pairs[0];
      return `DPO samples ${trace.pairs.length} pairs of two different answers from π_θ; ` +
        `the first: "${name(w)}" and "${name(l)}".`;
    }
    const parts = [...counts(trace.samples)].map(([i, n]) => `${name(i)} ×${n}`);
    const what = trace.method === "ppo" ? "a batch of" : "a group of G =";
    return `${trace.method.toUpperCase()} samples ${what} ${trace.samples.length} answers from π_θ: ${parts.join(", ")}.`;
  }

  function describeScores(trace) {
    if (trace.method === "dpo") {
      const [w, l] = trace.pairs[0];
      const flips = trace.flipped.filter(Boolean).length;
      return `The annotator (the proxy's taste, Bradley–Terry) prefers "${name(w)}" over "${name(l)}"` +
        (trace.flipped[0] ? " — a flipped label" : "") +
        `; ${flips} of ${trace.pairs.length} labels flipped by noise.`;
    }
    const adv = trace.advantages;
    const best = adv.indexOf(Math.max(...adv)), worst = adv.indexOf(Math.min(...adv));
    const how = trace.method === "ppo"
      ? "The proxy scores each; reward r − β·KL, advantage A = R − V"
      : "The proxy scores each; advantage (r − mean)/std within the group";
    return `${how}: best "${name(trace.samples[best])}" A = ${adv[best].toFixed(2)}, worst ` +
      `"${name(trace.samples[worst])}" A = ${adv[worst].toFixed(2)}.`;
  }

  function markScores(trace) {
    if (trace.method === "dpo") {
      const [w, l] = trace.pairs[0];
      mark(w, "chosen", "chosen");
      mark(l, "rejected", "rejected");
      return;
    }
    const sums = new Map();
    trace.samples.forEach((i, k) => sums.set(i, (sums.get(i) || 0) + trace.advantages[k]));
    for (const [i, a] of sums) mark(i, a >= 0 ? "chosen" : "rejected", `A ${a >= 0 ? "+" : ""}${a.toFixed(2)}`);
  }

  function markUpdate(trace, after) {
    const before = trace.probs_before;
    after.probs.forEach((p, i) => {
      if (Math.abs(p - before[i]) < 1e-4) return;
      mark(i, p > before[i] ? "up" : "down");
    });
  }

  async function animate(result) {
    const ms = STAGE_MS[$("speed").value];
    const trace = result.trace;
    if (ms > 0) {
      clearMarks();
      highlight("prompt");
      $("narration").textContent = `Step ${result.metrics.step}: the prompt goes to the policy π_θ.`;
      await sleep(ms);
      highlight("answers");
      const sampled = counts(trace.samples);
      for (const [i, n] of sampled) mark(i, "sampled", trace.method === "dpo" ? "" : `×${n}`);
      $("narration").textContent = describeSamples(trace);
      await sleep(ms * 1.4);
      highlight("preference");
      clearMarks();
      markScores(trace);
      $("narration").textContent = describeScores(trace);
      await sleep(ms * 1.6);
      highlight("update");
      markUpdate(trace, result.metrics);
      $("narration").textContent = `${trace.method.toUpperCase()} loss ${trace.loss.toFixed(3)} at β = ` +
        `${trace.beta_used.toFixed(3)}; one gradient step on the logits θ (↑ / ↓ marks where probability moves).`;
      await sleep(ms * 1.2);
      highlight("shift");
    }
    apply([result]);
    if (ms > 0) {
      $("narration").textContent = `The probabilities shift. Gold ${result.metrics.gold.toFixed(3)}, ` +
        `proxy ${result.metrics.proxy.toFixed(3)}, KL ${result.metrics.kl.toFixed(3)} nats.`;
      await sleep(ms);
    }
  }

  function apply(results) {
    for (const r of results) {
      trail.push({ metrics: r.metrics, trace: r.trace });
    }
    const last = results[results.length - 1];
    state = last.state;
    setProbs(last.metrics.probs);
    setFigures(last.metrics);
    extendCharts(results);
  }

  // A run that diverged comes back with its finite steps and where it stopped: those
  // steps are shown, play stops, and the page says why (the next step would diverge too).
  class Diverged extends Error {}

  async function runSteps(n) {
    const body = { settings: settings(), state, steps: n };
    const data = await post("/api/playground/step", body);
    if (data.diverged) {
      if (data.results.length) apply(data.results);
      throw new Diverged(data.diverged);
    }
    return data.results;
  }

  function showError(error) {
    $("narration").textContent = (error instanceof Diverged ? "Stopped: " : "Error: ") + error.message;
    $("narration").classList.toggle("pg-diverged", error instanceof Diverged);
  }

  async function oneStep() {
    if (busy) return;
    busy = true;
    try {
      const speed = $("speed").value;
      if (speed === "turbo") {
        const results = await runSteps(5);
        apply(results);
        clearMarks();
        highlight("shift");
        $("narration").textContent = `Steps ${results[0].metrics.step}–${results[results.length - 1].metrics.step} ` +
          "(turbo: no stage animation).";
      } else {
        const [result] = await runSteps(1);
        await animate(result);
      }
    } catch (error) {
      stop();
      showError(error);
    } finally {
      busy = false;
    }
  }

  async function skip(n) {
    if (busy) return;
    busy = true;
    try {
      const results = await runSteps(n);
      apply(results);
      clearMarks();
      highlight("shift");
      const m = results[results.length - 1].metrics;
      $("narration").textContent = `Ran ${n} steps to step ${m.step}: gold ${m.gold.toFixed(3)}, ` +
        `proxy ${m.proxy.toFixed(3)}, KL ${m.kl.toFixed(3)}.`;
    } catch (error) {
      showError(error);
    } finally {
      busy = false;
    }
  }

  async function loop() {
    while (playing) {
      await oneStep();
      await sleep(STAGE_MS[$("speed").value] > 0 ? 60 : 30);
    }
  }

  function play() {
    playing = true;
    $("play").textContent = "⏸ Pause";
    loop();
  }

  function stop() {
    playing = false;
    $("play").textContent = "▶ Play";
  }

  async function reset() {
    stop();
    while (busy) await sleep(20);
    const s = settings();
    world = await get(`/api/playground/world?proxy_flaw=${s.proxy_flaw}&beta=${s.beta}`);
    $("prompt").textContent = world.prompt;
    state = null;
    trail = [];
    renderAnswers();
    setProbs(world.metrics.probs);
    setFigures(world.metrics);
    clearMarks();
    highlight(null);
    $("narration").textContent = "The policy starts as the reference π_ref (the thin marks). " +
      "Press Play, or Step to go through one update stage by stage.";
    drawCharts();
  }

  // ---------------------------------------------------------------- charts (plotly)

  const LAYOUT = {
    margin: { l: 46, r: 12, t: 34, b: 34 }, height: 250,
    font: { family: "system-ui, sans-serif", size: 12 },
    legend: { orientation: "h", y: -0.22, font: { size: 11 } },
    xaxis: { title: { text: "step", standoff: 4 }, zeroline: false },
    paper_bgcolor: "#fff", plot_bgcolor: "#fff",
  };
  const CONFIG = { displayModeBar: false, responsive: true };

  function layout(title, extra) {
    return Object.assign({}, LAYOUT, { title: { text: title, font: { size: 14 } } }, extra || {});
  }

  function line(name, color, y, dash) {
    return { x: [0], y: [y], name, mode: "lines", line: { color, width: 2, dash: dash || "solid" } };
  }

  function drawCharts() {
    const m0 = world.metrics;
    Plotly.newPlot("chart-probs", world.answers.map((a, i) => line(a.key, COLORS[i], m0.probs[i])),
      layout("π(answer)", { yaxis: { range: [0, 1] } }), CONFIG);
    Plotly.newPlot("chart-rewards", [line("proxy (trained on)", "#e8590c", m0.proxy),
      line("gold (watched)", "#2b8a3e", m0.gold)],
      layout("expected reward under π: proxy vs gold"), CONFIG);
    const s = settings();
    const kl = [line("KL(π_θ ‖ π_ref)", "#3b5bdb", m0.kl)];
    if (s.adaptive_beta) kl.push(line("target", "#868e96", s.kl_target, "dot"));
    Plotly.newPlot("chart-kl", kl, layout("KL to the reference (nats)"), CONFIG);
    const logp = world.answers.map((a) => Math.log(a.reference_prob));
    Plotly.newPlot("chart-logps", [
      { x: [], y: [], name: s.method === "dpo" ? "log π(chosen)" : "best sample", mode: "lines", line: { color: "#2b8a3e", width: 2 } },
      { x: [], y: [], name: s.method === "dpo" ? "log π(rejected)" : "worst sample", mode: "lines", line: { color: "#c92a2a", width: 2 } },
    ], layout(s.method === "dpo" ? "log π(chosen), log π(rejected) of the step's first pair"
      : "log π of the step's best and worst sample (by A)", { yaxis: { range: [Math.min(...logp) - 3, 0.2] } }), CONFIG);
    Plotly.newPlot("chart-beta", [line("β", "#ae3ec9", m0.beta)],
      layout("β over time", { yaxis: { rangemode: "tozero" } }), CONFIG);
  }

  function extendCharts(results) {
    const xs = results.map((r) => r.metrics.step);
    const col = (f) => [results.map(f)];
    Plotly.extendTraces("chart-probs", {
      x: world.answers.map(() => xs), y: world.answers.map((_, i) => results.map((r) => r.metrics.probs[i])),
    }, world.answers.map((_, i) => i));
    Plotly.extendTraces("chart-rewards", {
      x: [xs, xs], y: [col((r) => r.metrics.proxy)[0], col((r) => r.metrics.gold)[0]],
    }, [0, 1]);
    const klData = $("chart-kl").data;
    const klIdx = klData.length > 1 ? [0, 1] : [0];
    Plotly.extendTraces("chart-kl", {
      x: klIdx.map(() => xs),
      y: klIdx.map((k) => results.map((r) => (k === 0 ? r.metrics.kl : settings().kl_target))),
    }, klIdx);
    Plotly.extendTraces("chart-logps", {
      x: [xs, xs], y: [col((r) => r.trace.logp_chosen)[0], col((r) => r.trace.logp_rejected)[0]],
    }, [0, 1]);
    Plotly.extendTraces("chart-beta", { x: [xs], y: col((r) => r.trace.beta_used) }, [0]);
  }

  // ---------------------------------------------------------------- the code panel

  async function showCode(method, tabsId, textId) {
    const data = await get(`/api/playground/code?method=${encodeURIComponent(method)}`);
    const tabs = $(tabsId);
    tabs.replaceChildren();
    data.functions.forEach((fn, k) => {
      const button = document.createElement("button");
      button.textContent = fn.name;
      button.title = fn.module;
      button.addEventListener("click", () => {
        tabs.querySelectorAll("button").forEach((b) => b.classList.remove("active"));
        button.classList.add("active");
        $(textId).textContent = `# ${fn.module}.${fn.name}\n` + fn.source;
      });
      tabs.append(button);
      if (k === 0) button.click();
    });
    if (tabsId === "code-tabs") $("code-method").textContent = "— " + method.toUpperCase();
  }

  // ---------------------------------------------------------------- real-model mode

  let realPair = null;

  async function realSample(event) {
    if (event) event.preventDefault();
    const prompt = $("real-prompt").value.trim();
    if (!prompt) return;
    $("real-status").textContent = "sampling two answers… (the first request loads the model)";
    $("real-sample").disabled = true;
    try {
      const data = await post("/api/playground/real/sample", { prompt });
      realPair = { prompt, answers: data.answers };
      document.querySelectorAll(".pg-real-answer").forEach((box, i) => {
        box.querySelector(".pg-real-text").textContent = data.answers[i] || "(empty answer)";
        box.classList.remove("chosen", "rejected");
        box.querySelector("button").disabled = data.answers[0] === data.answers[1];
      });
      $("real-pair").hidden = false;
      $("real-status").textContent = data.answers[0] === data.answers[1]
        ? "both answers are the same: ask for a fresh pair"
        : `two samples in ${data.seconds} s — which is better?`;
    } catch (error) {
      $("real-status").textContent = "Error: " + error.message;
    } finally {
      $("real-sample").disabled = false;
    }
  }

  async function realPick(index) {
    if (!realPair) return;
    const chosen = realPair.answers[index], rejected = realPair.answers[1 - index];
    document.querySelectorAll(".pg-real-answer").forEach((box, i) => {
      box.classList.toggle("chosen", i === index);
      box.classList.toggle("rejected", i !== index);
      box.querySelector("button").disabled = true;
    });
    $("real-status").textContent = "one DPO step on your preference…";
    try {
      const r = await post("/api/playground/real/prefer", {
        prompt: realPair.prompt, chosen, rejected,
        beta: Number($("real-beta").value), learning_rate: Number($("real-lr").value),
      });
      for (const row of ["chosen", "rejected"]) {
        const cells = document.querySelectorAll(`#real-result tr[data-row="${row}"] td`);
        const change = r.after[row] - r.before[row];
        cells[0].textContent = r.before[row].toFixed(3);
        cells[1].textContent = r.after[row].toFixed(3);
        cells[2].textContent = (change >= 0 ? "+" : "") + change.toFixed(3);
        cells[2].className = change >= 0 ? "up" : "down";
        cells[3].textContent = r.reference[row].toFixed(3);
      }
      const margin = (r.after.chosen - r.after.rejected) - (r.before.chosen - r.before.rejected);
      $("real-summary").textContent = `DPO loss ${r.loss.toFixed(4)}; the margin log π(chosen) − ` +
        `log π(rejected) moved by ${margin >= 0 ? "+" : ""}${margin.toFixed(3)} nats; ` +
        `${r.steps} step(s) so far, this one in ${r.seconds} s.`;
      $("real-result").hidden = false;
      $("real-again").hidden = false;
      $("real-status").textContent = "done — ask for a fresh pair";
    } catch (error) {
      $("real-status").textContent = "Error: " + error.message;
    }
  }

  // ---------------------------------------------------------------- modes and wiring

  function currentMode() {
    const active = document.querySelector(".pg-tabs button.active");
    return active ? active.dataset.mode : "exact";
  }

  function setMode(mode) {
    if (!["exact", "real", "read"].includes(mode)) mode = "exact";
    document.querySelectorAll(".pg-tabs button").forEach((b) => b.classList.toggle("active", b.dataset.mode === mode));
    for (const m of ["exact", "real", "read"]) $("mode-" + m).hidden = m !== mode;
    if (mode !== "exact") stop();
    if (mode === "real" && !$("real-code-tabs").children.length) {
      showCode("real", "real-code-tabs", "real-code-text");
      get("/api/playground/real/status").then((s) => { $("real-model").textContent = s.model; });
    }
    if (mode === "exact") window.dispatchEvent(new Event("resize"));
  }

  function wire() {
    document.querySelectorAll("input[name=method]").forEach((radio) => radio.addEventListener("change", () => {
      $("learning_rate").max = DEFAULTS.learning_rate_max_by_method[radio.value];
      $("learning_rate").value = DEFAULTS.learning_rate_by_method[radio.value];
      showOutputs();
      writeUrl();
      showCode(radio.value, "code-tabs", "code-text");
    }));
    for (const name of NUMERIC) {
      $(name).addEventListener("input", () => { showOutputs(); writeUrl(); });
    }
    $("proxy_flaw").addEventListener("change", () => { reset(); });
    $("adaptive_beta").addEventListener("change", () => { showOutputs(); writeUrl(); });
    $("speed").addEventListener("change", writeUrl);
    $("play").addEventListener("click", () => (playing ? stop() : play()));
    $("step").addEventListener("click", () => { stop(); oneStep(); });
    $("skip").addEventListener("click", () => { stop(); skip(50); });
    $("reset").addEventListener("click", reset);
    document.querySelectorAll(".pg-tabs button").forEach((b) => b.addEventListener("click", () => {
      setMode(b.dataset.mode);
      writeUrl();
    }));
    $("real-form").addEventListener("submit", realSample);
    $("real-again").addEventListener("click", () => realSample());
    document.querySelectorAll(".pg-pick").forEach((b) => b.addEventListener("click", () => realPick(Number(b.dataset.index))));
    document.addEventListener("keydown", (event) => {
      if (event.target.tagName === "INPUT" && event.target.type === "text") return;
      if (event.code === "Space" && currentMode() === "exact") {
        event.preventDefault();
        playing ? stop() : play();
      }
    });
  }

  async function main() {
    const mode = readUrl();
    wire();
    setMode(mode);
    writeUrl();
    await reset();
    await showCode(settings().method, "code-tabs", "code-text");
    document.body.dataset.ready = "1";
  }

  main();
})();
