// DOM building for the tab: controls, run sections (table + heatmap), the
// variable detail and the empty state. Views get data and callbacks; they
// fetch nothing and keep no state of the tab's (a run's table keeps what its
// drawing needs: the row heights measured, the rows drawn, its scroll box).

import {el} from './dom.js';
import {heatmap, heatmapLegend, overlay, ridgeline, scoreChart, sparkline} from './charts.js';
import {formatNumber, nameMatcher, resetText, tableEntries, validPattern, verdictLabel, visibleLayers, visibleWindow} from './model.js';

/** A coloured verdict badge. */
export function badge(verdict) {
  return el('span', {class: `badge badge-${verdict}`, text: verdictLabel(verdict), dataset: {verdict}});
}

/**
 * The control bar. Built once; `update*` functions refresh its changing parts.
 * @param {Object} state holds `contract` (the ./contract answer: verdicts, thresholds)
 * @param {Object<string, function>} on handlers: runsChanged, filterChanged, nameFilterChanged, groupingChanged,
 *   thresholdsChanged, autoRefreshChanged, refreshNow, exportCsv, exportJson
 */
export function controls(state, on) {
  const nameFilter = el('input', {type: 'search', name: 'layer-filter', class: 'layer-filter', size: 28,
    placeholder: 'filter layers (regex)', value: state.nameFilter || '', 'aria-label': 'filter layers by name',
    title: 'a regular expression, case-insensitive, as in TensorBoard\'s tag filter',
    oninput: (event) => {
      event.target.classList.toggle('invalid', !validPattern(event.target.value));
      on.nameFilterChanged(event.target.value);
    }});
  nameFilter.classList.toggle('invalid', !validPattern(nameFilter.value));
  const runList = el('div', {class: 'run-list', role: 'group', 'aria-label': 'runs'});
  const filter = el('div', {class: 'verdict-filter', role: 'group', 'aria-label': 'verdicts'},
    state.contract.verdicts.map((verdict) => el('label', {class: 'chip'}, [
      el('input', {type: 'checkbox', name: 'verdict', value: verdict, checked: state.verdictFilter.has(verdict),
        onchange: (event) => on.filterChanged(verdict, event.target.checked)}),
      badge(verdict),
    ])));
  const thresholdInputs = state.contract.thresholds.map((threshold) => el('label', {class: 'threshold', title: threshold.help}, [
    `${threshold.label} `,
    el('input', {type: 'number', min: '0', step: 'any', name: threshold.name, size: 8,
      placeholder: 'default',
      value: state.thresholds[threshold.name] || ''}),
  ]));
  const thresholdForm = el('form', {class: 'thresholds', onsubmit: (event) => {
    event.preventDefault();
    const values = {};
    for (const input of thresholdForm.querySelectorAll('input')) values[input.name] = input.value.trim();
    on.thresholdsChanged(values);
  }}, [...thresholdInputs, el('button', {type: 'submit', text: 'Apply'}),
    el('button', {type: 'button', text: 'Defaults', onclick: () => {
      for (const input of thresholdForm.querySelectorAll('input')) input.value = '';
      on.thresholdsChanged({});
    }})]);
  const updated = el('span', {class: 'updated', 'aria-live': 'polite'});
  const interval = el('select', {name: 'interval', onchange: (event) => on.autoRefreshChanged(autoRefresh.checked, Number(event.target.value))},
    [5, 15, 30, 60].map((seconds) => el('option', {value: String(seconds * 1000), text: `${seconds} s`, selected: seconds * 1000 === state.intervalMs})));
  const autoRefresh = el('input', {type: 'checkbox', name: 'auto-refresh', checked: state.autoRefresh,
    onchange: (event) => on.autoRefreshChanged(event.target.checked, Number(interval.value))});
  const bar = el('div', {class: 'controls'}, [
    el('div', {class: 'control-group'}, [el('span', {class: 'control-title', text: 'Runs'}), runList]),
    el('div', {class: 'control-group'}, [el('span', {class: 'control-title', text: 'Verdicts'}), filter]),
    el('div', {class: 'control-group'}, [el('span', {class: 'control-title', text: 'Layers'}), nameFilter,
      el('label', {class: 'chip', title: 'layers whose names share a numbered block (model.layers.17, layer2.0) as one row each, expandable'}, [
        el('input', {type: 'checkbox', name: 'group-blocks', checked: state.groupBlocks,
          onchange: (event) => on.groupingChanged(event.target.checked)}), ' group by block']),
    ]),
    el('div', {class: 'control-group'}, [el('span', {class: 'control-title', text: 'Thresholds'}), thresholdForm]),
    el('div', {class: 'control-group'}, [
      el('label', {}, [autoRefresh, ' auto-refresh every ']), interval,
      el('button', {type: 'button', text: 'Refresh now', onclick: on.refreshNow}), updated,
      el('button', {type: 'button', class: 'export-csv', text: 'Export CSV', onclick: on.exportCsv}),
      el('button', {type: 'button', class: 'export-json', text: 'Export JSON', onclick: on.exportJson}),
    ]),
  ]);
  bar.updateRuns = (runs, deselected) => {
    runList.replaceChildren(...runs.map((run) => el('label', {class: 'chip'}, [
      el('input', {type: 'checkbox', name: 'run', value: run, checked: !deselected.has(run),
        onchange: (event) => on.runsChanged(run, event.target.checked)}),
      ` ${run}`,
    ])));
  };
  bar.updateDefaults = (thresholds) => {
    for (const input of thresholdForm.querySelectorAll('input')) {
      if (thresholds[input.name] !== undefined) input.placeholder = String(thresholds[input.name]);
    }
  };
  bar.updateTime = (date, error) => {
    updated.textContent = error ? `update failed: ${error}` : `last updated ${date.toLocaleTimeString()}`;
    updated.classList.toggle('error', Boolean(error));
  };
  return bar;
}

