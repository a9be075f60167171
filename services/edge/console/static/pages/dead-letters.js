// Dead letters: per stream, with reason and attempts; replay one or all, discard, confirmed.
import { api } from "../api.js";
import { h, route, withQuery } from "../dom.js";
import { table, num, button, confirmed, act, reload, ago } from "../ui.js";
import { appStreams } from "./common.js";

export async function list({ main }) {
  const { streams, deadLetters } = await appStreams();
  main.append(
    h("h1", {}, "Dead letters"),
    table(
      [
        ["Stream", (s) => h("a", { href: route("dead-letters", s.name) }, s.name)],
        ["Dead letters", (s) => num(deadLetters[s.name] ?? 0), { num: true }],
      ],
      streams,
      "No streams yet.",
      "Dead letters per stream",
    ),
  );
}

/** Ask, act, say what happened in `where`, then show the page again. */
async function operate(where, question, work, done) {
  if (!(await confirmed(question))) return;
  if ((await act(where, work, done)) !== undefined) setTimeout(reload, 800);
}

export async function letters({ main, params: [name], query, canWrite }) {
  const path = `/api/v1/streams/${encodeURIComponent(name)}/dead-letters`;
  const from = query.get("from") || "1";
  const page = await api(withQuery(path, { from_seq: from, limit: 100 }));
  const outcome = h("div", { "aria-live": "polite" });
  const replayOne = (d) =>
    operate(outcome, `Replay dead letter #${d.seq} to ${d.original_subject}?`, () => api(`${path}/${d.seq}:replay`, { method: "POST" }), (r) => `Replayed to ${r.subject} as ${r.stream} #${r.seq}.`);
  const discard = (d) => operate(outcome, `Discard dead letter #${d.seq} for good? It is not replayed.`, () => api(`${path}/${d.seq}:discard`, { method: "POST" }), `Discarded #${d.seq}.`);
  const replayAll = () => operate(outcome, `Replay all ${page.items.length} dead letters of ${name}?`, () => api(`${path}:replay`, { method: "POST" }), (r) => `Replayed ${r.replayed.length}.`);
  const actions = (d) => [
    button("Replay", () => replayOne(d), { write: true, label: `Replay #${d.seq}` }),
    " ",
    button("Discard", () => discard(d), { write: true, class: "danger", label: `Discard #${d.seq}` }),
  ];
  main.append(
    h("h1", {}, `Dead letters of ${name}`),
    canWrite && page.items.length ? h("p", { class: "toolbar" }, button("Replay all", replayAll, { write: true })) : null,
    outcome,
    table(
      [
        ["Seq", (d) => num(d.seq), { num: true }],
        ["Stored", (d) => ago(d.time)],
        ["Original", (d) => h("a", { href: route("streams", name, "events", d.original_seq) }, `${d.original_subject} #${d.original_seq}`)],
        ["Type", (d) => d.event_type || "–"],
        ["Consumer", (d) => d.consumer],
        ["Attempts", (d) => num(d.attempts), { num: true }],
        ["Reason", (d) => d.reason],
        ["Payload", (d) => h("details", {}, h("summary", {}, `${d.data.length} bytes`), h("pre", { class: "json" }, d.data))],
        ...(canWrite ? [["", actions]] : []),
      ],
      page.items,
      "No dead letters: every event was handled.",
      "Dead letters",
    ),
    h("p", { class: "pager" }, page.next_seq ? h("a", { href: withQuery(route("dead-letters", name), { from: page.next_seq }), rel: "next" }, "More") : null),
  );
}
