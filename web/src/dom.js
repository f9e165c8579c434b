// Building the page from data without innerHTML: every text is a text node, so nothing an API
// returns can become markup.

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2).toLowerCase(), value);
    else if (name === 'class') el.className = value;
    else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let fieldCount = 0;

// A labelled input: the label names the control (its accessible name).
export function field(label, attrs = {}) {
  fieldCount += 1;
  const id = attrs.id ?? `f${fieldCount}`;
  const input = h('input', { ...attrs, id });
  return { input, el: h('p', { class: 'field' }, h('label', { for: id }, label), input) };
}

export function showError(text) {
  const alert = document.getElementById('alert');
  alert.textContent = text;
  alert.hidden = !text;
}