function verdictCell(entry) {
  const margin = entry.margin === null || entry.margin === undefined ? '' : `${formatNumber(entry.margin)} decades from flipping`;
  return el('td', {class: 'verdict', title: margin}, [badge(entry.verdict)]);
}

function scoreCells(entry) {
  const movementTitle = entry.movement_kind === 'relative_change' ? '||W - W0|| / ||W0||' : 'shift from the baseline, in baseline std';
  return [
    el('td', {class: 'number', title: movementTitle, text: formatNumber(entry.movement)}),
    el('td', {class: 'number', title: entry.peer_group ? `peers: ${entry.peer_group}` : '', text: formatNumber(entry.ratio_to_median)}),
    el('td', {class: 'number', text: formatNumber(entry.shift)}),
    el('td', {class: 'number', text: formatNumber(entry.cosine_distance)}),
    el('td', {}, [sparkline(entry.per_step_shift || [])]),
    el('td', {class: 'number settled', text: entry.settled_step === null || entry.settled_step === undefined ? '—' : String(entry.settled_step)}),
  ];
}

/** Why: the reason, for a flagged verdict what usually causes it, and what a telling reset check means. */
function whyCell(entry) {
  return el('td', {class: 'reason'}, [entry.reason, entry.hint ? el('div', {class: 'hint', text: entry.hint}) : null,
    entry.reset_note ? el('div', {class: 'reset-note', text: entry.reset_note}) : null]);
}

