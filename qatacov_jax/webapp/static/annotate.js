// The annotation page (API: docs/annotation.md): one X-ray at a time in the shared viewer,
// its candidate masks as outlines that can be shown or hidden on the large canvas, an
// editable mask with brush, eraser and undo/redo (bound to the mask, never to text
// fields), and the decision buttons the server's session allows. The annotator's name is
// set once and shown, not left in a live text field; every save is confirmed on screen.
"use strict";

const Annotate = (() => {
  const COLOURS = [[255, 212, 0], [0, 229, 255], [255, 106, 213], [124, 252, 0], [255, 140, 0], [179, 136, 255]];
  const EDIT = [255, 40, 40];
  const st = {
    name: "", session: null, item: null, key: null, visited: [], jobs: [],
    cands: [], started: 0, busy: false, edit: new MaskEdit(),
  };
  let viewer = null;
  const q = () => (st.name ? `?annotator=${encodeURIComponent(st.name)}` : "");

  // ---------------------------------------------------------------- identity

  function setName(name) {
    st.name = name.trim().slice(0, 100);
    localStorage.setItem("annotator", st.name);
    $("who-form").hidden = !!st.name;
    $("who").hidden = !st.name;
    $("who-name").textContent = st.name;
    document.body.dataset.annotator = st.name;
  }

  // ---------------------------------------------------------------- session and jobs

  function outcomes() {
    return (st.session && st.session.settings && st.session.settings.outcomes) ||
      ["pick", "correct", "draw", "no_infection", "exclude", "skip"];
  }
  const lungMode = () => !!(st.session && st.session.settings && st.session.settings.target === "lung");

  function showProgress(p) {
    const mine = st.jobs.filter((j) => j.mine && j.mine !== "skip").length;  // this annotator's
    let text = `${p.done} of ${p.total} images settled, ${p.pending} open`;
    if (p.adjudication) text += `, ${p.adjudication} to adjudicate`;
    if (st.jobs.length) text += `; you decided ${mine}`;
    $("progress").textContent = text;
    $("progress-fill").style.width = `${p.total ? 100 * p.done / p.total : 0}%`;
  }

  async function loadSession() {
    const s = await api("/api/annotate" + q() + (q() ? "&" : "?") + "items=true");
    st.session = s;
    st.jobs = s.items || [];
    showProgress(s);
    renderJobs();
    for (const b of document.querySelectorAll("[data-outcome]")) b.hidden = !outcomes().includes(b.dataset.outcome);
    $("skip").hidden = !outcomes().includes("skip");
    return s;
  }

  function jobLabel(j) {
    const state = { open: "to do", accepted: "accepted", excluded: "excluded", adjudication: "to adjudicate" }[j.state] || j.state;
    return j.mine && j.mine !== "skip" ? `${state} · you: ${j.mine.replace("_", " ")}` : (j.mine === "skip" ? `${state} · skipped` : state);
  }

  // Done: decided by this annotator, or settled (accepted / excluded) by the votes.
  const isDone = (j) => (j.mine && j.mine !== "skip") || j.state === "accepted" || j.state === "excluded";

  function renderJobs() {
    const todo = [], done = [];
    for (const j of st.jobs) {
      const li = document.createElement("li");
      const b = document.createElement("button");
      b.type = "button";
      b.dataset.key = j.key;
      b.append(Object.assign(document.createElement("span"), { textContent: j.image }),
               Object.assign(document.createElement("span"), { className: "muted", textContent: jobLabel(j) }));
      if (j.key === st.key) b.setAttribute("aria-current", "true");
      b.addEventListener("click", () => open(j.key));
      li.append(b);
      (isDone(j) ? done : todo).push(li);
    }
    $("jobs-todo").replaceChildren(...todo);
    $("jobs-done").replaceChildren(...done);
    $("jobs-summary").textContent = `${done.length} done, ${todo.length} to do`;
  }

  // ---------------------------------------------------------------- one image

  // A candidate as people should read it: the model's architecture, encoder, fold, step and
  // validated Dice (`/api/config` models), never a folder name; blind names as given. Two
  // runs that read the same get their names appended, so they can be told apart.
  function candLabel(name) {
    const models = App.config.models || {};
    const info = models[name];
    if (info && info.label) {
      const twins = st.cands.filter((c) => models[c.name] && models[c.name].label === info.label);
      return twins.length > 1 ? `${info.label} (${name})` : info.label;
    }
    if (name === "manual") return "Reference mask (doctors')";
    if (name === "consensus") return "Consensus (pixel majority of the models)";
    return name;
  }

  // Short name for buttons and messages: "candidate 2", or the blind name itself.
  function candShort(name) {
    const c = st.cands.find((x) => x.name === name);
    if (!c) return name;
    if (/^candidate [A-Z]$/.test(name)) return name;
    if (name === "manual") return "the reference mask";
    if (name === "consensus") return "the consensus";
    return `candidate ${c.index + 1}`;
  }

  const unsaved = () => st.edit.unsaved;

  async function confirmDiscard(action) {
    if (!unsaved()) return true;
    return ask(`Your edits to ${st.item.image} are not saved. ${action} anyway and discard them?`,
               "Discard edits", "Keep editing");
  }

  async function open(key, { push = true, force = false } = {}) {
    if (st.busy) return;
    if (!force && st.item && !(await confirmDiscard("Open another image"))) return;
    showError("");
    st.busy = true;
    document.body.dataset.annotate = "busy";
    try {
      const item = await api("/api/annotate/" + encodeURIComponent(key) + q());
      if (push && st.key && st.key !== key) st.visited.push(st.key);
      await show(item);
      document.body.dataset.annotate = "ready";
    } catch (e) {
      showError(e.message);
      document.body.dataset.annotate = "error";
    } finally {
      st.busy = false;
    }
  }

  async function show(item) {
    st.item = item; st.key = item.key;
    $("ann-finished").hidden = true;
    const grey = await decodeValues(item.xray, false);
    viewer.setImage(grey.values, item.width, item.height);
    st.cands = await Promise.all(item.candidates.map(async (c, i) => ({
      ...c, index: i, colour: COLOURS[i % COLOURS.length], bits: await decodeMask(c.mask), shown: true,
    })));
    // The edited mask first (filled), the candidates' outlines over it.
    viewer.setLayer("edit", null, { colour: EDIT, mode: "fill", opacity: parseFloat($("ann-opacity").value),
                                    outline: $("ann-outline").checked });
    for (const c of st.cands) viewer.setLayer("cand:" + c.name, c.bits, { colour: c.colour, mode: "outline", visible: c.shown });
    // Revisiting: start from what this annotator chose, or from the accepted mask.
    const mine = item.mine;
    const from = mine && mine.candidate && ["pick", "accept", "correct", "reject"].includes(mine.outcome) &&
      st.cands.find((c) => c.name === mine.candidate);
    // Paper 2's lung review with one candidate: it is what is accepted or rejected.
    const only = !mine && lungMode() && st.cands.length === 1 ? st.cands[0] : null;
    let mask = from ? from.bits : only ? only.bits : null;
    if (item.mask && mine && ["correct", "reject", "draw"].includes(mine.outcome)) mask = await decodeMask(item.mask);
    st.edit.reset(item.width, item.height, mask, from ? from.name : only ? only.name : null);
    repaint();
    renderCandidates();
    $("ann-image-name").textContent = item.image;
    const s = item.status || {};
    $("ann-image-state").textContent = `${item.width} x ${item.height} px · ${s.state || ""}` +
      (s.votes_needed ? ` · votes ${s.votes_cast} of ${s.votes_needed}` : "");
    $("ann-mine").hidden = !mine;
    if (mine) $("ann-mine").textContent = `Your decision: ${describe(mine)}${mine.saved_at ? " (" + mine.saved_at + ")" : ""}. Saving again replaces it.`;
    st.started = performance.now();
    showProgress(item.progress);
    renderJobs();
    updateEditState();
    document.body.dataset.key = item.key;
  }

  function describe(rec) {
    const c = rec.candidate ? ` ${candShort(rec.candidate)}` : "";
    return {
      pick: `picked${c} as is`, correct: `corrected${c}`, draw: "drew the mask by hand",
      no_infection: "no visible infection", exclude: "excluded the image", skip: "skipped",
      accept: `accepted${c}`, reject: `rejected${c} and corrected it`, unsure: "unsure",
    }[rec.outcome] || rec.outcome;
  }

  function renderCandidates() {
    const box = $("candidates");
    box.replaceChildren();
    st.cands.forEach((c, i) => {
      const div = document.createElement("div");
      div.className = "cand" + (st.edit.chosen === c.name ? " chosen" : "");
      div.dataset.name = c.name;
      const label = candLabel(c.name);
      const meta = `area ${fmt(c.area_percent)} %` + (c.dice_with_models != null ? ` · Dice with models ${fmt(c.dice_with_models, 2)}` : "");
      const show = document.createElement("button");
      show.type = "button"; show.className = "show";
      show.setAttribute("aria-pressed", String(c.shown));
      show.setAttribute("aria-label", `Show ${label}'s outline (Shift+${i + 1})`);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.borderColor = sw.style.background = `rgb(${c.colour.join(",")})`;
      const text = document.createElement("span");
      text.className = "text";
      text.append(document.createTextNode(`${i + 1}. ${label}`), Object.assign(document.createElement("span"), { className: "meta", textContent: meta }));
      show.append(sw, text);
      show.addEventListener("click", () => toggle(i));
      const use = document.createElement("button");
      use.type = "button"; use.className = "use";
      use.textContent = st.edit.chosen === c.name ? "Editing" : "Use";
      use.setAttribute("aria-label", `Start from ${label} (key ${i + 1})`);
      use.addEventListener("click", () => choose(i));
      div.append(show, use);
      box.append(div);
    });
  }

  function toggle(i) {
    const c = st.cands[i];
    if (!c) return;
    c.shown = !c.shown;
    const layer = viewer.layers.find((l) => l.name === "cand:" + c.name);
    if (layer) layer.visible = c.shown;
    viewer.render();
    renderCandidates();
  }

  async function choose(i) {
    const c = st.cands[i];
    if (!c || !st.item || (st.edit.chosen === c.name && !st.edit.strokes)) return;
    if (st.edit.strokes > 0 && !(await ask(`Start from ${candLabel(c.name)}? Your brush and eraser edits will be replaced (Undo brings them back).`, "Use it", "Keep my edits"))) return;
    replaceMask(c.bits, c.name);
  }

  // ---------------------------------------------------------------- the mask (editor.js)

  function repaint(region = "all") {
    const layer = viewer.layers.find((l) => l.name === "edit");
    if (!layer || !region) return;
    const e = st.edit;
    QViewer.paintMask(layer.canvas, e.mask, e.w, e.h, EDIT, region === "all" ? null : region);
    viewer.render();
  }

  function edited(region) {
    repaint(region);
    renderCandidates();
    updateEditState();
  }

  function replaceMask(bits, chosen) { st.edit.replace(bits, chosen); edited("all"); }
  function undo() { edited(st.edit.undoOne()); }
  function redo() { edited(st.edit.redoOne()); }

  function radius() { return Math.max(0.5, parseFloat($("brush-size").value) / 2); }

  function paint(phase, p) {
    if (!st.item) return;
    const value = viewer.paintTool === "eraser" ? 0 : 1;
    repaint(st.edit.paint(phase, p, radius(), value));
    if (phase === "end") updateEditState();
  }

  // ---------------------------------------------------------------- decisions

  function maskOutcome() {
    const e = st.edit;
    if (!e.chosen) return "draw";
    if (lungMode()) return e.strokes ? "reject" : "accept";
    return e.strokes ? "correct" : "pick";
  }

  function updateEditState() {
    const e = st.edit;
    $("undo").disabled = !e.undo.length;
    $("redo").disabled = !e.redo.length;
    const o = maskOutcome();
    const c = e.chosen ? candShort(e.chosen) : "";
    const label = {
      pick: `Save: ${c} as is`, correct: `Save: ${c}, corrected`, draw: "Save: my drawing",
      accept: `Accept ${c}`, reject: `Reject ${c}, save my correction`,
    }[o];
    $("save").textContent = label + " (S)";
    $("save").disabled = !st.item || !outcomes().includes(o);
    $("ann-edit-state").textContent = !st.item ? "" :
      e.strokes ? `${e.strokes} edit${e.strokes > 1 ? "s" : ""}, not saved` : (e.unsaved ? "not saved" : "");
    document.body.dataset.strokes = String(e.strokes);
  }

  async function decide(outcome) {
    if (!st.item || st.busy) return;
    if (!st.name) { showError("Enter your name first: every decision records who made it."); $("annotator").focus(); return; }
    const body = { annotator: st.name, outcome, revision: st.item.revision,
                   seconds: (performance.now() - st.started) / 1000 };
    const withMask = ["correct", "draw", "reject"].includes(outcome);
    const e = st.edit;
    if (withMask && e.empty) {
      showError(`The mask is empty. Draw the infected region, or use "No visible infection" if there is none.`);
      return;
    }
    if (["pick", "correct", "accept", "reject"].includes(outcome) || (outcome === "unsure" && e.chosen)) body.candidate = e.chosen;
    if (withMask || (outcome === "unsure" && e.strokes)) body.mask = maskPng(e.mask, e.w, e.h);
    if (outcome === "no_infection" && !(await ask(`Save "no visible infection" for ${st.item.image}? It stays a COVID-19 image, with an empty mask.`, "Save: no visible infection"))) return;
    if (outcome === "exclude" && !(await ask(`Exclude ${st.item.image} from the dataset (unreadable, wrong view, not a chest X-ray...)?`, "Exclude image"))) return;
    if (outcome === "skip" && !(await confirmDiscard("Skip this image"))) return;
    showError("");
    st.busy = true;
    document.body.dataset.annotate = "saving";
    let r;
    try {
      r = await api("/api/annotate/" + encodeURIComponent(st.item.key), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
    } catch (err) {
      st.busy = false;
      showError(err.status === 409 ? `Not saved: ${err.message}. Your edits are still here; open the image again from the list to see the newer decision.` : "Not saved: " + err.message);
      document.body.dataset.annotate = "error";
      return;
    }
    st.busy = false;
    st.edit.reset(e.w, e.h);  // saved: nothing left to lose
    if (outcome !== "skip") {
      const saved = $("ann-saved");
      const time = new Date().toLocaleTimeString();
      saved.textContent = `Saved ${st.item.image}: ${describe(r.saved)} at ${time}` +
        (r.status && r.status.votes_needed > 1 ? ` (votes ${r.status.votes_cast} of ${r.status.votes_needed})` : "") + ".";
      saved.hidden = false;
      saved.classList.remove("flash"); void saved.offsetWidth; saved.classList.add("flash");
      document.body.dataset.saved = st.item.key;
    }
    document.body.dataset.lastOutcome = outcome;
    await loadSession();
    showProgress(r.progress);
    if (r.next) await open(r.next, { force: true });
    else finished();
  }

  function finished() {
    st.item = null; st.key = null;
    viewer.clear();
    $("candidates").replaceChildren();
    $("ann-image-name").textContent = "";
    $("ann-image-state").textContent = "";
    $("ann-mine").hidden = true;
    const p = st.session || {};
    $("ann-finished-text").textContent = `Nothing is left for you: ${p.done || 0} of ${p.total || 0} images are settled` +
      (p.adjudication ? `, ${p.adjudication} await adjudication` : "") + (p.pending ? `, ${p.pending} still need other annotators' votes` : "") + ".";
    $("ann-finished").hidden = false;
    $("jobs-box").open = true;
    updateEditState();
    document.body.dataset.annotate = "done";
  }

  async function next() {
    if (!st.name) return;
    try {
      const s = await loadSession();
      if (s.next) await open(s.next, { force: !st.item });
      else finished();
    } catch (e) {
      showError(e.message);
      document.body.dataset.annotate = "error";
    }
  }

  async function previous() {
    const key = st.visited.pop();
    if (key) await open(key, { push: false });
  }

  // The next image in the list order, whatever its state (arrow key / Next button).
  async function following() {
    if (!st.jobs.length) return;
    const i = st.jobs.findIndex((j) => j.key === st.key);
    const j = st.jobs[(i + 1) % st.jobs.length];
    if (j && j.key !== st.key) await open(j.key);
  }

  // ---------------------------------------------------------------- tools and keys

  function setTool(tool) {
    document.querySelectorAll("input[name=tool]").forEach((r) => { r.checked = r.value === tool; });
    viewer.tool = tool;
    if (tool !== "pan") viewer.paintTool = tool;
    viewer.brushRadius = tool === "pan" ? 0 : radius();
    if (tool === "pan") viewer.cursor = null;
    $("ann-canvas").style.cursor = tool === "pan" ? "grab" : "crosshair";
  }

  function setSize(v) {
    const s = Math.max(1, Math.min(80, Math.round(v)));
    $("brush-size").value = s;
    $("brush-size-value").textContent = s;
    viewer.brushRadius = radius();
    if (viewer.cursor) { viewer.cursor.r = radius(); viewer.render(); }
  }

  function keys(e) {
    if (!st.item && !["ArrowLeft", "ArrowRight"].includes(e.key)) return false;
    const k = e.key.toLowerCase();
    if (e.ctrlKey && (k === "z" || k === "y")) {
      if (k === "y" || e.shiftKey) redo(); else undo();
      return true;
    }
    if (e.ctrlKey) return false;
    if (viewerKeys(e, viewer)) return true;
    const digit = /^Digit([1-9])$/.exec(e.code);
    if (digit) { const i = Number(digit[1]) - 1; if (e.shiftKey) toggle(i); else choose(i); return true; }
    switch (k) {
      case "b": setTool("brush"); return true;
      case "e": setTool("eraser"); return true;
      case "h": setTool("pan"); return true;
      case "[": setSize(parseFloat($("brush-size").value) - (e.shiftKey ? 10 : 2)); return true;
      case "]": setSize(parseFloat($("brush-size").value) + (e.shiftKey ? 10 : 2)); return true;
      case "s": if (!$("save").disabled) decide(maskOutcome()); return true;
      case "n": if (outcomes().includes("skip")) decide("skip"); return true;
      case "o": toggleOverlay(); return true;
      case "arrowleft": previous(); return true;
      case "arrowright": following(); return true;
      default: return false;
    }
  }

  function toggleOverlay() {
    viewer.setOverlay(!viewer.overlayOn);
    document.body.dataset.overlay = viewer.overlayOn ? "on" : "off";
  }

  function setup() {
    viewer = new QViewer.Viewer($("ann-canvas"));
    Annotate.viewer = viewer;
    viewer.onPaint = paint;
    wireViewerTools($("annotate"), viewer, $("ann-zoom"));
    setTool("brush");
    setName(localStorage.getItem("annotator") || "");
    $("annotator").value = st.name;
    $("who-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const v = $("annotator").value.trim();
      if (!v) return;
      setName(v);
      $("annotator").blur();
      if (App.tab === "annotate") next();
    });
    $("who-change").addEventListener("click", () => {
      $("who-form").hidden = false; $("who").hidden = true;
      $("annotator").value = st.name; $("annotator").focus();
    });
    document.querySelectorAll("input[name=tool]").forEach((r) => r.addEventListener("change", () => setTool(r.value)));
    $("brush-size").addEventListener("input", () => setSize(parseFloat($("brush-size").value)));
    $("undo").addEventListener("click", undo);
    $("redo").addEventListener("click", redo);
    $("clear").addEventListener("click", () => { if (st.item) replaceMask(new Uint8Array(st.edit.w * st.edit.h), null); });
    $("save").addEventListener("click", () => decide(maskOutcome()));
    document.querySelectorAll("[data-outcome]").forEach((b) => b.addEventListener("click", () => decide(b.dataset.outcome)));
    $("skip").addEventListener("click", () => decide("skip"));
    $("prev").addEventListener("click", previous);
    $("next").addEventListener("click", following);
    $("ann-opacity").addEventListener("input", () => {
      const l = viewer.layers.find((x) => x.name === "edit");
      if (l) { l.opacity = parseFloat($("ann-opacity").value); viewer.render(); }
    });
    $("ann-outline").addEventListener("change", () => {
      const l = viewer.layers.find((x) => x.name === "edit");
      if (l) { l.outline = $("ann-outline").checked; viewer.render(); }
    });
    // Space held: the drag pans (as in image editors), whatever the tool.
    document.addEventListener("keydown", (e) => {
      const onControl = e.target.closest && e.target.closest("button, input, select, summary, a, dialog");
      if (e.code === "Space" && App.tab === "annotate" && !onControl) { viewer.spaceHeld = true; e.preventDefault(); }
    });
    document.addEventListener("keyup", (e) => { if (e.code === "Space") viewer.spaceHeld = false; });
    window.addEventListener("beforeunload", (e) => { if (unsaved()) e.preventDefault(); });
    App.keys.annotate = keys;
    updateEditState();
  }

  function configure() { /* the session is loaded when the tab is first shown */ }

  function shown() {
    if (!st.name) { $("annotator").focus(); document.body.dataset.annotate = "who"; return; }
    if (!st.item && document.body.dataset.annotate !== "done") next();
  }

  window.addEventListener("DOMContentLoaded", setup);
  return { configure, shown, open, get state() { return st; } };
})();
window.Annotate = Annotate;
