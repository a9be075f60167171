// A form generated from a JSON Schema: what Publish and a workflow's "start a run" ask for.
import { h } from "./dom.js";

const LONG_TEXT = 1000; // strings that may be longer than this get a text area

/** The object schema `schema` stands for: msgspec puts a struct behind a `$ref` into `$defs`. */
export function objectSchema(schema) {
  const ref = schema?.$ref;
  if (typeof ref === "string" && ref.startsWith("#/$defs/")) return schema.$defs?.[ref.slice("#/$defs/".length)] || {};
  return schema || {};
}

/** One labelled input per property (id `${prefix}-${name}`), typed as its schema says (objects,
 * arrays and the rest as JSON text), and `read()`: the object they hold (SyntaxError on a JSON
 * field that is not JSON; empty fields are left out, so the type's defaults apply). */
export function schemaFields(schema, prefix) {
  const inputs = {};
  const required = new Set(schema.required || []);
  const rows = Object.entries(schema.properties || {}).map(([name, prop]) => {
    const id = `${prefix}-${name}`;
    const type = prop.type;
    const needed = required.has(name);
    let input;
    if (type === "boolean") input = h("input", { id, name, type: "checkbox", checked: prop.default === true });
    else if (type === "integer" || type === "number") input = h("input", { id, name, type: "number", step: type === "integer" ? "1" : "any", value: prop.default ?? "", required: needed });
    else if (type === "string" && prop.enum) input = h("select", { id, name }, prop.enum.map((v) => h("option", { value: v }, v)));
    else if (type === "string" && prop.maxLength > LONG_TEXT) input = h("textarea", { id, name, rows: "6", required: needed, maxlength: prop.maxLength }, prop.default ?? "");
    else if (type === "string") input = h("input", { id, name, value: prop.default ?? "", required: needed, maxlength: prop.maxLength ?? null });
    else input = h("textarea", { id, name, rows: "3", placeholder: "JSON" }, prop.default === undefined ? "" : JSON.stringify(prop.default));
    inputs[name] = { input, type };
    return [h("label", { for: id }, name, needed ? " (required)" : ""), input];
  });
  function read() {
    const data = {};
    for (const [name, { input, type }] of Object.entries(inputs)) {
      if (type === "boolean") data[name] = input.checked;
      else if (input.value === "") continue;
      else if (type === "integer" || type === "number") data[name] = Number(input.value);
      else if (type === "string") data[name] = input.value;
      else data[name] = JSON.parse(input.value);
    }
    return data;
  }
  return { rows, read };
}
