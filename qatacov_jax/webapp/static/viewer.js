// The X-ray viewer shared by the demo and the annotation editor: the image at full
// resolution with zoom and pan (wheel, drag, pinch), window/level (right- or Shift-drag, the
// W/L tool, presets), fit and 1:1, an optional heat overlay (the paper's infection map:
// jet hue and saturation over the windowed X-ray's brightness) and any number of mask
// layers drawn filled or as outlines. Plain browser JavaScript; no libraries.
"use strict";

// matplotlib's jet (its published breakpoints), as the server's infection_map uses it.
const JET = {
  r: [[0, 0], [0.35, 0], [0.66, 1], [0.89, 1], [1, 0.5]],
  g: [[0, 0], [0.125, 0], [0.375, 1], [0.64, 1], [0.91, 0], [1, 0]],
  b: [[0, 0.5], [0.11, 1], [0.34, 1], [0.65, 0], [1, 0]],
};

function piecewise(points, x) {
  for (let i = 1; i < points.length; i++) {
    const [x0, y0] = points[i - 1], [x1, y1] = points[i];
    if (x <= x1) return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
  }
  return points[points.length - 1][1];
}

// jet(p) at HSV value 1 (hue and saturation only): the colour a pure-white pixel gets.
// 1024 entries; infection_map uses 65536, the difference is below one grey level.
const UNIT_JET = (() => {
  const n = 1024, t = new Float32Array(3 * n);
  for (let i = 0; i < n; i++) {
    const p = i / (n - 1);
    const r = piecewise(JET.r, p), g = piecewise(JET.g, p), b = piecewise(JET.b, p);
    const v = Math.max(r, g, b);
    t[3 * i] = r / v; t[3 * i + 1] = g / v; t[3 * i + 2] = b / v;
  }
  return t;
})();

function unitJet(p) {
  const i = Math.min(1023, Math.max(0, Math.floor(p * 1024)));
  return [UNIT_JET[3 * i], UNIT_JET[3 * i + 1], UNIT_JET[3 * i + 2]];
}

// Window presets on the [0, 1] intensities (centre, width).
const WINDOWS = {
  full: { label: "Full range", c: 0.5, w: 1.0 },
  lung: { label: "Lung (darker, more contrast)", c: 0.4, w: 0.6 },
  soft: { label: "Mediastinum (brighter)", c: 0.65, w: 0.5 },
};

