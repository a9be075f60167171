// The edge's HTTP API, with the tab's key as a bearer header (never a cookie, never the URL).

const KEY = "bus.api-key";

export const key = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => sessionStorage.setItem(KEY, value),
  forget: () => sessionStorage.removeItem(KEY),
};

/** A refusal: the status and the problem+json title and detail. */
export class ApiError extends Error {
  constructor(status, title, detail, problem) {
    super(detail ? `${title}: ${detail}` : title);
    this.status = status;
    this.title = title;
    this.detail = detail;
    this.problem = problem;
  }
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const current = key.get();
  if (current) out.Authorization = `Bearer ${current}`;
  return out;
}

/** Call the API: JSON in and out; a non-2xx answer throws ApiError. */
export async function api(path, { method = "GET", body, headers: extra, response = false } = {}) {
  const init = { method, headers: headers(extra), cache: "no-store", credentials: "omit" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof body === "string" ? body : JSON.stringify(body);
  }
  const answer = await fetch(path, init);
  if (!answer.ok) {
    let problem = {};
    try {
      problem = await answer.json();
    } catch {
      // not problem+json
    }
    throw new ApiError(answer.status, problem.title || answer.statusText || "Error", problem.detail || "", problem);
  }
  if (response) return answer;
  return answer.status === 204 ? null : answer.json();
}

/** Server-Sent Events read with fetch (EventSource cannot send a bearer header). */
export async function* events(path, signal) {
  const answer = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal, credentials: "omit" });
  if (!answer.ok) throw new ApiError(answer.status, answer.statusText || "Error", "");
  const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = { id: "", event: "message", data: "" };
      for (const line of buffer.slice(0, end).split("\n")) {
        const colon = line.indexOf(":");
        const field = line.slice(0, colon);
        const text = line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") frame.data += frame.data ? `\n${text}` : text;
        else if (field === "id" || field === "event") frame[field] = text;
      }
      buffer = buffer.slice(end + 2);
      if (frame.data) yield frame;
    }
  }
}
