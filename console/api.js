// The API as the console calls it. The signed-in key is kept for this browser tab only
// (sessionStorage) and sent in the Authorization header of each call — never in a URL.

const KEY_ITEM = "ferry.apiKey";
// The gateway's root, should it be served below a path prefix.
const ROOT = location.pathname.replace(/\/console\/.*$/, "");

export const session = {
  key: () => sessionStorage.getItem(KEY_ITEM),
  signIn: (key) => sessionStorage.setItem(KEY_ITEM, key),
  signOut: () => sessionStorage.removeItem(KEY_ITEM),
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }

  /** The route is not served by this gateway (an older one). */
  get unavailable() {
    return this.status === 404 || this.status === 405;
  }
}

function detailOf(body, fallback) {
  const detail = body?.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((problem) => problem.msg).join("; ");
  return fallback;
}

/** Calls `path` with `query` and a JSON `body`; the parsed answer, or an ApiError. */
export async function api(method, path, { query = {}, body } = {}) {
  const url = new URL(ROOT + path, location.origin);
  for (const [name, value] of Object.entries(query)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Authorization: `Bearer ${session.key()}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
    // The key travels in the header alone; without ambient credentials the browser also never
    // answers a 401 with its own sign-in prompt.
    credentials: "omit",
  });
  const text = await response.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) throw new ApiError(response.status, detailOf(parsed, `${response.status} ${response.statusText}`));
  return parsed;
}
