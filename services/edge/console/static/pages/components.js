// Components: instances, versions, endpoints, health and last heartbeat, refreshed live.
import { api } from "../api.js";
import { h } from "../dom.js";
import { table, badge, ago, errorBox } from "../ui.js";
import { every } from "./common.js";

export async function render({ main, signal }) {
  const body = h("div");
  main.append(h("h1", {}, "Components"), body);
  await every(5, signal, async () => {
    const found = await api("/api/v1/components");
    body.replaceChildren(
      table(
        [
          ["Component", (c) => c.name],
          ["Kind", (c) => c.kind],
          ["Instance", (c) => h("code", {}, c.instance)],
          ["Version", (c) => c.version],
          ["Health", (c) => badge(c.health?.status || "unknown")],
          ["Reason", (c) => c.health?.reason || ""],
          ["Last heartbeat", (c) => ago(c.heartbeat_at)],
          ["Endpoints", (c) => h("ul", { class: "plain" }, (c.endpoints || []).map((e) => h("li", {}, h("code", {}, e))))],
        ],
        found,
        "No component is registered: processes register when they start.",
        "Components",
      ),
    );
  }, (error) => body.replaceChildren(errorBox(error)));
}
