// ib-search: the page's behaviour, no framework. Every request goes to this server's /api.
"use strict";

const PAGE_SIZE = 12;
const MORE_ITEMS = 2; // a composed query: the search box (or its file) and up to two more items
const PICTURES = new Set(["image", "depth", "thermal"]);
const IMU_COLOURS = ["#c0392b", "#27ae60", "#2471a3", "#d68910", "#7d3c98", "#17a589"];

const $ = (id) => document.getElementById(id);
// firstFile: the file chosen or dropped for the first item, kept so a composed query can use it;
// weightedAlone: a link's one text item with a weight (composed of one item).
const state = {
  collection: "", query: null, offset: 0, filter: {}, firstFile: null, canCompose: true, weightedAlone: false,
};

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else if (key in node && key !== "list") node[key] = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(message) {
  $("status").textContent = message;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  };
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw new Error(`the search server does not answer (${err.message})`);
  }
  let answer = {};
  try {
    answer = await response.json();
  } catch (err) {
    answer = { error: `${response.status} ${response.statusText}` };
  }
  if (!response.ok) throw new Error(answer.error || `${response.status} ${response.statusText}`);
  return answer;
}

// -- collections and their layout -------------------------------------------------------------

async function loadCollections(wanted) {
  const answer = await api("/api/collections");
  $("tenant").textContent = answer.tenant ? `tenant ${answer.tenant}` : "";
  $("tenant").hidden = !answer.tenant;
  state.canCompose = answer.composed !== false;
  updateComposing();
  const select = $("collection");
  select.replaceChildren(...answer.collections.map((name) => element("option", { value: name, text: name })));
  const chosen = wanted || answer.default;
  if (chosen && !answer.collections.includes(chosen)) {
    throw new Error(`collection ${JSON.stringify(chosen)} does not exist`);
  }
  select.value = chosen || answer.collections[0] || "";
  state.collection = select.value;
  await loadInfo();
}

async function loadInfo() {
  const info = await api(`/api/info?collection=${encodeURIComponent(state.collection)}`);
  const modalities = $("filter-modality");
  modalities.replaceChildren(
    element("option", { value: "", text: "every modality" }),
    ...info.modalities.map((m) => element("option", { value: m, text: m })),
  );
  const properties = $("filter-property");
  properties.replaceChildren(
    element("option", { value: "", text: "no property filter" }),
    ...info.properties.map((p) => element("option", { value: p.name, text: `${p.name} (${p.type})` })),
  );
  showFilter();
}

// The filter controls as state.filter has it. A modality or property this collection lacks (a
// link's) stays chosen, so the page shows what was asked for next to the error about it.
function showFilter() {
  choose($("filter-modality"), state.filter.modality || "");
  choose($("filter-property"), state.filter.property || "");
  $("filter-value").value = state.filter.value || "";
}

function choose(select, value) {
  if (![...select.options].some((option) => option.value === value)) {
    select.append(element("option", { value, text: value }));
  }
  select.value = value;
}

// -- queries -----------------------------------------------------------------------------------

function readFilter() {
  const filter = {};
  if ($("filter-modality").value) filter.modality = $("filter-modality").value;
  if ($("filter-property").value) {
    filter.property = $("filter-property").value;
    filter.value = $("filter-value").value;
  }
  return filter;
}

function describe(query) {
  if (query.items !== undefined) return describeComposed(query.items);
  if (query.alpha !== undefined) return `“${query.text}” (hybrid, alpha ${query.alpha})`;
  if (query.text !== undefined) return `“${query.text}”`;
  if (query.near_id !== undefined) return `more like ${query.label || query.near_id}`;
  return `${query.filename} (${query.modality === "auto" ? "detected" : query.modality})`;
}

// “a dog” + 0.5 × cat.jpg (detected) − 0.3 × “rain”: each item with its weight's sign and size.
function describeComposed(items) {
  return items.map((item, index) => {
    const size = Math.abs(item.weight);
    const shown = size === 1 ? describe(item) : `${size} × ${describe(item)}`;
    if (index === 0) return item.weight < 0 ? `− ${shown}` : shown;
    return `${item.weight < 0 ? "−" : "+"} ${shown}`;
  }).join(" ");
}

// Files are not put in links (a link is no place for a file's bytes): only such queries are linked.
function linkable(query) {
  if (query.media !== undefined) return false;
  return query.items === undefined || query.items.every((item) => item.text !== undefined);
}

