// Shared state: buckets, keys with values and revisions, a key's history, and edits that
// are compare-and-set on the revision shown (a stale edit gets the server's 412).
import { api, ApiError } from "../api.js";
import { h, route, withQuery } from "../dom.js";
import { table, num, pretty, section, ago, errorBox, reload } from "../ui.js";

const bucketPath = (bucket) => `/api/v1/kv/${encodeURIComponent(bucket)}`;
const keyPath = (bucket, key) => `${bucketPath(bucket)}/${encodeURIComponent(key)}`;

export async function buckets({ main }) {
  const found = await api("/api/v1/kv");
  main.append(
    h("h1", {}, "Shared state"),
    table(
      [
        ["Bucket", (b) => h("a", { href: route("state", b.name) }, b.name)],
        ["Description", (b) => b.description],
        ["History", (b) => num(b.history, "revisions"), { num: true }],
        ["TTL", (b) => (b.ttl ? num(b.ttl, "s") : "none"), { num: true }],
      ],
      found,
      "This app declares no buckets (App(buckets=[BucketSpec(...)])).",
      "Buckets",
    ),
  );
}

export async function keys({ main, params: [bucket], query, canWrite }) {
  const prefix = query.get("prefix") || "";
  const cursor = query.get("cursor") || "";
  const page = await api(withQuery(bucketPath(bucket), { prefix, cursor, limit: 50 }));
  const input = h("input", { id: "kv-prefix", name: "prefix", value: prefix });
  main.append(
    h("h1", {}, `Bucket ${bucket}`),
    h(
      "form",
      { class: "toolbar", onsubmit: (e) => (e.preventDefault(), (location.hash = withQuery(route("state", bucket), { prefix: input.value.trim() }))) },
      h("label", { for: "kv-prefix" }, "Key prefix"),
      input,
      h("button", { type: "submit" }, "Show"),
    ),
    table(
      [
        ["Key", (e) => h("a", { href: route("state", bucket, e.key) }, e.key)],
        ["Revision", (e) => num(e.revision), { num: true }],
        ["Value", (e) => h("code", {}, JSON.stringify(e.value))],
        ["Written", (e) => ago(e.time)],
      ],
      page.items,
      prefix ? `No key starts with ${prefix}.` : "No keys yet.",
      "Keys",
    ),
    h("p", { class: "pager" }, page.next_cursor ? h("a", { href: withQuery(route("state", bucket), { prefix, cursor: page.next_cursor }), rel: "next" }, "Next keys") : null),
    canWrite ? editor(bucket, null, null) : null,
  );
}

export async function entry({ main, params: [bucket, key], canWrite }) {
  const answer = await api(keyPath(bucket, key), { response: true });
  const revision = Number((answer.headers.get("ETag") || "").replaceAll('"', ""));
  const value = await answer.json();
  const { history } = await api(`${keyPath(bucket, key)}/history`);
  main.append(
    h("h1", {}, `${bucket} / ${key}`),
    h("p", {}, "Revision ", h("strong", { id: "kv-revision" }, num(revision))),
    section("Value", pretty(value)),
    canWrite ? editor(bucket, key, { value, revision }) : null,
    section(
      "History",
      table(
        [
          ["Revision", (e) => num(e.revision), { num: true }],
          ["Operation", (e) => e.operation],
          ["Value", (e) => h("code", {}, JSON.stringify(e.value))],
          ["Written", (e) => ago(e.time)],
        ],
        [...history].reverse(),
        "No history kept.",
        "History",
      ),
    ),
  );
}

/** An edit form: `current` null creates a new key (only if absent), else compare-and-set. */
function editor(bucket, key, current) {
  const name = key === null ? h("input", { id: "kv-key", name: "key", required: true }) : null;
  const text = h("textarea", { id: "kv-value", name: "value", rows: "6", spellcheck: "false" }, current ? JSON.stringify(current.value, null, 2) : "");
  const outcome = h("div", { "aria-live": "polite" });
  async function save(event) {
    event.preventDefault();
    let body;
    try {
      body = JSON.parse(text.value);
    } catch (error) {
      outcome.replaceChildren(errorBox({ title: "Not JSON", detail: error.message }));
      return;
    }
    const target = key ?? name.value.trim();
    const condition = current ? { "If-Match": `"${current.revision}"` } : { "If-None-Match": "*" };
    try {
      await api(keyPath(bucket, target), { method: "PUT", body, headers: condition });
    } catch (error) {
      const stale = error instanceof ApiError && error.status === 412;
      outcome.replaceChildren(errorBox(error), stale ? h("p", {}, h("a", { href: route("state", bucket, target), onclick: () => setTimeout(reload) }, "Reload the current value")) : null);
      return;
    }
    location.hash = route("state", bucket, target);
    reload();
  }
  return section(
    current ? `Edit (only if still at revision ${current.revision})` : "New key",
    h(
      "form",
      { class: "stack", onsubmit: save },
      name ? [h("label", { for: "kv-key" }, "Key"), name] : null,
      h("label", { for: "kv-value" }, "Value (JSON)"),
      text,
      h("div", {}, h("button", { type: "submit", class: "primary", "data-write": "" }, current ? "Save" : "Create")),
    ),
    outcome,
  );
}
