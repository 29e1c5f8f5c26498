// Hand-written charts: sparkline, A/B overlay with difference, ridgeline,
// small line charts and the legend in SVG; the heatmap on a canvas painted for
// the rows in view (thousands of cells). A few hundred lines cover what the tab
// draws, so no charting library is vendored (see the README).

import {el, svg, tooltip} from './dom.js';
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

const HEATMAP = {labelWidth: 220, rowHeight: 18, axisHeight: 20, maxRowsHeight: 414, font: '11px Roboto, "Helvetica Neue", Arial, sans-serif'};

/**
 * Heatmap of per-step shift, one row per layer (or collapsed block), one
 * column per logged step after the baseline, drawn on a <canvas> that is as
 * large as what is on screen: thousands of rows scroll inside their box and
 * only the rows in view are painted (devicePixelRatio-aware). The pointer or
 * the arrow keys (the canvas takes focus) read a cell; a click or Enter picks
 * its row.
 * @param {{steps: number[]}} run
 * @param {Array<{name: string, steps: number[], per_step_shift: Array<?number>, key: string}>} rows
 * @param {{hover: function(?Object), select: function(Object, number)}} on hover({row, step, value}) when
 *   the cell under the pointer or cursor changes (null when it leaves); select(row, index) on click or Enter
 * @return {HTMLElement} its box; `.scale` the colour scale, `.canvas`, `.viewState()` and
 *   `.restore(state)` keep scroll, cursor and focus across redraws
 */
