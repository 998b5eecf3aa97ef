// The new-search form, built from the API's own OpenAPI schema (fields, defaults, bounds and enums
// are defined once, in app/schemas.py), with the datasets the key may use, an upload with a progress
// bar, the admission estimate, and the API's 422 messages shown next to the fields they name.
import { ApiError, api, fieldPath, upload } from "./api.js";
import { $, bytes, element } from "./util.js";

const GROUPS = [
  ["search_space", "Search space"],
  ["network", "Network"],
  ["training", "Training"],
  ["resources", "Resources"],
];
const ESTIMATE_DELAY_MS = 400;

let schemas = null;
let estimateOffered = false;
let datasets = [];
let estimateTimer = null;
let estimateGeneration = 0;

function resolve(schema) {
  let current = schema || {};
  for (let depth = 0; depth < 8; depth += 1) {
    if (current.$ref) current = schemas[current.$ref.split("/").pop()];
    else if (current.allOf && current.allOf.length === 1) current = current.allOf[0];
    else break;
  }
  return current;
}

function enumOf(schema) {
  const resolved = resolve(schema);
  if (resolved.enum) return resolved.enum;
  if (resolved.const !== undefined) return [resolved.const];
  return null;
}

const humanise = (name) => name.replaceAll("_", " ").replace(/^./, (c) => c.toUpperCase());

function describe(property) {
  const parts = [];
  if (property.minimum !== undefined) parts.push(`≥ ${property.minimum}`);
  if (property.exclusiveMinimum !== undefined) parts.push(`> ${property.exclusiveMinimum}`);
  if (property.maximum !== undefined) parts.push(`≤ ${property.maximum}`);
  if (property.exclusiveMaximum !== undefined) parts.push(`< ${property.exclusiveMaximum}`);
  if (property.default !== undefined && !Array.isArray(property.default)) parts.push(`default ${property.default}`);
  return [property.description, parts.join(", ")].filter(Boolean).join(" · ");
}

/** `X | None` in the schema: the non-null variant, carrying the outer title, description, default. */
function optionalOf(property) {
  if (!property.anyOf) return null;
  const others = property.anyOf.map(resolve).filter((variant) => variant.type !== "null");
  if (others.length !== 1 || others.length === property.anyOf.length) return null;
  const { anyOf, ...outer } = property;
  return { ...others[0], ...outer };
}

/** One labelled input for `property` named `path` (e.g. "training.epochs"). */
function field(path, name, rawProperty, override) {
  let property = resolve(rawProperty);
  const optional = optionalOf(property);
  if (optional) property = optional;
  const id = `f-${path.replaceAll(".", "-")}`;
  const value = override !== undefined ? override : property.default;
  const error = element("span", { class: "field-error", "data-error-for": path, id: `${id}-error` });
  const hint = element("span", { class: "hint", text: describe(property) });
  const options = enumOf(property);
  const itemOptions = property.type === "array" ? enumOf(property.items) || property.default : null;
  let input;
  let wide = false;
  if (property.type === "array" && !itemOptions) {
    // A list the schema gives no choices for: comma-separated, empty for the server's default.
    input = element("input", { id, "data-path": path, "data-kind": "list", placeholder: "comma-separated; empty: the server's default", value: (value || []).join(", ") });
    wide = true;
  } else if (itemOptions) {
    // A set of names (the primitives): one checkbox each, the default ones ticked.
    const chosen = new Set(value || itemOptions);
    const boxes = itemOptions.map((option) =>
      element(
        "label",
        { class: "check" },
        element("input", { type: "checkbox", value: option, checked: chosen.has(option), "data-item-of": path }),
        ` ${option}`,
      ),
    );
    const group = element("fieldset", { class: "field checks", "data-path": path, "data-kind": "set", id }, element("legend", { text: humanise(name) }), ...boxes, error);
    group.setAttribute("aria-describedby", error.id);
    return group;
  } else if (options) {
    const choices = options.map((o) => element("option", { value: o, text: o, selected: o === value }));
    // An optional choice starts on "default": the server decides (e.g. a layout guessed from the data).
    if (optional) choices.unshift(element("option", { value: "", text: "default", selected: value === undefined || value === null }));
    input = element("select", { id, "data-path": path, "data-kind": "enum" }, ...choices);
  } else if (property.type === "boolean") {
    input = element("input", { id, type: "checkbox", "data-path": path, "data-kind": "boolean", checked: Boolean(value) });
  } else if (property.type === "integer" || property.type === "number") {
    input = element("input", {
      id,
      type: "number",
      inputmode: property.type === "integer" ? "numeric" : "decimal",
      step: property.type === "integer" ? 1 : "any",
      "data-path": path,
      "data-kind": property.type,
      value: value ?? "",
    });
  } else if (property.anyOf) {
    // e.g. image_size: an int or [H, W]; typed as JSON.
    input = element("input", { id, "data-path": path, "data-kind": "json", value: value === undefined ? "" : JSON.stringify(value) });
  } else {
    input = element("input", { id, "data-path": path, "data-kind": "string", value: value ?? "" });
  }
  input.setAttribute("aria-describedby", `${error.id}`);
  const label = element("label", { for: id, text: humanise(name) });
  const classes = ["field", property.type === "boolean" ? "inline" : "", wide ? "wide" : ""].filter(Boolean).join(" ");
  return element("div", { class: classes }, label, input, hint, error);
}

