// Streams: the list, a stream's events newest first (paged by sequence, filtered by subject),
// one event with every header, and a live tail over SSE with pause and resume.
import { api, events as sse } from "../api.js";
import { h, route, withQuery } from "../dom.js";
import { table, section, num, pretty, errorBox } from "../ui.js";
import { appStreams } from "./common.js";

const PAGE = 50;
const TAIL_ROWS = 200;

export async function list({ main }) {
  const { streams } = await appStreams();
  main.append(
    h("h1", {}, "Streams"),
    table(
      [
        ["Stream", (s) => h("a", { href: route("streams", s.name) }, s.name)],
        ["Subjects", (s) => s.subjects.join(", ")],
        ["Events", (s) => num(s.messages), { num: true }],
        ["First", (s) => num(s.first_seq), { num: true }],
        ["Last", (s) => num(s.last_seq), { num: true }],
        ["Size", (s) => num(Math.round(s.bytes / 1024), "KiB"), { num: true }],
      ],
      streams,
      "No streams yet: the app declares them, `bus up` creates them.",
      "Streams",
    ),
  );
}

const eventsPath = (name) => `/api/v1/streams/${encodeURIComponent(name)}/events`;

export async function events({ main, params: [name], query, signal }) {
  const subject = query.get("subject") || "";
  const before = query.get("before") || "";
  const info = await api(`/api/v1/streams/${encodeURIComponent(name)}`);
  const page = await api(withQuery(eventsPath(name), { newest: "true", before_seq: before, subject, limit: PAGE }));
  const filter = h("input", { id: "subject-filter", name: "subject", value: subject, placeholder: info.subjects[0] || "subject.>", "aria-describedby": "filter-help" });
  const form = h(
    "form",
    { class: "toolbar", onsubmit: (e) => (e.preventDefault(), (location.hash = withQuery(route("streams", name), { subject: filter.value.trim() }))) },
    h("label", { for: "subject-filter" }, "Subject"),
    filter,
    h("button", { type: "submit" }, "Filter"),
    h("span", { id: "filter-help", class: "muted" }, "A pattern: * is one token, > the rest."),
  );
  const rows = table(
    [
      ["Seq", (e) => h("a", { href: route("streams", name, "events", e.seq) }, num(e.seq)), { num: true }],
      ["Time", (e) => e.time],
      ["Subject", (e) => e.subject],
      ["Type", (e) => e.type || "–"],
    ],
    page.items,
    subject ? `No event matches ${subject}.` : "This stream holds no events yet: publish one.",
    "Events, newest first",
  );
  const pager = h(
    "p",
    { class: "pager" },
    before ? h("a", { href: withQuery(route("streams", name), { subject }) }, "Newest") : null,
    page.next_before_seq ? h("a", { href: withQuery(route("streams", name), { subject, before: page.next_before_seq }), rel: "next" }, "Older") : null,
  );
  main.append(
    h("h1", {}, `Stream ${name}`),
    h("p", { class: "muted" }, `${num(info.messages)} events, sequences ${num(info.first_seq)}–${num(info.last_seq)}; subjects ${info.subjects.join(", ")}.`),
    form,
    section("Events, newest first", rows, pager),
    tail(name, subject || info.subjects[0] || ">", info.last_seq + 1, signal),
  );
}

