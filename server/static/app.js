// CheXtriev web page: plain JavaScript, no build step. Talks to the JSON API under data-api.
"use strict";

const API = document.body.dataset.api;
const $ = (id) => document.getElementById(id);
const state = { token: sessionStorage.getItem("chextriev-token") || "", classNames: [], file: null,
  payload: null, queryImage: null, blobCache: new Map(), current: null, ready: false };

// ---------------------------------------------------------------- API helpers
function headers() { return state.token ? { Authorization: `Bearer ${state.token}` } : {}; }

async function apiFetch(path, options = {}) {
  const response = await fetch(path.startsWith(`${API}/`) ? path : `${API}${path}`,
    { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) { $("token-box").hidden = false; }
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { const body = await response.json(); if (body.error) message = body.error.message; } catch (_) { /* not JSON */ }
    const error = new Error(message); error.status = response.status; throw error;
  }
  return response;
}
async function apiJSON(path, options) { return (await apiFetch(path, options)).json(); }

// Images behind the token cannot use <img src>: fetch them as blobs (cached by URL).
async function blobURL(path, options) {
  const key = options ? `${path}#${options.cacheKey || ""}` : path;
  if (!state.blobCache.has(key)) {
    state.blobCache.set(key, apiFetch(path, options).then((r) => r.blob()).then((b) => URL.createObjectURL(b))
      .catch((error) => { state.blobCache.delete(key); throw error; }));
  }
  return state.blobCache.get(key);
}
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the image could not be displayed"));
    image.src = src;
  });
}

// ---------------------------------------------------------------- status
async function refreshStatus() {
  const pill = $("status");
  try {
    const status = await (await fetch(`${API}/readyz`, { headers: headers() })).json();
    if (status.error && status.error.code === "unauthorized") {
      $("token-box").hidden = false; pill.className = "status status-bad"; pill.textContent = "token required";
      return;
    }
    if (status.ready) {
      state.ready = true;
      pill.className = "status status-ok";
      pill.textContent = `ready · ${status.index_size.toLocaleString()} images · model ${status.checkpoint_id.slice(0, 8)}`;
      pill.title = `index build ${status.index_build_id}, checkpoint ${status.checkpoint_id}`;
      setClassNames(status.class_names || []);
      return;
    }
    pill.className = status.state === "failed" ? "status status-bad" : "status status-wait";
    pill.textContent = status.state === "failed" ? "not ready: loading failed" : "loading model and index…";
    pill.title = status.error || "";
  } catch (error) {
    pill.className = "status status-bad"; pill.textContent = "server unreachable";
  }
  setTimeout(refreshStatus, 3000);
}

function setClassNames(names) {
  state.classNames = names;
  const select = $("finding");
  select.replaceChildren(new Option("any", ""), ...names.map((name) => new Option(name, name)));
}

// ---------------------------------------------------------------- search
function searchForm() {
  const form = new FormData();
  form.set("k", $("k").value || "10");
  for (const name of ["view", "sex", "age_min", "age_max", "finding"]) {
    const value = $(name).value.trim();
    if (value) form.set(name, value);
  }
  form.set("exclude_same_patient", $("exclude_same_patient").checked ? "1" : "0");
  return form;
}

function showMessage(text, kind = "error") {
  const box = $("message");
  box.textContent = text; box.className = kind === "error" ? "message" : "message info"; box.hidden = !text;
}

function busy(text) {
  $("empty").hidden = true;
  $("results-head").hidden = false;
  $("results-title").innerHTML = `<span class="spinner"></span>${text}`;
  $("results-info").textContent = "";
}

async function searchUpload(file) {
  state.file = file;
  showMessage("");
  busy("Searching…");
  const form = searchForm();
  form.set("image", file);
  try {
    render(await apiJSON("/search", { method: "POST", body: form }));
  } catch (error) {
    failed(error);
  }
}

async function searchArchive(id) {
  state.file = null;
  showMessage("");
  busy(`Searching with archived image ${id}…`);
  try {
    render(await apiJSON(`/search/by-id/${encodeURIComponent(id)}`, { method: "POST", body: searchForm() }));
  } catch (error) {
    failed(error);
  }
}

function failed(error) {
  $("results-title").textContent = "Results";
  $("results").replaceChildren();
  showMessage(error.status === 503 ? `The server is not ready yet: ${error.message}` : error.message);
}

// ---------------------------------------------------------------- rendering
async function render(payload) {
  state.payload = payload;
  const query = payload.query;
  state.queryImage = await loadImage(query.source === "upload" ? query.preview : await blobURL(query.thumbnail_url));
  renderQuery(payload);
  renderResults(payload);
}

function fitCanvas(canvas, width, height, maxSide) {
  const scale = maxSide / Math.max(width, height);
  canvas.width = Math.round(width * scale); canvas.height = Math.round(height * scale);
}

