// One search: live status (its SSE stream read with fetch, polling every 2 s when the stream cannot
// be read), metric charts, the collapse metrics (charts and a table) and an early stop's reason, alpha
// heatmaps with an epoch slider, the cells as drawn by the server, the genotype as the DARTS string and
// as JSON, cancel, delete and "Retrain" (a training of its genotype).
import { api, readEvents } from "./api.js";
import { heatmap, lineChart } from "./charts.js";
import { dartsString, edgeLabels } from "./genotype.js";
import { retrain } from "./training.js";
import { $, TERMINAL, copyText, download, duration, element, parseTime, percent, setStatus } from "./util.js";

const POLL_MS = 2000;
const COLOURS = { train: "#2471a3", valid: "#d35400", lr: "#1e8449", skip: "#8e44ad", free: "#7f8c8d", entropy: "#16a085", hessian: "#c0392b" };
const COLLAPSE_COLUMNS = [
  ["skip_connections", "Skip connections", (v) => String(v)],
  ["parameter_free_ops", "Parameter-free ops", (v) => String(v)],
  ["alpha_entropy", "Alpha entropy", (v) => v.toFixed(4)],
  ["hessian_eigenvalue", "Hessian eigenvalue", (v) => v.toPrecision(4)],
];

let current = null; // { id, search, epochs: Map(epoch -> record), abort, timer, generation }
let generation = 0;

function alive(mine) {
  return current && current.generation === mine;
}

function renderSummary() {
  const { search, epochs } = current;
  const status = $("search-status");
  status.textContent = search.status;
  status.className = `badge status-${search.status}`;
  $("search-name").textContent = search.name;
  $("search-progress").max = Math.max(1, search.epochs);
  $("search-progress").value = search.epoch;
  $("search-progress-text").textContent = `epoch ${search.epoch} of ${search.epochs}`;
  const seconds = [...epochs.values()].map((r) => r.seconds);
  const remaining = search.epochs - search.epoch;
  const eta = !TERMINAL.has(search.status) && seconds.length && remaining > 0
    ? `about ${duration((seconds.reduce((a, b) => a + b, 0) / seconds.length) * remaining)} left`
    : "";
  const started = parseTime(search.started_at);
  const finished = parseTime(search.finished_at);
  const took = started && finished ? ` · took ${duration((finished - started) / 1000)}` : "";
  $("search-best").textContent = `best valid acc ${percent(search.best_valid_acc)}${took}`;
  $("search-method").textContent = `method ${(search.spec.method || { name: "darts" }).name}`;
  $("search-eta").textContent = eta;
  $("search-error").hidden = !search.error;
  $("search-error").textContent = search.error ? `Error: ${search.error}` : "";
  $("search-stopped").hidden = !search.stopped_early;
  $("search-stopped").textContent = search.stopped_early ? `Stopped early: ${search.stop_reason || "early-stop rule"}` : "";
  $("cancel-search").hidden = TERMINAL.has(search.status) || search.status === "cancelling";
  $("delete-search").hidden = !TERMINAL.has(search.status);
  $("retrain-search").hidden = search.status !== "succeeded";
}

function renderGenotype() {
  const genotype = current.search.genotype;
  $("genotype-none").hidden = Boolean(genotype);
  $("genotype-present").hidden = !genotype;
  if (!genotype) return;
  $("genotype-darts").textContent = dartsString(genotype);
  $("genotype-json").textContent = JSON.stringify(genotype, null, 2);
}

function renderCharts() {
  const records = [...current.epochs.values()].sort((a, b) => a.epoch - b.epoch);
  const box = $("charts");
  if (!records.length) {
    box.replaceChildren(element("p", { class: "muted", text: "Charts appear after the first epoch." }));
    return;
  }
  const series = (key, name, colour) => ({ name, colour, points: records.map((r) => [r.epoch, r[key]]) });
  box.replaceChildren(
    lineChart({ title: "Loss", series: [series("train_loss", "train", COLOURS.train), series("valid_loss", "valid", COLOURS.valid)] }),
    lineChart({ title: "Accuracy", yMin: 0, yMax: 1, series: [series("train_acc", "train", COLOURS.train), series("valid_acc", "valid", COLOURS.valid)] }),
    lineChart({ title: "Learning rate", series: [series("lr", "weights", COLOURS.lr)] }),
  );
}