/** The live tail: from `from` on, paused by aborting the request, resumed after the last id. */
function tail(name, pattern, from, signal) {
  const list = h("ol", { class: "tail", reversed: true, "aria-live": "off" });
  const state = h("span", { class: "muted", role: "status" }, "Paused.");
  let next = from;
  let running = null;
  const toggle = h("button", { type: "button", id: "tail-toggle", "aria-pressed": "false" }, "Start live tail");
  async function follow() {
    running = new AbortController();
    const stop = () => running?.abort();
    signal.addEventListener("abort", stop, { once: true });
    state.textContent = `Following ${pattern} from #${next}…`;
    try {
      for await (const frame of sse(withQuery("/events", { subject: pattern, from_seq: next }), running.signal)) {
        const { subject, data } = JSON.parse(frame.data);
        next = Number(frame.id) + 1;
        list.prepend(h("li", {}, h("a", { href: route("streams", name, "events", frame.id) }, `#${frame.id}`), " ", h("span", { class: "subject" }, subject), " ", h("span", { class: "muted" }, frame.event), " ", h("code", {}, JSON.stringify(data))));
        while (list.children.length > TAIL_ROWS) list.lastChild.remove();
      }
    } catch (error) {
      if (running.signal.aborted) return;
      state.replaceChildren(errorBox(error));
    }
  }
  toggle.addEventListener("click", () => {
    const on = toggle.getAttribute("aria-pressed") !== "true";
    toggle.setAttribute("aria-pressed", String(on));
    toggle.textContent = on ? "Pause" : "Resume";
    if (on) follow();
    else {
      running?.abort();
      state.textContent = `Paused at #${next - 1}.`;
    }
  });
  return section("Live tail", h("div", { class: "toolbar" }, toggle, state), list);
}

function traceLink(session, traceparent) {
  const trace = (traceparent || "").split("-")[1];
  if (!trace) return "–";
  if (!session?.grafana_url) return h("code", {}, trace);
  const panes = { t: { datasource: "tempo", queries: [{ refId: "A", datasource: { type: "tempo", uid: "tempo" }, queryType: "traceql", query: trace }], range: { from: "now-24h", to: "now" } } };
  const url = `${session.grafana_url.replace(/\/$/, "")}/explore?schemaVersion=1&panes=${encodeURIComponent(JSON.stringify(panes))}`;
  return h("a", { href: url, rel: "noopener noreferrer", target: "_blank" }, trace);
}

function related(name, id, own, seq) {
  if (!id) return "–";
  if (id === own) return h("span", {}, h("code", {}, id), " (this event)");
  // A handler's derived id carries no time: it is looked for back from this event.
  return h("a", { href: withQuery(route("streams", name, "id", id), { before_seq: seq }) }, id);
}

export async function detail({ main, params: [name, seq], session }) {
  const e = await api(`${eventsPath(name)}/${encodeURIComponent(seq)}`);
  const rows = [
    ["Stream", h("a", { href: route("streams", name) }, name)],
    ["Sequence", num(e.seq)],
    ["Subject", e.subject],
    ["Type", e.type || "–"],
    ["Version", e.headers["Bus-Event-Version"] || "–"],
    ["Event id", e.id ? h("code", {}, e.id) : "–"],
    ["Stored", e.time],
    ["Occurred", e.headers["Bus-Occurred-At"] || "–"],
    ["Correlation", related(name, e.correlation_id, e.id, e.seq)],
    ["Causation", related(name, e.causation_id, e.id, e.seq)],
    ["Principal", e.headers["Bus-Principal"] || "–"],
    ["Trace", traceLink(session, e.headers.traceparent)],
  ];
  main.append(
    h("h1", {}, `Event #${e.seq}`),
    h("dl", { class: "facts" }, rows.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    section("Payload", e.undecodable ? errorBox({ title: "Cannot decode", detail: e.undecodable }) : pretty(e.data)),
    section("Headers", table([["Header", ([k]) => k], ["Value", ([, v]) => h("code", {}, v)]], Object.entries(e.headers), "No headers.", "Headers")),
    h("p", { class: "pager" }, e.seq > 1 ? h("a", { href: route("streams", name, "events", e.seq - 1) }, "Previous") : null, h("a", { href: route("streams", name, "events", e.seq + 1) }, "Next")),
  );
}

export async function byId({ main, params: [name, id], query }) {
  main.append(h("p", { class: "muted" }, `Looking for event ${id}…`));
  const found = await api(withQuery(`${eventsPath(name)}/by-id/${encodeURIComponent(id)}`, { before_seq: query.get("before_seq") }));
  location.replace(route("streams", name, "events", found.seq));
}
