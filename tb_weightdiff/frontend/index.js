// The Weight Diff tab. TensorBoard loads this ES module into an iframe and
// calls render(). Data fetching and state live here and in ./model.js; DOM
// building in ./views.js and ./charts.js. Every module and the stylesheet are
// served from the plugin's one static root, beside this one. The iframe is
// out of reach of TensorBoard's reload button, so the tab refreshes itself.

import {el} from './dom.js';
import {fetchJson, fetchText, latestOnly, query} from './model.js';
import {comparisonText, controls, detailPanel, emptyState, runSection} from './views.js';

const DEFAULT_INTERVAL_MS = 15000;

class WeightDiffTab {
  /**
   * @param {HTMLElement} root
   * @param {{verdicts: Array<string>, thresholds: Array<Object>}} contract the ./contract answer
   */
  constructor(root, contract) {
    this.root = root;
    this.state = {
      contract,
      runs: [],
      deselected: new Set(),
      verdictFilter: new Set(contract.verdicts),
      thresholds: {},
      result: null,
      expanded: new Set(),
      expandedGroups: new Set(),
      groupBlocks: true,  // layers grouped by block (model.layers.17, layer2.0) where their names have blocks
      sort: 'verdict',  // or 'reset': by the loss a layer's reset costs
      nameFilter: nameFilterFromHash(window.location.hash),  // kept in the tab's URL hash
      selected: null,  // {run, tag}
      detail: null,
      selection: null,  // {a, b, comparison}: a into detail.steps, b into detailB's (or detail's) steps
      listing: null,  // the ./runs answer: which runs logged which tags
      compareRun: null,  // step B from this run instead (the cross-run overlay)
      detailB: null,  // its ./variable answer
      autoRefresh: true,
      intervalMs: DEFAULT_INTERVAL_MS,
    };
    this.fetchVerdicts = latestOnly((route, pending = null) => pending || fetchText(route));
    this.resultText = null;  // the last /verdicts answer drawn: an equal answer redraws nothing
    this.sections = new Map();  // run -> its drawn section
    this.signatures = new Map();  // run -> its JSON as drawn: a new answer redraws only the runs that changed
    this.fetchDetail = latestOnly((route) => fetchJson(route));
    this.fetchComparison = latestOnly((route) => fetchJson(route));
    this.bar = controls(this.state, {
      runsChanged: (run, checked) => {
        if (checked) this.state.deselected.delete(run); else this.state.deselected.add(run);
        this.refresh();
      },
      groupingChanged: (grouped) => {
        this.state.groupBlocks = grouped;
        this.drawRuns();
      },
      nameFilterChanged: (pattern) => {
        this.state.nameFilter = pattern;
        const hash = pattern ? `#layers=${encodeURIComponent(pattern)}` : '';
        window.history.replaceState(null, '', window.location.pathname + window.location.search + hash);
        this.drawRuns();
      },
      filterChanged: (verdict, checked) => {
        if (checked) this.state.verdictFilter.add(verdict); else this.state.verdictFilter.delete(verdict);
        this.drawRuns();
      },
      thresholdsChanged: (values) => {
        this.state.thresholds = values;
        this.refresh();
      },
      autoRefreshChanged: (enabled, intervalMs) => {
        this.state.autoRefresh = enabled;
        this.state.intervalMs = intervalMs;
        this.schedule();
      },
      refreshNow: () => this.refresh(),
      exportCsv: () => this.exportCsv(),
      exportJson: () => this.download('weightdiff-verdicts.json', 'application/json', JSON.stringify(this.state.result || {runs: []}, null, 2)),
    });
    this.message = el('div', {class: 'message', role: 'status'});
    this.runsBox = el('div', {class: 'runs'});
    this.detailBox = el('div', {class: 'detail-box'});
    root.replaceChildren(
      el('header', {}, [el('h1', {text: 'Which layers learned?'}), this.bar]),
      this.message, this.detailBox, this.runsBox);
    this.timer = null;
  }

  thresholdParameters() {
    const parameters = {};
    for (const [name, value] of Object.entries(this.state.thresholds)) {
      if (value !== '') parameters[name] = value;
    }
    return parameters;
  }

  selectedRuns() {
    const chosen = this.state.runs.filter((run) => !this.state.deselected.has(run));
    // One call serves the whole logdir when nothing is deselected.
    return chosen.length === this.state.runs.length ? [] : chosen;
  }

