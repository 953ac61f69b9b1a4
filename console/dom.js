// Building the pages from API data: elements and text nodes only, never HTML parsed from a
// string, so nothing the API returns can become markup.

/** An element: `h("a", {href: "#/endpoints"}, "Endpoints")`; `on…` attributes are listeners. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false).map(
    (c) => (c instanceof Node ? c : String(c)),
  ));
  return element;
}

// Every status reads as a word with a symbol; colour only repeats what they say.
const SYMBOLS = {
  SUCCESS: "✓", DELIVERED: "✓", READY: "✓",
  FAILURE: "✗", DEAD_LETTERED: "✗", UPDATE_FAILED: "✗",
  PENDING: "…", UPDATE_PENDING: "…",
  STARTED: "▶", UPDATE_IN_PROGRESS: "▶",
  CANCELLED: "⊘", DELETE_IN_PROGRESS: "⊘",
};

export function statusBadge(status) {
  const word = status ?? "UNKNOWN";
  return h("span", { class: `status status-${word.toLowerCase()}`, "data-status": word },
    h("span", { "aria-hidden": "true" }, SYMBOLS[word] ?? "?"), " ", word.replaceAll("_", " "));
}

/** A `<time>` in the reader's locale; a dash for none. */
export function time(value) {
  if (value === null || value === undefined) return "—";
  const at = new Date(value);
  return h("time", { datetime: at.toISOString() }, at.toLocaleString());
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 90) return `${value} s`;
  if (value < 5400) return `${Math.round(value / 60)} min`;
  return `${(value / 3600).toFixed(1)} h`;
}

export function percent(rate) {
  return rate === null || rate === undefined ? "—" : `${(rate * 100).toFixed(rate === 1 ? 0 : 1)} %`;
}

export function json(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/** A table whose rows are kept by key: a row is rebuilt only when its data changed, so live
 * updates leave the reader's focus where it was. */
export function liveTable(caption, headings) {
  const body = h("tbody");
  const table = h("table", {}, h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headings.map((text) => h("th", { scope: "col" }, text)))), body);
  return {
    element: h("div", { class: "table" }, table),
    update(items, keyOf, cellsOf) {
      const old = new Map([...body.rows].map((row) => [row.dataset.key, row]));
      const rows = items.map((item) => {
        const key = keyOf(item);
        const signature = JSON.stringify(item);
        const kept = old.get(key);
        if (kept && kept.dataset.signature === signature) return kept;
        const cells = cellsOf(item).map((cell, i) => h("td", { "data-label": headings[i] }, cell));
        return h("tr", { "data-key": key, "data-signature": signature }, cells);
      });
      body.replaceChildren(...rows);
    },
  };
}

/** `<dl>` of label → value, with each value's element to update in place. */
export function facts(labels) {
  const values = {};
  const list = h("dl", { class: "facts" }, Object.entries(labels).map(([name, label]) => {
    values[name] = h("dd", {}, "—");
    return h("div", {}, h("dt", {}, label), values[name]);
  }));
  return {
    element: list,
    // Only a changed value is replaced, so a focused link in it stays focused.
    set(name, ...content) {
      const next = h("dd", {}, ...content);
      if (next.innerHTML !== values[name].innerHTML) values[name].replaceChildren(...next.childNodes);
    },
  };
}
