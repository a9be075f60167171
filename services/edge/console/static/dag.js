// A workflow's DAG drawn as SVG, laid out here (no library): steps in columns by dependency
// depth, each column ordered by where its steps' dependencies sit, edges as curves.
import { h } from "./dom.js";

const NS = "http://www.w3.org/2000/svg";
const W = 168, H = 48, GAP_X = 56, GAP_Y = 18, PAD = 8;
const MAX_NAME = 20; // characters drawn; the full name is in the node's tooltip and the tables

/** Every state a step can be in, with the mark that tells it without colour. */
export const STATES = { pending: "○", running: "▶", completed: "✓", failed: "✗", skipped: "↷", cancelled: "⊘" };

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) if (value !== null && value !== undefined) el.setAttribute(name, String(value));
  for (const child of children) el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return el;
}

/** Columns of step names: a step's column is one past its deepest dependency's. */
export function layout(steps) {
  const byName = new Map(steps.map((s) => [s.name, s]));
  const depth = new Map();
  const depthOf = (name) => {
    if (depth.has(name)) return depth.get(name);
    depth.set(name, 0); // a cycle (never sent) cannot loop here
    const deps = (byName.get(name).depends_on || []).filter((d) => byName.has(d));
    const found = deps.length ? 1 + Math.max(...deps.map(depthOf)) : 0;
    depth.set(name, found);
    return found;
  };
  const columns = [];
  for (const step of steps) (columns[depthOf(step.name)] ||= []).push(step.name);
  const row = new Map();
  columns.forEach((column, index) => {
    if (index > 0) {
      const centre = (name) => {
        const rows = byName.get(name).depends_on.filter((d) => row.has(d)).map((d) => row.get(d));
        return rows.reduce((a, b) => a + b, 0) / (rows.length || 1);
      };
      column.sort((a, b) => centre(a) - centre(b)); // stable: ties keep the declared order
    }
    column.forEach((name, i) => row.set(name, i));
  });
  return columns;
}

let drawn = 0; // ids (the arrowhead, the title) unique on the page

/** The DAG of `steps` ({name, depends_on, action}); with `states` (name -> step of a run), each
 * node is coloured by its state and says it in words. */
export function dag(title, steps, states = null) {
  const columns = layout(steps);
  const tallest = Math.max(...columns.map((c) => c.length));
  const width = PAD * 2 + columns.length * W + (columns.length - 1) * GAP_X;
  const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
  const at = new Map();
  columns.forEach((column, c) => {
    const offset = ((tallest - column.length) * (H + GAP_Y)) / 2;
    column.forEach((name, r) => at.set(name, { x: PAD + c * (W + GAP_X), y: PAD + offset + r * (H + GAP_Y) }));
  });
  const id = `dag-${++drawn}`;
  const edges = steps.flatMap((step) =>
    (step.depends_on || [])
      .filter((d) => at.has(d))
      .map((d) => {
        const from = at.get(d), to = at.get(step.name);
        const [x1, y1, x2, y2] = [from.x + W, from.y + H / 2, to.x - 1, to.y + H / 2];
        const bend = GAP_X / 2;
        return svg("path", { class: "edge", d: `M${x1} ${y1} C${x1 + bend} ${y1} ${x2 - bend} ${y2} ${x2} ${y2}`, "marker-end": `url(#${id}-arrow)` });
      }),
  );
  const nodes = steps.map((step) => {
    const { x, y } = at.get(step.name);
    const run = states?.[step.name];
    const state = run ? run.status : "definition";
    const name = step.name.length > MAX_NAME ? `${step.name.slice(0, MAX_NAME - 1)}…` : step.name;
    const detail = run ? `${STATES[state] || "?"} ${state}${run.attempts > 1 ? ` · ${run.attempts} attempts` : ""}` : step.action === step.name ? "" : step.action;
    return svg(
      "g",
      { class: `node state-${state}`, "data-step": step.name, "data-state": state },
      svg("title", {}, run ? `${step.name}: ${state}` : step.name),
      svg("rect", { x, y, width: W, height: H, rx: 6 }),
      svg("text", { x: x + 10, y: y + (detail ? 20 : H / 2 + 5), class: "name" }, name),
      detail ? svg("text", { x: x + 10, y: y + 38, class: "detail" }, detail) : "",
    );
  });
  const said = steps.map((s) => `${s.name}${s.depends_on?.length ? ` after ${s.depends_on.join(", ")}` : ""}${states?.[s.name] ? `: ${states[s.name].status}` : ""}`);
  return h(
    "div",
    { class: "dag-wrap", tabindex: "0", role: "group", "aria-label": `${title}, scrolls sideways` },
    svg(
      "svg",
      { class: "dag", width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-labelledby": `${id}-title` },
      svg("title", { id: `${id}-title` }, `${title}: ${said.join("; ")}`),
      svg("defs", {}, svg("marker", { id: `${id}-arrow`, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" }, svg("path", { d: "M0 0 L10 5 L0 10 z", class: "arrow" }))),
      ...edges,
      ...nodes,
    ),
  );
}

/** What each colour and mark means. */
export function legend() {
  return h(
    "ul",
    { class: "legend", "aria-label": "Step states" },
    Object.entries(STATES).map(([state, mark]) => h("li", {}, h("span", { class: `swatch state-${state}`, "aria-hidden": "true" }, mark), state)),
  );
}
