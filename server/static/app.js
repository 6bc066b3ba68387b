// CheXtriev viewer page: plain JavaScript, no build step. Talks to the JSON API under data-api;
// the images are drawn by viewport.js (window/level, zoom, pan, overlays).
"use strict";

const API = document.body.dataset.api;
const { Viewport, ViewerGroup } = window.ChextrievViewport;
const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem("chextriev-token") || "", ready: false, file: null, payload: null,
  selected: -1, selection: 0, details: new Map(), blobCache: new Map(), reference: null, opened: null,
  heatFinding: "", lastHeatFinding: "", regionMode: "best", shownRegions: new Set(), caseBoxes: [],
};

// ---------------------------------------------------------------- API helpers
function headers() { return state.token ? { Authorization: `Bearer ${state.token}` } : {}; }

async function apiFetch(path, options = {}) {
  const response = await fetch(path.startsWith(`${API}/`) ? path : `${API}${path}`,
    { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) $("token-box").hidden = false;
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { const body = await response.json(); if (body.error) message = body.error.message; } catch (_) { /* not JSON */ }
    const error = new Error(message); error.status = response.status; throw error;
  }
  return response;
}
const apiJSON = async (path, options) => (await apiFetch(path, options)).json();

// Images behind the token cannot use <img src>: fetch them as blobs, cached by URL and key; the
// oldest are released beyond BLOB_CACHE_SIZE (previews of a long session add up).
const BLOB_CACHE_SIZE = 300;
function blobURL(path, options, key = path) {
  if (path.startsWith("data:")) return Promise.resolve(path);
  const cache = state.blobCache;
  if (cache.has(key)) {
    const entry = cache.get(key);
    cache.delete(key); cache.set(key, entry); // most recently used last
    return entry;
  }
  const entry = apiFetch(path, options).then((r) => r.blob()).then((b) => URL.createObjectURL(b))
    .catch((error) => { cache.delete(key); throw error; });
  cache.set(key, entry);
  while (cache.size > BLOB_CACHE_SIZE) {
    const [oldest, promise] = cache.entries().next().value;
    cache.delete(oldest);
    promise.then((url) => setTimeout(() => URL.revokeObjectURL(url), 60_000), () => {});
  }
  return entry;
}
function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the image could not be displayed"));
    image.src = src;
  });
}

// ---------------------------------------------------------------- viewports
const queryView = new Viewport($("vp-query"), { title: "Query", wlReadout: $("query-wl"), zoomReadout: $("query-zoom") });
const caseView = new Viewport($("vp-case"), { title: "Similar case", wlReadout: $("case-wl"), zoomReadout: $("case-zoom") });
const group = new ViewerGroup([queryView, caseView]);
group.onChange(syncToolbar);

function syncToolbar() {
  $("tool-wl").setAttribute("aria-pressed", String(group.tool === "wl"));
  $("tool-pan").setAttribute("aria-pressed", String(group.tool === "pan"));
  $("invert").setAttribute("aria-pressed", String(group.active.invert));
  for (const button of document.querySelectorAll(".preset")) {
    button.setAttribute("aria-pressed", String(group.active.window.preset === button.dataset.preset));
  }
  $("link-view").checked = group.linkView;
  $("link-window").checked = group.linkWindow;
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
      const select = $("finding");
      select.replaceChildren(new Option("any", ""), ...(status.class_names || []).map((n) => new Option(n, n)));
      // search by text: only a model whose text and image embeddings share one space (/readyz says)
      $("by-text").hidden = !status.text_search;
      const opened = state.opened;
      state.opened = null;
      if (opened) searchReference(opened); // the study named by the page's address, once
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
  $("results-title").innerHTML = `<span class="spinner" aria-hidden="true"></span>${text}`;
  $("results-info").textContent = "";
}

async function runSearch(request, label) {
  showMessage("");
  busy(label);
  try {
    await render(await request());
  } catch (error) {
    $("results-title").textContent = "Similar cases";
    showMessage(error.status === 503 ? `The server is not ready yet: ${error.message}` : error.message);
  }
}

function searchUpload(file) {
  state.file = file;
  const form = searchForm();
  form.set("image", file);
  return runSearch(() => apiJSON("/search", { method: "POST", body: form }), "Searching…");
}

function searchArchive(id) {
  state.file = null;
  state.reference = null;
  return runSearch(() => apiJSON(`/search/by-id/${encodeURIComponent(id)}`, { method: "POST", body: searchForm() }),
    `Searching with image ${id}…`);
}

