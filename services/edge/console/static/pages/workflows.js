// Workflows: definitions drawn as their DAG; a definition's page starts a run from a form made
// from its input's JSON Schema and lists its runs by status, paged with the API's cursor.
import { api } from "../api.js";
import { h, route, withQuery } from "../dom.js";
import { table, section, badge, num, ago, errorBox } from "../ui.js";
import { dag } from "../dag.js";
import { objectSchema, schemaFields } from "../form.js";
import { every } from "./common.js";

export const STATUSES = ["running", "completed", "failed", "cancelled"];
const BASE = "/api/v1/workflows";

export async function list({ main, canWrite }) {
  const { items } = await api(BASE);
  main.append(h("h1", {}, "Workflows"));
  if (!items.length) {
    main.append(h("p", { class: "empty" }, "This app declares no workflows: add one with app.workflow(Workflow(...))."));
    return;
  }
  for (const w of items) {
    main.append(
      section(
        w.name,
        h("p", { class: "muted" }, `${w.steps.length} steps · version ${w.version} · input ${objectSchema(w.input_schema).title || "object"}`),
        dag(`Steps of ${w.name}`, w.steps),
        h("p", {}, h("a", { href: route("workflows", w.name) }, canWrite ? `Start a run, or see the runs of ${w.name}` : `Runs of ${w.name}`)),
      ),
    );
  }
}

export async function definition({ main, params: [name], query, signal, canWrite }) {
  const { items } = await api(BASE);
  const found = items.find((w) => w.name === name);
  main.append(h("h1", {}, `Workflow ${name}`));
  if (!found) {
    main.append(errorBox({ status: 404, title: "Not found", detail: `No workflow named ${name}.` }), h("p", {}, h("a", { href: "#/workflows" }, "All workflows")));
    return;
  }
  main.append(
    h("p", { class: "muted" }, `${found.steps.length} steps · version ${found.version}`),
    section("Steps", dag(`Steps of ${name}`, found.steps)),
    canWrite ? startForm(found) : h("p", { class: "muted" }, "Starting a run needs a key with the write scope."),
  );
  await runs(main, name, query, signal);
}

/** "Start a run": the input's fields; the run's page follows once it is recorded. */
function startForm(workflow) {
  const schema = objectSchema(workflow.input_schema);
  const { rows, read } = schemaFields(schema, "input");
  const outcome = h("div", { "aria-live": "polite" });
  let idempotencyKey = newKey(); // a double submission starts one run
  async function submit(event) {
    event.preventDefault();
    let input;
    try {
      input = read();
    } catch (error) {
      outcome.replaceChildren(errorBox({ title: "Not JSON", detail: error.message }));
      return;
    }
    try {
      const path = `${BASE}/${encodeURIComponent(workflow.name)}/runs`;
      const started = await api(path, { method: "POST", body: input, headers: { "Idempotency-Key": idempotencyKey } });
      idempotencyKey = newKey();
      location.hash = withQuery(route("workflows", workflow.name, "runs", started.run_id), { after: started.seq });
    } catch (error) {
      outcome.replaceChildren(errorBox(error));
    }
  }
  return section(
    "Start a run",
    h("form", { class: "stack", id: "start-run", onsubmit: submit }, schema.description ? h("p", { class: "muted" }, schema.description) : null, rows, h("div", {}, h("button", { type: "submit", class: "primary", "data-write": "" }, "Start run"))),
    outcome,
  );
}

function newKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The runs, filtered by status and paged with the cursor, refreshed every 2 s. */
async function runs(main, name, query, signal) {
  const status = STATUSES.includes(query.get("status")) ? query.get("status") : "";
  const cursor = query.get("cursor") || "";
  const limit = query.get("limit") || "20";
  const here = (changes) => withQuery(route("workflows", name), { status, limit: query.get("limit"), ...changes });
  const filter = h(
    "ul",
    { class: "filters", "aria-label": "Runs by status" },
    ["", ...STATUSES].map((s) => h("li", {}, h("a", { href: here({ status: s }), "aria-current": s === status ? "page" : null }, s || "all"))),
  );
  const body = h("div");
  const pager = h("p", { class: "pager" });
  main.append(section("Runs", filter, body, pager));
  await every(2, signal, async () => {
    const page = await api(withQuery(`${BASE}/${encodeURIComponent(name)}/runs`, { status, cursor, limit }));
    if (signal.aborted) return;
    body.replaceChildren(
      table(
        [
          ["Run", (r) => h("a", { href: route("workflows", name, "runs", r.run_id) }, r.run_id)],
          ["Status", (r) => badge(r.status)],
          ["Steps done", (r) => `${Object.values(r.steps).filter((s) => s.status === "completed").length} of ${Object.keys(r.steps).length}`, { num: true }],
          ["Started", (r) => ago(r.started_at)],
          ["Took", (r) => took(r), { num: true }],
        ],
        page.items,
        status ? `No ${status} runs${cursor ? " on this page" : ""}.` : "No runs yet: start one above (write keys), or with `bus workflows start`.",
        `Runs of ${name}`,
      ),
    );
    pager.replaceChildren(
      cursor ? h("a", { href: here({ cursor: "" }) }, "First runs") : "",
      page.cursor ? h("a", { href: here({ cursor: page.cursor }), rel: "next" }, "Next runs") : "",
    );
  }, (error) => body.replaceChildren(errorBox(error)));
}

/** How long a run took (or has been running). */
export function took(run) {
  if (!run.started_at) return "–";
  const end = run.ended_at ? Date.parse(run.ended_at) : Date.now();
  const seconds = (end - Date.parse(run.started_at)) / 1000;
  if (Number.isNaN(seconds)) return "–";
  if (seconds < 1) return num(Math.round(seconds * 1000), "ms");
  return seconds < 60 ? num(Math.round(seconds * 10) / 10, "s") : num(Math.round(seconds / 6) / 10, "min");
}
