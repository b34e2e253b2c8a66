// The statistics page (admin token): agreement figures, each annotator's quality and
// biases, Cohen's kappa per pair, and the export download. Every value goes in as text.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const number = (v, digits = 2) => (v === null || v === undefined ? "—" : v.toFixed(digits));
  const percent = (v) => (v === null || v === undefined ? "—" : `${Math.round(100 * v)}%`);

  function cell(row, text, className = "") {
    const td = document.createElement("td");
    td.textContent = text;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function card(title, value, note) {
    const box = document.createElement("div");
    box.className = "card ak-stat";
    const label = document.createElement("div");
    label.className = "ak-label";
    label.textContent = title;
    const figure = document.createElement("div");
    figure.className = "ak-figure";
    figure.textContent = value;
    const small = document.createElement("div");
    small.className = "muted";
    small.textContent = note;
    box.append(label, figure, small);
    return box;
  }

  function render(stats) {
    $("cards").replaceChildren(
      card("Labels", String(stats.labels), `${stats.items_complete} of ${stats.items_total} items complete`),
      card("Fleiss' κ", number(stats.fleiss_kappa), "over all annotators"),
      card("Krippendorff's α", number(stats.krippendorff_alpha), "nominal, any number of labels"),
      card("Flagged", String(stats.flagged.length), `agreement under ${percent(stats.min_agreement)} or a bias`),
    );
    const body = $("annotators").querySelector("tbody");
    body.replaceChildren();
    for (const [name, r] of Object.entries(stats.annotators)) {
      const row = document.createElement("tr");
      if (r.flags.length) row.className = "ak-flagged";
      cell(row, name);
      cell(row, String(r.labels));
      cell(row, percent(r.agreement));
      cell(row, percent(r.left_rate));
      cell(row, r.left_z === null ? "—" : (r.left_z >= 0 ? "+" : "") + r.left_z.toFixed(1));
      cell(row, r.median_seconds === null ? "—" : `${r.median_seconds.toFixed(1)} s`);
      cell(row, Object.entries(r.choices).map(([c, n]) => `${c} ${n}`).join(", "));
      cell(row, r.flags.length ? r.flags.join("; ") : "ok", r.flags.length ? "error" : "ak-ok");
      body.appendChild(row);
    }
    const pairs = $("pairs").querySelector("tbody");
    pairs.replaceChildren();
    const entries = Object.entries(stats.cohen_kappa);
    if (!entries.length) {
      const row = document.createElement("tr");
      cell(row, "no pair of annotators shares 5 items yet", "muted").colSpan = 2;
      pairs.appendChild(row);
    }
    for (const [pair, kappa] of entries) {
      const row = document.createElement("tr");
      cell(row, pair.split("|").join(" · "));
      cell(row, number(kappa));
      pairs.appendChild(row);
    }
  }

  async function load() {
    try {
      render(await AK.api("/api/stats"));
    } catch (e) {
      $("stats-error").textContent = e.status === 403 ? "Statistics need an admin token." : e.message;
    }
  }

  async function download(event) {
    event.preventDefault();
    const query = new URLSearchParams({
      rule: $("rule").value, ties: $("ties").value, keep_flagged: $("keep-flagged").checked,
    });
    try {
      const response = await AK.api(`/api/annotate/export?${query}`, { raw: true });
      const rows = response.headers.get("X-Alignkit-Rows");
      const blob = await response.blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = "pairs.jsonl";
      document.body.appendChild(link);
      link.click();
      link.remove();
      $("export-message").textContent = `Downloaded pairs.jsonl: ${rows} pairs.`;
    } catch (e) {
      $("export-message").textContent = e.message;
    }
  }

  AK.signIn(() => {
    $("export-form").addEventListener("submit", download);
    load();
  });
})();