// A text (a CLIP-family encoder model): the archived images nearest it; each result's
// matched_regions are the regions the text points at, boxed on the case.
function searchText(text) {
  state.file = null;
  state.reference = null;
  const form = searchForm();
  form.delete("exclude_same_patient"); // a text has no patient
  form.set("text", text);
  return runSearch(() => apiJSON("/search/text", { method: "POST", body: form }), "Searching by text…");
}

// A study on the PACS (`/?study=UID[&series=UID][&instance=UID]`, or the study field): the server
// finds its frontal image (QIDO-RS), reads it from the index or fetches it (WADO-RS), searches.
// With `store` it also files the report into that study on the PACS (STOW-RS).
function searchReference(reference, { store = false } = {}) {
  state.file = null;
  state.reference = reference;
  const form = searchForm();
  for (const [name, value] of Object.entries(reference)) if (value) form.set(name, value);
  if (store) form.set("store", "1");
  return runSearch(() => apiJSON("/search/by-reference", { method: "POST", body: form }),
    store ? "Searching and filing the report into the PACS…" : `Searching with study ${reference.study_uid}…`);
}

// The query the page was opened with: ?study= (plus series, instance) from a PACS viewer's link.
function referenceFromURL() {
  const params = new URLSearchParams(window.location.search);
  const study = (params.get("study") || "").trim();
  if (!study) return null;
  return { study_uid: study, series_uid: (params.get("series") || "").trim(),
    instance_uid: (params.get("instance") || "").trim() };
}

// ---------------------------------------------------------------- rendering a response
async function render(payload) {
  state.payload = payload;
  state.selected = -1;
  state.details.clear();
  const query = payload.query;
  const textQuery = query.source === "text";
  if (textQuery) { // no query image: the text stands in its place
    queryView.clear();
    $("query-text-shown").textContent = `“${query.text}”`;
  } else {
    const image = await loadImage(await blobURL(query.preview_url));
    queryView.setImage(image, { width: query.width, height: query.height });
  }
  queryView.setBoxes(query.boxes);
  $("query-empty").hidden = true;
  $("query-text-view").hidden = !textQuery;
  const size = query.width ? ` · ${query.width}×${query.height}` : "";
  $("query-meta").textContent = textQuery ? `text · ${query.text.length} characters`
    : query.source === "upload"
    ? `upload · ${query.format.toUpperCase()} · ${query.width}×${query.height}`
    : query.source === "pacs"
      ? `PACS study ${query.study_instance_uid}${query.view ? " · " + query.view : ""}${size}`
        + (query.read_from === "index" ? ` · indexed as #${query.id}` : " · fetched")
      : `archive #${query.id}${query.view ? " · " + query.view : ""}${size}`;
  $("query-meta").title = query.source === "pacs" ? `instance ${query.sop_instance_uid}` : "";
  renderReportBox(payload);
  group.reset();
  renderQueryFindings(query);
  renderHeatToggles(query);
  state.caseBoxes = [];
  renderRegionList(query.boxes || []);
  renderResults(payload);
  if (payload.notes) showMessage(payload.notes.join(" "), "info");
  if (payload.results.length) await selectResult(0, { focus: false });
  else {
    caseView.clear();
    $("case-empty").hidden = false;
    $("case-title").textContent = "Case";
    $("case-meta").textContent = "";
  }
  refreshHeat();
}

// The PACS box: for a study query, a button that files the report (DICOM SR) into the study, and
// what was filed.
function renderReportBox(payload) {
  const box = $("report-box");
  if (!box) return;
  const pacs = payload.query.source === "pacs";
  box.hidden = !pacs;
  if (!pacs) return;
  const report = payload.report;
  $("report-status").textContent = report
    ? `Report filed into the study on the PACS (SR ${report.sop_instance_uid}).`
    : "The findings and the similar-case evidence can be filed into this study on the PACS as a DICOM SR.";
  $("report-store").disabled = Boolean(report);
}

function chip(text, kind) {
  const span = document.createElement("span");
  span.className = `chip ${kind}`;
  span.textContent = text;
  return span;
}

function findingChips(container, names, { shared = [], unknown = "unknown", none = "none" } = {}) {
  if (names == null) { container.replaceChildren(chip(unknown, "empty")); return; }
  if (!names.length) { container.replaceChildren(chip(none, "empty")); return; }
  container.replaceChildren(...names.map((name) => (shared.includes(name)
    ? chip(`✓ ${name}`, "known shared") : chip(name, "known"))));
}