function groupFieldset(key, title) {
  const spec = resolve(schemas.SearchSpec);
  const group = resolve(spec.properties[key]);
  const fields = Object.entries(group.properties || {}).map(([name, property]) => field(`${key}.${name}`, name, property));
  return element(
    "fieldset",
    { id: `group-${key}` },
    element("legend", { text: title }),
    element("span", { class: "field-error group-error", "data-error-for": key }),
    element("div", { class: "fields" }, ...fields),
  );
}

/** The search method (`method.name`: darts, gdas, ...), its choices read from the schema's union; its
 * hyperparameters keep the paper's defaults here (a spec file or the API sets them). */
function methodFieldset() {
  const method = resolve(resolve(schemas.SearchSpec).properties.method);
  const names = Object.keys((method.discriminator && method.discriminator.mapping) || {});
  const id = "f-method-name";
  const select = element(
    "select",
    { id, "data-path": "method.name", "data-kind": "enum" },
    ...names.map((name) => element("option", { value: name, text: name, selected: name === "darts" })),
  );
  return element(
    "fieldset",
    { id: "group-method" },
    element("legend", { text: "Method" }),
    element("span", { class: "field-error group-error", "data-error-for": "method" }),
    element(
      "div",
      { class: "fields" },
      element("div", { class: "field" }, element("label", { for: id, text: "Method" }), select,
        element("span", { class: "field-error", "data-error-for": "method.name" })),
    ),
  );
}

/** The schema of the dataset spec for `dataset` (a built-in by its name, else the uploaded kind). */
function datasetSchema(dataset) {
  const union = resolve(resolve(schemas.SearchSpec).properties.dataset);
  const variants = (union.oneOf || union.anyOf || []).map(resolve);
  if (dataset.kind === "upload") return variants.find((v) => v.properties && v.properties.id);
  return variants.find((v) => v.properties && v.properties.name && (enumOf(v.properties.name) || []).includes(dataset.name));
}

function renderDatasetParameters() {
  const dataset = datasets.find((d) => d.id === $("f-dataset").value);
  const box = $("dataset-parameters");
  if (!dataset) {
    box.replaceChildren();
    return;
  }
  const schema = datasetSchema(dataset);
  const properties = Object.entries((schema && schema.properties) || {}).filter(([name]) => name !== "name" && name !== "id");
  box.replaceChildren(...properties.map(([name, property]) => field(`dataset.${name}`, name, property, dataset.parameters ? dataset.parameters[name] : undefined)));
}