function deepLink() {
  const params = new URLSearchParams({ collection: state.collection });
  const query = state.query || {};
  if (query.items !== undefined) {
    for (const item of query.items) {
      params.append("text", item.text);
      params.append("weight", item.weight);
    }
  } else if (query.text !== undefined) {
    params.set("text", query.text);
    if (query.alpha !== undefined) params.set("alpha", query.alpha);
  } else if (query.near_id !== undefined) params.set("near_id", query.near_id);
  if (state.offset) params.set("offset", state.offset);
  for (const [key, value] of Object.entries(state.filter)) if (value) params.set(key, value);
  return `/?${params}`;
}

async function run(query, offset = 0, remember = true) {
  state.query = query;
  state.offset = offset;
  showError("");
  setStatus(`Searching for ${describe(query)}…`);
  $("results").setAttribute("aria-busy", "true");
  const body = { collection: state.collection, offset, limit: PAGE_SIZE, filter: state.filter };
  for (const key of ["text", "alpha", "near_id", "media", "modality", "filename", "items"]) {
    if (query[key] !== undefined) body[key] = query[key];
  }
  if (remember && linkable(query)) history.pushState(null, "", deepLink());
  try {
    const answer = await api("/api/search", body);
    render(answer);
    const first = offset + 1;
    const last = offset + answer.results.length;
    setStatus(answer.results.length
      ? `Results ${first}–${last} for ${describe(query)}`
      : `No results for ${describe(query)}`);
  } catch (err) {
    $("results").replaceChildren();
    showPager();
    setStatus(`Could not search for ${describe(query)}`);
    showError(err.message);
  } finally {
    $("results").removeAttribute("aria-busy");
  }
}

function searchText(text) {
  if (!text.trim()) {
    showError("Type something to search for, or choose a file.");
    return;
  }
  try {
    run($("hybrid").checked ? { text, alpha: readNumber($("alpha"), "alpha", 0, 1) } : { text });
  } catch (err) {
    showError(err.message);
  }
}

function readAsBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(new Error(`cannot read ${file.name}`));
    reader.readAsDataURL(file);
  });
}

async function searchFile(file) {
  if (!file) return;
  try {
    const media = await readAsBase64(file);
    state.firstFile = { media, modality: $("file-modality").value, filename: file.name };
    if (composing()) {
      $("query").value = "";
      updateComposing();
      await run({ items: await readItems() });
    } else {
      await run(state.firstFile);
    }
  } catch (err) {
    showError(err.message);
  }
}

// -- composed queries --------------------------------------------------------------------------

function readNumber(input, name, low = -Infinity, high = Infinity) {
  const value = input.value.trim() === "" ? NaN : Number(input.value);
  if (!Number.isFinite(value) || value < low || value > high) {
    const range = Number.isFinite(low) ? ` from ${low} to ${high}` : "";
    throw new Error(`${name} must be a number${range}, not “${input.value}”`);
  }
  return value;
}

// Composing: more items than the search box, or a link's one weighted item.
function composing() {
  return $("items").children.length > 0 || state.weightedAlone;
}

function updateComposing() {
  const on = composing();
  document.body.classList.toggle("composing", on);
  $("add-item").disabled = !state.canCompose || $("items").children.length >= MORE_ITEMS;
  if (!state.canCompose) {
    $("compose-note").textContent = "Composed queries need our inference server to embed their "
      + "items: this ib-search was started without --vectorizer-url.";
  }
  $("hybrid").disabled = on;
  $("hybrid-note").textContent = on
    ? "not for a composed query: hybrid search is of one text query"
    : "1: vector only, 0: keywords only; one text query";
  const file = state.firstFile;
  $("first-file").hidden = !(on && file && !$("query").value.trim());
  $("first-file-name").textContent = file ? describe(file) : "";
}