function noFindingsNote(note) {
  // a model without a finding head (a label-free encoder model) predicts nothing, and says why
  const li = document.createElement("li");
  li.className = "muted small findings-note";
  li.textContent = `No predicted findings: ${note}`;
  return li;
}

function renderQueryFindings(query) {
  const list = $("query-predicted");
  if (query.findings == null) {
    list.replaceChildren(noFindingsNote(query.findings_note || "the model has no finding head"));
    $("query-known-box").hidden = query.source !== "archive";
    if (query.source === "archive") findingChips($("query-known"), query.known_findings, { none: "no finding" });
    return;
  }
  list.replaceChildren(...query.findings.map((finding) => {
    const li = document.createElement("li");
    const pct = Math.round(finding.probability * 100);
    li.innerHTML = `<div class="bar ${finding.predicted ? "pos" : ""}"><div class="fill" style="width:${pct}%"></div><span class="name"></span></div><span class="pct">${pct}%</span>`;
    li.querySelector(".name").textContent = finding.name;
    if (query.abnormality) {  // an abnormality model: its one output, as "abnormal: p"
      li.querySelector(".name").textContent = query.abnormality.label;
      li.querySelector(".pct").textContent = "";
      li.title = `threshold ${query.abnormality.threshold} (chosen on validation)`;
    }
    return li;
  }));
  const archived = query.source === "archive" || (query.source === "pacs" && query.read_from === "index");
  $("query-known-box").hidden = !archived;
  if (archived) findingChips($("query-known"), query.known_findings, { none: "no finding" });
}