  /**
   * Fetches the listing and the verdicts and draws what changed.
   * @param {?{runs: Promise, verdicts: Promise}} early the first refresh's answers, asked for while the
   *   contract loaded (the whole logdir with the default thresholds)
   */
  async refresh(early = null) {
    try {
      const listing = await (early ? early.runs : fetchJson('./runs'));
      this.state.listing = listing;
      this.state.runs = [...new Set(listing.runs.map((entry) => entry.run))].sort();
      this.bar.updateRuns(this.state.runs, this.state.deselected);
      if (!this.state.runs.length) {
        this.state.result = {runs: []};
        this.message.replaceChildren();
        this.sections.clear();
        this.runsBox.replaceChildren(emptyState());
        this.bar.updateTime(new Date());
        return;
      }
      const chosen = this.selectedRuns();
      if (this.state.runs.length && chosen.length === 0 && this.state.deselected.size >= this.state.runs.length) {
        this.state.result = {runs: []};
        this.sections.clear();
        this.runsBox.replaceChildren(el('p', {class: 'muted', text: 'No run selected.'}));
        this.bar.updateTime(new Date());
        return;
      }
      const parameters = this.thresholdParameters();
      const whole = early && !chosen.length && !Object.keys(parameters).length;
      const text = await this.fetchVerdicts('./verdicts' + query({run: chosen, ...parameters}), whole ? early.verdicts : null);
      if (text === undefined) return;  // a newer refresh is under way
      if (text === this.resultText && this.state.result && this.state.result.runs.length) {
        // Nothing changed since the last poll: keep the page as it is (scroll, hover, open rows).
        this.message.replaceChildren();
        this.bar.updateTime(new Date());
        return;
      }
      const result = JSON.parse(text);
      // Only the runs whose verdicts changed are drawn again (scroll positions and open rows stay).
      const changed = this.state.result && this.state.result.runs && this.sections.size ? this.changedRuns(result) : null;
      this.resultText = text;
      this.state.result = result;
      this.signatures = new Map();
      if (!Object.keys(this.state.thresholds).length && result.thresholds) this.bar.updateDefaults(result.thresholds);
      this.message.replaceChildren();
      this.drawRuns(changed);
      this.rememberRuns(result);
      if (this.state.selected) await this.loadDetail(false);
      this.bar.updateTime(new Date());
    } catch (error) {
      this.message.replaceChildren(el('p', {class: 'error', text: `Could not load verdicts: ${error.message}`}));
      this.bar.updateTime(new Date(), error.message);
    } finally {
      this.schedule();
    }
  }

  schedule() {
    clearTimeout(this.timer);
    if (this.state.autoRefresh) this.timer = setTimeout(() => this.refresh(), this.state.intervalMs);
  }

  /**
   * Draws the run sections. `only`: the names of the runs to redraw (the others keep their section as it
   * is); null redraws every run. A redrawn section keeps the scroll positions, the focused row and the
   * heatmap's cursor of the one it replaces.
   */
  drawRuns(only = null) {
    const result = this.state.result;
    if (!result) return;
    const view = {verdicts: this.state.contract.verdicts, verdictFilter: this.state.verdictFilter, expanded: this.state.expanded,
      selected: this.state.selected, sort: this.state.sort, nameFilter: this.state.nameFilter,
      grouped: this.state.groupBlocks, expandedGroups: this.state.expandedGroups};
    const handlers = {
      toggleGroup: (run, block) => {
        const key = `${run}\u0000${block}`;
        if (this.state.expandedGroups.has(key)) this.state.expandedGroups.delete(key); else this.state.expandedGroups.add(key);
        this.drawRuns(new Set([run]));
      },
      sortChanged: (sort) => {
        this.state.sort = sort;
        this.drawRuns();
      },
      toggleLayer: (run, layer) => {
        const key = `${run}\u0000${layer}`;
        if (this.state.expanded.has(key)) this.state.expanded.delete(key); else this.state.expanded.add(key);
        this.drawRuns(new Set([run]));
      },
      openVariable: (run, tag) => {
        const before = this.state.selected;
        this.state.selected = {run, tag};
        this.state.detail = null;
        this.state.compareRun = null;
        this.state.detailB = null;
        this.drawRuns(new Set([run, ...(before ? [before.run] : [])]));
        this.loadDetail(true);
      },
    };
    const restores = [];  // [a new section, the view state of the one it replaces (or null)]
    const wanted = result.runs.map((run) => {
      const old = this.sections.get(run.run);
      if (old && only && !only.has(run.run)) return old;
      const state = old ? old.viewState() : null;
      const fresh = runSection(run, view, handlers, state);
      restores.push([fresh, state]);
      if (old && old.parentNode === this.runsBox) old.replaceWith(fresh);
      this.sections.set(run.run, fresh);
      return fresh;
    });
    const names = new Set(result.runs.map((run) => run.run));
    for (const name of [...this.sections.keys()]) if (!names.has(name)) this.sections.delete(name);
    const others = result.runs_without_weights || [];
    if (others.length) {
      wanted.push(el('p', {class: 'other-runs muted',
        text: `Not judged, no weight data read: ${others.join(', ')} (scalars only, or event files TensorBoard could not parse).`}));
    }
    // In place: sections that stay are not moved (that would reset their scroll boxes).
    const keep = new Set(wanted);
    for (const child of [...this.runsBox.children]) if (!keep.has(child)) child.remove();
    wanted.forEach((node, i) => {
      if (this.runsBox.children[i] !== node) this.runsBox.insertBefore(node, this.runsBox.children[i] || null);
    });
    // Once in the page: rows measured, scroll positions, focus and the heatmap's cursor back where they were.
    for (const [section, state] of restores) section.restore(state);
  }

