// The mask being edited and its history: brush and eraser strokes written straight into a
// 0/1 pixel array (exact pixels, no anti-aliasing to threshold later), whole-mask
// replacements (starting from a candidate, clearing), and undo/redo of both. Each history
// entry keeps the changed rectangle before and after, and which candidate the mask started
// from and how many strokes it had, so undo also restores "picked as is" vs "corrected".
"use strict";

class MaskEdit {
  constructor(maxUndo = 100) {
    this.maxUndo = maxUndo;
    this.reset(0, 0);
  }

  /** A new image of w x h: an empty mask (or `mask`), no history. */
  reset(w, h, mask = null, chosen = null) {
    this.w = w; this.h = h;
    this.mask = mask ? mask.slice() : new Uint8Array(w * h);
    this.chosen = chosen;   // the candidate the mask started from, or null (drawn by hand)
    this.strokes = 0;       // strokes since it was chosen
    this.undo = []; this.redo = [];
    this.stroke = null;
  }

  /** Edits not saved yet (anything in the history). */
  get unsaved() { return this.undo.length > 0; }
  get empty() { return !this.mask.some((v) => v); }

  /** Replaces the whole mask (a candidate's, or empty); undoable. */
  replace(bits, chosen) {
    this._push({ x: 0, y: 0, w: this.w, h: this.h, before: this.mask.slice(), after: bits.slice(),
                 chosen: [this.chosen, chosen], strokes: [this.strokes, 0] });
    this.mask = bits.slice(); this.chosen = chosen; this.strokes = 0;
  }

  /** A stroke: phase "start" | "move" | "end" | "cancel" at image point p with `radius`
   *  pixels, painting `value` (1 brush, 0 eraser; read at "start"). Returns the rectangle
   *  [x, y, w, h] to repaint, "all", or null. */
  paint(phase, p, radius, value) {
    if (phase === "start") this.stroke = { before: this.mask.slice(), value, last: p, box: null };
    const s = this.stroke;
    if (!s) return null;
    if (phase === "cancel") { this.mask = s.before; this.stroke = null; return "all"; }
    const box = this._capsule(s.last, p, radius, s.value);
    s.last = p;
    if (box) s.box = s.box ? union(s.box, box) : box;
    if (phase === "end") {
      this.stroke = null;
      if (s.box) {
        const [x, y, w, h] = s.box;
        const before = this._crop(s.before, x, y, w, h), after = this._crop(this.mask, x, y, w, h);
        if (before.some((v, i) => v !== after[i])) {
          this._push({ x, y, w, h, before, after, chosen: [this.chosen, this.chosen],
                       strokes: [this.strokes, this.strokes + 1] });
          this.strokes += 1;
        }
      }
    }
    return box;
  }

  /** Undo / redo one entry; returns the rectangle to repaint ("all" for a whole mask). */
  undoOne() { return this._step(this.undo, this.redo, "before"); }
  redoOne() { return this._step(this.redo, this.undo, "after"); }

  _step(from, to, which) {
    const e = from.pop();
    if (!e) return null;
    to.push(e);
    const data = e[which];
    for (let y = 0; y < e.h; y++) this.mask.set(data.subarray(y * e.w, (y + 1) * e.w), (y + e.y) * this.w + e.x);
    const k = which === "before" ? 0 : 1;
    this.chosen = e.chosen[k]; this.strokes = e.strokes[k];
    return e.w === this.w && e.h === this.h ? "all" : [e.x, e.y, e.w, e.h];
  }

  _push(entry) {
    this.undo.push(entry);
    if (this.undo.length > this.maxUndo) this.undo.shift();
    this.redo = [];
  }

  _crop(mask, x, y, w, h) {
    const out = new Uint8Array(w * h);
    for (let r = 0; r < h; r++) out.set(mask.subarray((r + y) * this.w + x, (r + y) * this.w + x + w), r * w);
    return out;
  }

  // The segment a-b widened by `radius` (a capsule), set to `value`; its bounding box.
  _capsule(a, b, radius, value) {
    const x0 = Math.max(0, Math.floor(Math.min(a[0], b[0]) - radius));
    const x1 = Math.min(this.w - 1, Math.ceil(Math.max(a[0], b[0]) + radius));
    const y0 = Math.max(0, Math.floor(Math.min(a[1], b[1]) - radius));
    const y1 = Math.min(this.h - 1, Math.ceil(Math.max(a[1], b[1]) + radius));
    if (x1 < x0 || y1 < y0) return null;
    const dx = b[0] - a[0], dy = b[1] - a[1], len2 = dx * dx + dy * dy, r2 = radius * radius;
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        const px = x + 0.5, py = y + 0.5;  // pixel centres
        const t = len2 ? Math.max(0, Math.min(1, ((px - a[0]) * dx + (py - a[1]) * dy) / len2)) : 0;
        const ex = px - (a[0] + t * dx), ey = py - (a[1] + t * dy);
        if (ex * ex + ey * ey <= r2) this.mask[y * this.w + x] = value;
      }
    }
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1];
  }
}

function union(a, b) {
  const x0 = Math.min(a[0], b[0]), y0 = Math.min(a[1], b[1]);
  return [x0, y0, Math.max(a[0] + a[2], b[0] + b[2]) - x0, Math.max(a[1] + a[3], b[1] + b[3]) - y0];
}

window.MaskEdit = MaskEdit;