/** The reset check's cell of a layer: loss increase with the layer reset, share undone, impact. */
function resetCell(reset) {
  if (!reset) return el('td', {class: 'number reset', text: '—'});
  const metrics = Object.entries(reset.metrics || {}).map(([name, m]) => `${name} ${formatNumber(m.trained)} → ${formatNumber(m.reset)}`);
  const title = [`loss ${formatNumber(reset.loss)} as trained → ${formatNumber(reset.loss_reset)} with ${reset.block ? 'the block' : 'the layer'} `
    + `reset (${formatNumber(reset.loss_initial)} before training), step ${reset.step}`, ...metrics].join('; ');
  return el('td', {class: `number reset${reset.impact ? ` impact-${reset.impact}` : ''}`, title, dataset: {impact: reset.impact || ''}},
    [resetText(reset), reset.impact ? el('span', {class: 'impact', text: ` ${reset.impact}`}) : null]);
}

// The layer table draws only the rows near its viewport: a run of 2,000 layers
// keeps ~60 rows in the DOM, and spacer rows above and below them give the
// scroll box the height of all of them (measured rows count as measured, the
// others as the mean of those).
const TABLE_MAX_HEIGHT = 560;  // px, as in style.css
const OVERSCAN = 320;  // px drawn above and below the viewport
const ESTIMATED_ROW = 30;  // px, until rows are measured

/**
 * A virtualised table body: the entries near `scroller`'s viewport as rows, made by `make(entry)` and kept
 * (a row that stays in view is the same element: focus and hover survive scrolling).
 * @return {{render: function(boolean=), reveal: function(string, boolean=), rowOf: function(string): ?HTMLElement,
 *   indexOf: function(string): number, entries: Array<Object>}}
 */
function virtualBody(scroller, body, entries, make, columns, seed = null) {
  const heights = new Map();  // key -> measured px
  const means = new Map();  // kind of row -> [rows measured, their total height]
  const count = (kind, h, n = 1) => {
    const [rows_, total] = means.get(kind) || [0, 0];
    means.set(kind, [rows_ + n, total + h]);
  };
  // The heights a previous drawing measured: a redraw restores its scroll position over the same heights.
  for (const entry of entries) {
    const h = seed && seed.get(entry.key);
    if (!h) continue;
    heights.set(entry.key, h);
    count(entry.kind, h);
  }
  const rows = new Map();  // key -> its row, while drawn
  const index = new Map(entries.map((entry, i) => [entry.key, i]));
  const spacer = () => {
    const td = el('td', {colspan: columns});
    return el('tr', {class: 'spacer', 'aria-hidden': 'true'}, [td]);
  };
  const above = spacer();
  const below = spacer();
  let shown = null;
  // A row not measured yet counts as the mean of its kind (blocks, layers and variables differ).
  const estimate = (kind) => {
    const mean = means.get(kind) || [...means.values()].reduce((sum, [n, total]) => [sum[0] + n, sum[1] + total], [0, 0]);
    return mean[0] ? mean[1] / mean[0] : ESTIMATED_ROW;
  };
  const heightOf = (i) => heights.get(entries[i].key) ?? estimate(entries[i].kind);
  const render = (force = false) => {
    const viewport = scroller.clientHeight || TABLE_MAX_HEIGHT;
    const head = body.previousSibling ? body.previousSibling.offsetHeight || 0 : 0;
    const top = Math.max(0, scroller.scrollTop - head);
    const window_ = visibleWindow(entries.length, heightOf, top, viewport, OVERSCAN);
    if (!force && shown && shown.first === window_.first && shown.last === window_.last) return;
    shown = window_;
    const wanted = [];
    for (let i = window_.first; i <= window_.last; i++) {
      const entry = entries[i];
      if (!rows.has(entry.key)) rows.set(entry.key, make(entry));
      wanted.push(rows.get(entry.key));
    }
    const keep = new Set(wanted);
    for (const [key, row] of rows) {
      if (!keep.has(row)) {
        row.remove();
        rows.delete(key);
      }
    }
    above.firstChild.style.height = `${window_.before}px`;
    below.firstChild.style.height = `${window_.after}px`;
    // Rows that stay keep their place (moving a focused row would blur it): insert only the new ones.
    const order = [above, ...wanted, below];
    for (let i = 0; i < order.length; i++) {
      if (body.children[i] !== order[i]) body.insertBefore(order[i], body.children[i] || null);
    }
    // Measure what is drawn (when laid out); the spacers follow the measurements at the next render.
    if (scroller.isConnected) {
      let changed = false;
      for (let i = window_.first; i <= window_.last; i++) {
        const key = entries[i].key;
        const h = rows.get(key).offsetHeight;
        if (!h) continue;
        const old = heights.get(key);
        if (old === h) continue;
        if (old === undefined) count(entries[i].kind, h); else count(entries[i].kind, h - old, 0);
        heights.set(key, h);
        changed = true;
      }
      if (changed) {
        const sized = visibleWindow(entries.length, heightOf, top, viewport, OVERSCAN);
        above.firstChild.style.height = `${sized.before}px`;
        below.firstChild.style.height = `${sized.after}px`;
      }
    }
  };
  /** Scrolls the entry of `key` into the box's view (and the page's with `page`). */
  const reveal = (key, page = false) => {
    const i = index.get(key);
    if (i === undefined) return null;
    let y = body.previousSibling ? body.previousSibling.offsetHeight || 0 : 0;
    for (let j = 0; j < i; j++) y += heightOf(j);
    const h = heightOf(i);
    const head = body.previousSibling ? body.previousSibling.offsetHeight || 0 : 0;
    if (y - head < scroller.scrollTop) scroller.scrollTop = y - head;
    else if (y + h > scroller.scrollTop + scroller.clientHeight) scroller.scrollTop = y + h - scroller.clientHeight;
    render(true);
    const row = rows.get(key) || null;
    if (row && page) row.scrollIntoView({block: 'nearest'});
    return row;
  };
  let pending = false;
  scroller.addEventListener('scroll', () => {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      render();
    });
  }, {passive: true});
  render(true);
  return {render, reveal, rowOf: (key) => rows.get(key) || null, indexOf: (key) => index.get(key) ?? -1, entries,
    heights: () => heights};
}