function renderResults(payload) {
  const results = payload.results;
  $("results-title").textContent = `${results.length} similar case${results.length === 1 ? "" : "s"}`;
  const filters = Object.entries(payload.filters || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  $("results-info").textContent = `of ${payload.index_size.toLocaleString()} · ${Math.round(payload.timing_ms.total)} ms`
    + (filters ? ` · ${filters}` : "") + (payload.exclude_same_patient ? " · patient excluded" : "");
  const note = $("filter-note");
  const filter = payload.finding_filter;
  note.hidden = !filter;
  if (filter) {
    note.textContent = `Finding filter “${filter.finding}”: ${filter.matched_on.known} matched by known label, `
      + `${filter.matched_on.predicted} by the model's prediction (images without labels).`;
  }
  const items = results.map((result, index) => {
    const li = document.createElement("li");
    li.id = `result-${index}`;
    li.className = `result${result.shared_findings.length ? " hit" : ""}`;
    li.setAttribute("role", "option");
    li.setAttribute("aria-selected", "false");
    li.dataset.index = index;
    li.dataset.id = result.id;
    li.innerHTML = `<img class="thumb" alt="" width="56" height="56">
      <div class="r-body">
        <div class="r-top"><span class="rank">#${result.rank}</span><span class="iid"></span><span class="sim"></span></div>
        <div class="r-line"><span class="r-label">Known</span><span class="chips r-known"></span></div>
        <div class="r-line"><span class="r-label">Model</span><span class="chips r-pred"></span></div>
      </div>`;
    li.querySelector(".iid").textContent = `case ${result.id}`;
    li.querySelector(".sim").textContent = result.similarity.toFixed(3);
    li.querySelector(".sim").title = payload.query.source === "text"
      ? "cosine similarity of the text and the image (the model's own image-text similarity)"
      : "cosine similarity of the embeddings";
    findingChips(li.querySelector(".r-known"), result.known_findings, { shared: result.shared_findings, none: "no finding" });
    const predicted = li.querySelector(".r-pred");
    const headless = payload.query.findings_note;
    if (result.abnormality) predicted.replaceChildren(chip(result.abnormality.label, result.abnormality.abnormal ? "predicted" : "empty"));
    else if (result.predicted_findings == null && headless) {
      predicted.replaceChildren(chip("no finding head", "empty"));
      predicted.title = headless;
    } else if (result.predicted_findings == null) predicted.replaceChildren(chip("not stored", "empty"));
    else if (!result.predicted_findings.length) predicted.replaceChildren(chip("none", "empty"));
    else predicted.replaceChildren(...result.predicted_findings.map((name) => chip(name, "predicted")));
    if (result.finding_filter) {
      li.querySelector(".r-top").append(chip(result.finding_filter.matched_on === "known" ? "filter: label" : "filter: model",
        "filter"));
    }
    li.title = `Case ${result.id}, rank ${result.rank}, similarity ${result.similarity.toFixed(3)}`
      + (result.shared_findings.length ? `; shares ${result.shared_findings.join(", ")} with the query's prediction` : "");
    blobURL(result.thumbnail_url).then((url) => { li.querySelector(".thumb").src = url; }).catch(() => {});
    li.addEventListener("click", () => selectResult(index));
    return li;
  });
  $("results").replaceChildren(...items);
  $("results").removeAttribute("aria-activedescendant");
}

// ---------------------------------------------------------------- choosing a case
async function selectResult(index, { focus = true } = {}) {
  const payload = state.payload;
  if (!payload || index < 0 || index >= payload.results.length) return;
  const result = payload.results[index];
  const ticket = ++state.selection; // a later selection wins over a slower earlier one
  state.selected = index;
  const list = $("results");
  for (const item of list.children) item.setAttribute("aria-selected", String(Number(item.dataset.index) === index));
  const item = list.children[index];
  list.setAttribute("aria-activedescendant", item.id);
  item.scrollIntoView({ block: "nearest" });
  if (focus && document.activeElement !== list && !document.activeElement.matches("canvas")) list.focus({ preventScroll: true });
  $("case-title").textContent = `Case ${result.id}`;
  $("case-title").title = result.image_id ? `archive image ${result.image_id}` : "";
  $("case-meta").textContent = `rank ${result.rank} of ${payload.results.length} · similarity ${result.similarity.toFixed(3)}`;
  $("announce").textContent = `Case ${result.id}, rank ${result.rank} of ${payload.results.length}, similarity ${result.similarity.toFixed(3)}`;
  try {
    const [detail, image] = await Promise.all([caseDetail(result.id),
      blobURL(result.preview_url).then(loadImage)]);
    if (ticket !== state.selection) return;
    caseView.setImage(image, { width: detail.width || image.naturalWidth, height: detail.height || image.naturalHeight });
    if (group.linkWindow) {
      caseView.invert = queryView.invert;
      caseView.setWindow(queryView.window.preset ? caseView.presetWindow(queryView.window.preset) : queryView.window);
    }
    if (group.linkView) caseView.setView(queryView.view);
    caseView.setBoxes(detail.boxes);
    if (payload.query.source === "text") { // no query boxes: the region list is the case's
      state.caseBoxes = detail.boxes || [];
      renderRegionList(state.caseBoxes);
      group.active = caseView;
    }
    // An index built before previews (or with --preview-side 0) serves the 128 px thumbnail.
    if (detail.preview_source === "thumbnail") {
      $("case-meta").textContent += " · thumbnail only: this index stores no preview of the case";
    }
    $("case-empty").hidden = true;
    renderCaseFindings(result, detail);
    setPacsLink(result.viewer_url || detail.viewer_url, result.viewer_note || detail.viewer_note);
    applyRegions();
    refreshHeat({ queryToo: false });
    syncToolbar();
  } catch (error) {
    if (ticket === state.selection) showMessage(`Case ${result.id}: ${error.message}`);
  }
}

function caseDetail(id) {
  if (!state.details.has(id)) {
    state.details.set(id, apiJSON(`/images/${id}`).catch((error) => { state.details.delete(id); throw error; }));
  }
  return state.details.get(id);
}

function move(step) {
  const payload = state.payload;
  if (!payload || !payload.results.length) return;
  const next = state.selected < 0 ? 0 : Math.min(payload.results.length - 1, Math.max(0, state.selected + step));
  if (next !== state.selected) selectResult(next);
}

// `viewer_url` (server started with --viewer-url): a link to the case in the PACS viewer; when
// the server could not build one it sends `viewer_url: null` and `viewer_note` (why); neither
// field without a configured viewer: nothing is shown.
function setPacsLink(url, note) {
  const link = $("case-pacs"), missing = $("case-pacs-none");
  link.hidden = !url;
  missing.hidden = Boolean(url) || !note;
  if (url) { link.href = url; link.title = "Open this case in the hospital's PACS viewer (new tab)"; }
  if (!url && note) missing.title = note;
}

function renderCaseFindings(result, detail) {
  findingChips($("case-known"), result.known_findings, { shared: result.shared_findings, none: "no finding" });
  const predicted = $("case-predicted");
  const above = (detail.predicted_findings || []).filter((f) => f.predicted);
  predicted.title = detail.findings_note || "";
  if (detail.abnormality) predicted.replaceChildren(chip(detail.abnormality.label, detail.abnormality.abnormal ? "predicted" : "empty"));
  else if (detail.findings_note) predicted.replaceChildren(chip("no finding head", "empty"));
  else if (!detail.predicted_findings || !detail.predicted_findings.length) predicted.replaceChildren(chip("not stored", "empty"));
  else if (!above.length) predicted.replaceChildren(chip("none at 50 % or more", "empty"));
  else predicted.replaceChildren(...above.map((f) => chip(`${f.name} ${Math.round(f.probability * 100)}%`, "predicted")));
  const rows = [["study", detail.study], ["patient", detail.patient], ["view", detail.view], ["sex", detail.sex],
    ["age", detail.age == null ? null : Math.round(detail.age)], ["size", detail.width ? `${detail.width}×${detail.height}` : null],
    ["boxes", detail.box_source]];
  if (result.finding_filter) {
    rows.push(["filter", `${result.finding_filter.finding} by ${result.finding_filter.matched_on === "known" ? "known label" : "model prediction"}`]);
  }
  $("case-details").replaceChildren(...rows.map(([name, value]) => {
    const li = document.createElement("li");
    li.innerHTML = `<span class="k"></span><span class="v"></span>`;
    li.querySelector(".k").textContent = name;
    li.querySelector(".v").textContent = value == null || value === "" ? "—" : String(value);
    return li;
  }));
}

// ---------------------------------------------------------------- overlays: regions
function currentMatches() {
  const result = state.payload && state.payload.results[state.selected];
  return result ? result.matched_regions : [];
}

function renderRegionList(boxes) {
  const list = $("region-list");
  list.replaceChildren(...boxes.map((item) => {
    const label = document.createElement("label");
    label.className = "check region";
    label.innerHTML = `<input type="checkbox"><span class="region-name"></span><span class="region-sim"></span>`;
    label.querySelector(".region-name").textContent = item.region;
    const input = label.querySelector("input");
    input.dataset.index = item.index;
    input.disabled = !item.box;
    input.addEventListener("change", () => {
      state.regionMode = "custom";
      if (input.checked) state.shownRegions.add(item.index); else state.shownRegions.delete(item.index);
      drawRegions();
    });
    return label;
  }));
}

function applyRegions(mode = state.regionMode) {
  state.regionMode = mode;
  const boxes = (state.payload && state.payload.query.boxes) || state.caseBoxes;
  if (mode === "best") state.shownRegions = new Set(currentMatches().map((m) => m.index));
  else if (mode === "all") state.shownRegions = new Set(boxes.filter((b) => b.box).map((b) => b.index));
  else if (mode === "none") state.shownRegions = new Set();
  drawRegions();
}

function drawRegions() {
  const matches = currentMatches();
  $("regions-current").textContent = { best: "best", all: "all", none: "none" }[state.regionMode]
    || `${state.shownRegions.size} shown`;
  const highlights = new Map(matches.map((m, i) => [m.index, `${i + 1}. ${m.region} ${m.similarity.toFixed(2)}`]));
  for (const input of $("region-list").querySelectorAll("input")) {
    const index = Number(input.dataset.index);
    input.checked = state.shownRegions.has(index);
    const match = matches.findIndex((m) => m.index === index);
    const label = input.closest("label");
    label.classList.toggle("match", match >= 0);
    label.querySelector(".region-sim").textContent = match >= 0 ? `★${match + 1} ${matches[match].similarity.toFixed(2)}` : "";
  }
  for (const viewport of [queryView, caseView]) viewport.setRegions(state.shownRegions, highlights);
}

// ---------------------------------------------------------------- overlays: Grad-CAM
function renderHeatToggles(query) {
  const box = $("heat-findings");
  if (query.findings == null) {
    const note = document.createElement("p");
    note.className = "muted small";
    note.textContent = "No finding heatmaps: this model has no finding head.";
    note.title = query.findings_note || "";
    box.replaceChildren(note);
    state.heatFinding = "";
    syncHeatToggles();
    return;
  }
  box.replaceChildren(...query.findings.map((finding) => {
    const button = document.createElement("button");
    button.type = "button";
    button.className = `toggle${finding.predicted ? " pos" : ""}`;
    button.dataset.finding = finding.name;
    button.setAttribute("aria-pressed", "false");
    button.innerHTML = `<span class="t-name"></span><span class="t-pct"></span>`;
    button.querySelector(".t-name").textContent = finding.name;
    button.querySelector(".t-pct").textContent = `${Math.round(finding.probability * 100)}%`;
    button.title = `Grad-CAM of ${finding.name} on both images (query probability ${Math.round(finding.probability * 100)} %)`;
    button.addEventListener("click", () => setHeat(state.heatFinding === finding.name ? "" : finding.name));
    return button;
  }));
  if (state.heatFinding && !query.findings.some((f) => f.name === state.heatFinding)) state.heatFinding = "";
  syncHeatToggles();
}

function syncHeatToggles() {
  for (const button of $("heat-findings").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.finding === state.heatFinding));
  }
  $("heat-current").textContent = state.heatFinding || "off";
}

