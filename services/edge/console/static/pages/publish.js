// Publish: pick an event type; a form generated from its JSON Schema; publish it.
import { api } from "../api.js";
import { h, route } from "../dom.js";
import { section, errorBox } from "../ui.js";

export async function render({ main, canWrite }) {
  main.append(h("h1", {}, "Publish"));
  if (!canWrite) {
    main.append(h("p", { class: "empty" }, "This key may only read: publishing needs a key with the write scope."));
    return;
  }
  const { $defs: types = {} } = await api("/api/v1/schemas");
  const names = Object.keys(types).sort();
  if (!names.length) {
    main.append(h("p", { class: "empty" }, "The app registers no event types."));
    return;
  }
  const picker = h("select", { id: "event-type", name: "type" }, names.map((n) => h("option", { value: n }, `${n} (${types[n]["x-bus-subject"]})`)));
  const form = h("div");
  const outcome = h("div", { "aria-live": "polite" });
  const draw = () => form.replaceChildren(fields(types[picker.value], outcome));
  picker.addEventListener("change", draw);
  draw();
  main.append(h("div", { class: "toolbar" }, h("label", { for: "event-type" }, "Event type"), picker), form, outcome);
}

/** One input per property, typed as its schema says; objects and arrays as JSON text. */
function fields(schema, outcome) {
  const inputs = {};
  const required = new Set(schema.required || []);
  const rows = Object.entries(schema.properties || {}).map(([name, prop]) => {
    const id = `field-${name}`;
    const type = prop.type;
    let input;
    if (type === "boolean") input = h("input", { id, name, type: "checkbox", checked: prop.default === true });
    else if (type === "integer" || type === "number") input = h("input", { id, name, type: "number", step: type === "integer" ? "1" : "any", value: prop.default ?? "", required: required.has(name) });
    else if (type === "string" && prop.enum) input = h("select", { id, name }, prop.enum.map((v) => h("option", { value: v }, v)));
    else if (type === "string") input = h("input", { id, name, value: prop.default ?? "", required: required.has(name) });
    else input = h("textarea", { id, name, rows: "3", placeholder: "JSON" }, prop.default === undefined ? "" : JSON.stringify(prop.default));
    inputs[name] = { input, type };
    return [h("label", { for: id }, name, required.has(name) ? " (required)" : ""), input];
  });
  const aggregate = h("input", { id: "aggregate-id", name: "aggregate", required: true, pattern: "[A-Za-z0-9_\\-:~@=+%!]+", "aria-describedby": "aggregate-help" });
  async function submit(event) {
    event.preventDefault();
    const data = {};
    try {
      for (const [name, { input, type }] of Object.entries(inputs)) {
        if (type === "boolean") data[name] = input.checked;
        else if (input.value === "") continue;
        else if (type === "integer" || type === "number") data[name] = Number(input.value);
        else if (type === "string") data[name] = input.value;
        else data[name] = JSON.parse(input.value);
      }
    } catch (error) {
      outcome.replaceChildren(errorBox({ title: "Not JSON", detail: error.message }));
      return;
    }
    const subject = schema["x-bus-subject"].replace("{id}", aggregate.value.trim());
    try {
      const done = await api(`/api/v1/events/${encodeURIComponent(subject)}`, { method: "POST", body: data });
      outcome.replaceChildren(h("p", { class: "ok", role: "status" }, "Published ", h("a", { href: route("streams", done.stream, "events", done.seq) }, `${done.stream} #${done.seq}`), ` (${subject}).`));
    } catch (error) {
      outcome.replaceChildren(errorBox(error));
    }
  }
  return section(
    schema.title,
    h(
      "form",
      { class: "stack", onsubmit: submit },
      h("label", { for: "aggregate-id" }, "Aggregate id"),
      aggregate,
      h("span", { id: "aggregate-help", class: "muted" }, `The {id} of ${schema["x-bus-subject"]}: letters, digits and _-:~@=+%!`),
      rows,
      h("div", {}, h("button", { type: "submit", class: "primary", "data-write": "" }, "Publish")),
    ),
  );
}
