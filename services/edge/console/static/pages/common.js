// What several pages read: the app's own streams (not dead-letter or KV ones) and a poller.
import { api } from "../api.js";

const INTERNAL = /^(DLQ_|KV_|OBJ_)/;

export async function appStreams() {
  const all = await api("/api/v1/streams");
  return {
    streams: all.filter((s) => !INTERNAL.test(s.name)).sort((a, b) => a.name.localeCompare(b.name)),
    deadLetters: Object.fromEntries(all.filter((s) => s.name.startsWith("DLQ_")).map((s) => [s.name.slice(4), s.messages])),
  };
}

/** Call `refresh` now and every `seconds` until the page is left; errors go to `onError`. */
export async function every(seconds, signal, refresh, onError) {
  await refresh();
  const timer = setInterval(() => refresh().catch(onError), seconds * 1000);
  signal.addEventListener("abort", () => clearInterval(timer));
}
