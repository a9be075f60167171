// Overview: streams, consumers, projections, dead letters, components and workflow runs at a
// glance, live.
import { api } from "../api.js";
import { h, route, withQuery } from "../dom.js";
import { table, section, badge, num, errorBox } from "../ui.js";
import { appStreams, every } from "./common.js";
import { STATUSES } from "./workflows.js";

/** Each workflow's runs by status, counted by the edge in one read of the runs. */
async function workflowRuns() {
  const { items } = await api("/api/v1/workflows/counts");
  return items.map(({ name, runs }) => ({ name, counts: Object.fromEntries(STATUSES.map((s) => [s, runs[s] ?? 0])) }));
}

function runCount(w, status) {
  const n = w.counts[status];
  const shown = num(n);
  return n === 0 ? "0" : h("a", { href: withQuery(route("workflows", w.name), { status }), "aria-label": `${shown} ${status} runs of ${w.name}` }, shown);
}

export async function render({ main, signal }) {
  const body = h("div", { class: "grid" });
  const status = h("p", { class: "muted", "aria-live": "polite" });
  main.append(h("h1", {}, "Overview"), status, body);
  let previous = null;
  await every(2, signal, async () => {
    const [{ streams, deadLetters }, projections, components, workflows] = await Promise.all([appStreams(), api("/api/v1/projections"), api("/api/v1/components"), workflowRuns()]);
    const consumers = (await Promise.all(streams.map((s) => api(`/api/v1/streams/${encodeURIComponent(s.name)}/consumers`)))).flat();
    const now = performance.now();
    const rate = (s) => (previous && previous.counts[s.name] !== undefined ? (s.last_seq - previous.counts[s.name]) / ((now - previous.at) / 1000) : null);
    const rows = streams.map((s) => ({ ...s, rate: rate(s), dead: deadLetters[s.name] ?? 0 }));
    previous = { at: now, counts: Object.fromEntries(streams.map((s) => [s.name, s.last_seq])) };
    if (signal.aborted) return;
    body.replaceChildren(
      section(
        "Streams",
        table(
          [
            ["Stream", (s) => h("a", { href: route("streams", s.name) }, s.name)],
            ["Events", (s) => num(s.messages), { num: true }],
            ["Rate", (s) => (s.rate === null ? "…" : num(Math.round(s.rate * 10) / 10, "/s")), { num: true }],
            ["Dead letters", (s) => (s.dead ? h("a", { href: route("dead-letters", s.name) }, num(s.dead)) : "0"), { num: true }],
          ],
          rows,
          "No streams yet: the app declares them, `bus up` creates them.",
          "Streams",
        ),
      ),
      section(
        "Consumers",
        table(
          [
            ["Consumer", (c) => (c.durable ? c.name : [c.name, " ", h("span", { class: "muted" }, "(ephemeral)")])],
            ["Stream", (c) => c.stream],
            ["Pending", (c) => num(c.pending), { num: true }],
            ["Ack pending", (c) => num(c.ack_pending), { num: true }],
            ["Redelivered", (c) => num(c.redelivered), { num: true }],
          ],
          consumers,
          "No consumers: start a worker (`bus worker`) to handle events.",
          "Consumers",
        ),
      ),
      section(
        "Projections",
        table(
          [
            ["Projection", (p) => h("a", { href: route("projections", p.name) }, p.name)],
            ["State", (p) => badge(projectionState(p))],
            ["Position", (p) => num(p.position), { num: true }],
            ["Lag", (p) => num(p.lag, "events"), { num: true }],
          ],
          projections,
          "No projections in this app.",
          "Projections",
        ),
      ),
      section(
        "Components",
        table(
          [
            ["Component", (c) => c.name],
            ["Instance", (c) => c.instance],
            ["Health", (c) => badge(c.health?.status || "unknown")],
          ],
          components,
          "No component is registered.",
          "Components",
        ),
      ),
      wide(
        section(
          "Workflows",
          table(
            [["Workflow", (w) => h("a", { href: route("workflows", w.name) }, w.name)], ...STATUSES.map((s) => [s[0].toUpperCase() + s.slice(1), (w) => runCount(w, s), { num: true }])],
            workflows,
            "No workflows in this app.",
            "Workflow runs by status",
          ),
        ),
      ),
    );
    status.textContent = `Refreshed ${new Date().toLocaleTimeString("en-GB")}; every 2 s.`;
  }, (error) => status.replaceChildren(errorBox(error)));
}

/** A card across the whole grid (a table too wide for one column). */
function wide(card) {
  card.classList.add("wide");
  return card;
}

export function projectionState(p) {
  if (p.rebuilding) return "rebuilding";
  if (p.failures) return "failing";
  return p.lag > 0 ? "lagging" : "ok";
}
