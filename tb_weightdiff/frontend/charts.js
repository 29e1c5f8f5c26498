// Hand-written SVG charts: sparkline, heatmap, A/B overlay with difference,
// ridgeline, small line charts. A few hundred lines of SVG cover what the tab
// draws, so no charting library is vendored (see the README).

import {svg, tooltip} from './dom.js';
import {density, densityDifference, finiteRange, formatNumber, sampleIndices} from './model.js';

// Okabe-Ito, a palette that colour-blind readers can tell apart.
export const COLOURS = {
  a: '#0072B2',
  b: '#E69F00',
  positive: '#E69F00',
  negative: '#0072B2',
  line: '#009E73',
  axis: '#757575',
  zero: '#e0e0e0',
  missing: '#fafafa',
};

// Viridis at 9 stops: perceptually uniform and colour-blind safe.
const VIRIDIS = [
  [68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
  [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37],
];

/** Viridis colour at `t` in [0, 1]. */
export function viridis(t) {
  const clamped = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0));
  const position = clamped * (VIRIDIS.length - 1);
  const low = Math.floor(position);
  const high = Math.min(VIRIDIS.length - 1, low + 1);
  const f = position - low;
  const channel = (i) => Math.round(VIRIDIS[low][i] + (VIRIDIS[high][i] - VIRIDIS[low][i]) * f);
  return `rgb(${channel(0)}, ${channel(1)}, ${channel(2)})`;
}

/**
 * A log-scale colour mapping over the positive finite values given.
 * @param {Array<?number>} values
 * @return {{colour: function(?number): string, low: number, high: number}}
 */
export function logColourScale(values) {
  const range = finiteRange(values, (v) => v > 0);
  let low = range ? range.low : 1e-4;
  let high = range ? range.high : 1;
  if (high / low < 10) {
    low = Math.min(low, high / 10);
  }
  const logLow = Math.log10(low);
  const span = Math.log10(high) - logLow;
  const colour = (value) => {
    if (value === null || value === undefined || !Number.isFinite(value)) return COLOURS.missing;
    if (value <= 0) return COLOURS.zero;
    return viridis((Math.log10(value) - logLow) / span);
  };
  return {colour, low, high};
}

/** A small polyline of `values` (nulls skipped); empty SVG if fewer than 2 points. */
export function sparkline(values, {width = 120, height = 24} = {}) {
  const points = values.map((v, i) => [i, v]).filter(([, v]) => Number.isFinite(v));
  const root = svg('svg', {width, height, class: 'sparkline', viewBox: `0 0 ${width} ${height}`});
  if (points.length < 2) return root;
  const max = finiteRange(points.map(([, v]) => v)).high || 1;
  const n = Math.max(1, values.length - 1);
  const coordinates = points.map(([i, v]) => `${((i / n) * (width - 2) + 1).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`);
  root.appendChild(svg('polyline', {points: coordinates.join(' '), fill: 'none', stroke: COLOURS.line, 'stroke-width': 1.5}));
  root.appendChild(tooltip(`per-step shift, max ${formatNumber(max)}`));
  return root;
}

/**
 * Heatmap of per-step shift: one row per layer, one column per logged step.
 * @param {{steps: number[], layers: Array<{name: string, per_step_shift: Array<?number>, steps: number[]}>}} run
 * @param {function(string, number, ?number)=} onHover called with (layer, step, value) on hover
 * @return {SVGElement}
 */