// The collapse metrics per epoch (null in records written before they existed, and the Hessian's
// eigenvalue outside the epochs that measure it): charts of what is there, and a table of every epoch.
function renderCollapse() {
  const records = [...current.epochs.values()].sort((a, b) => a.epoch - b.epoch);
  const series = (key, name, colour) => ({
    name, colour, points: records.filter((r) => Number.isFinite(r[key])).map((r) => [r.epoch, r[key]]),
  });
  const charts = [];
  const counts = [series("skip_connections", "skip connections", COLOURS.skip), series("parameter_free_ops", "parameter-free ops", COLOURS.free)];
  if (counts.some((s) => s.points.length)) charts.push(lineChart({ title: "Normal cell: skip connections, parameter-free ops", yMin: 0, series: counts }));
  const entropy = series("alpha_entropy", "entropy", COLOURS.entropy);
  if (entropy.points.length) charts.push(lineChart({ title: "Mean alpha entropy (nats)", series: [entropy] }));
  const hessian = series("hessian_eigenvalue", "eigenvalue", COLOURS.hessian);
  if (hessian.points.length) charts.push(lineChart({ title: "Hessian dominant eigenvalue", series: [hessian] }));
  // The method's schedules (GDAS's tau, SDARTS's epsilon, ...), one line per scheduled value.
  const scheduled = [...new Set(records.flatMap((r) => Object.keys(r.schedule || {})))];
  if (scheduled.length) {
    const method = records.find((r) => r.method)?.method || "method";
    charts.push(lineChart({
      title: `${method} schedule: ${scheduled.join(", ")}`,
      series: scheduled.map((key, i) => ({
        name: key, colour: Object.values(COLOURS)[i % 7],
        points: records.filter((r) => Number.isFinite((r.schedule || {})[key])).map((r) => [r.epoch, r.schedule[key]]),
      })),
    }));
  }
  $("collapse-charts").replaceChildren(
    ...(charts.length ? charts : [element("p", { class: "muted", text: "No collapse metrics yet." })]),
  );
  const rows = records.map((record) => element(
    "tr", { "data-epoch": record.epoch },
    element("td", { "data-label": "Epoch", text: String(record.epoch) }),
    ...COLLAPSE_COLUMNS.map(([key, label, show]) => element("td", {
      "data-label": label, "data-key": key, text: Number.isFinite(record[key]) ? show(record[key]) : "—",
    })),
  ));
  $("collapse-table").tBodies[0].replaceChildren(...rows);
}

function softmaxRows(rows) {
  return rows.map((row) => {
    const sum = row.reduce((a, b) => a + b, 0);
    if (row.every((v) => v >= 0) && Math.abs(sum - 1) < 1e-3) return row;
    const top = Math.max(...row);
    const exps = row.map((v) => Math.exp(v - top));
    const total = exps.reduce((a, b) => a + b, 0);
    return exps.map((v) => v / total);
  });
}

