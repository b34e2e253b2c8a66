// The labelling page: a prompt, two answers side by side, four choices and skip, with
// keyboard shortcuts. A label is sent with a client id made when the item was shown, so a
// retry never stores it twice; the next item is asked for only once the server answered
// that the label is stored.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const KEYS = { 1: "left", 2: "right", 3: "tie", 4: "both_bad",
                 ArrowLeft: "left", ArrowRight: "right" };
  const NAMES = { left: "A is better", right: "B is better", tie: "Tie", both_bad: "Both bad" };
  let current = null; // { item, clientId, shownAt }
  let busy = false;
  let lastLabelled = null;

  function message(text, kind = "") {
    const element = $("message");
    element.textContent = text;
    element.className = `ak-message ${kind}`;
  }

  // Text prompts as they are; message lists as one block per message, role first.
  function renderPrompt(prompt) {
    const box = $("prompt");
    box.replaceChildren();
    const messages = typeof prompt === "string" ? [{ role: null, content: prompt }] : prompt;
    for (const m of messages) {
      const row = document.createElement("div");
      row.className = `ak-msg ak-role-${m.role || "text"}`;
      if (m.role) {
        const role = document.createElement("span");
        role.className = "ak-role";
        role.textContent = m.role;
        row.appendChild(role);
      }
      const text = document.createElement("div");
      text.className = "ak-text";
      text.textContent = m.content;
      row.appendChild(text);
      box.appendChild(row);
    }
  }

  function describeWorker(worker) {
    if (!worker) return "";
    const parts = [];
    if (worker.pending > 0) parts.push(`sampling pairs: ${worker.sampled} ready, ${worker.pending} to come`);
    if (worker.active_learning) parts.push("least certain pairs first");
    if (worker.online_dpo) {
      parts.push(`policy v${worker.policy_version}` +
        (worker.pairs_until_update === null ? "" : ` · next update after ${worker.pairs_until_update} more agreed pairs`));
    }
    if (worker.error) parts.push(`worker error: ${worker.error}`);
    return parts.join(" · ");
  }

  function setBusy(value) {
    busy = value;
    for (const b of document.querySelectorAll(".ak-choice, .ak-skip")) b.disabled = value || !current;
  }

  async function loadNext() {
    setBusy(true);
    let data;
    try {
      data = await AK.api("/api/annotate/next");
    } catch (e) {
      message(e.message, "error");
      setBusy(false);
      return;
    }
    AK.setProgress(data.progress);
    $("status").textContent = describeWorker(data.worker);
    if (!data.item) {
      current = null;
      $("task").hidden = true;
      $("empty").hidden = false;
      $("empty-detail").textContent = data.worker && data.worker.pending > 0
        ? "New pairs are being sampled; this page checks again every few seconds."
        : "Every pair has its labels. Thank you!";
      setBusy(false);
      setTimeout(loadNext, data.worker && data.worker.pending > 0 ? 2000 : 10000);
      return;
    }
    $("empty").hidden = true;
    $("task").hidden = false;
    current = { item: data.item, clientId: AK.newClientId(), shownAt: performance.now() };
    $("task").dataset.item = String(data.item.id);
    $("item-number").textContent = `pair #${data.item.id}`;
    renderPrompt(data.item.prompt);
    $("group").hidden = !data.item.group;
    $("group").textContent = data.item.group || "";
    $("left-text").textContent = data.item.left;
    $("right-text").textContent = data.item.right;
    $("reason").value = "";
    setBusy(false);
  }

  async function submit(pick) {
    if (busy || !current) return;
    setBusy(true);
    const { item, clientId, shownAt } = current;
    const reason = $("reason").value.trim();
    const body = {
      client_id: clientId, item_id: item.id, pick,
      reason: reason || null,
      time_on_item_ms: Math.round(performance.now() - shownAt),
    };
    try {
      const result = await AK.api("/api/annotate/labels", { method: "POST", body });
      AK.setProgress(result.progress);
      message(`Saved: ${NAMES[pick]}.`, "ok");
      lastLabelled = item.id;
    } catch (e) {
      if (e.status === 409) {
        message(`${e.message} (in another tab?) — moving on.`, "warn");
      } else {
        message(`Not saved: ${e.message}`, "error");
        setBusy(false);
        return; // keep the item and its client id: pressing again retries safely
      }
    }
    await loadNext();
    refreshLearning();
  }

  async function skip() {
    if (busy || !current) return;
    setBusy(true);
    try {
      await AK.api("/api/annotate/skip", { method: "POST", body: { item_id: current.item.id } });
      message("Skipped.", "");
    } catch (e) {
      message(e.message, "error");
    }
    await loadNext();
  }

  async function refreshLearning() {
    if (lastLabelled === null) return;
    try {
      const data = await AK.api(`/api/annotate/learning?item_id=${lastLabelled}`, { retries: 0 });
      if (!data.worker || !data.worker.online_dpo) return;
      $("learning").hidden = false;
      const move = data.move;
      $("learning-text").textContent = move
        ? `Your pair #${move.item_id} was trained on in update v${move.version}: ` +
          `log π(chosen) − log π(rejected) moved ${move.before.toFixed(2)} → ${move.after.toFixed(2)} ` +
          `(${move.after >= move.before ? "+" : "−"}${Math.abs(move.after - move.before).toFixed(2)}).`
        : `Policy v${data.worker.policy_version}. Your last pair joins an update once its labels agree; ` +
          `${data.worker.pairs_until_update} more agreed pairs until the next one.`;
    } catch (_) { /* the panel is optional */ }
  }

  function start() {
    for (const button of document.querySelectorAll(".ak-choice")) {
      button.addEventListener("click", () => submit(button.dataset.pick));
    }
    $("skip").addEventListener("click", skip);
    $("reason").addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === "Escape") { event.preventDefault(); $("reason").blur(); }
    });
    document.addEventListener("keydown", (event) => {
      if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key in KEYS) { event.preventDefault(); submit(KEYS[event.key]); }
      else if (event.key === "s" || event.key === "S") { event.preventDefault(); skip(); }
      else if (event.key === "r" || event.key === "R") { event.preventDefault(); $("reason").focus(); }
    });
    loadNext();
    setInterval(refreshLearning, 2000);
  }

  AK.signIn(start);
})();
