// Tiny DOM helpers. Everything that comes from logs (run, tag and layer
// names, messages) goes in as text nodes: never through innerHTML.

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * Creates an HTML element.
 * @param {string} tag
 * @param {Object<string, *>=} attributes `class`, `text`, `on<event>` handlers, `dataset`, others as attributes.
 * @param {Array<Node|string|null>=} children strings become text nodes.
 * @return {HTMLElement}
 */
export function el(tag, attributes = {}, children = []) {
  return fill(document.createElement(tag), attributes, children);
}

/**
 * Creates an SVG element (same conventions as `el`).
 * @return {SVGElement}
 */
export function svg(tag, attributes = {}, children = []) {
  return fill(document.createElementNS(SVG_NS, tag), attributes, children);
}

function fill(node, attributes, children) {
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') {
      node.textContent = String(value);
    } else if (key === 'class') {
      node.setAttribute('class', value);
    } else if (key === 'dataset') {
      Object.assign(node.dataset, value);
    } else if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** An SVG `<title>`: the browser shows it on hover. */
export function tooltip(text) {
  return svg('title', {text});
}