async function loadDatasets(selectId) {
  datasets = (await api("/datasets?limit=500")).items;
  const builtin = datasets.filter((d) => d.kind === "builtin");
  const uploaded = datasets.filter((d) => d.kind !== "builtin");
  const option = (d) => element("option", { value: d.id, text: d.kind === "builtin" ? d.name : `${d.name} (${d.num_samples} samples, ${d.num_classes} classes)` });
  const select = $("f-dataset");
  const previous = selectId || select.value;
  select.replaceChildren(
    element("optgroup", { label: "Built in" }, ...builtin.map(option)),
    uploaded.length ? element("optgroup", { label: "Your uploads" }, ...uploaded.map(option)) : null,
  );
  if (previous && datasets.some((d) => d.id === previous)) select.value = previous;
  renderDatasetParameters();
}

function readValue(input) {
  const kind = input.dataset.kind;
  if (kind === "set") {
    return [...input.querySelectorAll("input[type=checkbox]")].filter((box) => box.checked).map((box) => box.value);
  }
  if (kind === "boolean") return input.checked;
  const text = input.value.trim();
  if (text === "") return undefined;
  if (kind === "list") return text.split(",").map((item) => item.trim()).filter(Boolean);
  if (kind === "integer" || kind === "number") return Number(text);
  if (kind === "json") {
    try {
      return JSON.parse(text);
    } catch {
      return text; // sent as typed: the API names the field in its 422
    }
  }
  return text;
}

/** The spec the form describes: nested by each input's data-path. */
export function formSpec() {
  const dataset = datasets.find((d) => d.id === $("f-dataset").value);
  const spec = { dataset: dataset && dataset.kind === "upload" ? { id: dataset.id } : { name: dataset ? dataset.name : "" } };
  for (const input of $("search-form").querySelectorAll("[data-path]")) {
    const value = readValue(input);
    if (value === undefined) continue;
    const path = input.dataset.path.split(".");
    let target = spec;
    for (const part of path.slice(0, -1)) target = target[part] ??= {};
    target[path.at(-1)] = value;
  }
  return spec;
}

