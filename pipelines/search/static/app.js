// ib-search: the page's behaviour, no framework. Every request goes to this server's /api.
"use strict";

const PAGE_SIZE = 12;
const PICTURES = new Set(["image", "depth", "thermal"]);
const IMU_COLOURS = ["#c0392b", "#27ae60", "#2471a3", "#d68910", "#7d3c98", "#17a589"];

const $ = (id) => document.getElementById(id);
const state = { collection: "", query: null, offset: 0, filter: {} };

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
  modalities.value = state.filter.modality || "";
  properties.value = state.filter.property || "";
  $("filter-value").value = state.filter.value || "";
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
  if (query.text !== undefined) return `“${query.text}”`;
  if (query.near_id !== undefined) return `more like ${query.label || query.near_id}`;
  return `${query.filename} (${query.modality === "auto" ? "detected" : query.modality})`;
}

function deepLink() {
  const params = new URLSearchParams({ collection: state.collection });
  const query = state.query || {};
  if (query.text !== undefined) params.set("text", query.text);
  else if (query.near_id !== undefined) params.set("near_id", query.near_id);
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
  for (const key of ["text", "near_id", "media", "modality", "filename"]) {
    if (query[key] !== undefined) body[key] = query[key];
  }
  if (remember && query.media === undefined) history.pushState(null, "", deepLink());
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
    $("pager").hidden = true;
    setStatus("");
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
  run({ text });
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
    await run({ media, modality: $("file-modality").value, filename: file.name });
  } catch (err) {
    showError(err.message);
  }
}

// -- results -----------------------------------------------------------------------------------

function render(answer) {
  const items = answer.results.map((hit, index) => card(hit, answer.offset + index + 1));
  $("results").replaceChildren(...items);
  $("pager").hidden = answer.offset === 0 && !answer.more;
  $("previous").disabled = answer.offset === 0;
  $("next").disabled = !answer.more;
  $("page-number").textContent = `page ${Math.floor(answer.offset / PAGE_SIZE) + 1}`;
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
  const properties = element("dl");
  for (const [key, value] of Object.entries(hit.properties)) {
    if (value === null || value === undefined || key === "content_hash") continue;
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
  item.append(
    media,
    element("div", { className: "source", text: name }),
    element("div", { className: "distance", text: `distance ${hit.distance.toFixed(4)}` }),
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

function queryFromUrl(params) {
  if (params.get("text")) return { text: params.get("text") };
  if (params.get("near_id")) return { near_id: params.get("near_id") };
  return null;
}

async function openUrl() {
  const params = new URLSearchParams(location.search);
  state.filter = {};
  for (const key of ["modality", "property", "value"]) {
    if (params.get(key)) state.filter[key] = params.get(key);
  }
  try {
    await loadCollections(params.get("collection"));
  } catch (err) {
    showError(err.message);
    return;
  }
  const query = queryFromUrl(params);
  $("query").value = query && query.text !== undefined ? query.text : "";
  if (query) await run(query, Number(params.get("offset")) || 0, false);
}

function wire() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchText($("query").value);
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
    if (file) searchFile(file);
    else showError("Drop a file: an image, audio, video, depth or thermal image, or an IMU CSV.");
  });
  window.addEventListener("popstate", openUrl);
}

wire();
openUrl();