function addItem(values = {}) {
  const number = $("items").children.length + 2;
  const choices = [...$("file-modality").options].map((o) => element("option", { value: o.value, text: o.text }));
  const row = element("li", { className: "item" });
  const text = element("input", {
    type: "search",
    className: "item-text",
    placeholder: "Text, or choose or drop a file",
    autocomplete: "off",
    value: values.text || "",
  });
  const file = element("input", { type: "file", className: "item-file", accept: $("file").accept });
  const weight = element("input", {
    type: "number",
    className: "item-weight weight",
    step: "0.1",
    value: values.weight === undefined ? "1" : String(values.weight),
  });
  const remove = element("button", { type: "button", className: "remove-item secondary", text: "Remove" });
  text.addEventListener("input", () => {
    if (text.value) file.value = ""; // text or a file, never both
  });
  file.addEventListener("change", () => {
    if (file.files.length) text.value = "";
  });
  remove.addEventListener("click", () => {
    row.remove();
    renumber();
    updateComposing();
    $("add-item").focus();
  });
  row.append(
    element("span", { className: "item-number", "aria-hidden": "true" }),
    element("label", { className: "hidden item-text-label" }), text,
    element("label", { className: "hidden item-file-label" }), file,
    element("span", { className: "field" },
      element("label", { className: "item-modality-label", text: "It is" }),
      element("select", { className: "item-modality" }, ...choices)),
    element("span", { className: "field" },
      element("label", { className: "item-weight-label", text: "weight" }), weight),
    remove,
  );
  $("items").append(row);
  renumber();
  updateComposing();
  return row;
}

// Rows keep ids and labels that say their number, also after one above is removed.
function renumber() {
  [...$("items").children].forEach((row, index) => {
    const number = index + 2;
    row.dataset.item = number;
    row.querySelector(".item-number").textContent = number;
    for (const part of ["text", "file", "modality", "weight"]) {
      const id = `item-${number}-${part}`;
      row.querySelector(`.item-${part}`).id = id;
      row.querySelector(`.item-${part}-label`).htmlFor = id;
    }
    row.querySelector(".item-text-label").textContent = `Item ${number} text`;
    row.querySelector(".item-file-label").textContent = `Item ${number} file`;
    row.querySelector(".remove-item").setAttribute("aria-label", `Remove item ${number}`);
  });
}

// Every item with its weight: the search box (or the file chosen for it), then each row.
async function readItems() {
  const first = $("query").value.trim() ? { text: $("query").value } : state.firstFile;
  if (!first) throw new Error("Item 1 is empty: type text in the search box, or choose or drop a file.");
  const items = [{ ...first, weight: readNumber($("weight"), "Item 1's weight") }];
  for (const row of $("items").children) {
    const number = row.dataset.item;
    const text = row.querySelector(".item-text").value;
    const file = row.querySelector(".item-file").files[0];
    let item;
    if (text.trim()) item = { text };
    else if (file) {
      const media = await readAsBase64(file);
      item = { media, modality: row.querySelector(".item-modality").value, filename: file.name };
    } else throw new Error(`Item ${number} is empty: type text, choose a file, or remove it.`);
    items.push({ ...item, weight: readNumber(row.querySelector(".item-weight"), `Item ${number}'s weight`) });
  }
  return items;
}

async function searchComposed() {
  try {
    await run({ items: await readItems() });
  } catch (err) {
    showError(err.message);
  }
}

// -- results -----------------------------------------------------------------------------------

function render(answer) {
  const items = answer.results.map((hit, index) => card(hit, answer.offset + index + 1));
  $("results").replaceChildren(...items);
  showPager(answer.offset, answer.more);
}

// Previous and Next work only where there is such a page; the pager shows when there is more
// than one page. A link's offset need not be a whole number of pages: its page is the number of
// Previous presses back to the first, plus one.
function showPager(offset = 0, more = false) {
  $("pager").hidden = offset === 0 && !more;
  $("previous").disabled = offset === 0;
  $("next").disabled = !more;
  $("page-number").textContent = `page ${Math.ceil(offset / PAGE_SIZE) + 1}`;
}

function card(hit, rank) {
  const name = hit.source_id || hit.id;
  const item = element("li", {
    className: "result",
    "data-id": hit.id,
    "data-source-id": hit.source_id || "",
    "aria-label": `Result ${rank}: ${name}`,
  });
  const media = element("div", { className: "media" });
  for (const entry of hit.media) media.append(mediaView(entry, name));
  // A text field is shown as the hit's medium: not again among its properties.
  const texts = new Set(hit.media.filter((entry) => entry.modality === "text").map((entry) => entry.field));
  const properties = element("dl");
  for (const [key, value] of Object.entries(hit.properties)) {
    if (value === null || value === undefined || key === "content_hash" || texts.has(key)) continue;
    const shown = typeof value === "object" ? JSON.stringify(value) : String(value);
    properties.append(element("dt", { text: key }), element("dd", { text: shown }));
  }
  const more = element("button", {
    type: "button",
    className: "more-like-this secondary",
    text: "More like this",
    "aria-label": `More like ${name}`,
  });
  more.addEventListener("click", () => run({ near_id: hit.id, label: name }));
  const measure = typeof hit.score === "number"
    ? `score ${hit.score.toFixed(4)}` // a hybrid search ranks by a fused score, not a distance
    : `distance ${hit.distance.toFixed(4)}`;
  item.append(
    media,
    element("div", { className: "source", text: name }),
    element("div", { className: "distance", text: measure }),
    properties,
    more,
  );
  return item;
}

