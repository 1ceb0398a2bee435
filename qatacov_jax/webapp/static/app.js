// qatacov-jax web app: what the demo (demo.js) and the annotation page (annotate.js) share:
// the API client, errors, image decoding, the confirmation dialog, tabs, the viewer's
// toolbar and the keyboard shortcuts. Plain browser JavaScript, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const App = { config: null, tab: "demo", keys: {} };

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token) headers["Authorization"] = "Bearer " + token;
  const res = await fetch(path, Object.assign({}, options, { headers }));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const err = new Error((body && body.error) || `the server answered ${res.status} ${res.statusText}`);
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
  const ctx = c.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(img, 0, 0);
  return ctx.getImageData(0, 0, c.width, c.height).data;
}

/** A PNG data URL -> Float32Array of its values in [0, 1]: 16-bit fixed point in red (high)
 *  + green (low) when `fixed16` (images.encode_probability), else the red channel / 255. */
async function decodeValues(src, fixed16) {
  const img = await loadImage(src);
  const px = pixels(img), n = img.naturalWidth * img.naturalHeight;
  const out = new Float32Array(n);
  if (fixed16) for (let i = 0; i < n; i++) out[i] = (px[4 * i] * 256 + px[4 * i + 1]) / 65535;
  else for (let i = 0; i < n; i++) out[i] = px[4 * i] / 255;
  return { values: out, w: img.naturalWidth, h: img.naturalHeight };
}

/** A 0/255 mask PNG data URL -> Uint8Array of 0/1. */
async function decodeMask(src) {
  const img = await loadImage(src);
  const px = pixels(img), n = img.naturalWidth * img.naturalHeight;
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = px[4 * i] > 0 ? 1 : 0;
  return out;
}

/** A 0/1 mask -> 0/255 greyscale PNG data URL of w x h. */
function maskPng(mask, w, h) {
  const c = document.createElement("canvas");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let i = 0; i < w * h; i++) {
    const v = mask[i] ? 255 : 0;
    img.data[4 * i] = img.data[4 * i + 1] = img.data[4 * i + 2] = v; img.data[4 * i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return c.toDataURL("image/png");
}

const fmt = (x, digits = 1) => (x === null || x === undefined || Number.isNaN(x)) ? "n/a" : x.toFixed(digits);

/** A modal question; resolves true for OK. `okText` names the action ("Discard edits"). */
function ask(text, okText = "OK", cancelText = "Cancel") {
  const dlg = $("ask");
  $("ask-text").textContent = text;
  $("ask-ok").textContent = okText;
  $("ask-cancel").textContent = cancelText;
  document.body.dataset.asking = "1";
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      delete document.body.dataset.asking;
      resolve(dlg.returnValue === "ok");
    }, { once: true });
    dlg.returnValue = "cancel";
    dlg.showModal();
    $("ask-ok").focus();
  });
}

/** Wires a `.viewer-tools` toolbar inside `root` to `viewer`; `zoomLabel` shows the zoom. */
function wireViewerTools(root, viewer, zoomLabel) {
  const windowSelect = root.querySelector("[data-view=window]");
  root.querySelectorAll("button[data-view]").forEach((b) => b.addEventListener("click", () => {
    const v = b.dataset.view;
    if (v === "zoom-in") viewer.zoomBy(1.25);
    else if (v === "zoom-out") viewer.zoomBy(0.8);
    else if (v === "fit") viewer.fit();
    else if (v === "actual") viewer.actualSize();
    else if (v === "wl-tool") {
      const on = b.getAttribute("aria-pressed") !== "true";
      b.setAttribute("aria-pressed", String(on));
      viewer.tool = on ? "window" : (viewer.onPaint ? viewer.paintTool || "brush" : "pan");
    }
  }));
  windowSelect.addEventListener("change", () => {
    const v = windowSelect.value;
    if (v === "auto") viewer.autoWindow();
    else if (QViewer.WINDOWS[v]) viewer.preset(v);
  });
  const before = viewer.onChange;
  viewer.onChange = (vw) => {
    if (before) before(vw);
    zoomLabel.textContent = vw.grey ? `${Math.round(vw.scale * 100 / (window.devicePixelRatio || 1))} %` : "";
    const p = Object.entries(QViewer.WINDOWS).find(([, q]) => Math.abs(q.c - vw.window.c) < 1e-3 && Math.abs(q.w - vw.window.w) < 1e-3);
    if (p) { if (windowSelect.value !== "auto") windowSelect.value = p[0]; }
    else if (windowSelect.value !== "auto" || vw._drag) windowSelect.value = "custom";
  };
}

// ---------------------------------------------------------------- keyboard

function typing(e) {
  const t = e.target;
  return t && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
    (t.tagName === "INPUT" && !["radio", "checkbox", "range", "button", "submit"].includes(t.type)));
}

// One dispatcher: shortcuts of the visible tab; never while typing in a text field (the
// browser's own undo belongs to the field) and never under an open dialog.
document.addEventListener("keydown", (e) => {
  if (typing(e) || document.querySelector("dialog[open]") || e.altKey || e.metaKey) return;
  if (e.key === "?") { e.preventDefault(); $("help").showModal(); return; }
  const handler = App.keys[App.tab];
  if (handler && handler(e)) e.preventDefault();
});

/** Shortcuts every viewer has; returns true when `e` was one. */
function viewerKeys(e, viewer) {
  if (e.ctrlKey) return false;
  switch (e.key) {
    case "+": case "=": viewer.zoomBy(1.25); return true;
    case "-": case "_": viewer.zoomBy(0.8); return true;
    case "f": case "F": viewer.fit(); return true;
    case "a": case "A": viewer.actualSize(); return true;
    default: return false;
  }
}

// ---------------------------------------------------------------- tabs and start

function showTab(name) {
  App.tab = name;
  for (const t of document.querySelectorAll(".tab")) {
    const on = t.dataset.tab === name;
    t.classList.toggle("active", on);
    t.setAttribute("aria-pressed", String(on));
  }
  $("demo").hidden = name !== "demo";
  $("annotate").hidden = name !== "annotate";
  document.body.dataset.tab = name;
  if (name === "annotate" && window.Annotate) Annotate.shown();
}

async function start() {
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => showTab(t.dataset.tab));
  $("help-button").addEventListener("click", () => $("help").showModal());
  try {
    App.config = await api("/api/config");
  } catch (e) {
    showError("The server's settings could not be loaded: " + e.message);
    return;
  }
  const cfg = App.config;
  const info = (cfg.models || {}).infection;
  $("model").textContent = info ? info.label
    : cfg.review ? "annotation (no model loaded)"
    : cfg.blind ? "blind annotation (models not named)" : "";
  $("model").title = cfg.checkpoint || "";
  const demoOn = !cfg.review;
  $("tab-demo").hidden = !demoOn;
  $("tab-annotate").hidden = !cfg.annotate;
  if (window.Demo && demoOn) Demo.configure(cfg);
  if (window.Annotate && cfg.annotate) Annotate.configure(cfg);
  document.body.dataset.config = "ready";
  if (cfg.annotate && (location.hash === "#annotate" || !demoOn)) showTab("annotate");
}

window.addEventListener("DOMContentLoaded", start);
