// The Weight Diff tab. TensorBoard loads this ES module into an iframe and
// calls render(). Names from logs are data: they go in through textContent,
// never innerHTML.

const REFRESH_MS = 30000;

/**
 * Fetches the list of weight series, relative to this module's URL.
 * @return {Promise<{runs: Array<{run: string, source: string, tags: string[], max_step: ?number}>}>}
 */
async function fetchSeries() {
  const response = await fetch('./series');
  if (!response.ok) {
    throw new Error(`${response.status} ${await response.text()}`);
  }
  return response.json();
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function renderEmpty(root) {
  root.appendChild(element('h2', 'No weight summaries yet'));
  root.appendChild(element('p', 'Log them with the Keras callback:'));
  root.appendChild(element('pre', [
    'from tb_weightdiff.keras import WeightDiffCallback',
    'model.fit(x, y, epochs=10,',
    '          callbacks=[WeightDiffCallback("logs/run1")])',
  ].join('\n')));
}

function renderRuns(root, data) {
  const table = element('table');
  const head = table.createTHead().insertRow();
  for (const title of ['run', 'source', 'tensors', 'last step']) {
    head.appendChild(element('th', title));
  }
  const body = table.createTBody();
  for (const run of data.runs) {
    const row = body.insertRow();
    row.appendChild(element('td', run.run));
    row.appendChild(element('td', run.source === 'tb_weightdiff' ? 'WeightDiffCallback' : 'histograms'));
    row.appendChild(element('td', String(run.tags.length)));
    row.appendChild(element('td', run.max_step === null ? '' : String(run.max_step)));
  }
  root.appendChild(table);
}

async function refresh(root) {
  let data;
  try {
    data = await fetchSeries();
  } catch (error) {
    root.replaceChildren(element('p', `Could not load weight series: ${error.message}`, 'error'));
    return;
  }
  root.replaceChildren();
  if (data.runs.length === 0) {
    renderEmpty(root);
  } else {
    renderRuns(root, data);
  }
  root.appendChild(element('p', `Last updated ${new Date().toLocaleTimeString()}`, 'updated'));
}

/** Entry point called by TensorBoard. */
export async function render() {
  const style = element('style', `
    body { font-family: Roboto, sans-serif; margin: 16px; color: #212121; }
    table { border-collapse: collapse; }
    th, td { text-align: left; padding: 4px 12px; border-bottom: 1px solid #e0e0e0; }
    pre { background: #f5f5f5; padding: 8px; }
    .error { color: #b71c1c; }
    .updated { color: #757575; font-size: 12px; }
  `);
  document.head.appendChild(style);
  const root = element('div', undefined, 'weightdiff');
  document.body.appendChild(root);
  await refresh(root);
  // TensorBoard's reload button does not reach this iframe.
  setInterval(() => refresh(root), REFRESH_MS);
}
