// Trainings: the list (#/trainings) and one training (#/training/ID): status, per-epoch train /
// valid / test accuracy and loss charts, the final figures and the downloads (weights, ONNX,
// TorchScript). The list refreshes every 2 s; a training follows its event stream (each event: the
// training and its epochs read again) and polls every 2 s only when the stream cannot be read.
import { api, apiBlob, readEventStream } from "./api.js";
import { lineChart } from "./charts.js";
import { dartsString } from "./genotype.js";
import { $, TERMINAL, age, element, percent, setStatus } from "./util.js";

// The trained weights and the two exports (the server builds an export on first request: seconds, once).
const DOWNLOADS = ["download-weights", "download-onnx", "download-torchscript"];

const REFRESH_MS = 2000;
const COLOURS = { train: "#2471a3", valid: "#d35400", test: "#1e8449" };
let timer = null;
let generation = 0;
let streamAbort = null; // aborts the shown training's event stream

function stop() {
  generation += 1;
  clearTimeout(timer);
  timer = null;
  streamAbort?.abort();
  streamAbort = null;
}

// ------------------------------------------------------------------------------------------- list

function row(training) {
  const link = element("a", { href: `#/training/${encodeURIComponent(training.id)}`, text: training.name });
  const progress = element("progress", { max: Math.max(1, training.epochs), value: training.epoch, "aria-label": "progress" });
  return element(
    "tr",
    { "data-id": training.id },
    element("td", { "data-label": "Name", class: "name" }, link),
    element("td", { "data-label": "Status" }, element("span", { class: `badge status-${training.status}`, text: training.status })),
    element("td", { "data-label": "Progress" }, progress, element("span", { class: "muted", text: ` ${training.epoch}/${training.epochs}` })),
    element("td", { "data-label": "Test acc", text: percent(training.test_accuracy ?? training.metrics?.test_acc) }),
    element("td", { "data-label": "Age", text: age(training.created_at) }),
  );
}

async function refreshList(mine) {
  try {
    const page = await api("/trainings?limit=50");
    if (mine !== generation) return;
    $("trainings").querySelector("tbody").replaceChildren(...page.items.map(row));
    $("trainings-empty").hidden = page.items.length > 0;
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    if (mine === generation) setStatus(`error: ${error.message}`, true);
  }
  if (mine === generation) timer = setTimeout(() => refreshList(mine), REFRESH_MS);
}

export function showTrainings() {
  stop();
  refreshList(generation);
}

// ------------------------------------------------------------------------------------------- one

let shown = null; // the training shown: its resource

function render(training, records) {
  $("training-name").textContent = training.name;
  const badge = $("training-status");
  badge.textContent = training.status;
  badge.className = `badge status-${training.status}`;
  $("training-progress").max = Math.max(1, training.epochs);
  $("training-progress").value = training.epoch;
  $("training-progress-text").textContent = `epoch ${training.epoch} of ${training.epochs}`;
  $("training-error").hidden = !training.error;
  $("training-error").textContent = training.error ? `Error: ${training.error}` : "";
  const source = training.search_id
    ? element("a", { href: `#/search/${encodeURIComponent(training.search_id)}`, text: `search ${training.search_id}` })
    : element("span", { text: "a given genotype" });
  const epochNote = training.search_epoch ? ` (epoch ${training.search_epoch})` : "";
  $("training-source").replaceChildren("from ", source, epochNote);
  const figures = [
    ["Test accuracy", percent(training.test_accuracy)],
    ["Valid accuracy", percent(training.valid_accuracy)],
    ["Test loss", training.test_loss == null ? "–" : training.test_loss.toFixed(4)],
    ["Parameters", training.parameters == null ? "–" : training.parameters.toLocaleString()],
    ["Multiply-adds", training.multiply_adds == null ? "–" : training.multiply_adds.toLocaleString()],
  ];
  $("training-figures").replaceChildren(
    ...figures.map(([name, value]) => element("div", {}, element("dt", { text: name }), element("dd", { "data-figure": name, text: value }))),
  );
  for (const button of DOWNLOADS) $(button).hidden = training.status !== "succeeded";
  $("cancel-training").hidden = TERMINAL.has(training.status) || training.status === "cancelling";
  $("training-genotype").textContent = dartsString(training.genotype);
  const box = $("training-charts");
  if (!records.length) {
    box.replaceChildren(element("p", { class: "muted", text: "Charts appear after the first epoch." }));
    return;
  }
  const series = (key, name, colour) => ({ name, colour, points: records.map((r) => [r.epoch, r[key] ?? NaN]) });
  box.replaceChildren(
    lineChart({
      title: "Accuracy", yMin: 0, yMax: 1,
      series: [series("train_acc", "train", COLOURS.train), series("valid_acc", "valid", COLOURS.valid), series("test_acc", "test", COLOURS.test)],
    }),
    lineChart({
      title: "Loss",
      series: [series("train_loss", "train", COLOURS.train), series("valid_loss", "valid", COLOURS.valid), series("test_loss", "test", COLOURS.test)],
    }),
  );
}