function setHeat(finding) {
  state.heatFinding = finding;
  if (finding) state.lastHeatFinding = finding;
  syncHeatToggles();
  refreshHeat();
}

function toggleHeat() {
  const query = state.payload && state.payload.query;
  if (!query || !query.findings || !query.findings.length) return;
  setHeat(state.heatFinding ? "" : state.lastHeatFinding || query.predicted_findings[0] || query.findings[0].name);
}

function heatLayer(kind, finding) {
  const query = state.payload.query;
  const style = "layer";
  if (kind === "query" && query.source === "upload") {
    const form = new FormData();
    form.set("image", state.file); form.set("finding", finding); form.set("style", style);
    const key = `heat:upload:${state.file.name}:${state.file.size}:${state.file.lastModified}:${finding}`;
    return blobURL("/heatmap", { method: "POST", body: form }, key).then(loadImage);
  }
  if (kind === "query" && query.source === "pacs" && query.id == null) {
    // fetched from the PACS, not indexed: Grad-CAM on the preview the response carries
    const key = `heat:pacs:${query.sop_instance_uid}:${finding}`;
    return fetch(query.preview_url).then((r) => r.blob()).then((blob) => {
      const form = new FormData();
      form.set("image", new File([blob], "query.jpg", { type: "image/jpeg" }));
      form.set("finding", finding); form.set("style", style);
      return blobURL("/heatmap", { method: "POST", body: form }, key);
    }).then(loadImage);
  }
  const id = kind === "query" ? query.id : state.payload.results[state.selected].id;
  return blobURL(`/images/${id}/heatmap?finding=${encodeURIComponent(finding)}&style=${style}`).then(loadImage);
}

