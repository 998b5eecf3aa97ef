// The darts-service page: polls GET /searches and GET /searches/{id} (SQL is the source of truth).
"use strict";

const POLL_MS = 1000;
const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
let selectedId = new URLSearchParams(location.search).get("search");
let nextCursor = null;

async function getJSON(url, options) {
  const response = await fetch(url, options);
  const body = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    const detail = body && body.detail;
    throw new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
  }
  return body;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.appendChild(td);
}

const fixed = (value, digits) => (value === null || value === undefined ? "" : Number(value).toFixed(digits));

function searchRow(search) {
  const row = document.createElement("tr");
  row.dataset.id = search.id;
  if (search.id === selectedId) row.classList.add("selected");
  cell(row, search.name);
  cell(row, search.status);
  row.lastChild.className = "status-" + search.status;
  cell(row, `${search.epoch}/${search.epochs}`);
  cell(row, fixed(search.best_valid_acc, 4));
  cell(row, new Date(search.created_at).toLocaleString());
  row.addEventListener("click", () => select(search.id));
  return row;
}

async function refreshList() {
  const status = document.getElementById("status-filter").value;
  const query = new URLSearchParams({ limit: "50" });
  if (status) query.set("status", status);
  const page = await getJSON(`/searches?${query}`);
  const body = document.querySelector("#searches tbody");
  body.replaceChildren(...page.items.map(searchRow));
  nextCursor = page.next_cursor;
  document.getElementById("more").hidden = !nextCursor;
}

async function loadMore() {
  if (!nextCursor) return;
  const status = document.getElementById("status-filter").value;
  const query = new URLSearchParams({ limit: "50", cursor: nextCursor });
  if (status) query.set("status", status);
  const page = await getJSON(`/searches?${query}`);
  document.querySelector("#searches tbody").append(...page.items.map(searchRow));
  nextCursor = page.next_cursor;
  document.getElementById("more").hidden = !nextCursor;
}

function select(id) {
  selectedId = id;
  history.replaceState(null, "", `?search=${encodeURIComponent(id)}`);
  document.querySelectorAll("#searches tbody tr").forEach((row) => {
    row.classList.toggle("selected", row.dataset.id === id);
  });
  refreshDetail();
}

async function refreshDetail() {
  if (!selectedId) return;
  const search = await getJSON(`/searches/${encodeURIComponent(selectedId)}`);
  document.getElementById("detail").hidden = false;
  document.getElementById("detail-name").textContent = search.name;
  const status = document.getElementById("detail-status");
  status.textContent = search.status;
  status.className = "status-" + search.status;
  document.getElementById("detail-progress").textContent = `epoch ${search.epoch} of ${search.epochs}`;
  const error = document.getElementById("detail-error");
  error.hidden = !search.error;
  error.textContent = search.error || "";
  document.getElementById("cancel").hidden = TERMINAL.has(search.status) || search.status === "cancelling";

  const epochs = await getJSON(`/searches/${encodeURIComponent(selectedId)}/epochs`);
  const rows = epochs.items.map((record) => {
    const row = document.createElement("tr");
    cell(row, record.epoch);
    cell(row, fixed(record.train_loss, 4));
    cell(row, fixed(record.train_acc, 4));
    cell(row, fixed(record.valid_loss, 4));
    cell(row, fixed(record.valid_acc, 4));
    cell(row, fixed(record.lr, 5));
    cell(row, fixed(record.seconds, 2));
    return row;
  });
  document.querySelector("#epochs tbody").replaceChildren(...rows);

  const genotype = document.getElementById("genotype");
  const svg = document.getElementById("genotype-svg");
  if (search.genotype) {
    genotype.textContent = JSON.stringify(search.genotype, null, 1);
    const source = `/searches/${encodeURIComponent(selectedId)}/genotype.svg?epoch=${search.epoch}`;
    if (svg.getAttribute("src") !== source) svg.src = source;
    svg.hidden = false;
  } else {
    genotype.textContent = "none yet";
    svg.hidden = true;
  }
}

async function cancelSelected() {
  if (!selectedId) return;
  try {
    await getJSON(`/searches/${encodeURIComponent(selectedId)}/cancel`, { method: "POST" });
  } catch (error) {
    alert(`Cancel failed: ${error.message}`);
  }
  await refreshDetail();
}

async function loadDatasets() {
  const select = document.querySelector("#new-search-form select[name=dataset_choice]");
  const page = await getJSON("/datasets?limit=500");
  select.replaceChildren(
    ...page.items.map((dataset) => {
      const option = document.createElement("option");
      option.value = dataset.kind === "upload" ? `upload:${dataset.id}` : dataset.name;
      option.textContent = dataset.kind === "upload" ? `${dataset.name} (uploaded)` : dataset.name;
      return option;
    }),
  );
}

async function submitSearch(event) {
  event.preventDefault();
  // form.elements, not form.name / form.dataset: those are the form element's own properties.
  const fields = event.target.elements;
  const error = document.getElementById("new-search-error");
  error.textContent = "";
  const choice = fields.namedItem("dataset_choice").value;
  const spec = {
    dataset: choice.startsWith("upload:") ? { id: choice.slice(7) } : { name: choice },
    training: { epochs: Number(fields.namedItem("epochs").value) },
  };
  const name = fields.namedItem("search_name").value.trim();
  if (name) spec.name = name;
  try {
    const search = await getJSON("/searches", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(spec),
    });
    await refreshList();
    select(search.id);
  } catch (failure) {
    error.textContent = failure.message;
  }
}

async function tick() {
  const connection = document.getElementById("connection");
  try {
    await refreshList();
    await refreshDetail();
    connection.textContent = `updated ${new Date().toLocaleTimeString()}`;
    connection.className = "muted";
  } catch (error) {
    connection.textContent = `error: ${error.message}`;
    connection.className = "error";
  }
  setTimeout(tick, POLL_MS);
}

document.getElementById("status-filter").addEventListener("change", refreshList);
document.getElementById("more").addEventListener("click", loadMore);
document.getElementById("cancel").addEventListener("click", cancelSelected);
document.getElementById("new-search-form").addEventListener("submit", submitSearch);
loadDatasets().catch((error) => {
  document.getElementById("new-search-error").textContent = `datasets: ${error.message}`;
});
tick();