export function heatmap(run, layers, onHover) {
  const steps = run.steps.slice(1);  // the baseline has no previous step
  const labelWidth = 220;
  const cell = Math.max(4, Math.min(28, Math.floor(800 / Math.max(1, steps.length))));
  const rowHeight = 18;
  const width = labelWidth + cell * steps.length + 10;
  const height = rowHeight * layers.length + 30;
  const scale = logColourScale(layers.flatMap((layer) => layer.per_step_shift));
  const root = svg('svg', {width, height, class: 'heatmap', role: 'img'});
  layers.forEach((layer, row) => {
    const y = row * rowHeight;
    root.appendChild(svg('text', {x: labelWidth - 6, y: y + rowHeight * 0.7, 'text-anchor': 'end', class: 'heatmap-label', text: layer.name}));
    const valueByStep = new Map(layer.steps.map((step, i) => [step, layer.per_step_shift[i]]));
    steps.forEach((step, column) => {
      const value = valueByStep.has(step) ? valueByStep.get(step) : null;
      const rect = svg('rect', {
        x: labelWidth + column * cell, y, width: cell - 1, height: rowHeight - 1,
        fill: scale.colour(value), class: 'heatmap-cell',
        dataset: {layer: layer.name, step: String(step), value: value === null ? '' : String(value)},
        onmouseenter: () => onHover && onHover(layer.name, step, value),
      }, [tooltip(`${layer.name}, step ${step}: per-step shift ${formatNumber(value)}`)]);
      root.appendChild(rect);
    });
  });
  const axisY = rowHeight * layers.length + 14;
  for (const index of sampleIndices(steps.length, 8)) {
    root.appendChild(svg('text', {x: labelWidth + index * cell + cell / 2, y: axisY, 'text-anchor': 'middle', class: 'axis-label', text: String(steps[index])}));
  }
  root.appendChild(svg('text', {x: labelWidth - 6, y: axisY, 'text-anchor': 'end', class: 'axis-label', text: 'step'}));
  root.scale = scale;
  return root;
}

/** The heatmap's colour legend: a log gradient with its ends labelled. */
export function heatmapLegend(scale) {
  const width = 260;
  const root = svg('svg', {width: width + 200, height: 34, class: 'legend'});
  const id = `gradient-${Math.random().toString(36).slice(2)}`;
  const gradient = svg('linearGradient', {id});
  for (let i = 0; i <= 8; i++) {
    gradient.appendChild(svg('stop', {offset: `${i * 12.5}%`, 'stop-color': viridis(i / 8)}));
  }
  root.appendChild(svg('defs', {}, [gradient]));
  root.appendChild(svg('rect', {x: 0, y: 2, width, height: 12, fill: `url(#${id})`}));
  root.appendChild(svg('text', {x: 0, y: 28, class: 'axis-label', text: formatNumber(scale.low)}));
  root.appendChild(svg('text', {x: width, y: 28, 'text-anchor': 'end', class: 'axis-label', text: formatNumber(scale.high)}));
  root.appendChild(svg('text', {x: width / 2, y: 28, 'text-anchor': 'middle', class: 'axis-label', text: 'per-step shift (log)'}));
  root.appendChild(svg('rect', {x: width + 16, y: 2, width: 12, height: 12, fill: COLOURS.zero, stroke: '#bdbdbd'}));
  root.appendChild(svg('text', {x: width + 32, y: 12, class: 'axis-label', text: '0: no change'}));
  return root;
}

function linearScale(domainLow, domainHigh, rangeLow, rangeHigh) {
  const span = domainHigh - domainLow || 1;
  return (value) => rangeLow + ((value - domainLow) / span) * (rangeHigh - rangeLow);
}

function extent(densities) {
  let low = Infinity;
  let high = -Infinity;
  for (const d of densities) {
    for (const piece of d.pieces) {
      low = Math.min(low, piece.left);
      high = Math.max(high, piece.right);
    }
    for (const spike of d.spikes) {
      low = Math.min(low, spike.x);
      high = Math.max(high, spike.x);
    }
  }
  if (!Number.isFinite(low)) return [0, 1];
  if (low === high) return [low - 0.5, high + 0.5];
  return [low, high];
}

function densityPath(d, x, y) {
  // A step outline: down to the baseline between disjoint pieces.
  let path = '';
  let lastRight = null;
  for (const piece of d.pieces) {
    if (lastRight === null || piece.left !== lastRight) {
      path += `${lastRight === null ? '' : `L${x(lastRight).toFixed(1)},${y(0).toFixed(1)}`}M${x(piece.left).toFixed(1)},${y(0).toFixed(1)}`;
    }
    path += `L${x(piece.left).toFixed(1)},${y(piece.density).toFixed(1)}L${x(piece.right).toFixed(1)},${y(piece.density).toFixed(1)}`;
    lastRight = piece.right;
  }
  if (lastRight !== null) path += `L${x(lastRight).toFixed(1)},${y(0).toFixed(1)}`;
  return path;
}