async function refreshHeat({ queryToo = true } = {}) {
  const finding = state.heatFinding;
  const targets = [["case", caseView]];
  if (queryToo) targets.unshift(["query", queryView]);
  for (const [, viewport] of targets) if (!finding) viewport.setHeat(null, "");
  if (!finding || !state.payload) return;
  const selection = state.selection;
  await Promise.all(targets.map(async ([kind, viewport]) => {
    if (kind === "case" && state.selected < 0) return;
    try {
      const layer = await heatLayer(kind, finding);
      if (state.heatFinding === finding && (kind === "query" || selection === state.selection)) viewport.setHeat(layer, finding);
    } catch (error) {
      showMessage(`Heatmap failed: ${error.message}`);
    }
  }));
}

// ---------------------------------------------------------------- wiring
function typing(target) {
  return target.matches("input, select, textarea, [contenteditable]") && !target.matches("[type=checkbox], [type=range]");
}

function onKey(event) {
  if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
  if ($("help").open) return;
  const inList = event.target === $("results");
  const key = event.key;
  const actions = {
    j: () => move(1), k: () => move(-1),
    "+": () => group.zoomBy(group.active, 1.25), "=": () => group.zoomBy(group.active, 1.25),
    "-": () => group.zoomBy(group.active, 0.8), "_": () => group.zoomBy(group.active, 0.8),
    0: () => group.fit(), r: () => group.reset(), i: () => group.toggleInvert(),
    1: () => group.preset("default"), 2: () => group.preset("lung"), 3: () => group.preset("mediastinum"),
    4: () => group.preset("bone"),
    w: () => { group.tool = "wl"; syncToolbar(); }, p: () => { group.tool = "pan"; syncToolbar(); },
    h: () => toggleHeat(), b: () => applyRegions(state.regionMode === "none" ? "best" : "none"),
    l: () => group.setLinkView(!group.linkView), "?": () => openHelp(),
  };
  if (inList && (key === "ArrowDown" || key === "ArrowUp" || key === "Home" || key === "End")) {
    event.preventDefault();
    if (key === "Home") selectResult(0);
    else if (key === "End") selectResult(state.payload ? state.payload.results.length - 1 : 0);
    else move(key === "ArrowDown" ? 1 : -1);
    return;
  }
  const action = actions[key.length === 1 ? key.toLowerCase() : key] || actions[key];
  if (!action) return;
  if (!queryView.hasImage && !caseView.hasImage && !["?", "w", "p"].includes(key.toLowerCase())) return;
  event.preventDefault();
  action();
}