/**
 * One run: its warnings, the layer table (rows expand to variables; drawn near its viewport only) and the
 * heatmap (a canvas, drawn likewise).
 * @param {Object} run a run of the /verdicts answer
 * @param {Object} view {verdicts: worst first, verdictFilter, expanded: Set, selected: ?{run, tag}, sort,
 *   nameFilter, grouped, expandedGroups: Set}
 * @param {Object<string, function>} on handlers: toggleLayer(run, layer), toggleGroup(run, block),
 *   openVariable(run, tag), sortChanged(sort)
 * @param {?Object} previous the `.viewState()` of the section this one replaces, if any
 * @return {HTMLElement} the section; `.viewState()` (scroll positions, row heights, focused and current
 *   rows) and `.restore(state)` carry what the user did across a redraw, once the section is in the page
 */
export function runSection(run, view, on, previous = null) {
  const checked = Boolean(run.reset_check);
  const layers = visibleLayers(run, view.verdictFilter, checked ? view.sort : 'verdict', nameMatcher(view.nameFilter));
  const check = run.reset_check;
  const counts = view.verdicts.filter((v) => run.verdict_counts && run.verdict_counts[v]).map((v) => `${run.verdict_counts[v]} ${verdictLabel(v)}`);
  const section = el('section', {class: 'run', dataset: {run: run.run}}, [
    el('h2', {}, [el('span', {class: 'run-name', text: run.run}),
      el('span', {class: 'source', text: run.source === 'tb_weightdiff' ? 'tb_weightdiff summaries' : 'plain histograms'})]),
    el('p', {class: 'run-summary', text: `${run.steps.length} logged steps (baseline ${run.baseline_step}); layers: ${counts.join(', ') || 'none'}`
      + (layers.length < run.layers.length ? `; showing ${layers.length} of ${run.layers.length}` : '')}),
    checked ? el('p', {class: 'reset-summary', text: `Reset check at step ${check.step}: loss ${formatNumber(check.loss)} as trained, `
      + `${formatNumber(check.loss_initial)} with every layer back at its initial weights; ${check.batches} batches (${check.examples} examples), `
      + `${check.seconds_per_group === null ? 'no layer evaluated' : `${formatNumber(check.seconds_per_group)} s per layer`}. `
      + 'Robust: resetting it undoes little of what training gained; critical: most of it.'}) : null,
    (run.findings || []).length ? el('ul', {class: 'findings'}, run.findings.map((finding) => el('li', {text: finding.message, dataset: {kind: finding.kind}}))) : null,
    run.warnings.length ? el('ul', {class: 'warnings'}, run.warnings.map((warning) => el('li', {text: warning}))) : null,
  ]);
  const columns = checked ? 10 : 9;
  const {entries, heatmapRows} = tableEntries(run, layers, view);
  const table = el('table', {class: 'layers', 'aria-rowcount': String(entries.length + 1)});
  table.appendChild(el('colgroup', {}, [
    el('col', {class: 'col-name'}), el('col', {class: 'col-verdict'}), el('col', {class: 'col-number'}), el('col', {class: 'col-number'}),
    el('col', {class: 'col-number'}), el('col', {class: 'col-number'}), el('col', {class: 'col-sparkline'}), el('col', {class: 'col-number'}),
    checked ? el('col', {class: 'col-reset'}) : null, el('col', {class: 'col-why'}),
  ]));
  table.appendChild(el('thead', {}, [el('tr', {'aria-rowindex': '1'}, [
    el('th', {text: 'layer / variable'}), el('th', {text: 'verdict'}),
    el('th', {text: 'movement', title: 'relative change where WeightDiffCallback recorded a reference, else shift'}),
    el('th', {text: '× peers', title: "movement / the median movement of the run's other layers of its kind"}),
    el('th', {text: 'shift'}), el('th', {text: 'cosine dist.'}),
    el('th', {text: 'per-step shift'}),
    el('th', {text: 'settled at', title: 'the step after which its per-step shift stayed below a fraction of its peak'}),
    checked ? el('th', {class: `sortable${view.sort === 'reset' ? ' sorted' : ''}`, text: view.sort === 'reset' ? 'reset Δloss ▾' : 'reset Δloss',
      tabindex: '0', onclick: () => on.sortChanged(view.sort === 'reset' ? 'verdict' : 'reset'),
      onkeydown: (event) => activateOnKey(event, () => on.sortChanged(view.sort === 'reset' ? 'verdict' : 'reset')),
      title: 'the loss increase with the layer put back to its initial weights, and the share of what training gained it undoes; click to sort'}) : null,
    el('th', {text: 'why'}),
  ])]));
  const body = el('tbody');
  table.appendChild(body);
  const scroller = el('div', {class: 'table-scroll'}, [table]);
  section.appendChild(scroller);
  let current = null;  // the key of the row the heatmap picked
  let tableView = null;
  const activate = (entry) => {
    if (entry.kind === 'group') on.toggleGroup(run.run, entry.block);
    else if (entry.kind === 'layer') on.toggleLayer(run.run, entry.layer.name);
    else if (entry.kind === 'variable') on.openVariable(run.run, entry.variable.tag);
  };
  const keys = (entry, event) => {
    if (activateOnKey(event, () => activate(entry))) return;
    const step = {ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10, Home: -entries.length, End: entries.length}[event.key];
    if (!step) return;
    event.preventDefault();
    const i = Math.max(0, Math.min(entries.length - 1, tableView.indexOf(entry.key) + step));
    const row = tableView.reveal(entries[i].key);
    if (row) row.focus({preventScroll: true});
  };
  const position = new Map(entries.map((entry, i) => [entry.key, i]));
  const make = (entry) => {
    const row = entryRow(run, entry, checked);
    row.tabIndex = 0;
    row.setAttribute('aria-rowindex', String(position.get(entry.key) + 2));
    row.dataset.key = entry.key;
    if (entry.key === current) row.classList.add('current');
    row.addEventListener('click', () => activate(entry));
    row.addEventListener('keydown', (event) => keys(entry, event));
    return row;
  };
  if (!entries.length) {
    body.appendChild(el('tr', {}, [el('td', {colspan: columns, class: 'muted', text: 'No layer passes the filters.'})]));
  } else {
    tableView = virtualBody(scroller, body, entries, make, columns, previous && previous.heights);
  }
  const markCurrent = (key) => {
    if (current && tableView && tableView.rowOf(current)) tableView.rowOf(current).classList.remove('current');
    current = key;
    const row = key && tableView ? tableView.reveal(key, true) : null;
    if (row) row.classList.add('current');
  };
  let map = null;
  if (layers.length && run.steps.length > 1) {
    const readout = el('div', {class: 'heatmap-readout', 'aria-live': 'polite', text: 'Hover a cell for its value; click it to find its row.'});
    map = heatmap(run, heatmapRows, {
      hover: (cell) => {
        if (cell) readout.textContent = `${cell.row.name}, step ${cell.step}: per-step shift ${formatNumber(cell.value)}`;
      },
      select: (row) => markCurrent(row.key),
    });
    section.appendChild(el('h3', {text: 'Per-step shift, layers × steps'}));
    section.appendChild(map);
    section.appendChild(heatmapLegend(map.scale));
    section.appendChild(readout);
  }
  section.viewState = () => {
    const focused = document.activeElement && body.contains(document.activeElement) && document.activeElement.dataset
      ? document.activeElement.dataset.key : null;
    return {scrollTop: scroller.scrollTop, focused, current, heights: tableView ? tableView.heights() : null,
      heatmap: map ? map.viewState() : null};
  };
  section.restore = (state) => {
    if (tableView) {
      tableView.render(true);
      if (state) {
        scroller.scrollTop = state.scrollTop;
        tableView.render(true);
      }
      if (state && state.current && tableView.indexOf(state.current) >= 0) {
        current = state.current;
        const row = tableView.rowOf(current);
        if (row) row.classList.add('current');
      }
      if (state && state.focused && tableView.indexOf(state.focused) >= 0) {
        const row = tableView.rowOf(state.focused) || tableView.reveal(state.focused);
        if (row) row.focus({preventScroll: true});
      }
    }
    if (map && state) map.restore(state.heatmap);
  };
  return section;
}

