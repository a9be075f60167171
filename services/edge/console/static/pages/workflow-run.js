// A workflow run: its DAG with each step coloured by state (and saying it), attempts, outputs
// and errors, followed every second while it runs; cancel, confirmed, for write keys.
import { api } from "../api.js";
import { h, route, withQuery } from "../dom.js";
import { table, section, badge, num, ago, pretty, button, confirmed, act, errorBox } from "../ui.js";
import { dag, legend } from "../dag.js";
import { took } from "./workflows.js";

const EVERY = 1000; // ms between reads while the run goes on

export async function render({ main, params: [name, runId], query, signal, canWrite }) {
  const path = `/api/v1/workflows/${encodeURIComponent(name)}/runs/${encodeURIComponent(runId)}`;
  const after = /^\d+$/.test(query.get("after") || "") ? query.get("after") : null; // just started: wait for it
  let run = await api(withQuery(path, { after_seq: after }));
  const outcome = h("div", { "aria-live": "polite" });
  const live = h("p", { class: "muted", role: "status" });
  const body = h("div");
  const cancel = h("span");
  main.append(h("h1", {}, "Run ", h("code", {}, runId)), h("div", { class: "toolbar" }, h("a", { href: route("workflows", name) }, `Workflow ${name}`), cancel), outcome, live, body);
  const ask = async () => {
    if (!(await confirmed(`Cancel run ${runId}? Its pending and running steps are cancelled; steps already done stay done.`))) return;
    await act(outcome, () => api(`${path}:cancel`, { method: "POST" }), (r) => (r.status === "running" ? "Cancel requested." : `The run had already ended: ${r.status}.`));
  };
  const draw = () => {
    body.replaceChildren(...view(run));
    cancel.replaceChildren(canWrite && run.status === "running" ? button("Cancel run", ask, { write: true, class: "danger" }) : "");
  };
  draw();
  while (run.status === "running" && !signal.aborted) {
    live.textContent = `Running: read every second (last ${new Date().toLocaleTimeString("en-GB")}).`;
    await pause(EVERY, signal);
    if (signal.aborted) return;
    try {
      const next = await api(withQuery(path, { after_seq: run.seq })); // never older than shown
      if (next.seq !== run.seq) {
        run = next;
        draw();
      }
    } catch (error) {
      live.replaceChildren(errorBox(error));
    }
  }
  live.textContent = `Ended: ${run.status}.`;
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(timer), resolve()), { once: true });
  });
}

function view(run) {
  const steps = Object.entries(run.steps).map(([name, step]) => ({ name, ...step }));
  return [
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Status"),
      h("dd", { id: "run-status" }, badge(run.status)),
      h("dt", {}, "Started"),
      h("dd", {}, ago(run.started_at)),
      h("dt", {}, "Took"),
      h("dd", {}, took(run)),
      h("dt", {}, "Version"),
      h("dd", {}, h("code", {}, run.version)),
      run.error ? [h("dt", {}, "Error"), h("dd", {}, h("pre", { class: "failure" }, run.error))] : null,
    ),
    section("Steps", legend(), dag(`Steps of run ${run.run_id}`, steps, run.steps)),
    section(
      "Attempts, outputs and errors",
      table(
        [
          ["Step", (s) => h("code", { class: "step" }, s.name)],
          ["State", (s) => badge(s.status)],
          ["Attempts", (s) => num(s.attempts), { num: true }],
          ["Took", (s) => took(s), { num: true }],
          ["Output or error", (s) => outcomeOf(s)],
        ],
        steps,
        "This run has no steps.",
        "Steps of the run",
      ),
    ),
    section("Input", pretty(run.input)),
    run.status === "completed" ? section("Output", pretty(run.output)) : null,
  ];
}

function outcomeOf(step) {
  return [
    step.error ? h("pre", { class: "failure" }, step.error) : null,
    step.output !== null && step.output !== undefined ? pretty(step.output) : null,
    step.compensation ? h("p", { class: "muted" }, `Compensation: ${step.compensation}`) : null,
    !step.error && (step.output === null || step.output === undefined) && !step.compensation ? "–" : null,
  ];
}