export function heatmap(run, rows, on = {}) {
  const {labelWidth, rowHeight, axisHeight, maxRowsHeight} = HEATMAP;
  const steps = run.steps.slice(1);  // the baseline has no previous step
  const columns = steps.length;
  const cell = Math.max(4, Math.min(28, Math.floor(800 / Math.max(1, columns))));
  const width = labelWidth + cell * columns + 10;
  const rowsHeight = Math.min(rows.length * rowHeight, maxRowsHeight);
  const height = axisHeight + rowsHeight;
  // One value per cell, NaN where the row has none; the colour scale over all of them.
  const values = new Float64Array(rows.length * columns).fill(NaN);
  const column = new Map(steps.map((step, i) => [step, i]));
  rows.forEach((row, r) => {
    row.steps.forEach((step, i) => {
      const c = column.get(step);
      const value = row.per_step_shift[i];
      if (c !== undefined && value !== null && value !== undefined) values[r * columns + c] = value;
    });
  });
  const scale = logColourScale(values);
  const valueAt = (r, c) => (Number.isNaN(values[r * columns + c]) ? null : values[r * columns + c]);
  let peak = null;
  values.forEach((value, i) => {
    if (Number.isFinite(value) && (peak === null || value > values[peak])) peak = i;
  });
  const summary = `Heatmap of per-step shift: ${rows.length} rows (layers or blocks) × ${columns} steps, `
    + `log colour scale from ${formatNumber(scale.low)} to ${formatNumber(scale.high)}`
    + (peak === null ? '' : `; largest ${formatNumber(values[peak])} at ${rows[Math.floor(peak / columns)].name}, step ${steps[peak % columns]}`)
    + '. Arrow keys read the cells, Enter shows the row in the table.';
  const canvas = el('canvas', {class: 'heatmap', tabindex: '0', role: 'img', 'aria-label': summary,
    dataset: {rows: String(rows.length), columns: String(columns), cell: String(cell), rowHeight: String(rowHeight),
      labelWidth: String(labelWidth), axisHeight: String(axisHeight)}}, [summary]);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const box = el('div', {class: 'heatmap-box'}, [canvas, el('div', {class: 'heatmap-spacer', 'aria-hidden': 'true'})]);
  box.style.height = `${height}px`;
  box.style.maxWidth = '100%';
  box.style.width = `${width + 16}px`;
  box.lastChild.style.height = `${rows.length * rowHeight - rowsHeight}px`;
  const tip = el('div', {class: 'heatmap-tip', 'aria-hidden': 'true'});
  const wrap = el('div', {class: 'heatmap-wrap'}, [box, tip]);
  let cursor = null;  // {r, c}: the cell the keyboard or a click is on
  let hovered = null;
  const labels = new Map();
  let ratio = 0;
  let context = null;

  const label = (r) => {
    if (!labels.has(r)) {
      // Long names keep their end (the part that tells layers apart).
      let text = rows[r].name;
      const room = labelWidth - 10;
      if (context.measureText(text).width > room) {
        let low = 0;
        let high = text.length;
        while (low < high) {
          const middle = Math.floor((low + high) / 2);
          if (context.measureText(`…${text.slice(middle)}`).width <= room) high = middle; else low = middle + 1;
        }
        text = `…${text.slice(low)}`;
      }
      labels.set(r, text);
    }
    return labels.get(r);
  };

  const draw = () => {
    const dpr = window.devicePixelRatio || 1;
    if (dpr !== ratio) {
      ratio = dpr;
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
      context = canvas.getContext('2d');
      labels.clear();
    }
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    context.font = HEATMAP.font;
    context.fillStyle = '#ffffff';
    context.fillRect(0, 0, width, height);
    const top = box.scrollTop;
    const first = Math.max(0, Math.floor(top / rowHeight));
    const last = Math.min(rows.length - 1, Math.floor((top + rowsHeight - 1) / rowHeight));
    context.save();
    context.beginPath();
    context.rect(0, axisHeight, width, rowsHeight);
    context.clip();
    context.textAlign = 'end';
    context.textBaseline = 'middle';
    for (let r = first; r <= last; r++) {
      const y = axisHeight + r * rowHeight - top;
      context.fillStyle = '#424242';
      context.fillText(label(r), labelWidth - 6, y + rowHeight / 2);
      for (let c = 0; c < columns; c++) {
        context.fillStyle = scale.colour(valueAt(r, c));
        context.fillRect(labelWidth + c * cell, y, cell - 1, rowHeight - 1);
      }
    }
    for (const [mark, colour] of [[hovered, '#9e9e9e'], [cursor, '#212121']]) {
      if (!mark || mark.r < first || mark.r > last) continue;
      context.strokeStyle = colour;
      context.lineWidth = 2;
      context.strokeRect(labelWidth + mark.c * cell + 1, axisHeight + mark.r * rowHeight - top + 1, cell - 3, rowHeight - 3);
    }
    context.restore();
    context.fillStyle = '#424242';
    context.textBaseline = 'middle';
    context.textAlign = 'end';
    context.fillText('step', labelWidth - 6, axisHeight / 2);
    context.textAlign = 'center';
    for (const index of sampleIndices(columns, 8)) {
      context.fillText(String(steps[index]), labelWidth + index * cell + cell / 2, axisHeight / 2);
    }
    canvas.dataset.firstRow = String(first);
    canvas.dataset.lastRow = String(last);
    canvas.dataset.drawn = String(Number(canvas.dataset.drawn || 0) + 1);
  };
  let pending = false;
  const redraw = () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      draw();
    });
  };

  const cellAt = (event) => {
    const bounds = canvas.getBoundingClientRect();
    const x = event.clientX - bounds.left;
    const y = event.clientY - bounds.top - axisHeight;
    if (y < 0 || y >= rowsHeight) return null;
    const r = Math.floor((y + box.scrollTop) / rowHeight);
    if (r < 0 || r >= rows.length) return null;
    // Over the labels: the row's first cell.
    const c = x < labelWidth ? 0 : Math.floor((x - labelWidth) / cell);
    return c < columns ? {r, c} : null;
  };
  const describe = (at) => (at ? {row: rows[at.r], index: at.r, step: steps[at.c], value: valueAt(at.r, at.c)} : null);
  canvas.addEventListener('mousemove', (event) => {
    const at = cellAt(event);
    if ((at && hovered && at.r === hovered.r && at.c === hovered.c) || (!at && !hovered)) {
      if (at) placeTip(event);
      return;
    }
    hovered = at;
    canvas.style.cursor = at ? 'pointer' : '';
    if (at) {
      const cellInfo = describe(at);
      tip.textContent = `${cellInfo.row.name}, step ${cellInfo.step}: per-step shift ${formatNumber(cellInfo.value)}`;
      tip.style.display = 'block';
      placeTip(event);
    } else {
      tip.style.display = 'none';
    }
    if (on.hover) on.hover(describe(at));
    redraw();
  });
  const placeTip = (event) => {
    const bounds = wrap.getBoundingClientRect();
    tip.style.left = `${event.clientX - bounds.left + 12}px`;
    tip.style.top = `${event.clientY - bounds.top + 14}px`;
  };
  canvas.addEventListener('mouseleave', () => {
    hovered = null;
    tip.style.display = 'none';
    redraw();
  });
  const pick = (at) => {
    cursor = at;
    if (on.hover) on.hover(describe(at));
    if (on.select) on.select(rows[at.r], at.r);
    redraw();
  };
  canvas.addEventListener('click', (event) => {
    const at = cellAt(event);
    if (at) pick(at);
  });
  const reveal = (r) => {
    const top = r * rowHeight;
    if (top < box.scrollTop) box.scrollTop = top;
    else if (top + rowHeight > box.scrollTop + rowsHeight) box.scrollTop = top + rowHeight - rowsHeight;
  };
  const visibleRows = Math.max(1, Math.floor(rowsHeight / rowHeight));
  canvas.addEventListener('keydown', (event) => {
    if (!rows.length || !columns) return;
    const at = cursor || {r: Math.min(rows.length - 1, Math.floor(box.scrollTop / rowHeight)), c: 0};
    const moves = {ArrowDown: [1, 0], ArrowUp: [-1, 0], ArrowRight: [0, 1], ArrowLeft: [0, -1],
      PageDown: [visibleRows, 0], PageUp: [-visibleRows, 0], Home: [-rows.length, 0], End: [rows.length, 0]};
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      pick(at);
      return;
    }
    if (!moves[event.key]) return;
    event.preventDefault();
    const [dr, dc] = cursor ? moves[event.key] : [0, 0];
    cursor = {r: Math.max(0, Math.min(rows.length - 1, at.r + dr)), c: Math.max(0, Math.min(columns - 1, at.c + dc))};
    reveal(cursor.r);
    if (on.hover) on.hover(describe(cursor));
    redraw();
  });
  box.addEventListener('scroll', redraw, {passive: true});
  draw();
  wrap.scale = scale;
  wrap.canvas = canvas;
  wrap.viewState = () => ({scrollTop: box.scrollTop, cursor, focused: document.activeElement === canvas});
  wrap.restore = (state) => {
    if (!state) return;
    box.scrollTop = state.scrollTop;
    if (state.cursor && state.cursor.r < rows.length && state.cursor.c < columns) cursor = state.cursor;
    if (state.focused) canvas.focus({preventScroll: true});
    draw();
  };
  return wrap;
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