class Viewer {
  /** `canvas`: the on-screen canvas; it fills its parent (CSS) at device resolution. */
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.w = 0; this.h = 0;
    this.grey = null;           // Float32Array(w * h) in [0, 1]
    this.heat = null;           // Float32Array(w * h) probabilities, or null
    this.heatFloor = 0.1;
    this.heatOpacity = 1.0;
    this.overlayOn = true;
    this.layers = [];           // {name, canvas, colour, mode: "fill"|"outline", opacity, visible}
    this.window = { c: 0.5, w: 1.0 };
    this.scale = 1; this.tx = 0; this.ty = 0;
    this.tool = "pan";          // "pan" | "window" | anything the owner handles (onPaint)
    this.onPaint = null;        // (phase, [x, y] in image pixels, event) for paint tools
    this.onChange = null;       // after zoom / window changes (for labels)
    this.cursor = null;         // {x, y, r} in image pixels: the brush outline
    this.base = document.createElement("canvas");
    this.scratch = document.createElement("canvas");
    this.edge = document.createElement("canvas");
    this._pointers = new Map();
    this._frame = 0;
    this._baseDirty = true;
    this._fitted = true;
    this._listen();
    new ResizeObserver(() => this._resize()).observe(canvas.parentElement);
    this._resize();
  }

  // ---------------------------------------------------------------- content

  /** A new image: (w, h) and its intensities in [0, 1]. Resets layers and view. */
  setImage(grey, w, h) {
    this.grey = grey; this.w = w; this.h = h;
    this.heat = null; this.layers = [];
    this.base.width = w; this.base.height = h;
    this.window = { c: 0.5, w: 1.0 };
    this._baseDirty = true;
    this.fit();
  }

  clear() {
    this.grey = null; this.heat = null; this.layers = []; this.w = this.h = 0;
    this.cursor = null;
    this.render();
  }

  setHeat(prob, floor) { this.heat = prob; this.heatFloor = floor; this._baseDirty = true; this.render(); }
  setHeatOpacity(a) { this.heatOpacity = a; this._baseDirty = true; this.render(); }
  setOverlay(on) { this.overlayOn = on; this._baseDirty = true; this.render(); }

  /** A mask layer from a Uint8Array(w * h) of 0/1 (or an existing canvas). */
  setLayer(name, mask, opts = {}) {
    let layer = this.layers.find((l) => l.name === name);
    if (!layer) {
      layer = { name, canvas: document.createElement("canvas"), colour: [255, 0, 0],
                mode: "outline", opacity: 1, visible: true };
      this.layers.push(layer);
    }
    Object.assign(layer, opts);
    if (mask instanceof HTMLCanvasElement) layer.canvas = mask;
    else if (mask) paintMask(layer.canvas, mask, this.w, this.h, layer.colour);
    this.render();
    return layer;
  }

  removeLayer(name) { this.layers = this.layers.filter((l) => l.name !== name); this.render(); }

  setWindow(c, w) {
    this.window = { c: clamp(c, -0.5, 1.5), w: clamp(w, 0.02, 2) };
    this._baseDirty = true;
    this.render();
  }

  preset(name) { const p = WINDOWS[name]; this.setWindow(p.c, p.w); }

  /** Window from the 1st..99th percentile of the image (an "auto" window). */
  autoWindow() {
    if (!this.grey) return;
    const hist = new Uint32Array(256);
    for (let i = 0; i < this.grey.length; i += 7) hist[Math.min(255, Math.floor(this.grey[i] * 256))]++;
    const total = hist.reduce((a, b) => a + b, 0);
    let acc = 0, lo = 0, hi = 255;
    for (let i = 0; i < 256; i++) { acc += hist[i]; if (acc >= 0.01 * total) { lo = i; break; } }
    acc = 0;
    for (let i = 255; i >= 0; i--) { acc += hist[i]; if (acc >= 0.01 * total) { hi = i; break; } }
    this.setWindow((lo + hi + 1) / 512, Math.max(0.02, (hi + 1 - lo) / 256));
  }

  // ---------------------------------------------------------------- view

  fit() {
    const cw = this.canvas.width, ch = this.canvas.height;
    if (!this.w || !cw) { this._fitted = true; this.render(); return; }
    this.scale = Math.min(cw / this.w, ch / this.h);
    this.tx = (cw - this.w * this.scale) / 2;
    this.ty = (ch - this.h * this.scale) / 2;
    this._fitted = true;
    this.render();
  }

  /** One image pixel per screen pixel (CSS pixel), centred on the view's centre. */
  actualSize() {
    const dpr = window.devicePixelRatio || 1;
    this.zoomAt(this.canvas.width / 2, this.canvas.height / 2, dpr / this.scale);
  }

  zoomAt(sx, sy, factor) {
    const s = clamp(this.scale * factor, 0.02, 64);
    const f = s / this.scale;
    this.tx = sx - (sx - this.tx) * f;
    this.ty = sy - (sy - this.ty) * f;
    this.scale = s;
    this._fitted = false;
    this.render();
  }

  zoomBy(factor) { this.zoomAt(this.canvas.width / 2, this.canvas.height / 2, factor); }

  /** Screen (event) coordinates -> image pixels. */
  toImage(e) {
    const r = this.canvas.getBoundingClientRect();
    const dpr = this.canvas.width / r.width;
    const sx = (e.clientX - r.left) * dpr, sy = (e.clientY - r.top) * dpr;
    return [(sx - this.tx) / this.scale, (sy - this.ty) / this.scale];
  }

  // ---------------------------------------------------------------- drawing

  render() {
    if (this._frame) return;
    this._frame = requestAnimationFrame(() => { this._frame = 0; this._draw(); });
  }

  _resize() {
    const r = this.canvas.parentElement.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(r.width * dpr)), h = Math.max(1, Math.round(r.height * dpr));
    if (w === this.canvas.width && h === this.canvas.height) return;
    this.canvas.width = w; this.canvas.height = h;  // clears the canvas: redraw at once
    if (this._fitted) this.fit();
    if (this._frame) { cancelAnimationFrame(this._frame); this._frame = 0; }
    this._draw();
  }

  // The X-ray through the window, with the heat overlay blended in, at image resolution.
  // A 65536-entry table maps the intensities (quantised to 16 bits once per image) through
  // the window, so a window/level drag costs one lookup per pixel even on 9-megapixel images.
  _drawBase() {
    const { w, h } = this, n = w * h;
    if (!this._q || this._q.length !== n || this._qSource !== this.grey) {
      this._q = new Uint16Array(n);
      for (let i = 0; i < n; i++) this._q[i] = Math.round(Math.min(1, Math.max(0, this.grey[i])) * 65535);
      this._qSource = this.grey;
    }
    const lut = new Uint8Array(65536);
    const lo = this.window.c - this.window.w / 2, inv = 1 / this.window.w;
    for (let k = 0; k < 65536; k++) lut[k] = Math.round(Math.min(1, Math.max(0, (k / 65535 - lo) * inv)) * 255);
    const ctx = this.base.getContext("2d");
    const out = ctx.createImageData(w, h), d = out.data;
    const px = new Uint32Array(d.buffer);  // little-endian RGBA: 0xAABBGGRR
    const q = this._q;
    for (let i = 0; i < n; i++) { const v = lut[q[i]]; px[i] = 0xff000000 | (v << 16) | (v << 8) | v; }
    const heat = this.overlayOn ? this.heat : null, a = this.heatOpacity, floor = this.heatFloor;
    if (heat && a > 0) {
      for (let i = 0; i < n; i++) {
        if (!(heat[i] >= floor)) continue;
        const v = lut[q[i]], k = 3 * Math.min(1023, Math.floor(heat[i] * 1024));
        d[4 * i] = v * (1 - a) + Math.round(UNIT_JET[k] * v) * a;
        d[4 * i + 1] = v * (1 - a) + Math.round(UNIT_JET[k + 1] * v) * a;
        d[4 * i + 2] = v * (1 - a) + Math.round(UNIT_JET[k + 2] * v) * a;
      }
    }
    ctx.putImageData(out, 0, 0);
    this._baseDirty = false;
  }

  _draw() {
    const { ctx, canvas } = this;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    this.canvas.dataset.scale = this.scale.toFixed(4);
    this.canvas.dataset.window = `${this.window.c.toFixed(3)},${this.window.w.toFixed(3)}`;
    if (!this.grey) return;
    if (this._baseDirty) this._drawBase();
    const t = [this.scale, 0, 0, this.scale, this.tx, this.ty];
    ctx.imageSmoothingEnabled = this.scale < 1;  // pixels stay square when magnified
    ctx.setTransform(...t);
    ctx.drawImage(this.base, 0, 0);
    for (const layer of this.layers) {
      if (!layer.visible || (!this.overlayOn && layer.overlay !== false)) continue;
      if (layer.mode === "fill") {
        ctx.globalAlpha = layer.opacity;
        ctx.drawImage(layer.canvas, 0, 0);
        ctx.globalAlpha = 1;
      }
      if (layer.mode === "outline" || layer.outline) {
        ctx.setTransform(1, 0, 0, 1, 0, 0);
        this._outline(layer, t);
        ctx.setTransform(...t);
      }
    }
    if (this.cursor) {
      ctx.lineWidth = 1.5 / this.scale;
      ctx.strokeStyle = "#fff";
      ctx.setLineDash([4 / this.scale, 3 / this.scale]);
      ctx.beginPath();
      ctx.arc(this.cursor.x, this.cursor.y, Math.max(this.cursor.r, 0.5), 0, 2 * Math.PI);
      ctx.stroke();
      ctx.setLineDash([]);
    }
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    if (this.onChange) this.onChange(this);
  }

  // A layer's outline at screen resolution: the mask drawn at the current zoom, then its
  // boundary pixels painted in the layer's colour, so the line stays one or two screen
  // pixels wide at any zoom (an outline drawn at image resolution vanishes when zoomed out).
  _outline(layer, t) {
    const cw = this.canvas.width, ch = this.canvas.height;
    const s = this.scratch;
    if (s.width !== cw || s.height !== ch) { s.width = cw; s.height = ch; this.edge.width = cw; this.edge.height = ch; }
    const sc = s.getContext("2d", { willReadFrequently: true });
    sc.setTransform(1, 0, 0, 1, 0, 0);
    sc.clearRect(0, 0, cw, ch);
    sc.imageSmoothingEnabled = false;
    sc.setTransform(...t);
    sc.drawImage(layer.canvas, 0, 0);
    // Only the part of the screen the image covers.
    const x0 = Math.max(0, Math.floor(this.tx)), y0 = Math.max(0, Math.floor(this.ty));
    const x1 = Math.min(cw, Math.ceil(this.tx + this.w * this.scale));
    const y1 = Math.min(ch, Math.ceil(this.ty + this.h * this.scale));
    if (x1 - x0 < 2 || y1 - y0 < 2) return;
    const bw = x1 - x0, bh = y1 - y0;
    const src = sc.getImageData(x0, y0, bw, bh).data;
    const ec = this.edge.getContext("2d");
    const out = ec.createImageData(bw, bh), d = out.data;
    const [r, g, b] = layer.colour;
    const on = (x, y) => x >= 0 && y >= 0 && x < bw && y < bh && src[4 * (y * bw + x) + 3] >= 128;
    const width = layer.lineWidth || 2;
    for (let y = 0; y < bh; y++) {
      for (let x = 0; x < bw; x++) {
        if (!on(x, y)) continue;
        let edge = false;
        for (let k = 1; k <= width && !edge; k++) {
          edge = !on(x - k, y) || !on(x + k, y) || !on(x, y - k) || !on(x, y + k);
        }
        if (!edge) continue;
        const i = 4 * (y * bw + x);
        d[i] = r; d[i + 1] = g; d[i + 2] = b; d[i + 3] = 255;
      }
    }
    ec.putImageData(out, 0, 0);
    this.ctx.drawImage(this.edge, 0, 0, bw, bh, x0, y0, bw, bh);
  }

  // ---------------------------------------------------------------- input

  _listen() {
    const c = this.canvas;
    c.addEventListener("wheel", (e) => {
      if (!this.grey) return;
      e.preventDefault();
      const r = c.getBoundingClientRect(), dpr = c.width / r.width;
      this.zoomAt((e.clientX - r.left) * dpr, (e.clientY - r.top) * dpr, Math.exp(-e.deltaY * 0.0015));
    }, { passive: false });
    c.addEventListener("contextmenu", (e) => e.preventDefault());
    c.addEventListener("pointerdown", (e) => this._down(e));
    c.addEventListener("pointermove", (e) => this._move(e));
    const up = (e) => this._up(e);
    c.addEventListener("pointerup", up);
    c.addEventListener("pointercancel", up);
    c.addEventListener("pointerleave", () => { if (this.cursor && !this._drag) { this.cursor = null; this.render(); } });
  }

  // Which gesture a press starts: right button or Shift = window/level; middle button,
  // Space held or the pan tool = pan; otherwise the owner's paint tool.
  _gesture(e) {
    if (this._pointers.size >= 2) return "pinch";
    if (e.button === 2 || e.shiftKey || this.tool === "window") return "window";
    if (e.button === 1 || this.spaceHeld || this.tool === "pan" || !this.onPaint) return "pan";
    return "paint";
  }

  _down(e) {
    if (!this.grey) return;
    this.canvas.focus({ preventScroll: true });
    this._pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    this.canvas.setPointerCapture(e.pointerId);
    if (this._pointers.size === 2 && this._drag && this._drag.kind === "paint") {
      this.onPaint("cancel", this.toImage(e), e);  // a second finger: pinch, not paint
    }
    const kind = this._gesture(e);
    this._drag = { kind, x: e.clientX, y: e.clientY, window: { ...this.window }, dist: this._pinchDist() };
    if (kind === "paint") this.onPaint("start", this.toImage(e), e);
  }

  _pinchDist() {
    const p = [...this._pointers.values()];
    return p.length >= 2 ? Math.hypot(p[0].x - p[1].x, p[0].y - p[1].y) : 0;
  }

  _move(e) {
    if (this.onPaint && this.tool !== "pan" && this.tool !== "window") {
      const [x, y] = this.toImage(e);
      this.cursor = { x, y, r: this.brushRadius || 0 };
      if (!this._drag) this.render();
    }
    const d = this._drag;
    if (!d || !this._pointers.has(e.pointerId)) return;
    const prev = this._pointers.get(e.pointerId);
    this._pointers.set(e.pointerId, { x: e.clientX, y: e.clientY });
    const r = this.canvas.getBoundingClientRect(), dpr = this.canvas.width / r.width;
    if (d.kind === "pinch" || this._pointers.size >= 2) {
      const dist = this._pinchDist();
      const p = [...this._pointers.values()];
      const mx = ((p[0].x + p[1].x) / 2 - r.left) * dpr, my = ((p[0].y + p[1].y) / 2 - r.top) * dpr;
      if (d.dist > 0 && dist > 0) this.zoomAt(mx, my, dist / d.dist);
      d.dist = dist; d.kind = "pinch";
      return;
    }
    if (d.kind === "pan") {
      this.tx += (e.clientX - prev.x) * dpr; this.ty += (e.clientY - prev.y) * dpr;
      this._fitted = false;
      this.render();
    } else if (d.kind === "window") {
      // Right: wider window (less contrast); down: higher level (darker), as PACS viewers.
      const dx = (e.clientX - d.x) / r.width, dy = (e.clientY - d.y) / r.height;
      this.setWindow(d.window.c + dy, d.window.w * Math.exp(dx * 2));
    } else if (d.kind === "paint") {
      this.onPaint("move", this.toImage(e), e);
    }
  }

  _up(e) {
    this._pointers.delete(e.pointerId);
    const d = this._drag;
    if (d && d.kind === "paint") this.onPaint("end", this.toImage(e), e);
    if (this._pointers.size === 0) this._drag = null;
  }
}

