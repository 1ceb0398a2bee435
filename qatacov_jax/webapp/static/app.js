// qatacov-jax web app: the demo (upload -> infection map, decision, severity) and the
// annotation editor. Plain browser JavaScript, no libraries, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
let config = null;

// ------------------------------------------------------------------ helpers

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const err = new Error((body && body.error) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    throw err;
  }
  return body;
}

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the browser could not decode an image from the server"));
    img.src = src;
  });
}

function pixels(img) {
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height).data;
}

const fmt = (x, digits = 1) => (x === null || x === undefined || Number.isNaN(x)) ? "n/a" : x.toFixed(digits);

// ------------------------------------------------------------------ demo

const demo = { report: null, prob: null, lung: null, width: 0, height: 0 };

// The severity grade exactly as inference/severity.py: the first bound >= the percentage.
function grade(pct) {
  const s = config.severity_scale;
  if (pct === null || Number.isNaN(pct)) return [-1, "unknown"];
  let g = s.bounds.findIndex((b) => pct <= b);
  if (g < 0) g = s.bounds.length;
  return [g, s.names[g]];
}

// Re-thresholds in the browser: mask, decision, areas and severity from the probabilities.
function applyThreshold() {
  if (!demo.prob) return;
  const t = parseFloat($("threshold").value);
  $("threshold-value").textContent = t.toFixed(2);
  const n = demo.width * demo.height;
  const canvas = $("mask");
  const ctx = canvas.getContext("2d");
  const out = ctx.createImageData(demo.width, demo.height);
  let infected = 0, inLung = 0, lungArea = 0;
  for (let i = 0; i < n; i++) {
    const on = demo.prob[i] >= t;
    const v = on ? 255 : 0;
    out.data[4 * i] = v; out.data[4 * i + 1] = v; out.data[4 * i + 2] = v; out.data[4 * i + 3] = 255;
    if (on) infected++;
    if (demo.lung) {
      if (demo.lung[i]) { lungArea++; if (on) inLung++; }
    }
  }
  ctx.putImageData(out, 0, 0);
  const r = demo.report;
  const covid = r.max_probability >= t;
  const fields = {
    threshold: t,
    covid19: covid,
    infected_percent_of_image: 100 * infected / n,
  };
  const decision = $("decision");
  decision.textContent = covid ? "COVID-19 detected" : "No COVID-19 detected";
  decision.className = covid ? "positive" : "negative";
  $("max-prob").textContent = r.max_probability.toFixed(3);
  $("pct-image").textContent = fmt(fields.infected_percent_of_image) + " %";
  if (demo.lung) {
    const pct = lungArea ? 100 * inLung / lungArea : NaN;
    const [g, name] = grade(pct);
    fields.infected_percent_of_lung = Number.isNaN(pct) ? null : pct;
    fields.severity_grade = g;
    fields.severity = name;
    $("pct-lung").textContent = fmt(pct) + " %";
    $("severity").textContent = `${name} (grade ${g})`;
  }
  demo.current = fields;
  document.body.dataset.threshold = t.toFixed(2);
}

function reportJson() {
  const r = Object.assign({}, demo.report);
  for (const k of ["map", "mask", "lung_mask", "xray", "probability"]) delete r[k];
  Object.assign(r, demo.current);
  return JSON.stringify(r, null, 2);
}

async function predict(file) {
  showError("");
  if (!file) return;
  if (file.size > config.max_upload_mb * 1048576) {
    showError(`${file.name} is over the ${config.max_upload_mb} MB upload limit`);
    return;
  }
  document.body.dataset.demo = "busy";
  $("busy").hidden = false;
  try {
    const form = new FormData();
    form.append("file", file);
    const r = await api("/api/predict", { method: "POST", body: form });
    const [prob, lung] = await Promise.all([
      loadImage(r.probability), r.lung_mask ? loadImage(r.lung_mask) : null,
    ]);
    demo.report = r;
    demo.width = r.width; demo.height = r.height;
    const rgb = pixels(prob);
    demo.prob = new Float32Array(r.width * r.height);
    for (let i = 0; i < demo.prob.length; i++) demo.prob[i] = (rgb[4 * i] * 256 + rgb[4 * i + 1]) / 65535;
    demo.lung = null;
    if (lung) {
      const l = pixels(lung);
      demo.lung = new Uint8Array(r.width * r.height);
      for (let i = 0; i < demo.lung.length; i++) demo.lung[i] = l[4 * i] > 0 ? 1 : 0;
    }
    $("xray").src = r.xray;
    $("map").src = r.map;
    await Promise.all([$("xray").decode(), $("map").decode()]);
    $("mask").width = r.width; $("mask").height = r.height;
    $("threshold").value = r.threshold;
    $("dl-map").href = r.map;
    $("file-name").textContent = r.file + ` (${r.width} x ${r.height})`;
    for (const el of document.querySelectorAll(".lung")) el.hidden = !demo.lung;
    $("result").hidden = false;
    applyThreshold();
    document.body.dataset.demo = "ready";
  } catch (e) {
    showError(e.message);
    document.body.dataset.demo = "error";
  } finally {
    $("busy").hidden = true;
  }
}