  /** The runs of a new /verdicts answer that differ from those drawn (all of them when there is none). */
  changedRuns(result) {
    const previous = new Map(((this.state.result && this.state.result.runs) || []).map((run) => [run.run, run]));
    const changed = new Set();
    for (const run of result.runs) {
      const old = previous.get(run.run);
      if (!old || !this.signatures.has(run.run)) {
        changed.add(run.run);
        continue;
      }
      if (this.signatures.get(run.run) !== JSON.stringify(run)) changed.add(run.run);
    }
    return changed;
  }

  /** Remembers each run's JSON, to tell at the next answer which runs changed (after drawing: off the first paint). */
  rememberRuns(result) {
    const later = window.requestIdleCallback || ((callback) => setTimeout(callback, 50));
    later(() => {
      if (this.state.result !== result) return;
      this.signatures = new Map(result.runs.map((run) => [run.run, JSON.stringify(run)]));
    });
  }

  /** The other runs that logged `tag` (the runs step B can come from). */
  runsWithTag(run, tag) {
    const entries = (this.state.listing && this.state.listing.runs) || [];
    return [...new Set(entries.filter((entry) => entry.run !== run && entry.tags.includes(tag)).map((entry) => entry.run))].sort();
  }

  async loadDetail(scrollIntoView) {
    const {run, tag} = this.state.selected;
    const compareRun = this.state.compareRun;
    let detail;
    let detailB = null;
    try {
      detail = await this.fetchDetail('./variable' + query({run, tag, ...this.thresholdParameters()}));
      if (compareRun) detailB = await fetchJson('./variable' + query({run: compareRun, tag, ...this.thresholdParameters()}));
    } catch (error) {
      this.detailBox.replaceChildren(el('p', {class: 'error', text: `Could not load ${tag}: ${error.message}`}));
      return;
    }
    if (detail === undefined || !this.state.selected || this.state.selected.tag !== tag || this.state.selected.run !== run
        || this.state.compareRun !== compareRun) return;
    const previous = this.state.detail;
    const previousB = this.state.detailB || previous;
    const stepsB = (detailB || detail).steps;
    const last = detail.steps.length - 1;
    let selection = {a: 0, b: Math.max(0, stepsB.length - 1), comparison: null};
    if (previous && previous.run === run && previous.tag === tag && this.state.selection
        && (previousB && previousB.run === (detailB || detail).run)) {
      // Keep the user's A; keep B on the newest step if it was there.
      const old = this.state.selection;
      const followB = old.b === previousB.steps.length - 1;
      selection = {a: Math.min(old.a, last), b: followB ? stepsB.length - 1 : Math.min(old.b, stepsB.length - 1), comparison: old.comparison};
    }
    this.state.detail = detail;
    this.state.detailB = detailB;
    this.select(selection.a, selection.b, selection.comparison);
    if (scrollIntoView) this.detailBox.scrollIntoView({block: 'start'});
  }