function clearErrors() {
  for (const span of $("search-form").querySelectorAll(".field-error")) span.textContent = "";
  for (const input of $("search-form").querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
  $("form-error").textContent = "";
}

/** Put each of a 422's messages next to the field it names (or its nearest named group). */
function showErrors(error) {
  clearErrors();
  if (!(error instanceof ApiError) || !Array.isArray(error.detail)) {
    $("form-error").textContent = error.message;
    return;
  }
  const unplaced = [];
  for (const item of error.detail) {
    let path = fieldPath(item.loc || []).split(".");
    // The dataset union adds its tag to the location ("dataset.synthetic.num_samples").
    if (path[0] === "dataset" && path.length > 2) path = ["dataset", ...path.slice(2)];
    let placed = false;
    while (path.length && !placed) {
      const name = path.join(".");
      const span = $("search-form").querySelector(`[data-error-for="${CSS.escape(name)}"]`);
      if (span) {
        span.textContent = [span.textContent, item.msg].filter(Boolean).join("; ");
        const input = $("search-form").querySelector(`[data-path="${CSS.escape(name)}"]`);
        if (input) input.setAttribute("aria-invalid", "true");
        placed = true;
      }
      path = path.slice(0, -1);
    }
    if (!placed) unplaced.push(`${fieldPath(item.loc || []) || "body"}: ${item.msg}`);
  }
  $("form-error").textContent = unplaced.length ? unplaced.join("; ") : "Please correct the fields marked above.";
  const first = $("search-form").querySelector("[aria-invalid]");
  if (first) first.scrollIntoView({ block: "center" });
}

function showEstimate(estimate) {
  const parts = [];
  for (const [key, value] of Object.entries(estimate || {})) {
    if (typeof value === "number") parts.push(`${humanise(key)}: ${/bytes|memory/.test(key) ? bytes(value) : value.toLocaleString()}`);
    else if (typeof value === "string" || typeof value === "boolean") parts.push(`${humanise(key)}: ${value}`);
  }
  $("estimate-text").textContent = parts.join(" · ") || "—";
  $("estimate-text").className = "";
}

async function estimate() {
  const mine = (estimateGeneration += 1);
  if (!estimateOffered) {
    $("estimate-text").textContent = "not offered by this server";
    $("estimate-text").className = "muted";
    return;
  }
  try {
    const answer = await api("/searches/estimate", { method: "POST", json: formSpec() });
    if (mine === estimateGeneration) showEstimate(answer);
  } catch (error) {
    if (mine !== estimateGeneration) return;
    const text = $("estimate-text");
    if (error.status === 404 || error.status === 405) {
      text.textContent = "not offered by this server";
      text.className = "muted";
    } else {
      text.textContent = error.message;
      text.className = "error";
    }
  }
}

function scheduleEstimate() {
  clearTimeout(estimateTimer);
  estimateTimer = setTimeout(estimate, ESTIMATE_DELAY_MS);
}

async function submit(event) {
  event.preventDefault();
  clearErrors();
  const button = $("submit-search");
  button.disabled = true;
  try {
    const search = await api("/searches", { method: "POST", json: formSpec() });
    location.hash = `#/search/${encodeURIComponent(search.id)}`;
  } catch (error) {
    showErrors(error);
  } finally {
    button.disabled = false;
  }
}

/** " (cat 3, dog 2; 1 file skipped)": an archive upload's classes and their counts, and what it left out. */
function describeClasses(dataset) {
  const counts = dataset.class_counts || {};
  const names = Object.keys(counts).length ? Object.entries(counts).map(([name, count]) => `${name} ${count}`) : dataset.class_names || [];
  const skipped = dataset.skipped && dataset.skipped.count ? `; ${dataset.skipped.count} files skipped: ${dataset.skipped.first.join(", ")}` : "";
  return names.length || skipped ? ` (${names.join(", ")}${skipped})` : "";
}

async function uploadFile() {
  const file = $("upload-file").files[0];
  const status = $("upload-status");
  const progress = $("upload-progress");
  if (!file) {
    status.textContent = "Choose a .npz, .zip, .tar or .tar.gz file first.";
    status.className = "error";
    return;
  }
  progress.hidden = false;
  progress.value = 0;
  status.className = "muted";
  status.textContent = "uploading…";
  $("upload-button").disabled = true;
  try {
    const dataset = await upload(file, {
      name: $("upload-name").value.trim() || undefined,
      onProgress: (loaded, total) => {
        progress.value = total ? loaded / total : 0;
      },
    });
    progress.value = 1;
    status.textContent = `uploaded ${dataset.name}: ${dataset.num_samples} samples, ${dataset.num_classes} classes${describeClasses(dataset)}`;
    await loadDatasets(dataset.id);
    scheduleEstimate();
  } catch (error) {
    status.textContent = `upload failed: ${error.message}`;
    status.className = "error";
  } finally {
    $("upload-button").disabled = false;
  }
}

let built = false;

export async function showForm() {
  if (!built) {
    const schema = await api("/openapi.json");
    schemas = schema.components.schemas;
    // Asked only where the server documents it: a 404 would be a console error on every change.
    estimateOffered = Boolean(schema.paths["/searches/estimate"] && schema.paths["/searches/estimate"].post);
    $("spec-groups").replaceChildren(methodFieldset(), ...GROUPS.map(([key, title]) => groupFieldset(key, title)));
    built = true;
  }
  clearErrors();
  await loadDatasets();
  scheduleEstimate();
}

export function leaveForm() {
  clearTimeout(estimateTimer);
  estimateGeneration += 1;
}

$("search-form").addEventListener("submit", submit);
$("search-form").addEventListener("input", scheduleEstimate);
$("search-form").addEventListener("change", scheduleEstimate);
$("f-dataset").addEventListener("change", renderDatasetParameters);
$("upload-button").addEventListener("click", uploadFile);