// Draws `image` on `canvas` with region boxes (original-pixel coordinates, scaled by the
// original size) and the `highlight` regions (map index -> label) in the match colour.
function drawRadiograph(canvas, image, boxes, original, { showAll = true, highlight = new Map(), maxSide = 420 } = {}) {
  const width = original.width || image.naturalWidth, height = original.height || image.naturalHeight;
  fitCanvas(canvas, width, height, maxSide);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  const sx = canvas.width / width, sy = canvas.height / height;
  ctx.font = "600 11px system-ui, sans-serif";
  for (const item of boxes || []) {
    if (!item.box) continue;
    const isMatch = highlight.has(item.index);
    if (!showAll && !isMatch) continue;
    const [x1, y1, x2, y2] = item.box;
    ctx.lineWidth = isMatch ? 2.5 : 1;
    ctx.strokeStyle = isMatch ? "#ffd166" : "rgba(79, 163, 255, 0.75)";
    ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
    if (isMatch) {
      const label = highlight.get(item.index);
      const textWidth = ctx.measureText(label).width + 8;
      ctx.fillStyle = "rgba(0, 0, 0, 0.72)";
      ctx.fillRect(x1 * sx, Math.max(0, y1 * sy - 16), textWidth, 16);
      ctx.fillStyle = "#ffd166";
      ctx.fillText(label, x1 * sx + 4, Math.max(12, y1 * sy - 4));
    }
  }
}

function queryOriginal(query) {
  return { width: query.width || state.queryImage.naturalWidth, height: query.height || state.queryImage.naturalHeight };
}

function renderQuery(payload) {
  const query = payload.query;
  $("query-card").hidden = false;
  $("query-meta").textContent = query.source === "upload"
    ? `upload · ${query.format.toUpperCase()} · ${query.width}×${query.height}`
    : `archive #${query.id}${query.view ? " · " + query.view : ""}`;
  $("box-source").textContent = `boxes: ${query.box_source}`;
  drawRadiograph($("query-canvas"), state.queryImage, query.boxes, queryOriginal(query),
    { showAll: $("show-regions").checked, maxSide: 260 });
  const list = $("query-findings");
  list.replaceChildren(...query.findings.map((finding) => {
    const li = document.createElement("li");
    const pct = Math.round(finding.probability * 100);
    li.innerHTML = `<div class="bar ${finding.predicted ? "pos" : ""}"><div class="fill" style="width:${pct}%"></div><span class="name"></span></div><span class="pct">${pct}%</span>`;
    li.querySelector(".name").textContent = finding.name;
    return li;
  }));
  if (query.known_findings) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = `known: ${query.known_findings.length ? query.known_findings.join(", ") : "none"}`;
    list.append(li);
  }
}

function chip(text, shared) {
  const span = document.createElement("span");
  span.className = `chip${shared ? " shared" : ""}`;
  span.textContent = shared ? `✓ ${text}` : text;
  return span;
}