  select(a, b, comparison = null) {
    const detail = this.state.detail;
    const detailB = this.state.detailB;
    const stepsB = (detailB || detail).steps;
    const runB = detailB ? detailB.run : detail.run;
    this.state.selection = {a, b, comparison};
    const other = {runs: this.runsWithTag(detail.run, detail.tag), run: detailB ? detailB.run : null, detail: detailB};
    const draw = () => this.detailBox.replaceChildren(detailPanel(detail, this.state.selection, {
      select: (newA, newB) => this.select(newA, newB),
      compareRunChanged: (run) => {
        this.state.compareRun = run;
        this.state.detailB = null;
        this.state.selection = null;  // B starts on the chosen run's last step
        this.loadDetail(false);
      },
      exportCsv: () => this.exportVariableCsv(detail),
      exportJson: () => this.download(`${fileStem(detail)}.json`, 'application/json', JSON.stringify(detail, null, 2)),
      close: () => {
        const run = this.state.selected ? this.state.selected.run : null;
        this.state.selected = null;
        this.state.detail = null;
        this.state.detailB = null;
        this.state.compareRun = null;
        this.detailBox.replaceChildren();
        this.drawRuns(run === null ? null : new Set([run]));
      },
    }, other));
    // Redrawing replaces the sliders: keep keyboard focus on the one in use.
    const focused = document.activeElement && this.detailBox.contains(document.activeElement) ? document.activeElement.name : null;
    draw();
    if (focused === 'a' || focused === 'b') {
      const slider = this.detailBox.querySelector(`input[name="${focused}"]`);
      if (slider) slider.focus();
    }
    if (!detail.steps.length || !stepsB.length
        || (comparison && comparison.a === detail.steps[a] && comparison.b === stepsB[b] && comparison.run_b === runB)) return;
    const parameters = {run: detail.run, tag: detail.tag, a: detail.steps[a], b: stepsB[b], run_b: detailB ? runB : undefined,
      ...this.thresholdParameters()};
    this.fetchComparison('./compare' + query(parameters))
      .then((answer) => {
        if (answer === undefined || this.state.detail !== detail || this.state.detailB !== detailB) return;
        const current = this.state.selection;
        if (detail.steps[current.a] === answer.a && stepsB[current.b] === answer.b) {
          current.comparison = answer;
          const text = this.detailBox.querySelector('.comparison');
          if (text) text.textContent = comparisonText(answer);
        }
      })
      .catch(() => {});
  }

  /** The verdict table as CSV, in the one schema the CLI prints too (the plugin writes it). */
  async exportCsv() {
    const route = './verdicts' + query({run: this.selectedRuns(), ...this.thresholdParameters(), format: 'csv'});
    try {
      this.download('weightdiff-verdicts.csv', 'text/csv', await fetchText(route));
    } catch (error) {
      this.message.replaceChildren(el('p', {class: 'error', text: `Could not export CSV: ${error.message}`}));
    }
  }

  /** One variable's histograms, quantiles and statistics as CSV (the plugin writes it). */
  async exportVariableCsv(detail) {
    const route = './variable' + query({run: detail.run, tag: detail.tag, ...this.thresholdParameters(), format: 'csv'});
    try {
      this.download(`${fileStem(detail)}.csv`, 'text/csv', await fetchText(route));
    } catch (error) {
      this.message.replaceChildren(el('p', {class: 'error', text: `Could not export CSV: ${error.message}`}));
    }
  }

  download(filename, type, text) {
    const link = el('a', {href: URL.createObjectURL(new Blob([text], {type})), download: filename});
    document.body.appendChild(link);
    link.click();
    link.remove();
  }
}

/** A file name for a variable's export: its run and tag, with anything but letters, digits, `.`, `_` and `-` as `_`. */
function fileStem(detail) {
  return `weightdiff-${detail.run}-${detail.tag}`.replace(/[^A-Za-z0-9._-]+/g, '_');
}

/** The name filter a URL hash holds (`#layers=<pattern>`), or ''. */
export function nameFilterFromHash(hash) {
  const found = /(?:^#|&)layers=([^&]*)/.exec(hash || '');
  if (!found) return '';
  try {
    return decodeURIComponent(found[1]);
  } catch (error) {
    return '';
  }
}

/** Entry point called by TensorBoard. */
export async function render() {
  document.head.appendChild(el('link', {rel: 'stylesheet', href: new URL('./style.css', import.meta.url).href}));
  const root = el('main', {class: 'weightdiff'});
  document.body.appendChild(root);
  // The first refresh's routes are asked for together with the contract, not after it.
  const early = {runs: fetchJson('./runs'), verdicts: fetchText('./verdicts')};
  for (const pending of Object.values(early)) pending.catch(() => {});  // (reported where they are awaited)
  let contract;
  try {
    contract = await fetchJson('./contract');
  } catch (error) {
    root.replaceChildren(el('p', {class: 'error', text: `Could not load the Weight Diff tab: ${error.message}`}));
    return;
  }
  const tab = new WeightDiffTab(root, contract);
  await tab.refresh(early);
}
