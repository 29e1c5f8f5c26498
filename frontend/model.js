// Data: fetching from the plugin's routes, dropping stale answers, and the
// pure functions the views use (filtering, formatting, export). No DOM here.

export const VERDICTS = ['diverged', 'not_learning', 'frozen', 'unknown', 'learning'];

export const VERDICT_LABELS = {
  diverged: 'diverged',
  not_learning: 'not learning',
  frozen: 'frozen',
  unknown: 'unknown',
  learning: 'learning',
};

export const THRESHOLDS = [
  {name: 'min_relative_change', label: 'min relative change', help: 'Floor on ||W - W0|| / ||W0|| (WeightDiffCallback logs).'},
  {name: 'min_shift', label: 'min shift', help: 'Floor on the histogram shift from the baseline, in baseline std.'},
  {name: 'min_ratio_to_median', label: 'min ratio to median', help: "Floor on a layer's movement / the run's median movement."},
];

/**
 * Fetches JSON from a route relative to the plugin; a non-2xx answer throws
 * an Error carrying the server's message.
 * @param {string} route e.g. './verdicts?run=a'
 * @return {Promise<*>}
 */
export async function fetchJson(route) {
  const response = await fetch(route, {cache: 'no-store'});
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${response.status}: ${text.trim().slice(0, 300)}`);
  }
  return JSON.parse(text);
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

/** Formats a score for a table cell: 3 significant digits, '—' when absent. */
export function formatNumber(value) {
  if (value === null || value === undefined || Number.isNaN(value)) return '—';
  if (value === 0) return '0';
  const magnitude = Math.abs(value);
  if (magnitude >= 1e4 || magnitude < 1e-3) return value.toExponential(2);
  return Number(value.toPrecision(3)).toString();
}

/** The layers of a run whose verdict passes the filter (order kept: worst first). */
export function visibleLayers(run, verdictFilter) {
  return run.layers.filter((layer) => verdictFilter.has(layer.verdict));
}

const CSV_COLUMNS = [
  'run', 'source', 'layer', 'layer_verdict', 'variable', 'tag', 'verdict', 'trainable',
  'movement', 'movement_kind', 'ratio_to_median', 'shift', 'relative_change',
  'cosine_distance', 'diverged_step', 'baseline_step', 'last_step', 'reason',
];

function csvField(value) {
  if (value === null || value === undefined) return '';
  let text = String(value);
  // A spreadsheet would run a cell that starts like a formula.
  if (typeof value === 'string' && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
  return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

/**
 * The verdict table as CSV: one row per variable, with its layer's verdict.
 * @param {{runs: Array}} result the /verdicts answer
 * @return {string}
 */
export function toCsv(result) {
  const lines = [CSV_COLUMNS.join(',')];
  for (const run of result.runs) {
    for (const layer of run.layers) {
      for (const variable of layer.variables) {
        const row = {
          run: run.run, source: run.source, layer: layer.name, layer_verdict: layer.verdict,
          variable: variable.name, tag: variable.tag, verdict: variable.verdict,
          trainable: variable.trainable, movement: variable.movement,
          movement_kind: variable.movement_kind, ratio_to_median: variable.ratio_to_median,
          shift: variable.shift, relative_change: variable.relative_change,
          cosine_distance: variable.cosine_distance, diverged_step: variable.diverged_step,
          baseline_step: variable.baseline_step,
          last_step: variable.steps.length ? variable.steps[variable.steps.length - 1] : null,
          reason: variable.reason,
        };
        lines.push(CSV_COLUMNS.map((column) => csvField(row[column])).join(','));
      }
    }
  }
  return lines.join('\n') + '\n';
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