async function renderArchitecture(epoch) {
  const mine = current.generation;
  current.shownEpoch = epoch; // a later call (the slider moved again) wins over this one's drawing
  const record = current.epochs.get(epoch);
  $("epoch-slider-value").textContent = record ? `${epoch}` : "";
  const spec = current.search.spec || {};
  const space = spec.search_space || {};
  const primitives = space.primitives || [];
  const heatmaps = [];
  if (record && record.alphas) {
    for (const [cell, title] of [["normal", "Normal cell alphas"], ["reduce", "Reduction cell alphas"]]) {
      const rows = record.alphas[cell];
      if (!Array.isArray(rows) || !rows.length) continue;
      const labels = edgeLabels(space.internal_nodes || 0);
      // Records that name their method hold its operation weights as they are (FairDARTS' sigmoids
      // need not sum to 1); older ones are softmaxed here if they are not already.
      const method = record.method;
      heatmaps.push(heatmap({
        title: `${title}, epoch ${epoch} (${!method || method === "darts" ? "softmax over operations" : `${method} operation weights`})`,
        rows: method ? rows : softmaxRows(rows),
        rowLabels: rows.map((_, i) => labels[i] || `edge ${i}`),
        columnLabels: rows[0].map((_, j) => primitives[j] || `op ${j}`),
      }));
    }
  }
  $("heatmaps").replaceChildren(...(heatmaps.length ? heatmaps : [element("p", { class: "muted", text: "No alphas yet." })]));
  if (!record) {
    $("cells").replaceChildren();
    return;
  }
  try {
    const text = await api(`/searches/${encodeURIComponent(current.id)}/genotype.svg?epoch=${epoch}`, { accept: "image/svg+xml" });
    if (!alive(mine) || current.shownEpoch !== epoch) return;
    const parsed = new DOMParser().parseFromString(text, "image/svg+xml");
    const drawing = document.importNode(parsed.documentElement, true);
    drawing.setAttribute("id", "cells-svg");
    drawing.dataset.epoch = String(epoch);
    drawing.setAttribute("role", "img");
    drawing.setAttribute("aria-label", `the normal and reduction cells at epoch ${epoch}`);
    $("cells").replaceChildren(drawing);
  } catch (error) {
    if (alive(mine)) $("cells").replaceChildren(element("p", { class: "error", text: `cells: ${error.message}` }));
  }
}

function renderSlider(followLatest) {
  const slider = $("epoch-slider");
  const numbers = [...current.epochs.keys()];
  const last = numbers.length ? Math.max(...numbers) : 0;
  const atEnd = Number(slider.value) >= Number(slider.max);
  slider.disabled = last < 1;
  slider.max = String(Math.max(1, last));
  if (followLatest || atEnd) slider.value = String(Math.max(1, last));
  if (last >= 1 && (followLatest || atEnd)) renderArchitecture(last);
}

function renderAll(followLatest = false) {
  renderSummary();
  renderGenotype();
  renderCharts();
  renderCollapse();
  renderSlider(followLatest);
}

function addEpoch(record) {
  const known = current.epochs.has(record.epoch);
  current.epochs.set(record.epoch, record);
  current.search.epoch = Math.max(current.search.epoch, record.epoch);
  current.search.genotype = record.genotype;
  return !known;
}

async function reloadSearch(mine) {
  const search = await api(`/searches/${encodeURIComponent(current.id)}`);
  if (!alive(mine)) return;
  current.search = search;
}

async function loadEpochs(mine) {
  let cursor = null;
  do {
    const query = new URLSearchParams({ limit: "1000" });
    if (cursor) query.set("cursor", cursor);
    const page = await api(`/searches/${encodeURIComponent(current.id)}/epochs?${query}`);
    if (!alive(mine)) return;
    for (const record of page.items) current.epochs.set(record.epoch, record);
    cursor = page.next_cursor;
  } while (cursor);
}

async function poll(mine) {
  try {
    await reloadSearch(mine);
    await loadEpochs(mine);
    if (!alive(mine)) return;
    renderAll();
    $("search-live").textContent = "refreshing every 2 s";
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    if (alive(mine)) setStatus(`error: ${error.message}`, true);
  }
  if (alive(mine) && !TERMINAL.has(current.search.status)) current.timer = setTimeout(() => poll(mine), POLL_MS);
}

