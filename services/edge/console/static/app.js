// The console's shell: the key prompt, the theme, the navigation and the router.
import { api, key, ApiError } from "./api.js";
import { h, clear } from "./dom.js";
import { errorBox } from "./ui.js";
import * as overview from "./pages/overview.js";
import * as streams from "./pages/streams.js";
import * as projections from "./pages/projections.js";
import * as deadLetters from "./pages/dead-letters.js";
import * as components from "./pages/components.js";
import * as state from "./pages/state.js";
import * as publish from "./pages/publish.js";

// [pattern over the decoded path parts, page, which render]
const ROUTES = [
  [[], overview.render, "Overview"],
  [["streams"], streams.list, "Streams"],
  [["streams", "*"], streams.events, "Streams"],
  [["streams", "*", "events", "*"], streams.detail, "Streams"],
  [["streams", "*", "id", "*"], streams.byId, "Streams"],
  [["projections"], projections.list, "Projections"],
  [["projections", "*"], projections.keys, "Projections"],
  [["dead-letters"], deadLetters.list, "Dead letters"],
  [["dead-letters", "*"], deadLetters.letters, "Dead letters"],
  [["components"], components.render, "Components"],
  [["state"], state.buckets, "Shared state"],
  [["state", "*"], state.keys, "Shared state"],
  [["state", "*", "*"], state.entry, "Shared state"],
  [["publish"], publish.render, "Publish"],
];

const main = document.getElementById("main");
let session = null;
let running = null; // the current page's AbortController: leaving a page stops its live parts

function match(parts) {
  for (const [pattern, render, section] of ROUTES) {
    if (pattern.length === parts.length && pattern.every((p, i) => p === "*" || p === parts[i])) {
      return { render, section, params: parts.filter((_, i) => pattern[i] === "*") };
    }
  }
  return null;
}

function parse() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

async function show() {
  running?.abort();
  running = new AbortController();
  const { parts, query } = parse();
  const found = match(parts);
  for (const link of document.querySelectorAll("#nav a")) {
    if (found !== null && link.textContent === found.section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.getElementById("nav").classList.remove("open");
  document.getElementById("menu").setAttribute("aria-expanded", "false");
  clear(main);
  if (!found) {
    main.append(h("h1", {}, "Not found"), h("p", { class: "empty" }, "No page here. ", h("a", { href: "#/" }, "Go to the overview.")));
    return;
  }
  const ctx = { main, params: found.params, query, signal: running.signal, canWrite: canWrite(), session };
  try {
    await found.render(ctx);
  } catch (error) {
    if (ctx.signal.aborted) return;
    if (error instanceof ApiError && error.status === 401) return askForKey(error.detail);
    main.append(errorBox(error));
  }
  document.title = `${found.section} · bus console`;
}

function canWrite() {
  const scopes = session?.scopes || [];
  return scopes.includes("write") || scopes.includes("admin");
}

function askForKey(reason) {
  const dialog = document.getElementById("login");
  document.getElementById("login-error").textContent = reason && key.get() ? reason : "";
  document.getElementById("login-key").value = "";
  if (!dialog.open) dialog.showModal();
}

async function start() {
  try {
    session = await api("/api/v1/session");
  } catch (error) {
    session = null;
    if (error instanceof ApiError && error.status === 401) return askForKey(error.detail);
    clear(main).append(errorBox(error));
    return;
  }
  document.getElementById("app-name").textContent = session.app;
  document.body.classList.toggle("read-only", !canWrite());
  const scopes = session.scopes.length ? session.scopes.join(" + ") : "public reads, no key";
  document.getElementById("who").textContent = canWrite() ? scopes : `${scopes} · read-only`;
  document.getElementById("forget").hidden = !key.get();
  document.getElementById("use-key").hidden = Boolean(key.get()); // public reads: a key adds writes
  await show();
}

function theme(choice) {
  const dark = choice ? choice === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = dark ? "dark" : "light";
  document.getElementById("theme").textContent = dark ? "Light" : "Dark";
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  const value = document.getElementById("login-key").value.trim();
  if (!value) return event.preventDefault();
  key.set(value);
  start();
});
document.getElementById("login").addEventListener("cancel", (event) => session || event.preventDefault());
document.getElementById("use-key").addEventListener("click", () => askForKey(""));
document.getElementById("forget").addEventListener("click", () => {
  key.forget();
  location.hash = "#/";
  start();
});
document.getElementById("theme").addEventListener("click", () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  localStorage.setItem("bus.theme", next);
  theme(next);
});
document.getElementById("menu").addEventListener("click", () => {
  const open = document.getElementById("nav").classList.toggle("open");
  document.getElementById("menu").setAttribute("aria-expanded", String(open));
});
matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => theme(localStorage.getItem("bus.theme")));
window.addEventListener("hashchange", () => session && show());
theme(localStorage.getItem("bus.theme"));
start();
