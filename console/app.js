// The console's shell: sign-in, the routes between pages, and each page's live updates.

import { ApiError, api, session } from "./api.js";
import { h } from "./dom.js";
import { deadLettersPage, endpointPage, endpointsPage, taskPage } from "./pages.js";

const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");

const ROUTES = [
  [/^#\/endpoints\/([^/?]+)$/, endpointPage],
  [/^#\/tasks\/([^/?]+)$/, taskPage],
  [/^#\/dead-letters(?:\?endpoint=([^&]*))?$/, deadLettersPage],
  [/^#\/endpoints$/, endpointsPage],
];

// The page on screen; replaced (and its updates stopped) on every navigation.
let current = null;

/** What a page gets: where to draw, how to update live, and how to report. */
class Page {
  constructor() {
    this.active = true;
    this.notice = h("p", { class: "notice", role: "status", "aria-live": "polite" });
  }

  /** Runs `update` now and again `ms` after each run ends, while the page is shown and until
   * `update` answers `false`. */
  every(ms, update) {
    const run = async () => {
      if (!this.active) return;
      let again = true;
      try {
        again = (await update()) !== false;
      } catch (error) {
        this.fail(error);
      }
      if (this.active && again) setTimeout(run, ms);
    };
    run();
  }

  /** Reports an error; a rejected key leads back to the sign-in form. */
  fail(error) {
    if (!this.active) return;
    if (error instanceof ApiError && error.status === 401) {
      session.signOut();
      show("Your API key was not accepted. Sign in again.");
      return;
    }
    this.notice.textContent = `Error: ${error.message}`;
  }

  say(message) {
    this.notice.textContent = message;
  }

  stop() {
    this.active = false;
  }
}

function signInForm(message) {
  const key = h("input", { id: "api-key", name: "api-key", type: "password", required: true, autocomplete: "current-password" });
  const problem = h("p", { class: "notice", role: "alert" }, message ?? "");
  const form = h("form", { class: "sign-in", "aria-labelledby": "sign-in-title" },
    h("h1", { id: "sign-in-title", tabindex: "-1" }, "Sign in"),
    h("p", {}, "The console shows what your team's API key may see. The key stays in this browser tab."),
    h("label", { for: "api-key" }, "API key"),
    key,
    h("button", { type: "submit" }, "Sign in"),
    problem);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    session.signIn(key.value.trim());
    try {
      await api("GET", "/v1/model-endpoints");
    } catch (error) {
      session.signOut();
      problem.textContent = error instanceof ApiError && error.status === 401
        ? "That API key is not accepted."
        : `Cannot reach the gateway: ${error.message}`;
      key.focus();
      return;
    }
    if (!location.hash || location.hash === "#/sign-in") location.hash = "#/endpoints";
    else show();
  });
  return form;
}

/** Draws the page the address names, or the sign-in form. */
function show(message) {
  current?.stop();
  current = null;
  signOut.hidden = !session.key();
  if (!session.key()) {
    main.replaceChildren(signInForm(message));
    main.querySelector("input").focus();
    return;
  }
  const route = ROUTES.find(([pattern]) => pattern.test(location.hash));
  if (!route) {
    location.replace("#/endpoints");
    return;
  }
  const [pattern, render] = route;
  const params = location.hash.match(pattern).slice(1).map((p) => (p ? decodeURIComponent(p) : p));
  current = new Page();
  main.replaceChildren();
  render(main, current, ...params);
  // Keyboard and screen-reader users land on the new page's heading.
  main.querySelector("h1")?.focus();
}

signOut.addEventListener("click", () => {
  session.signOut();
  show("Signed out.");
});
window.addEventListener("hashchange", () => show());
show();