/** Runs `action` on Enter or Space (a focused row or header acting as a button); true when it did. */
function activateOnKey(event, action) {
  if (event.key !== 'Enter' && event.key !== ' ') return false;
  event.preventDefault();
  action();
  return true;
}

/** One row of the layer table: a block, a layer or a variable. */
function entryRow(run, entry, checked) {
  if (entry.kind === 'group') {
    const {worst, open} = entry;
    return el('tr', {class: 'group-row', dataset: {group: entry.block, verdict: worst.verdict, layers: String(entry.layers.length)},
      'aria-expanded': String(open), title: open ? 'collapse this block' : 'show the layers of this block'}, [
      el('td', {class: 'name group-name'}, [el('span', {class: 'toggle', text: open ? '▾ ' : '▸ '}), `${entry.block} `,
        el('span', {class: 'muted', text: `(${entry.layers.length} layers)`})]),
      verdictCell(worst),
      el('td', {colspan: 4, class: 'group-counts', text: entry.tally}),
      el('td', {}, [sparkline(entry.shift)]),
      el('td'),
      checked ? el('td') : null,
      el('td', {class: 'reason', text: `worst: ${worst.name}: ${worst.reason}`}),
    ]);
  }
  if (entry.kind === 'layer') {
    const {layer, open} = entry;
    return el('tr', {class: `layer-row${entry.inGroup ? ' in-group' : ''}`, dataset: {layer: layer.name, verdict: layer.verdict},
      'aria-expanded': String(open)}, [
      el('td', {class: 'name'}, [el('span', {class: 'toggle', text: open ? '▾ ' : '▸ '}), layer.name]),
      verdictCell(layer), ...scoreCells(layer), checked ? resetCell(layer.reset) : null, whyCell(layer),
    ]);
  }
  const {variable} = entry;
  return el('tr', {class: `variable-row${entry.selected ? ' selected' : ''}`, dataset: {tag: variable.tag, verdict: variable.verdict},
    title: 'show this variable', 'aria-selected': String(entry.selected)}, [
    el('td', {class: 'name variable-name', text: variable.name + (variable.trainable === false ? ' (not trainable)' : '')}),
    verdictCell(variable), ...scoreCells(variable), checked ? el('td') : null, whyCell(variable),
  ]);
}

