// A genotype's forms for people: the DARTS reference code's string (as darts_core.genotype.Genotype
// .to_darts writes it; the browser test checks the two agree) and per-edge row labels of the alphas.

const pyString = (text) => `'${String(text).replaceAll("\\", "\\\\").replaceAll("'", "\\'")}'`;

function genes(pairs) {
  return `[${pairs.map(([op, index]) => `(${pyString(op)}, ${index})`).join(", ")}]`;
}

function concat(values) {
  const contiguous = values.length > 0 && values.every((value, i) => value === values[0] + i);
  return contiguous ? `range(${values[0]}, ${values.at(-1) + 1})` : `[${values.join(", ")}]`;
}

export function dartsString(genotype) {
  return (
    `Genotype(normal=${genes(genotype.normal)}, normal_concat=${concat(genotype.normal_concat)}, ` +
    `reduce=${genes(genotype.reduce)}, reduce_concat=${concat(genotype.reduce_concat)})`
  );
}

/** Row labels of a cell's alphas: node i reads the two inputs and nodes 0..i-1, in that order. */
export function edgeLabels(internalNodes) {
  const inputs = ["c_{k-2}", "c_{k-1}"];
  const labels = [];
  for (let node = 0; node < internalNodes; node += 1) {
    for (let source = 0; source < node + 2; source += 1) {
      labels.push(`${source < 2 ? inputs[source] : `node ${source - 2}`} → node ${node}`);
    }
  }
  return labels;
}