function mediaView(entry, name) {
  const box = element("figure", { className: `medium ${entry.modality}`, "data-field": entry.field });
  box.style.margin = "0";
  const range = entry.start !== undefined ? `#t=${entry.start},${entry.end}` : "";
  if (entry.modality === "text") {
    box.append(element("p", { className: "text", text: entry.text }));
  } else if (entry.refused) {
    // The server will not send it (outside the media roots, not media): say why.
    box.append(element("p", { className: "refused", text: entry.refused }));
  } else if (PICTURES.has(entry.modality)) {
    box.append(element("img", { src: `${entry.url}?thumb=1`, alt: `${entry.modality} of ${name}`, loading: "lazy" }));
  } else if (entry.modality === "audio") {
    box.append(element("audio", { src: entry.url + range, controls: true, preload: "metadata" }));
  } else if (entry.modality === "video") {
    box.append(element("video", { src: entry.url + range, controls: true, preload: "metadata", muted: true }));
  } else if (entry.modality === "imu" && entry.content_type === "application/x-npy") {
    box.append(element("p", { className: "label", text: "an IMU recording (.npy), not plotted" }));
  } else if (entry.modality === "imu") {
    const canvas = element("canvas", { width: 320, height: 120, role: "img", "aria-label": `IMU of ${name}` });
    box.append(canvas);
    plotImu(entry.url, canvas);
  }
  const caption = entry.start !== undefined
    ? `${entry.field} · ${entry.start}–${entry.end} s`
    : entry.field;
  box.append(element("figcaption", { className: "label", text: caption }));
  return box;
}

async function plotImu(url, canvas) {
  let text;
  try {
    const response = await fetch(url);
    if (!response.ok) throw new Error(response.statusText);
    text = await response.text();
  } catch (err) {
    canvas.replaceWith(element("p", { className: "label", text: `cannot load the IMU data (${err.message})` }));
    return;
  }
  const rows = text.trim().split(/\r?\n/).map((line) => line.split(",").map(Number));
  const data = rows.filter((row) => row.every((v) => Number.isFinite(v)));
  if (!data.length) return;
  const channels = Math.min(6, data[0].length);
  const step = Math.max(1, Math.floor(data.length / canvas.width));
  const context = canvas.getContext("2d");
  for (let c = 0; c < channels; c++) {
    const values = data.map((row) => row[c]);
    const low = Math.min(...values);
    const high = Math.max(...values);
    const span = high - low || 1;
    context.strokeStyle = IMU_COLOURS[c];
    context.lineWidth = 1;
    context.beginPath();
    for (let i = 0; i < values.length; i += step) {
      const x = (i / (values.length - 1 || 1)) * canvas.width;
      const y = canvas.height - 4 - ((values[i] - low) / span) * (canvas.height - 8);
      if (i === 0) context.moveTo(x, y);
      else context.lineTo(x, y);
    }
    context.stroke();
  }
}

// -- wiring ------------------------------------------------------------------------------------

// A link's query: text (with alpha: hybrid), near_id, or texts each with a weight (composed).
function queryFromUrl(params) {
  const texts = params.getAll("text").filter((text) => text);
  const weights = params.getAll("weight");
  if (texts.length > 1 || weights.length) {
    if (weights.length && weights.length !== texts.length) {
      throw new Error(`the link has ${texts.length} text items and ${weights.length} weights: give one weight each`);
    }
    const items = texts.map((text, index) => {
      const weight = weights.length ? Number(weights[index]) : 1;
      if (weights.length && (weights[index].trim() === "" || !Number.isFinite(weight))) {
        throw new Error(`the link's weight “${weights[index]}” is not a number`);
      }
      return { text, weight };
    });
    return items.length === 1 && items[0].weight === 1 ? { text: items[0].text } : { items };
  }
  if (texts.length) {
    const query = { text: texts[0] };
    if (params.has("alpha")) {
      const alpha = Number(params.get("alpha"));
      if (params.get("alpha").trim() === "" || !(alpha >= 0 && alpha <= 1)) {
        throw new Error(`the link's alpha “${params.get("alpha")}” is not a number from 0 to 1`);
      }
      query.alpha = alpha;
    }
    return query;
  }
  if (params.get("near_id")) return { near_id: params.get("near_id") };
  return null;
}