/** Paints a 0/1 mask (Uint8Array w * h) into `canvas` (resized to w x h) in `colour`. */
function paintMask(canvas, mask, w, h, colour = [255, 0, 0], region = null) {
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const ctx = canvas.getContext("2d");
  const [x0, y0, rw, rh] = region || [0, 0, w, h];
  if (rw <= 0 || rh <= 0) return;
  const img = ctx.createImageData(rw, rh), d = img.data;
  for (let y = 0; y < rh; y++) {
    for (let x = 0; x < rw; x++) {
      if (!mask[(y + y0) * w + x + x0]) continue;
      const i = 4 * (y * rw + x);
      d[i] = colour[0]; d[i + 1] = colour[1]; d[i + 2] = colour[2]; d[i + 3] = 255;
    }
  }
  ctx.putImageData(img, x0, y0);
}

function clamp(x, lo, hi) { return Math.min(hi, Math.max(lo, x)); }

/** The jet legend: probabilities `floor`..1 left to right, with a tick at `threshold`. */
function drawLegend(canvas, floor, threshold) {
  const ctx = canvas.getContext("2d"), w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  for (let x = 0; x < w; x++) {
    const p = x / (w - 1);
    if (p < floor) { ctx.fillStyle = "#7f7f7f"; } else {
      const [r, g, b] = unitJet(p);
      ctx.fillStyle = `rgb(${Math.round(r * 255)},${Math.round(g * 255)},${Math.round(b * 255)})`;
    }
    ctx.fillRect(x, 0, 1, h);
  }
  const tx = Math.round(threshold * (w - 1));
  ctx.fillStyle = "#000"; ctx.fillRect(tx - 1, 0, 3, h);
  ctx.fillStyle = "#fff"; ctx.fillRect(tx, 0, 1, h);
}

window.QViewer = { Viewer, WINDOWS, paintMask, drawLegend, unitJet };
