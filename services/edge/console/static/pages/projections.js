// Projections: status, position and lag; keys by prefix with their state; rebuild with a
// progress bar that follows the rebuild until the new generation takes over.
import { api } from "../api.js";
import { h, route, withQuery } from "../dom.js";
import { table, section, badge, num, pretty, button, confirmed, errorBox } from "../ui.js";
import { every } from "./common.js";
import { projectionState } from "./overview.js";

export async function list({ main, signal, canWrite }) {
  const body = h("div");
  const progress = h("div", { id: "rebuild-progress" });
  main.append(h("h1", {}, "Projections"), progress, body);
  await every(2, signal, async () => {
    const found = await api("/api/v1/projections");
    body.replaceChildren(
      table(
        [
          ["Projection", (p) => h("a", { href: route("projections", p.name) }, p.name)],
          ["Stream", (p) => p.stream],
          ["State", (p) => badge(projectionState(p))],
          ["Generation", (p) => num(p.generation), { num: true }],
          ["Position", (p) => num(p.position), { num: true }],
          ["Lag", (p) => num(p.lag, "events"), { num: true }],
          ["Failures", (p) => num(p.failures), { num: true }],
          ...(canWrite ? [["", (p) => button("Rebuild", () => rebuild(p, progress, signal), { write: true, label: `Rebuild ${p.name}` })]] : []),
        ],
        found,
        "No projections in this app.",
        "Projections",
      ),
    );
  }, (error) => body.replaceChildren(errorBox(error)));
}

async function rebuild(before, where, signal) {
  if (!(await confirmed(`Rebuild ${before.name} from the start of ${before.stream}? Queries keep the current generation until the new one has caught up.`))) return;
  const bar = h("progress", { max: "100", value: "0", "aria-label": `Rebuild of ${before.name}` });
  const label = h("span", { role: "status" }, "Starting…");
  where.replaceChildren(section(`Rebuilding ${before.name}`, bar, " ", label));
  const path = `/api/v1/projections/${encodeURIComponent(before.name)}:rebuild`;
  try {
    await api(path, { method: "POST" });
  } catch (error) {
    where.replaceChildren(errorBox(error));
    return;
  }
  while (!signal.aborted) {
    const now = await api(path);
    if (now.generation > before.generation) {
      bar.value = 100;
      label.textContent = `100% · generation ${now.generation} serves queries`;
      return;
    }
    const percent = now.progress === null ? 0 : Math.min(99, Math.floor(100 * now.progress));
    bar.value = percent;
    label.textContent = `${percent}% · ${num(now.rebuild_position)} of ${num(now.position)}`;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

export async function keys({ main, params: [name], query }) {
  const prefix = query.get("prefix") || "";
  const cursor = query.get("cursor") || "";
  const page = await api(withQuery(`/api/v1/projections/${encodeURIComponent(name)}`, { prefix, cursor, limit: 50 }));
  const input = h("input", { id: "key-prefix", name: "prefix", value: prefix });
  main.append(
    h("h1", {}, `Projection ${name}`),
    h(
      "form",
      { class: "toolbar", onsubmit: (e) => (e.preventDefault(), (location.hash = withQuery(route("projections", name), { prefix: input.value.trim() }))) },
      h("label", { for: "key-prefix" }, "Key prefix"),
      input,
      h("button", { type: "submit" }, "Show"),
    ),
    table([["Key", (i) => h("code", {}, i.key)], ["State", (i) => pretty(i.state)]], page.items, prefix ? `No key starts with ${prefix}.` : "No keys yet: events this projection reads fill it.", "Keys"),
    h("p", { class: "pager" }, page.cursor ? h("a", { href: withQuery(route("projections", name), { prefix, cursor: page.cursor }), rel: "next" }, "Next keys") : null),
  );
}