// A link's texts, weights and alpha as given, for the controls to show when they make no query.
function queryAsGiven(params) {
  const texts = params.getAll("text").filter((text) => text);
  const weights = params.getAll("weight");
  if (texts.length > 1 || weights.length) {
    return { items: texts.map((text, index) => ({ text, weight: weights[index] ?? "" })) };
  }
  return { text: texts[0] || "", alpha: params.get("alpha") ?? undefined };
}

// The controls as the query has them, so a link (or going back) shows what it searches.
function showQuery(query) {
  $("items").replaceChildren();
  $("weight").value = "1";
  $("hybrid").checked = false;
  state.firstFile = null;
  const items = query && query.items !== undefined ? query.items : [];
  state.weightedAlone = items.length === 1;
  if (items.length) {
    $("query").value = items[0].text;
    $("weight").value = String(items[0].weight);
    for (const item of items.slice(1)) addItem(item);
  } else {
    $("query").value = query && query.text !== undefined ? query.text : "";
    if (query && query.alpha !== undefined) {
      $("hybrid").checked = true;
      $("alpha").value = String(query.alpha);
    }
  }
  updateComposing();
}

// A link (opened, or gone back to): its query in the controls, then its results. When it cannot
// be searched (no such collection, Weaviate unreachable, weights that do not fit), the controls
// still hold its query as given, for the user to fix.
async function openUrl() {
  const params = new URLSearchParams(location.search);
  state.filter = {};
  for (const key of ["modality", "property", "value"]) {
    if (params.get(key)) state.filter[key] = params.get(key);
  }
  showError("");
  let query = null;
  let problem = null;
  try {
    query = queryFromUrl(params);
  } catch (err) {
    problem = err;
  }
  showQuery(query || queryAsGiven(params));
  showFilter();
  try {
    await loadCollections(params.get("collection"));
  } catch (err) {
    showError(err.message);
    return;
  }
  if (problem) showError(problem.message);
  else if (query) await run(query, Number(params.get("offset")) || 0, false);
}

function wire() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (composing()) searchComposed();
    else searchText($("query").value);
  });
  $("add-item").addEventListener("click", () => addItem().querySelector(".item-text").focus());
  $("query").addEventListener("input", () => {
    if ($("query").value.trim()) state.firstFile = null; // the text is item 1 now
    updateComposing();
  });
  $("forget-first-file").addEventListener("click", () => {
    state.firstFile = null;
    updateComposing();
    $("query").focus();
  });
  $("collection").addEventListener("change", async () => {
    state.collection = $("collection").value;
    state.filter = {};
    showError("");
    try {
      await loadInfo();
    } catch (err) {
      showError(err.message);
    }
  });
  $("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.filter = readFilter();
    if (state.query) run(state.query, 0);
  });
  $("file").addEventListener("change", () => {
    searchFile($("file").files[0]);
    $("file").value = "";
  });
  $("previous").addEventListener("click", () => run(state.query, Math.max(0, state.offset - PAGE_SIZE)));
  $("next").addEventListener("click", () => run(state.query, state.offset + PAGE_SIZE));
  document.addEventListener("dragover", (event) => {
    event.preventDefault();
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragleave", () => document.body.classList.remove("dragging"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    document.body.classList.remove("dragging");
    const file = event.dataTransfer && event.dataTransfer.files[0];
    const row = event.target instanceof Element ? event.target.closest("#items > li") : null;
    if (file && row) {
      // Dropped on a composed query's item: that item's file, searched with the others.
      row.querySelector(".item-file").files = event.dataTransfer.files;
      row.querySelector(".item-text").value = "";
      searchComposed();
    } else if (file) searchFile(file);
    else showError("Drop a file: an image, audio, video, depth or thermal image, or an IMU CSV.");
  });
  window.addEventListener("popstate", openUrl);
}

wire();
openUrl();