/** Read the training and its epochs and show them; true while it may still change. */
async function load(id, mine) {
  try {
    const training = await api(`/trainings/${encodeURIComponent(id)}`);
    const page = await api(`/trainings/${encodeURIComponent(id)}/epochs?limit=1000`);
    if (mine !== generation) return false;
    shown = training;
    render(training, page.items);
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
    return !TERMINAL.has(training.status);
  } catch (error) {
    if (mine !== generation) return false;
    setStatus(`error: ${error.message}`, true);
    if (error.status === 404) {
      $("training-name").textContent = "Training not found";
      return false;
    }
    return true;
  }
}

function setLive(text) {
  $("training-live").textContent = text;
}

async function poll(id, mine) {
  const running = await load(id, mine);
  if (mine !== generation) return;
  setLive(running ? "refreshing every 2 s" : "");
  if (running) timer = setTimeout(() => poll(id, mine), REFRESH_MS);
}

async function follow(id, mine) {
  if (!(await load(id, mine)) || mine !== generation) return;
  setLive("live");
  // One read at a time: events arriving meanwhile ask for one more read after it.
  let reading = null;
  let again = false;
  const reread = () => {
    if (reading) {
      again = true;
      return;
    }
    reading = load(id, mine).finally(() => {
      reading = null;
      if (again && mine === generation) {
        again = false;
        reread();
      }
    });
  };
  streamAbort = new AbortController();
  try {
    await readEventStream(`/trainings/${encodeURIComponent(id)}/events`, {
      signal: streamAbort.signal,
      onEvent: () => mine === generation && reread(),
    });
  } catch (error) {
    if (mine !== generation || error.name === "AbortError") return;
  }
  // Ended (after a terminal status) or could not be read: read once more, and poll while it runs.
  await reading;
  if (mine === generation) poll(id, mine);
}

export function showTraining(id) {
  stop();
  shown = null;
  setLive("");
  $("training-name").textContent = "";
  $("training-charts").replaceChildren();
  follow(id, generation);
}

export function leaveTrainings() {
  stop();
}

/** The "Retrain" action of a succeeded search: a training of its final genotype, then its page. */
export async function retrain(searchId) {
  const training = await api("/trainings", { method: "POST", json: { search_id: searchId } });
  location.hash = `#/training/${encodeURIComponent(training.id)}`;
}

for (const id of DOWNLOADS) {
  $(id).addEventListener("click", async (event) => {
    if (!shown) return;
    const button = event.currentTarget;
    const { download, suffix } = button.dataset;
    button.disabled = true;
    try {
      const blob = await apiBlob(`/trainings/${encodeURIComponent(shown.id)}/${download}`);
      const url = URL.createObjectURL(blob);
      const link = element("a", { href: url, download: `${shown.name.replace(/[^\w.-]+/g, "_")}${suffix}` });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    } catch (error) {
      setStatus(`${download}: ${error.message}`, true);
    } finally {
      button.disabled = false;
    }
  });
}
$("cancel-training").addEventListener("click", async () => {
  if (!shown || !confirm(`Cancel the training “${shown.name}”?`)) return;
  try {
    shown = await api(`/trainings/${encodeURIComponent(shown.id)}/cancel`, { method: "POST" });
    $("training-status").textContent = shown.status;
  } catch (error) {
    setStatus(`cancel: ${error.message}`, true);
  }
});