function openHelp() { $("help").showModal(); }

// the overlay menus (<details>) close on Escape and on a click elsewhere
function closeMenus(except = null) {
  for (const menu of document.querySelectorAll("details.menu[open]")) if (menu !== except) menu.open = false;
}

function init() {
  const drop = $("drop");
  $("file").addEventListener("change", (event) => { if (event.target.files[0]) searchUpload(event.target.files[0]); });
  // a file dropped anywhere on the page is a query
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (e) => { if (e.dataTransfer && [...e.dataTransfer.types].includes("Files")) { e.preventDefault(); drop.classList.add("over"); } });
  }
  document.addEventListener("dragleave", (e) => { if (!e.relatedTarget) drop.classList.remove("over"); });
  document.addEventListener("drop", (event) => {
    event.preventDefault(); drop.classList.remove("over");
    const file = event.dataTransfer.files[0];
    if (file) searchUpload(file);
  });
  drop.addEventListener("keydown", (event) => { if (event.key === "Enter" || event.key === " ") { event.preventDefault(); $("file").click(); } });
  $("by-text").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("query-text").value.trim();
    if (text) searchText(text);
  });
  $("by-id").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("archive-id").value.trim();
    if (id) searchArchive(id);
  });
  if ($("by-study")) {
    $("by-study").addEventListener("submit", (event) => {
      event.preventDefault();
      const study = $("study-uid").value.trim();
      if (study) searchReference({ study_uid: study });
    });
    $("report-store").addEventListener("click", () => { if (state.reference) searchReference(state.reference, { store: true }); });
  }
  $("tool-wl").addEventListener("click", () => { group.tool = "wl"; syncToolbar(); });
  $("tool-pan").addEventListener("click", () => { group.tool = "pan"; syncToolbar(); });
  for (const button of document.querySelectorAll(".preset")) button.addEventListener("click", () => group.preset(button.dataset.preset));
  $("zoom-in").addEventListener("click", () => group.zoomBy(group.active, 1.25));
  $("zoom-out").addEventListener("click", () => group.zoomBy(group.active, 0.8));
  $("invert").addEventListener("click", () => group.toggleInvert());
  $("reset").addEventListener("click", () => group.reset());
  $("link-view").addEventListener("change", (event) => group.setLinkView(event.target.checked));
  $("link-window").addEventListener("change", (event) => group.setLinkWindow(event.target.checked));
  $("heat-opacity").addEventListener("input", (event) => {
    for (const viewport of [queryView, caseView]) viewport.setHeatOpacity(Number(event.target.value) / 100);
  });
  $("regions-best").addEventListener("click", () => applyRegions("best"));
  $("regions-all").addEventListener("click", () => applyRegions("all"));
  $("regions-none").addEventListener("click", () => applyRegions("none"));
  $("help-open").addEventListener("click", openHelp);
  document.addEventListener("pointerdown", (event) => closeMenus(event.target.closest("details.menu")));
  for (const menu of document.querySelectorAll("details.menu")) {
    menu.addEventListener("toggle", () => { if (menu.open) closeMenus(menu); });
    menu.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && menu.open) { event.stopPropagation(); menu.open = false; menu.querySelector("summary").focus(); }
    });
  }
  document.addEventListener("keydown", onKey);
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("chextriev-token", state.token);
    state.blobCache.clear();
    $("token-box").hidden = true;
    refreshStatus();
  });
  if (document.body.dataset.needsToken === "true" && !state.token) $("token-box").hidden = false;
  state.opened = referenceFromURL();
  if (state.opened && $("study-uid")) $("study-uid").value = state.opened.study_uid;
  syncToolbar();
  refreshStatus();
}

init();