/**
 * The detail of one variable: A/B overlay with sliders, ridgeline, scores over steps.
 * @param {Object} detail the /variable answer
 * @param {{a: number, b: number, comparison: ?Object}} selection indices into detail.steps
 * @param {Object<string, function>} on handlers: select(a, b), close(), exportCsv(), exportJson(),
 *   compareRunChanged(run or null)
 * @param {{runs: string[], run: ?string, detail: ?Object}} other the other runs that logged this tag,
 *   and the one step B is taken from (its /variable answer), if any
 */
export function detailPanel(detail, selection, on, other = {runs: [], run: null, detail: null}) {
  const steps = detail.steps;
  const across = Boolean(other.run && other.detail);
  const stepsB = across ? other.detail.steps : steps;
  const histogramsB = across ? other.detail.histograms : detail.histograms;
  const scores = detail.scores || {};
  const slider = (name, index, count) => el('input', {type: 'range', min: '0', max: String(count - 1), step: '1', value: String(index), name,
    'aria-label': `step ${name.toUpperCase()}`,
    oninput: (event) => {
      const value = Number(event.target.value);
      on.select(name === 'a' ? value : selection.a, name === 'b' ? value : selection.b);
    }});
  const comparison = selection.comparison;
  const current = comparison && comparison.a === steps[selection.a] && comparison.b === stepsB[selection.b]
    && comparison.run_b === (across ? other.run : detail.run) ? comparison : null;
  // B from another run that logged the same tag (tensorboard#6206): run A step i against run B step j.
  const runPicker = other.runs.length ? el('label', {class: 'run-b'}, ['B from run ',
    el('select', {name: 'run-b', onchange: (event) => on.compareRunChanged(event.target.value || null)}, [
      el('option', {value: '', text: `${detail.run} (this run)`, selected: !across}),
      ...other.runs.map((run) => el('option', {value: run, text: run, selected: across && run === other.run})),
    ])]) : null;
  const panel = el('section', {class: 'detail', dataset: {run: detail.run, tag: detail.tag, runB: across ? other.run : detail.run}}, [
    el('div', {class: 'detail-head'}, [
      el('h2', {}, [el('span', {text: detail.tag}), el('span', {class: 'muted', text: `  in run ${detail.run}`})]),
      el('div', {}, [
        el('button', {type: 'button', class: 'export-variable-csv', text: 'Export CSV',
          title: 'histograms, quantiles and statistics of every logged step, one value a row', onclick: on.exportCsv}),
        el('button', {type: 'button', class: 'export-variable-json', text: 'Export JSON', onclick: on.exportJson}),
        el('button', {type: 'button', class: 'close', text: 'Close', onclick: on.close}),
      ]),
    ]),
    el('p', {}, [scores.verdict ? badge(scores.verdict) : null, ' ', scores.reason || '']),
    scores.hint ? el('p', {class: 'hint', text: scores.hint}) : null,
    ...detail.caveats.map((caveat) => el('p', {class: 'caveat', text: caveat})),
    el('div', {class: 'sliders'}, [
      el('label', {class: 'slider-a'}, ['A ', slider('a', selection.a, steps.length), el('span', {class: 'step-a', text: ` step ${steps[selection.a]}`})]),
      el('label', {class: 'slider-b'}, ['B ', slider('b', selection.b, stepsB.length),
        el('span', {class: 'step-b', text: ` step ${stepsB[selection.b]}${across ? ` of run ${other.run}` : ''}`})]),
      runPicker,
    ]),
    el('p', {class: 'comparison', text: comparisonText(current)}),
    el('div', {class: 'detail-charts'}, [
      el('div', {}, [el('h3', {text: 'Histograms at A and B'}), overlay(detail.histograms[selection.a], histogramsB[selection.b],
        {stepA: steps[selection.a], stepB: stepsB[selection.b], runB: across ? other.run : null})]),
      el('div', {}, [el('h3', {text: `All logged steps of run ${detail.run}`}), ridgeline(steps, detail.histograms,
        {stepA: steps[selection.a], stepB: across ? null : steps[selection.b]})]),
    ]),
    el('h3', {text: 'Scores over steps'}),
    el('div', {class: 'score-charts'}, [
      scoreChart('shift from the baseline (std)', steps, scores.shift_from_baseline || []),
      scoreChart('per-step shift (std)', steps, scores.per_step_shift || []),
      detail.source === 'tb_weightdiff' ? scoreChart('relative change ||W-W0||/||W0||', steps, scores.relative_change_by_step || []) : null,
      detail.source === 'tb_weightdiff' ? scoreChart('cosine distance 1-cos(W,W0)', steps, scores.cosine_distance_by_step || []) : null,
    ]),
  ]);
  return panel;
}