function xAxis(root, x, low, high, y, width) {
  root.appendChild(svg('line', {x1: x(low), x2: x(high), y1: y, y2: y, stroke: COLOURS.axis}));
  for (let i = 0; i <= 4; i++) {
    const value = low + ((high - low) * i) / 4;
    root.appendChild(svg('text', {x: x(value), y: y + 14, 'text-anchor': 'middle', class: 'axis-label', text: formatNumber(value)}));
  }
  root.setAttribute('width', width);
}

/**
 * Histograms of steps A and B overlaid, and below them B's density minus A's.
 * @param {Array<Array<number>>} bucketsA
 * @param {Array<Array<number>>} bucketsB
 * @param {{stepA: number, stepB: number}} labels
 * @return {SVGElement}
 */
export function overlay(bucketsA, bucketsB, {stepA, stepB, runB = null}) {
  const width = 620;
  const top = 190;
  const diffHeight = 90;
  const height = top + diffHeight + 40;
  const a = density(bucketsA);
  const b = density(bucketsB);
  const [low, high] = extent([a, b]);
  const x = linearScale(low, high, 40, width - 28);
  const peak = Math.max(1e-300, finiteRange([...a.pieces, ...b.pieces].map((p) => p.density))?.high ?? 0);
  const y = linearScale(0, peak * 1.05, top - 10, 14);
  const root = svg('svg', {width, height, class: 'overlay', role: 'img', dataset: {stepA: String(stepA), stepB: String(stepB)}});
  for (const [d, colour, name, step] of [[a, COLOURS.a, 'A', stepA], [b, COLOURS.b, 'B', stepB]]) {
    root.appendChild(svg('path', {d: densityPath(d, x, y), fill: colour, 'fill-opacity': 0.25, stroke: colour, 'stroke-width': 1.5, class: `density density-${name}`}, [tooltip(`${name}: step ${step}`)]));
    for (const spike of d.spikes) {
      root.appendChild(svg('line', {x1: x(spike.x), x2: x(spike.x), y1: y(0), y2: 14, stroke: colour, 'stroke-width': 3}, [tooltip(`${name}: ${formatNumber(spike.mass * 100)}% of values at ${formatNumber(spike.x)}`)]));
    }
  }
  root.appendChild(svg('text', {x: 44, y: 12, class: 'legend-a', fill: COLOURS.a, text: `A: step ${stepA}`}));
  root.appendChild(svg('text', {x: 160, y: 12, class: 'legend-b', fill: COLOURS.b, text: `B: step ${stepB}${runB ? ` of run ${runB}` : ''}`}));
  xAxis(root, x, low, high, top - 10, width);

  // The difference panel: where B has more mass than A (up) or less (down).
  const difference = densityDifference(a, b);
  const magnitude = Math.max(1e-300, finiteRange(difference.map((piece) => Math.abs(piece.value)))?.high ?? 0);
  const middle = top + 20 + diffHeight / 2;
  const dy = linearScale(0, magnitude, 0, diffHeight / 2 - 4);
  root.appendChild(svg('text', {x: 44, y: top + 16, class: 'axis-label', text: 'density of B minus A'}));
  root.appendChild(svg('line', {x1: x(low), x2: x(high), y1: middle, y2: middle, stroke: COLOURS.axis, 'stroke-dasharray': '2,2'}));
  for (const piece of difference) {
    if (piece.value === 0) continue;
    const h = dy(Math.abs(piece.value));
    root.appendChild(svg('rect', {
      x: x(piece.left), width: Math.max(0.5, x(piece.right) - x(piece.left)),
      y: piece.value > 0 ? middle - h : middle, height: h,
      fill: piece.value > 0 ? COLOURS.positive : COLOURS.negative, class: 'difference-bar',
    }));
  }
  return root;
}

/**
 * All steps' densities stacked: one ridge per step (up to 40, evenly chosen),
 * A and B drawn in their overlay colours.
 */
