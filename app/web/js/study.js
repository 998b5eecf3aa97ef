// Studies: the list (#/studies) and one study (#/study/ID): its stages with their children, the
// comparison per method (and the random baseline), the selection accuracies side by side, the chosen
// genotype, and the seeds' search curves on one chart.
// Polled every 2 s while shown (a study lasts hours; its own event stream serves the CLI).
import { api } from "./api.js";
import { lineChart } from "./charts.js";
import { dartsString } from "./genotype.js";
import { $, TERMINAL, age, duration, element, percent, setStatus } from "./util.js";

const REFRESH_MS = 2000;
const COLOURS = ["#2471a3", "#d35400", "#1e8449", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#f39c12"];

let timer = null;
let generation = 0;
const epochsOf = new Map(); // search id -> records (only re-read while that search is not finished)

function stop() {
  generation += 1;
  if (timer) clearTimeout(timer);
  timer = null;
}

function badge(status) {
  return element("span", { class: `badge status-${status}`, text: status });
}

// ------------------------------------------------------------------------------------------ list

async function refreshList() {
  const mine = generation;
  try {
    const page = await api("/studies?limit=50");
    if (mine !== generation) return;
    const body = $("studies").querySelector("tbody");
    body.replaceChildren(...page.items.map((study) => element(
      "tr",
      { "data-id": study.id },
      element("td", { "data-label": "Name" }, element("a", { href: `#/study/${encodeURIComponent(study.id)}`, text: study.name })),
      element("td", { "data-label": "Status" }, badge(study.status)),
      element("td", { "data-label": "Stage", text: study.stage }),
      element("td", { "data-label": "Chosen seed", text: study.chosen_seed ?? "–" }),
      element("td", { "data-label": "Age", text: age(study.created_at) }),
    )));
    $("studies-empty").hidden = page.items.length > 0;
    setStatus("");
  } catch (error) {
    if (mine === generation) setStatus(`error: ${error.message}`, true);
  }
  if (mine === generation) timer = setTimeout(refreshList, REFRESH_MS);
}

export function showStudies() {
  stop();
  refreshList();
}

// ------------------------------------------------------------------------------------------ one study

function childRow(stage, child, study, names) {
  const link = element("a", { href: `#/${child.kind}/${encodeURIComponent(child.id)}`, text: child.id.slice(0, 8) });
  const chosen = stage !== "search" && child.seed === study.chosen_seed && child.arm === (study.chosen_arm || "0");
  return element(
    "tr",
    { "data-id": child.id, class: chosen ? "chosen" : null },
    element("td", { "data-label": "Stage", text: stage }),
    element("td", { "data-label": "Method", text: names.get(child.arm) || child.arm }),
    element("td", { "data-label": "Seed", text: child.seed }),
    element("td", { "data-label": "Id" }, link),
    element("td", { "data-label": "Status" }, badge(child.status)),
    element("td", { "data-label": "Epoch", text: `${child.epoch}/${child.epochs}` }),
    element("td", { "data-label": "Valid acc", text: percent(child.valid_acc) }),
    element("td", { "data-label": "Test acc", text: percent(child.test_accuracy) }),
    element("td", { "data-label": "Error", class: "error", text: child.error || "" }),
  );
}

function meanStd(mean, std) {
  if (mean === null) return "–";
  return std === null ? percent(mean) : `${percent(mean)} ± ${(100 * std).toFixed(2)}`;
}

function count(value) {
  return value === null ? "–" : Math.round(value).toLocaleString();
}

/** One row per method (and the random baseline): its selection trainings over the seeds. */
function comparisonRow(row) {
  return element(
    "tr",
    { "data-arm": row.arm, class: row.chosen ? "chosen" : null },
    element("td", { "data-label": "Method", text: row.method + (row.chosen ? " (chosen)" : "") }),
    element("td", { "data-label": "Runs", text: row.runs }),
    element("td", { "data-label": "Succeeded", text: row.succeeded }),
    element("td", { "data-label": "Valid acc (mean ± std)", text: meanStd(row.valid_acc_mean, row.valid_acc_std) }),
    element("td", { "data-label": "Best", text: row.best_valid_acc === null ? "–" : percent(row.best_valid_acc) }),
    element("td", { "data-label": "Test acc", text: row.test_accuracy_mean === null ? "–" : percent(row.test_accuracy_mean) }),
    element("td", { "data-label": "Parameters", text: count(row.parameters_mean) }),
    element("td", { "data-label": "Multiply-adds", text: count(row.multiply_adds_mean) }),
    element("td", { "data-label": "Search time", text: row.search_seconds_mean === null ? "–" : duration(row.search_seconds_mean) }),
  );
}

async function loadEpochs(searches) {
  for (const child of searches) {
    const known = epochsOf.get(child.id);
    if (known && known.done) continue;
    const page = await api(`/searches/${encodeURIComponent(child.id)}/epochs`);
    epochsOf.set(child.id, { records: page.items, done: TERMINAL.has(child.status) });
  }
}

function renderChart(searches, names) {
  const series = searches.map((child, index) => ({
    // Searches only: the method's name when the study compares several.
    name: [...names.keys()].filter((arm) => arm !== "random").length > 1
      ? `${names.get(child.arm)} seed ${child.seed}` : `seed ${child.seed}`,
    colour: COLOURS[index % COLOURS.length],
    points: (epochsOf.get(child.id)?.records || []).map((r) => [r.epoch, r.valid_acc]),
  }));
  const box = $("study-chart");
  if (!series.some((s) => s.points.length)) {
    box.replaceChildren(element("p", { class: "muted", text: "The curves appear after the searches' first epochs." }));
    return;
  }
  box.replaceChildren(lineChart({ title: "search valid acc", series, yMin: 0, yMax: 1 }));
}

function render(study) {
  $("study-name").textContent = study.name;
  const status = $("study-status");
  status.textContent = study.status;
  status.className = `badge status-${study.status}`;
  $("study-stage").textContent = `stage: ${study.stage}`;
  $("study-times").textContent =
    `wall time ${duration(study.wall_seconds)} · its parts one after another ${duration(study.child_seconds)}`;
  $("study-error").hidden = !study.error;
  $("study-error").textContent = study.error ? `Error: ${study.error}` : "";
  $("cancel-study").hidden = TERMINAL.has(study.status) || study.status === "cancelling";
  $("delete-study").hidden = !TERMINAL.has(study.status);
  const { search, selection, final } = study.stages;
  const names = new Map(study.comparison.map((row) => [row.arm, row.method]));
  const rows = [
    ...search.map((c) => childRow("search", c, study, names)),
    ...selection.map((c) => childRow("selection", c, study, names)),
    ...(final ? [childRow("final", final, study, names)] : []),
  ];
  $("study-children").querySelector("tbody").replaceChildren(...rows);
  $("study-comparison").querySelector("tbody").replaceChildren(...study.comparison.map(comparisonRow));
  const entries = study.selection || [];
  $("study-selection").replaceChildren(...entries.map((entry) => element(
    "li",
    { class: entry.chosen ? "chosen" : null },
    `${names.size > 1 ? `${entry.method} ` : ""}${entry.arm === "random" ? "genotype" : "seed"} ${entry.seed}: ` +
      `${entry.valid_acc === null ? entry.status : percent(entry.valid_acc)}${entry.chosen ? " (chosen)" : ""}`,
  )));
  $("study-genotype").textContent = study.chosen_genotype ? dartsString(study.chosen_genotype) : "not chosen yet";
  renderChart(search, names);
}

async function refreshStudy(id) {
  const mine = generation;
  let finished = false;
  try {
    const study = await api(`/studies/${encodeURIComponent(id)}`);
    if (mine !== generation) return;
    await loadEpochs(study.stages.search);
    if (mine !== generation) return;
    render(study);
    finished = TERMINAL.has(study.status);
    setStatus("");
  } catch (error) {
    if (mine === generation) setStatus(`error: ${error.message}`, true);
  }
  if (mine === generation && !finished) timer = setTimeout(() => refreshStudy(id), REFRESH_MS);
}

export function showStudy(id) {
  stop();
  epochsOf.clear();
  $("cancel-study").onclick = async () => {
    await api(`/studies/${encodeURIComponent(id)}/cancel`, { method: "POST" });
    showStudy(id);
  };
  $("delete-study").onclick = async () => {
    await api(`/studies/${encodeURIComponent(id)}`, { method: "DELETE" });
    location.hash = "#/studies";
  };
  refreshStudy(id);
}

export function leaveStudies() {
  stop();
}