async function stream(mine) {
  $("search-live").textContent = "live";
  try {
    await readEvents(current.id, {
      signal: current.abort.signal,
      onEvent: (event) => {
        if (!alive(mine)) return;
        const data = JSON.parse(event.data);
        if (event.event === "epoch") {
          if (addEpoch(data)) renderAll(true);
        } else if (event.event === "status") {
          current.search.status = data.status;
          current.search.error = data.error;
          if ("stopped_early" in data) current.search.stopped_early = data.stopped_early;
          if ("stop_reason" in data) current.search.stop_reason = data.stop_reason;
          renderSummary();
          // The resource has more than the event (finished_at, best_valid_acc): read it again.
          reloadSearch(mine).then(() => alive(mine) && renderAll()).catch(() => {});
        }
        setStatus(`updated ${new Date().toLocaleTimeString()}`);
      },
    });
    if (alive(mine) && TERMINAL.has(current.search.status)) {
      $("search-live").textContent = "";
      return;
    }
  } catch (error) {
    if (!alive(mine) || error.name === "AbortError") return;
  }
  // The stream could not be read or ended early: poll instead.
  if (alive(mine)) poll(mine);
}

export async function showSearch(id) {
  const mine = (generation += 1);
  current = { id, search: null, epochs: new Map(), abort: new AbortController(), timer: null, generation: mine };
  $("search-name").textContent = "";
  $("charts").replaceChildren();
  $("collapse-charts").replaceChildren();
  $("collapse-table").tBodies[0].replaceChildren();
  $("heatmaps").replaceChildren();
  $("cells").replaceChildren();
  $("copy-status").textContent = "";
  try {
    await reloadSearch(mine);
    await loadEpochs(mine);
  } catch (error) {
    if (alive(mine)) {
      $("search-name").textContent = "Search not found";
      setStatus(`error: ${error.message}`, true);
    }
    return;
  }
  if (!alive(mine)) return;
  renderAll(true);
  if (!TERMINAL.has(current.search.status)) stream(mine);
}

export function leaveSearch() {
  if (!current) return;
  current.abort.abort();
  clearTimeout(current.timer);
  current = null;
}

async function copyWithFeedback(text) {
  try {
    await copyText(text);
    $("copy-status").textContent = "copied";
  } catch (error) {
    $("copy-status").textContent = `copy failed: ${error.message}`;
  }
}

const fileStem = () => (current.search.name || current.id).replace(/[^\w.-]+/g, "_");

$("copy-darts").addEventListener("click", () => copyWithFeedback($("genotype-darts").textContent));
$("copy-json").addEventListener("click", () => copyWithFeedback($("genotype-json").textContent));
$("download-darts").addEventListener("click", () => download(`${fileStem()}.genotype.txt`, `${$("genotype-darts").textContent}\n`, "text/plain"));
$("download-json").addEventListener("click", () => download(`${fileStem()}.genotype.json`, `${$("genotype-json").textContent}\n`, "application/json"));
$("epoch-slider").addEventListener("input", () => current && renderArchitecture(Number($("epoch-slider").value)));

$("cancel-search").addEventListener("click", async () => {
  if (!current || !confirm(`Cancel the search “${current.search.name}”?`)) return;
  try {
    current.search = await api(`/searches/${encodeURIComponent(current.id)}/cancel`, { method: "POST" });
    renderSummary();
  } catch (error) {
    setStatus(`cancel: ${error.message}`, true);
  }
});
$("retrain-search").addEventListener("click", async () => {
  if (!current) return;
  try {
    await retrain(current.id);
  } catch (error) {
    setStatus(`retrain: ${error.message}`, true);
  }
});
$("delete-search").addEventListener("click", async () => {
  if (!current || !confirm(`Delete the search “${current.search.name}”, its epochs and artifacts?`)) return;
  try {
    await api(`/searches/${encodeURIComponent(current.id)}`, { method: "DELETE" });
    location.hash = "#/searches";
  } catch (error) {
    setStatus(`delete: ${error.message}`, true);
  }
});