function setupDemo() {
  $("file").addEventListener("change", (e) => predict(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    predict(e.dataTransfer.files[0]);
  });
  $("threshold").addEventListener("input", applyThreshold);
  $("dl-mask").addEventListener("click", (e) => { e.currentTarget.href = $("mask").toDataURL("image/png"); });
  $("dl-report").addEventListener("click", (e) => {
    e.currentTarget.href = URL.createObjectURL(new Blob([reportJson()], { type: "application/json" }));
  });
}

// ------------------------------------------------------------------ annotation

const ann = { item: null, chosen: "manual", started: 0, drawing: false, last: null };

function setChosen(name) {
  ann.chosen = name;
  $("chosen").textContent = name === "manual" ? "nothing picked (drawing by hand)" : name;
  for (const card of document.querySelectorAll(".card")) card.classList.toggle("chosen", card.dataset.name === name);
}

// A 0/255 mask PNG -> opaque red where set, transparent elsewhere, on the editing canvas.
async function paintMask(src) {
  const c = $("ed-mask"), ctx = c.getContext("2d");
  ctx.clearRect(0, 0, c.width, c.height);
  if (!src) return;
  const px = pixels(await loadImage(src));
  const out = ctx.createImageData(c.width, c.height);
  for (let i = 0; i < c.width * c.height; i++) {
    if (px[4 * i] > 0) { out.data[4 * i] = 255; out.data[4 * i + 3] = 255; }
  }
  ctx.putImageData(out, 0, 0);
}

function renderCandidates(item) {
  const box = $("candidates");
  box.replaceChildren();
  const cards = item.candidates.map((c) => ({
    name: c.name, img: c.overlay, pickable: true,
    text: `area ${fmt(c.area_percent)} % · Dice with models ${fmt(c.dice_with_models, 2)}`,
    mask: c.mask,
  }));
  cards.push({ name: "disagreement", img: item.disagreement, pickable: false,
               text: `models disagree on ${fmt(item.disagreement_percent)} % of pixels` });
  for (const c of cards) {
    const card = document.createElement("div");
    card.className = "card"; card.dataset.name = c.name;
    const img = document.createElement("img"); img.src = c.img; img.alt = c.name;
    const h = document.createElement("h3"); h.textContent = c.name;
    const p = document.createElement("p"); p.textContent = c.text;
    card.append(img, h, p);
    if (c.pickable) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = "Use this"; b.className = "pick";
      b.addEventListener("click", async () => { await paintMask(c.mask); setChosen(c.name); });
      card.append(b);
    }
    box.append(card);
  }
}

function showProgress(p) {
  $("progress").textContent = `${p.done} of ${p.total} X-rays annotated, ${p.pending} to go`;
}

async function loadItem(key) {
  document.body.dataset.annotate = "busy";
  const item = await api("/api/annotate/" + encodeURIComponent(key));
  ann.item = item;
  $("ann-image").textContent = `${item.image} (${item.width} x ${item.height}), revision ${item.revision}` +
    (item.last ? `, last saved by ${item.last.annotator || "someone"}` : "");
  showProgress(item.progress);
  renderCandidates(item);
  for (const id of ["ed-bg", "ed-mask"]) { $(id).width = item.width; $(id).height = item.height; }
  $("ed-bg").getContext("2d").drawImage(await loadImage(item.xray), 0, 0);
  await paintMask(null);
  setChosen("manual");
  ann.started = performance.now();
  $("ann-status").textContent = "Pick a candidate, correct it with brush and eraser, or draw by hand.";
  document.body.dataset.annotate = "ready";
}

