// The searches list: status filter, cursor paging (newest first), refreshed every 2 s while shown.
import { api } from "./api.js";
import { $, age, duration, element, parseTime, percent, setStatus } from "./util.js";

const REFRESH_MS = 2000;
const PAGE_SIZE = 20;
let timer = null;
let cursor = null; // the cursor of the page shown (null: the newest)
let generation = 0;

function row(search, showOwner) {
  const started = parseTime(search.started_at);
  const finished = parseTime(search.finished_at);
  const seconds = started ? ((finished || new Date()) - started) / 1000 : null;
  const progress = element("progress", { max: Math.max(1, search.epochs), value: search.epoch, "aria-label": "progress" });
  const link = element("a", { href: `#/search/${encodeURIComponent(search.id)}`, text: search.name });
  return element(
    "tr",
    { "data-id": search.id },
    element("td", { "data-label": "Name", class: "name" }, link),
    element("td", { "data-label": "Status" }, element("span", { class: `badge status-${search.status}`, text: search.status })),
    element("td", { "data-label": "Progress" }, progress, element("span", { class: "muted", text: ` ${search.epoch}/${search.epochs}` })),
    element("td", { "data-label": "Best valid acc", text: percent(search.best_valid_acc) }),
    showOwner ? element("td", { "data-label": "Owner", text: search.owner ?? "" }) : null,
    element("td", { "data-label": "Age", text: age(search.created_at) }),
    element("td", { "data-label": "Duration", text: duration(seconds) }),
  );
}

async function refresh() {
  const mine = generation;
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  const status = $("status-filter").value;
  if (status) query.set("status", status);
  if (cursor) query.set("cursor", cursor);
  try {
    const page = await api(`/searches?${query}`);
    if (mine !== generation) return;
    // The owner column is for admins: only they see searches of more than one owner.
    const showOwner = new Set(page.items.map((search) => search.owner ?? null)).size > 1;
    for (const header of document.querySelectorAll(".owner-column")) header.hidden = !showOwner;
    $("searches").querySelector("tbody").replaceChildren(...page.items.map((s) => row(s, showOwner)));
    $("searches-empty").hidden = page.items.length > 0;
    $("page-next").hidden = !page.next_cursor;
    $("page-next").dataset.cursor = page.next_cursor || "";
    $("page-newest").hidden = !cursor;
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    if (mine === generation) setStatus(`error: ${error.message}`, true);
  }
  if (mine === generation) timer = setTimeout(refresh, REFRESH_MS);
}

function restart() {
  leaveList();
  generation += 1;
  refresh();
}

export function showList() {
  restart();
}

export function leaveList() {
  generation += 1;
  clearTimeout(timer);
  timer = null;
}

$("status-filter").addEventListener("change", () => {
  cursor = null;
  restart();
});
$("page-next").addEventListener("click", () => {
  cursor = $("page-next").dataset.cursor || null;
  restart();
});
$("page-newest").addEventListener("click", () => {
  cursor = null;
  restart();
});
