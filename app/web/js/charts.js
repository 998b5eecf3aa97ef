// Hand-written SVG charts: line charts of per-epoch metrics and alpha heatmaps. No library, no canvas:
// everything is SVG elements, so it scales with the page and tests can read it.

const SVG_NS = "http://www.w3.org/2000/svg";

export function svg(tag, attributes = {}, text) {
  const element = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  if (text !== undefined) element.textContent = text;
  return element;
}

/** About `count` round tick values covering [low, high]. */
export function ticks(low, high, count = 5) {
  if (!(high > low)) return [low];
  const raw = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * magnitude).find((s) => s >= raw) || raw;
  const values = [];
  for (let value = Math.ceil(low / step) * step; value <= high + step * 1e-9; value += step) {
    values.push(Number(value.toPrecision(12)));
  }
  return values;
}

function format(value) {
  if (value === 0) return "0";
  const size = Math.abs(value);
  if (size >= 1000 || size < 0.01) return value.toExponential(1);
  return String(Number(value.toPrecision(3)));
}

/**
 * A line chart: `series` = [{name, colour, points: [[x, y], ...]}]. Returns an <svg> that fills its
 * container's width (viewBox), with axes, round ticks, a legend and one <title> per point.
 */
export function lineChart({ title, series, xLabel = "epoch", yMin, yMax, width = 420, height = 240 }) {
  const margin = { top: 30, right: 12, bottom: 36, left: 52 };
  const all = series.flatMap((s) => s.points);
  const xs = all.map(([x]) => x);
  const ys = all.map(([, y]) => y).filter(Number.isFinite);
  const x0 = Math.min(1, ...xs);
  const x1 = Math.max(x0 + 1, ...xs);
  let y0 = yMin ?? Math.min(...ys);
  let y1 = yMax ?? Math.max(...ys);
  if (!ys.length) [y0, y1] = [0, 1];
  if (y1 - y0 < 1e-12) [y0, y1] = [y0 - 0.5 * (Math.abs(y0) || 1), y1 + 0.5 * (Math.abs(y1) || 1)];
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const px = (x) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const py = (y) => margin.top + plotH - ((y - y0) / (y1 - y0)) * plotH;

  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });
  root.append(svg("text", { x: margin.left, y: 16, class: "chart-title" }, title));
  for (const y of ticks(y0, y1, 4)) {
    root.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: py(y), y2: py(y), class: "grid" }));
    root.append(svg("text", { x: margin.left - 6, y: py(y) + 4, class: "tick", "text-anchor": "end" }, format(y)));
  }
  const xTicks = ticks(x0, x1, Math.min(6, Math.max(1, x1 - x0))).filter((x) => Number.isInteger(x));
  for (const x of xTicks) {
    root.append(svg("text", { x: px(x), y: height - margin.bottom + 16, class: "tick", "text-anchor": "middle" }, x));
  }
  root.append(svg("text", { x: margin.left + plotW / 2, y: height - 4, class: "axis-label", "text-anchor": "middle" }, xLabel));
  root.append(svg("rect", { x: margin.left, y: margin.top, width: plotW, height: plotH, class: "frame" }));

  let legendX = width - margin.right;
  for (const s of [...series].reverse()) {
    const label = svg("text", { x: legendX, y: 16, class: "legend", "text-anchor": "end", fill: s.colour }, s.name);
    root.append(label);
    legendX -= s.name.length * 6.5 + 22;
    root.append(svg("line", { x1: legendX + 4, x2: legendX + 16, y1: 12, y2: 12, stroke: s.colour, "stroke-width": 2.5 }));
  }
  for (const s of series) {
    const points = s.points.filter(([, y]) => Number.isFinite(y));
    if (!points.length) continue;
    const d = points.map(([x, y], i) => `${i ? "L" : "M"}${px(x).toFixed(1)},${py(y).toFixed(1)}`).join(" ");
    root.append(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 2, class: "series", "data-series": s.name }));
    for (const [x, y] of points) {
      const dot = svg("circle", { cx: px(x), cy: py(y), r: 2.5, fill: s.colour });
      dot.append(svg("title", {}, `${s.name}, epoch ${x}: ${format(y)}`));
      root.append(dot);
    }
  }
  return root;
}

/** White -> deep blue for 0 -> 1. */
function shade(value) {
  const t = Math.max(0, Math.min(1, value));
  const mix = (a, b) => Math.round(a + (b - a) * t);
  return `rgb(${mix(247, 8)},${mix(251, 48)},${mix(255, 107)})`;
}

/**
 * A heatmap of `rows` (arrays of numbers) with `rowLabels` and `columnLabels`, shaded from the
 * matrix's lowest value (white) to its highest (deep blue); each row's largest value is outlined and
 * each cell has a <title> with its value. Returns a <figure>: the caption, then the <svg>.
 */
export function heatmap({ title, rows, rowLabels, columnLabels }) {
  const cell = 28;
  const values = rows.flat();
  const low = Math.min(...values);
  const high = Math.max(...values);
  const scale = (v) => (high - low > 1e-9 ? (v - low) / (high - low) : 0.5);
  const longestColumn = Math.max(...columnLabels.map((l) => l.length), 4) * 6.8;
  const left = Math.max(...rowLabels.map((l) => l.length), 4) * 6.4 + 10;
  const top = 14 + longestColumn * 0.8; // labels turned by 50 degrees: sin(50) of their length, and some
  const width = left + columnLabels.length * cell + longestColumn * 0.64 + 4; // and cos(50) to the right
  const height = top + rows.length * cell + 4;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "heatmap", role: "img", "aria-label": title });
  columnLabels.forEach((label, j) => {
    const x = left + j * cell + cell / 2;
    root.append(svg("text", { x, y: top - 6, class: "tick", transform: `rotate(-50 ${x} ${top - 6})` }, label));
  });
  rows.forEach((row, i) => {
    const y = top + i * cell;
    root.append(svg("text", { x: left - 6, y: y + cell / 2 + 4, class: "tick", "text-anchor": "end" }, rowLabels[i]));
    const best = row.indexOf(Math.max(...row));
    row.forEach((value, j) => {
      const rect = svg("rect", { x: left + j * cell, y, width: cell - 2, height: cell - 2, fill: shade(scale(value)), class: j === best ? "best" : "" });
      rect.append(svg("title", {}, `${rowLabels[i]}, ${columnLabels[j]}: ${value.toFixed(3)}`));
      root.append(rect);
    });
  });
  const caption = document.createElement("figcaption");
  caption.className = "chart-title";
  caption.textContent = title;
  const legend = document.createElement("span");
  legend.className = "muted legend-text";
  legend.textContent = ` white ${low.toFixed(3)} → blue ${high.toFixed(3)}; outlined: each edge's strongest operation`;
  caption.append(legend);
  const figure = document.createElement("figure");
  figure.className = "heatmap-figure";
  figure.append(caption, root);
  return figure;
}