async function loadNext() {
  showError("");
  try {
    const p = await api("/api/annotate");
    showProgress(p);
    if (!p.next) {
      $("ann-status").textContent = "All X-rays are annotated.";
      document.body.dataset.annotate = "done";
      return;
    }
    await loadItem(p.next);
  } catch (e) {
    showError(e.message);
    document.body.dataset.annotate = "error";
  }
}

function canvasPoint(e) {
  const c = $("ed-mask"), r = c.getBoundingClientRect();
  return [(e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height];
}

function stroke(from, to) {
  const c = $("ed-mask"), ctx = c.getContext("2d");
  const eraser = document.querySelector("input[name=tool]:checked").value === "eraser";
  const scale = c.width / c.getBoundingClientRect().width;
  ctx.globalCompositeOperation = eraser ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "rgb(255,0,0)";
  ctx.lineWidth = parseFloat($("brush-size").value) * scale;
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath(); ctx.moveTo(from[0], from[1]); ctx.lineTo(to[0], to[1]); ctx.stroke();
  ctx.globalCompositeOperation = "source-over";
}

// The edited mask as a black/white PNG at the X-ray's resolution (painted = alpha >= 128).
function maskPng() {
  const c = $("ed-mask");
  const src = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const out = document.createElement("canvas");
  out.width = c.width; out.height = c.height;
  const ctx = out.getContext("2d");
  const img = ctx.createImageData(c.width, c.height);
  for (let i = 0; i < c.width * c.height; i++) {
    const v = src[4 * i + 3] >= 128 ? 255 : 0;
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return out.toDataURL("image/png");
}

async function save(noInfection) {
  if (!ann.item) return;
  showError("");
  const annotator = $("annotator").value.trim();
  localStorage.setItem("annotator", annotator);
  const body = {
    revision: ann.item.revision, source: ann.chosen, annotator,
    seconds: (performance.now() - ann.started) / 1000,
  };
  if (noInfection) body.no_infection = true; else body.mask = maskPng();
  document.body.dataset.annotate = "saving";
  try {
    const r = await api("/api/annotate/" + encodeURIComponent(ann.item.key), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    $("ann-status").textContent = `Saved ${r.saved.key} (revision ${r.saved.revision}).`;
    document.body.dataset.saved = r.saved.key;
    await loadNext();
  } catch (e) {
    showError(e.status === 409 ? "Not saved: " + e.message + " (Reload shows theirs; your drawing stays until then)" : e.message);
    document.body.dataset.annotate = "error";
  }
}

function setupAnnotate() {
  $("annotator").value = localStorage.getItem("annotator") || "";
  const c = $("ed-mask");
  c.addEventListener("pointerdown", (e) => {
    ann.drawing = true; ann.last = canvasPoint(e); c.setPointerCapture(e.pointerId);
    stroke(ann.last, ann.last);
  });
  c.addEventListener("pointermove", (e) => {
    if (!ann.drawing) return;
    const p = canvasPoint(e); stroke(ann.last, p); ann.last = p;
  });
  const end = () => { ann.drawing = false; };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  $("clear").addEventListener("click", async () => { await paintMask(null); setChosen("manual"); });
  $("no-infection").addEventListener("click", () => save(true));
  $("save").addEventListener("click", () => save(false));
  $("next").addEventListener("click", loadNext);
  $("reload").addEventListener("click", async () => {
    if (!ann.item) return loadNext();
    showError("");
    try {
      await loadItem(ann.item.key);
      // A saved mask (someone else's, after a conflict) is loaded for correction.
      if (ann.item.mask) await paintMask(ann.item.mask);
    } catch (e) { showError(e.message); }
  });
}

function showTab(name) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.tab === name);
  $("demo").hidden = name !== "demo";
  $("annotate").hidden = name !== "annotate";
  if (name === "annotate" && !ann.item) loadNext();
}

async function start() {
  setupDemo();
  setupAnnotate();
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showTab(t.dataset.tab));
  try {
    config = await api("/api/config");
  } catch (e) {
    showError(e.message);
    return;
  }
  const run = config.checkpoint.split(/[\\/]/).filter(Boolean).slice(-2).join("/");
  $("model").textContent = "model: " + run + (config.lung ? " + lung model" : "");
  $("model").title = config.checkpoint;
  $("threshold").value = config.threshold;
  $("tab-annotate").hidden = !config.annotate;
  document.body.dataset.config = "ready";
  if (config.annotate && location.hash === "#annotate") showTab("annotate");
}

start();
