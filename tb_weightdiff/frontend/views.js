// DOM building for the tab: controls, run sections (table + heatmap), the
// variable detail and the empty state. Views get data and callbacks; they
// fetch nothing and keep no state of their own.

import {el} from './dom.js';
import {heatmap, heatmapLegend, overlay, ridgeline, scoreChart, sparkline} from './charts.js';
import {formatNumber, groupLayers, groupShift, nameMatcher, resetText, validPattern, verdictLabel, visibleLayers} from './model.js';

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

/**
 * One run: its warnings, the layer table (rows expand to variables) and the heatmap.
 * @param {Object} run a run of the /verdicts answer
 * @param {Object} view {verdicts: worst first, verdictFilter, expanded: Set, selected: ?{run, tag}, sort,
 *   nameFilter, grouped, expandedGroups: Set}
 * @param {Object<string, function>} on handlers: toggleLayer(run, layer), toggleGroup(run, block),
 *   openVariable(run, tag), sortChanged(sort)
 */
export function runSection(run, view, on) {
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
  const table = el('table', {class: 'layers'});
  table.appendChild(el('thead', {}, [el('tr', {}, [
    el('th', {text: 'layer / variable'}), el('th', {text: 'verdict'}),
    el('th', {text: 'movement', title: 'relative change where WeightDiffCallback recorded a reference, else shift'}),
    el('th', {text: '× peers', title: "movement / the median movement of the run's other layers of its kind"}),
    el('th', {text: 'shift'}), el('th', {text: 'cosine dist.'}),
    el('th', {text: 'per-step shift'}),
    el('th', {text: 'settled at', title: 'the step after which its per-step shift stayed below a fraction of its peak'}),
    checked ? el('th', {class: `sortable${view.sort === 'reset' ? ' sorted' : ''}`, text: view.sort === 'reset' ? 'reset Δloss ▾' : 'reset Δloss',
      title: 'the loss increase with the layer put back to its initial weights, and the share of what training gained it undoes; click to sort',
      onclick: () => on.sortChanged(view.sort === 'reset' ? 'verdict' : 'reset')}) : null,
    el('th', {text: 'why'}),
  ])]));
  const body = el('tbody');
  const columns = checked ? 10 : 9;
  const groups = view.grouped ? groupLayers(layers) : layers.map((layer) => ({block: null, layers: [layer]}));
  const heatmapRows = [];
  const layerRows = (layer, inGroup) => {
    const key = `${run.run}\u0000${layer.name}`;
    const open = view.expanded.has(key);
    body.appendChild(el('tr', {class: `layer-row${inGroup ? ' in-group' : ''}`, dataset: {layer: layer.name, verdict: layer.verdict},
      onclick: () => on.toggleLayer(run.run, layer.name)}, [
      el('td', {class: 'name'}, [el('span', {class: 'toggle', text: open ? '▾ ' : '▸ '}), layer.name]),
      verdictCell(layer), ...scoreCells(layer), checked ? resetCell(layer.reset) : null, whyCell(layer),
    ]));
    heatmapRows.push(layer);
    if (!open) return;
    for (const variable of layer.variables) {
      const selected = view.selected && view.selected.run === run.run && view.selected.tag === variable.tag;
      body.appendChild(el('tr', {class: `variable-row${selected ? ' selected' : ''}`, dataset: {tag: variable.tag, verdict: variable.verdict},
        title: 'show this variable', onclick: () => on.openVariable(run.run, variable.tag)}, [
        el('td', {class: 'name variable-name', text: variable.name + (variable.trainable === false ? ' (not trainable)' : '')}),
        verdictCell(variable), ...scoreCells(variable), checked ? el('td') : null, whyCell(variable),
      ]));
    }
  };
  for (const group of groups) {
    if (group.block === null) {
      layerRows(group.layers[0], false);
      continue;
    }
    const key = `${run.run}\u0000${group.block}`;
    // A name filter that picks layers out of a block shows them.
    const open = view.expandedGroups.has(key) || Boolean(view.nameFilter);
    const worst = group.layers[0];
    const tally = view.verdicts.map((v) => [v, group.layers.filter((layer) => layer.verdict === v).length])
      .filter(([, n]) => n).map(([v, n]) => `${n} ${verdictLabel(v)}`).join(', ');
    const shift = groupShift(run.steps, group.layers);
    body.appendChild(el('tr', {class: 'group-row', dataset: {group: group.block, verdict: worst.verdict, layers: String(group.layers.length)},
      title: open ? 'collapse this block' : 'show the layers of this block', onclick: () => on.toggleGroup(run.run, group.block)}, [
      el('td', {class: 'name group-name'}, [el('span', {class: 'toggle', text: open ? '▾ ' : '▸ '}), `${group.block} `,
        el('span', {class: 'muted', text: `(${group.layers.length} layers)`})]),
      verdictCell(worst),
      el('td', {colspan: 4, class: 'group-counts', text: tally}),
      el('td', {}, [sparkline(shift)]),
      el('td'),
      checked ? el('td') : null,
      el('td', {class: 'reason', text: `worst: ${worst.name}: ${worst.reason}`}),
    ]));
    if (open) {
      for (const layer of group.layers) layerRows(layer, true);
    } else {
      heatmapRows.push({name: `${group.block} (${group.layers.length})`, steps: run.steps, per_step_shift: shift});
    }
  }
  if (!layers.length) {
    body.appendChild(el('tr', {}, [el('td', {colspan: columns, class: 'muted', text: 'No layer passes the filters.'})]));
  }
  table.appendChild(body);
  section.appendChild(table);
  if (layers.length && run.steps.length > 1) {
    const readout = el('div', {class: 'heatmap-readout', text: 'Hover a cell for its value.'});
    const map = heatmap(run, heatmapRows, (layer, step, value) => {
      readout.textContent = `${layer}, step ${step}: per-step shift ${formatNumber(value)}`;
    });
    section.appendChild(el('h3', {text: 'Per-step shift, layers × steps'}));
    section.appendChild(el('div', {class: 'heatmap-box'}, [map]));
    section.appendChild(heatmapLegend(map.scale));
    section.appendChild(readout);
  }
  return section;
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
