// Widgets every page uses: tables, states by colour and word, errors, confirmations.
import { h } from "./dom.js";

/** A table: columns are [heading, cell(row), {num: true}]; `empty` says what to do when bare. */
export function table(columns, rows, empty, label) {
  if (!rows.length) return h("p", { class: "empty" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      label ? h("caption", { class: "visually-hidden" }, label) : null,
      h("thead", {}, h("tr", {}, columns.map(([title, , opts]) => h("th", { scope: "col", class: opts?.num ? "num" : null }, title)))),
      h(
        "tbody",
        {},
        rows.map((row) => h("tr", {}, columns.map(([, cell, opts]) => h("td", { class: opts?.num ? "num" : null }, cell(row))))),
      ),
    ),
  );
}

const TONES = { pass: "good", ok: "good", running: "good", done: "good", warn: "warn", rebuilding: "warn", lagging: "warn", fail: "bad", failing: "bad", unknown: "muted" };

/** A state shown as a coloured badge that also says it in words (colour-blind safe). */
export function badge(word) {
  return h("span", { class: `badge ${TONES[word] || "muted"}` }, word);
}

export function num(value, unit = "") {
  if (value === null || value === undefined) return "–";
  const text = typeof value === "number" ? value.toLocaleString("en") : String(value);
  return unit ? `${text} ${unit}` : text;
}

export function ago(time) {
  if (!time) return "–";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(time)) / 1000));
  if (Number.isNaN(seconds)) return String(time);
  const text = seconds < 90 ? `${seconds} s ago` : seconds < 5400 ? `${Math.round(seconds / 60)} min ago` : `${Math.round(seconds / 3600)} h ago`;
  return h("time", { datetime: time, title: time }, text);
}

export function pretty(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function errorBox(error) {
  const title = error.title || "Something went wrong";
  return h("div", { class: "error", role: "alert" }, h("strong", {}, `${error.status ? error.status + " " : ""}${title}`), error.detail ? h("p", {}, error.detail) : error.status ? null : h("p", {}, String(error.message || error)));
}

export function section(title, ...children) {
  return h("section", { class: "card" }, h("h2", {}, title), ...children);
}

export function button(label, onclick, opts = {}) {
  return h("button", { type: "button", class: opts.class || null, onclick, "data-write": opts.write ? "" : null, "aria-label": opts.label || null }, label);
}

/** Ask before acting: the page's own dialog, so keyboards and tests reach it. */
export function confirmed(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true }));
}

/** Run a write, showing its refusal (or `done`) in `where`. */
export async function act(where, work, done) {
  where.replaceChildren(h("span", { class: "muted" }, "Working…"));
  try {
    const result = await work();
    where.replaceChildren(h("p", { class: "ok", role: "status" }, typeof done === "function" ? done(result) : done));
    return result;
  } catch (error) {
    where.replaceChildren(errorBox(error));
    return undefined;
  }
}

/** Show the current page again (after a write changed what it shows). */
export function reload() {
  window.dispatchEvent(new HashChangeEvent("hashchange"));
}