export function ridgeline(steps, histograms, {stepA, stepB} = {}) {
  const indices = sampleIndices(steps.length, 40);
  const densities = indices.map((i) => density(histograms[i]));
  const [low, high] = extent(densities);
  const width = 620;
  const ridge = 16;
  const overlap = 2.2;
  const height = ridge * indices.length + ridge * overlap + 30;
  const x = linearScale(low, high, 60, width - 28);
  const peak = Math.max(1e-300, finiteRange(densities.flatMap((d) => d.pieces.map((p) => p.density)))?.high ?? 0);
  const root = svg('svg', {width, height, class: 'ridgeline', role: 'img'});
  indices.forEach((index, row) => {
    const base = ridge * overlap + ridge * row + 10;
    const y = linearScale(0, peak, base, base - ridge * overlap);
    const step = steps[index];
    const highlighted = step === stepA ? COLOURS.a : step === stepB ? COLOURS.b : null;
    root.appendChild(svg('path', {
      d: densityPath(densities[row], x, y), fill: highlighted || '#ffffff', 'fill-opacity': highlighted ? 0.5 : 0.9,
      stroke: highlighted || '#424242', 'stroke-width': highlighted ? 1.5 : 0.8, class: 'ridge',
    }, [tooltip(`step ${step}`)]));
    for (const spike of densities[row].spikes) {
      // A point mass (e.g. an all-zero bias): a bar as tall as its share of the values.
      root.appendChild(svg('line', {x1: x(spike.x), x2: x(spike.x), y1: base, y2: base - ridge * overlap * spike.mass,
        stroke: highlighted || '#424242', 'stroke-width': 2, class: 'ridge-spike'}, [tooltip(`step ${step}: ${formatNumber(spike.mass * 100)}% at ${formatNumber(spike.x)}`)]));
    }
    if (row % Math.ceil(indices.length / 10) === 0 || highlighted) {
      root.appendChild(svg('text', {x: 54, y: base, 'text-anchor': 'end', class: 'axis-label', text: String(step)}));
    }
  });
  xAxis(root, x, low, high, height - 18, width);
  return root;
}

/** A small line chart of one score over steps (nulls break the line). */
export function scoreChart(title, steps, values, {width = 300, height = 120} = {}) {
  const root = svg('svg', {width, height, class: 'score-chart', role: 'img'});
  root.appendChild(svg('text', {x: 4, y: 12, class: 'chart-title', text: title}));
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length || steps.length < 2) {
    root.appendChild(svg('text', {x: 4, y: 40, class: 'axis-label', text: 'no data'}));
    return root;
  }
  const high = finiteRange(finite).high || 1;
  const x = linearScale(steps[0], steps[steps.length - 1], 44, width - 8);
  const y = linearScale(0, high, height - 20, 20);
  let path = '';
  let pen = false;
  values.forEach((value, i) => {
    if (!Number.isFinite(value)) {
      pen = false;
      return;
    }
    path += `${pen ? 'L' : 'M'}${x(steps[i]).toFixed(1)},${y(value).toFixed(1)}`;
    pen = true;
  });
  root.appendChild(svg('path', {d: path, fill: 'none', stroke: COLOURS.line, 'stroke-width': 1.5}));
  values.forEach((value, i) => {
    if (Number.isFinite(value)) {
      root.appendChild(svg('circle', {cx: x(steps[i]), cy: y(value), r: 2, fill: COLOURS.line}, [tooltip(`step ${steps[i]}: ${formatNumber(value)}`)]));
    }
  });
  root.appendChild(svg('text', {x: 40, y: 24, 'text-anchor': 'end', class: 'axis-label', text: formatNumber(high)}));
  root.appendChild(svg('text', {x: 40, y: height - 20, 'text-anchor': 'end', class: 'axis-label', text: '0'}));
  root.appendChild(svg('text', {x: 44, y: height - 6, class: 'axis-label', text: `step ${steps[0]}`}));
  root.appendChild(svg('text', {x: width - 8, y: height - 6, 'text-anchor': 'end', class: 'axis-label', text: `step ${steps[steps.length - 1]}`}));
  return root;
}
