// Building the page from data, as text only: never as markup, anywhere in the console.

/** An element with attributes, listeners (`on<event>`) and children (nodes or text). */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") el.className = value;
    else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "href") el.setAttribute("href", safeHref(value));
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A console route (`#/...`) or an http(s) URL; anything else (javascript:, data:) is dropped. */
export function safeHref(value) {
  const text = String(value);
  if (text.startsWith("#/")) return text;
  try {
    const url = new URL(text);
    if (url.protocol === "http:" || url.protocol === "https:") return url.href;
  } catch {
    // not a URL
  }
  return "#/";
}

/** A route path from parts, each encoded: data never changes a route's shape. */
export function route(...parts) {
  return "#/" + parts.map((p) => encodeURIComponent(String(p))).join("/");
}

export function withQuery(path, query) {
  const params = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== null && v !== undefined && v !== "") params.set(k, v);
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}
