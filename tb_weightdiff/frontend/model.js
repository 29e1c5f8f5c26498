// Data: fetching from the plugin's routes, dropping stale answers, and the
// pure functions the views use (filtering, formatting, densities). No DOM here.
// Verdict names and thresholds are not written here: the plugin's ./contract
// route serves them, from the one Python module that defines them.

/** A verdict's name as shown: `not_learning` -> `not learning`. */
export function verdictLabel(verdict) {
  return String(verdict).replace(/_/g, ' ');
}

/**
 * Fetches the text of a route relative to the plugin; a non-2xx answer throws
 * an Error carrying the server's message.
 * @param {string} route e.g. './verdicts?run=a&format=csv'
 * @return {Promise<string>}
 */
export async function fetchText(route) {
  // Always asked again, but an answer the browser holds comes back as a 304 (ETag).
  const response = await fetch(route, {cache: 'no-cache'});
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${response.status}: ${text.trim().slice(0, 300)}`);
  }
  return text;
}

/**
 * Fetches JSON from a route relative to the plugin (errors as `fetchText`).
 * @param {string} route e.g. './verdicts?run=a'
 * @return {Promise<*>}
 */
export async function fetchJson(route) {
  return JSON.parse(await fetchText(route));
}

/**
 * Wraps a fetching function so that only the newest call's answer is used:
 * an older answer that arrives late resolves to `undefined`.
 * @param {function(...*): Promise<*>} fetcher
 * @return {function(...*): Promise<*>}
 */
export function latestOnly(fetcher) {
  let generation = 0;
  return async (...args) => {
    const mine = ++generation;
    const result = await fetcher(...args);
    return mine === generation ? result : undefined;
  };
}

/** Builds a query string from `{key: value | value[]}`, skipping empty values. */
export function query(parameters) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(parameters)) {
    for (const item of Array.isArray(value) ? value : [value]) {
      if (item !== undefined && item !== null && item !== '') search.append(key, String(item));
    }
  }
  const text = search.toString();
  return text ? `?${text}` : '';
}

/**
 * The smallest and largest finite number of `values`, in one loop: spreading
 * an array into `Math.min(...)` throws a RangeError near 10^5 values (a
 * heatmap of 2,000 layers x 50 steps).
 * @param {Iterable<?number>} values
 * @param {function(number): boolean=} keep only values it accepts
 * @return {?{low: number, high: number}} null when none is finite (and kept)
 */
export function finiteRange(values, keep = () => true) {
  let low = Infinity;
  let high = -Infinity;
  for (const value of values) {
    if (!Number.isFinite(value) || !keep(value)) continue;
    if (value < low) low = value;
    if (value > high) high = value;
  }
  return low <= high ? {low, high} : null;
}

/**
 * Whether a layer's name passes the name filter: a regular expression,
 * case-insensitive, as TensorBoard's tag filter; text that is not a valid
 * expression is matched as plain text.
 * @param {string} pattern empty: everything passes
 * @return {function(string): boolean}
 */
export function nameMatcher(pattern) {
  if (!pattern) return () => true;
  try {
    const expression = new RegExp(pattern, 'i');
    return (name) => expression.test(name);
  } catch (error) {
    const needle = pattern.toLowerCase();
    return (name) => name.toLowerCase().includes(needle);
  }
}

/** Whether `pattern` is a valid regular expression (the filter box marks it when not). */
export function validPattern(pattern) {
  try {
    new RegExp(pattern, 'i');  // eslint-disable-line no-new
    return true;
  } catch (error) {
    return false;
  }
}

/** Formats a score for a table cell: 3 significant digits, '—' when absent. */
export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  if (value === 0) return '0';
  const magnitude = Math.abs(value);
  if (magnitude >= 1e4 || magnitude < 1e-3) return value.toExponential(2);
  return Number(value.toPrecision(3)).toString();
}

/**
 * The layers of a run whose verdict (and name, by `matches`) passes the filters, worst first (the
 * server's order), or with `sort === 'reset'` by the loss their reset
 * costs, largest first (layers without a reset check last, in verdict order).
 */
export function visibleLayers(run, verdictFilter, sort = 'verdict', matches = () => true) {
  const layers = run.layers.filter((layer) => verdictFilter.has(layer.verdict) && matches(layer.name));
  if (sort !== 'reset') return layers;
  const cost = (layer) => (layer.reset && Number.isFinite(layer.reset.increase) ? layer.reset.increase : -Infinity);
  return layers.map((layer, index) => ({layer, index}))
    .sort((x, y) => (cost(y.layer) - cost(x.layer)) || (x.index - y.index))
    .map((item) => item.layer);
}

/**
 * The block a layer belongs to: its name up to the first component that is a
 * number (`model.layers.17.mlp.down_proj` -> `model.layers.17`, a transformer
 * block; `layer2.0.conv1` -> `layer2.0`, a ResNet block; `encoder/block_3/dense`
 * -> `encoder/block_3`), or null when it has none before its last component.
 */
export function blockOf(name) {
  const parts = String(name).split(/([./])/);
  for (let i = 0; i < parts.length - 2; i += 2) {
    if (/^\d+$/.test(parts[i]) || /[_-]\d+$/.test(parts[i])) return parts.slice(0, i + 1).join('');
  }
  return null;
}

/**
 * Layers (in the order given: worst first) grouped by block, each group where
 * its first (worst) layer stands; a block of one layer stays a plain layer.
 * @return {Array<{block: ?string, layers: Array<Object>}>}
 */
export function groupLayers(layers) {
  const groups = [];
  const byBlock = new Map();
  for (const layer of layers) {
    const block = blockOf(layer.name);
    if (block === null) {
      groups.push({block: null, layers: [layer]});
      continue;
    }
    if (!byBlock.has(block)) {
      const group = {block, layers: []};
      byBlock.set(block, group);
      groups.push(group);
    }
    byBlock.get(block).layers.push(layer);
  }
  return groups.flatMap((group) => (group.block !== null && group.layers.length < 2
    ? [{block: null, layers: group.layers}] : [group]));
}

/** A group's heatmap row: per step, the largest per-step shift of its layers (null where none has one). */
export function groupShift(steps, layers) {
  const index = new Map(steps.map((step, i) => [step, i]));
  const values = steps.map(() => null);
  for (const layer of layers) {
    (layer.steps || []).forEach((step, i) => {
      const value = (layer.per_step_shift || [])[i];
      const at = index.get(step);
      if (at === undefined || !Number.isFinite(value)) return;
      if (values[at] === null || value > values[at]) values[at] = value;
    });
  }
  return values;
}

/**
 * The rows of a run's table, in order, as data (the table draws only those
 * near its viewport) and the heatmap's rows. Entries: `{kind: 'group', key, block, layers, worst, tally,
 * shift, open}`, `{kind: 'layer', key, layer, inGroup, open}`, `{kind: 'variable', key, layer, variable,
 * selected}`; a key is unique within the run. Heatmap rows are `{name, steps, per_step_shift, key}`,
 * `key` the entry they stand for (a collapsed block's row, or a layer's).
 * @param {Object} run a run of the /verdicts answer
 * @param {Array<Object>} layers its visible layers, in table order
 * @param {{verdicts: string[], grouped: boolean, expanded: Set, expandedGroups: Set, selected: ?Object,
 *   nameFilter: string}} view
 * @return {{entries: Array<Object>, heatmapRows: Array<Object>}}
 */
export function tableEntries(run, layers, view) {
  const entries = [];
  const heatmapRows = [];
  const groups = view.grouped ? groupLayers(layers) : layers.map((layer) => ({block: null, layers: [layer]}));
  const addLayer = (layer, inGroup) => {
    const key = `layer\u0000${layer.name}`;
    const open = view.expanded.has(`${run.run}\u0000${layer.name}`);
    entries.push({kind: 'layer', key, layer, inGroup, open});
    heatmapRows.push({name: layer.name, steps: layer.steps || [], per_step_shift: layer.per_step_shift || [], key});
    if (!open) return;
    for (const variable of layer.variables) {
      const selected = Boolean(view.selected && view.selected.run === run.run && view.selected.tag === variable.tag);
      entries.push({kind: 'variable', key: `variable\u0000${variable.tag}`, layer, variable, selected});
    }
  };
  for (const group of groups) {
    if (group.block === null) {
      addLayer(group.layers[0], false);
      continue;
    }
    // A name filter that picks layers out of a block shows them.
    const open = view.expandedGroups.has(`${run.run}\u0000${group.block}`) || Boolean(view.nameFilter);
    const tally = view.verdicts.map((v) => [v, group.layers.filter((layer) => layer.verdict === v).length])
      .filter(([, n]) => n).map(([v, n]) => `${n} ${verdictLabel(v)}`).join(', ');
    const shift = groupShift(run.steps, group.layers);
    const key = `group\u0000${group.block}`;
    entries.push({kind: 'group', key, block: group.block, layers: group.layers, worst: group.layers[0], tally, shift, open});
    if (open) {
      for (const layer of group.layers) addLayer(layer, true);
    } else {
      heatmapRows.push({name: `${group.block} (${group.layers.length})`, steps: run.steps, per_step_shift: shift, key});
    }
  }
  return {entries, heatmapRows};
}

/**
 * Which items of a list of rows with heights lie within `[top - overscan, top + height + overscan]`.
 * @param {number} count
 * @param {function(number): number} heightOf the height of row i
 * @return {{first: number, last: number, before: number, after: number, total: number}} rows
 *   first..last (inclusive; last < first when there are none) and the heights above and below them
 */
export function visibleWindow(count, heightOf, top, height, overscan) {
  let y = 0;
  let first = -1;
  let last = -1;
  let before = 0;
  let through = 0;
  for (let i = 0; i < count; i++) {
    const h = heightOf(i);
    if (first < 0 && y + h > top - overscan) {
      first = i;
      before = y;
    }
    if (first >= 0 && y < top + height + overscan) {
      last = i;
      through = y + h;
    }
    y += h;
  }
  if (first < 0) return {first: 0, last: -1, before: y, after: 0, total: y};
  return {first, last, before, after: y - through, total: y};
}

/** A layer's reset cell: the loss increase and the share of what training gained it undoes. */
export function resetText(reset) {
  if (!reset) return '—';
  const increase = reset.increase === null ? '—' : `${reset.increase > 0 ? '+' : ''}${formatNumber(reset.increase)}`;
  return reset.undone === null || reset.undone === undefined ? increase : `${increase} (${Math.round(100 * reset.undone)}%)`;
}

/**
 * Density of a `[k, 3]` histogram as drawable pieces.
 * @param {Array<Array<number>>} buckets rows of [left, right, count]
 * @return {{pieces: Array<{left: number, right: number, density: number}>, spikes: Array<{x: number, mass: number}>, total: number}}
 *   zero-width buckets become spikes (point masses, as a fraction of the total).
 */
export function density(buckets) {
  const total = buckets.reduce((sum, row) => sum + (Number.isFinite(row[2]) ? row[2] : 0), 0);
  const pieces = [];
  const spikes = [];
  if (!(total > 0)) return {pieces, spikes, total: 0};
  for (const [left, right, count] of buckets) {
    if (!(count > 0) || !Number.isFinite(left) || !Number.isFinite(right)) continue;
    if (right > left) {
      pieces.push({left, right, density: count / total / (right - left)});
    } else {
      spikes.push({x: left, mass: count / total});
    }
  }
  return {pieces, spikes, total};
}

/** Density of `d` at `x` (0 outside its pieces). */
export function densityAt(d, x) {
  for (const piece of d.pieces) {
    if (x >= piece.left && x < piece.right) return piece.density;
  }
  return 0;
}

/**
 * B's density minus A's on the union of their edges: the overlay's difference panel.
 * @return {Array<{left: number, right: number, value: number}>}
 */
export function densityDifference(a, b) {
  const edges = new Set();
  for (const d of [a, b]) {
    for (const piece of d.pieces) {
      edges.add(piece.left);
      edges.add(piece.right);
    }
  }
  const sorted = [...edges].sort((x, y) => x - y);
  const result = [];
  for (let i = 0; i + 1 < sorted.length; i++) {
    const middle = (sorted[i] + sorted[i + 1]) / 2;
    result.push({left: sorted[i], right: sorted[i + 1], value: densityAt(b, middle) - densityAt(a, middle)});
  }
  return result;
}

/** Up to `limit` indices spread evenly over `0..count-1`, first and last included. */
export function sampleIndices(count, limit) {
  if (count <= limit) return [...Array(count).keys()];
  const indices = new Set();
  for (let i = 0; i < limit; i++) indices.add(Math.round((i * (count - 1)) / (limit - 1)));
  return [...indices].sort((x, y) => x - y);
}