const SCALE_BASES = {
  baseline_std: "its baseline's std",
  layer_baseline_std: "its layer's baseline std",
  last_std: "its last std",
  rms: 'its RMS',
};

/**
 * The A/B readout: W1 between the two steps, and the shift in the scale the
 * variable's table row uses (so baseline against last reads as the row's shift).
 * @param {?Object} comparison the /compare answer, or null while it loads
 * @return {string}
 */
export function comparisonText(comparison) {
  if (!comparison) return 'Wasserstein-1 between A and B: …';
  const unit = SCALE_BASES[comparison.scale_basis] || 'its scale';
  return `Wasserstein-1 between A and B: ${formatNumber(comparison.w1)} (${formatNumber(comparison.shift)} × ${unit})`;
}

/** Shown when no run holds weight data: the lines of code that produce it. */
export function emptyState() {
  return el('section', {class: 'empty'}, [
    el('h2', {text: 'No weight data yet'}),
    el('p', {text: 'The Weight Diff tab reads weight summaries and weight histograms. Produce them with one of:'}),
    el('h3', {text: 'Keras'}),
    el('pre', {text: 'from tb_weightdiff.keras import WeightDiffCallback\nmodel.fit(x, y, epochs=10, callbacks=[WeightDiffCallback("logs/run1")])'}),
    el('h3', {text: 'A custom TensorFlow loop'}),
    el('pre', {text: 'import tb_weightdiff.summary as wd\nwith tf.summary.create_file_writer("logs/run1").as_default():\n    wd.weights("encoder/dense/kernel", kernel, step=epoch, reference=initial_kernel)'}),
    el('h3', {text: 'Without TensorFlow (PyTorch, JAX, numpy)'}),
    el('pre', {text: 'from tb_weightdiff.summary import weights_pb\nwriter.add_event(Event(step=epoch, summary=weights_pb("fc1/weight", w, reference=w0)))'}),
    el('p', {text: 'Existing keras.callbacks.TensorBoard(histogram_freq=1) logs work too. This page refreshes by itself.'}),
  ]);
}