function renderResults(payload) {
  const results = payload.results;
  $("results-title").textContent = `${results.length} similar case${results.length === 1 ? "" : "s"}`;
  const filters = Object.entries(payload.filters || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  $("results-info").textContent = `of ${payload.index_size.toLocaleString()} indexed · ${Math.round(payload.timing_ms.total)} ms`
    + (filters ? ` · filters: ${filters}` : "") + (payload.exclude_same_patient ? " · same patient excluded" : "");
  if (payload.notes) showMessage(payload.notes.join(" "), "info");
  const tiles = results.map((result) => {
    const tile = document.createElement("article");
    tile.className = `tile${result.shared_findings.length ? " hit" : ""}`;
    tile.tabIndex = 0;
    tile.dataset.id = result.id;
    tile.innerHTML = `<div class="thumb"><img alt=""><span class="rank">#${result.rank}</span><span class="sim">${result.similarity.toFixed(3)}</span></div>
      <div class="body"><div class="ids"><span class="iid"></span><span class="vw"></span></div><div class="chips"></div><div class="regions"></div></div>`;
    tile.querySelector(".iid").textContent = `#${result.id} · ${result.image_id || ""}`.trim();
    tile.querySelector(".iid").title = `${result.image_id || ""}\nstudy ${result.study || "?"}, patient ${result.patient || "?"}`;
    tile.querySelector(".vw").textContent = [result.view, result.sex, result.age != null ? Math.round(result.age) : null].filter((x) => x != null && x !== "").join(" · ");
    const chips = tile.querySelector(".chips");
    const known = result.known_findings;
    if (known === null) chips.append(Object.assign(chip("findings unknown"), { className: "chip none" }));
    else if (!known.length) chips.append(Object.assign(chip("no finding"), { className: "chip none" }));
    else known.forEach((name) => chips.append(chip(name, result.shared_findings.includes(name))));
    const regions = tile.querySelector(".regions");
    if (result.matched_regions.length) {
      regions.innerHTML = "best match: " + result.matched_regions.map(() => "<b></b>").join(", ");
      regions.querySelectorAll("b").forEach((b, i) => { b.textContent = result.matched_regions[i].region; });
    }
    blobURL(result.thumbnail_url).then((url) => { tile.querySelector("img").src = url; }).catch(() => {});
    tile.addEventListener("click", () => openCompare(result));
    tile.addEventListener("keydown", (event) => { if (event.key === "Enter") openCompare(result); });
    return tile;
  });
  $("results").replaceChildren(...tiles);
}

// ---------------------------------------------------------------- comparison
async function openCompare(result) {
  const payload = state.payload;
  const detail = await apiJSON(`/images/${result.id}`).catch((error) => { showMessage(error.message); return null; });
  if (!detail) return;
  state.current = { result, detail, resultImage: await loadImage(await blobURL(result.thumbnail_url)) };
  $("compare-title").textContent = `Query vs. case #${result.id} · cosine similarity ${result.similarity.toFixed(3)}`;
  $("cmp-result-caption").textContent = `Case #${result.id}${result.image_id ? " (" + result.image_id + ")" : ""}`
    + (result.known_findings ? ` · known: ${result.known_findings.join(", ") || "no finding"}` : "");
  const select = $("heat-finding");
  const preferred = result.shared_findings[0] || payload.query.predicted_findings[0] || payload.query.findings[0].name;
  select.replaceChildren(...payload.query.findings.map((f) => new Option(f.name, f.name, false, f.name === preferred)));
  renderDetails(result, detail);
  $("compare").hidden = false;
  drawCompare();
}

function renderDetails(result, detail) {
  const box = $("compare-details");
  const regionRows = result.matched_regions.map((m) => `<tr><td></td><td>${m.similarity.toFixed(3)}</td></tr>`).join("");
  box.innerHTML = `<div><h3>Best-matching regions</h3><table class="match-table">${regionRows || "<tr><td>not available for this model</td><td></td></tr>"}</table></div>
    <div><h3>Case</h3><table class="case-table"></table></div>`;
  box.querySelectorAll(".match-table tr").forEach((tr, i) => { if (result.matched_regions[i]) tr.firstChild.textContent = result.matched_regions[i].region; });
  const rows = [["study", detail.study], ["patient", detail.patient], ["view", detail.view], ["sex", detail.sex],
    ["age", detail.age], ["boxes", detail.box_source],
    ["shared findings", result.shared_findings.join(", ") || "none"]];
  const table = box.querySelector(".case-table");
  for (const [name, value] of rows) {
    const tr = table.insertRow();
    tr.insertCell().textContent = name;
    tr.insertCell().textContent = value == null || value === "" ? "—" : String(value);
  }
}

async function heatmapImage(isQuery) {
  const finding = $("heat-finding").value;
  const query = state.payload.query;
  if (isQuery && query.source === "upload") {
    const form = new FormData(); form.set("image", state.file); form.set("finding", finding);
    return loadImage(await blobURL("/heatmap", { method: "POST", body: form, cacheKey: `${state.file.name}:${state.file.size}:${finding}` }));
  }
  const id = isQuery ? query.id : state.current.result.id;
  return loadImage(await blobURL(`/images/${id}/heatmap?finding=${encodeURIComponent(finding)}`));
}

async function drawCompare() {
  const { result, detail, resultImage } = state.current;
  const query = state.payload.query;
  const highlight = $("regions-on").checked
    ? new Map(result.matched_regions.map((m, i) => [m.index, `${i + 1}. ${m.region}`])) : new Map();
  let qImage = state.queryImage, rImage = resultImage;
  if ($("heat-on").checked) {
    try { [qImage, rImage] = await Promise.all([heatmapImage(true), heatmapImage(false)]); }
    catch (error) { showMessage(`Heatmap failed: ${error.message}`); }
  }
  const options = { showAll: false, highlight };
  drawRadiograph($("cmp-query"), qImage, query.boxes, queryOriginal(query), options);
  drawRadiograph($("cmp-result"), rImage, detail.boxes,
    { width: detail.width || resultImage.naturalWidth, height: detail.height || resultImage.naturalHeight }, options);
}

function closeCompare() { $("compare").hidden = true; state.current = null; }

// ---------------------------------------------------------------- wiring
function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => { if (event.target.files[0]) searchUpload(event.target.files[0]); });
  for (const name of ["dragenter", "dragover"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  drop.addEventListener("drop", (event) => { const file = event.dataTransfer.files[0]; if (file) searchUpload(file); });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") $("file").click(); });
  $("by-id").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("archive-id").value.trim();
    if (id) searchArchive(id);
  });
  $("show-regions").addEventListener("change", () => { if (state.payload) renderQuery(state.payload); });
  for (const id of ["heat-finding", "heat-on", "regions-on"]) $(id).addEventListener("change", () => { if (state.current) drawCompare(); });
  $("compare-close").addEventListener("click", closeCompare);
  $("compare").addEventListener("click", (event) => { if (event.target.id === "compare") closeCompare(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeCompare(); });
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("chextriev-token", state.token);
    state.blobCache.clear();
    $("token-box").hidden = true;
    refreshStatus();
  });
  if (document.body.dataset.needsToken === "true" && !state.token) $("token-box").hidden = false;
  refreshStatus();
}

init();
