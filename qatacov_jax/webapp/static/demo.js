// The demo: upload -> the X-ray with its infection map in the viewer, the decision beside
// the file's name (and DICOM patient/study identifiers), severity, downloads. A new upload
// clears the previous result at once, so one patient's result never sits under another's
// file name, and a failed upload leaves nothing but the error.
"use strict";

const Demo = (() => {
  const st = { report: null, prob: null, lung: null, w: 0, h: 0, current: null, seq: 0 };
  let viewer = null;

  // The severity grade exactly as inference/severity.py: the first bound >= the percentage.
  function grade(pct) {
    const s = App.config.severity_scale;
    if (pct === null || Number.isNaN(pct)) return [-1, "unknown"];
    let g = s.bounds.findIndex((b) => pct <= b);
    if (g < 0) g = s.bounds.length;
    return [g, s.names[g]];
  }

  function stem(name) { return (name || "upload").replace(/\.[^.]*$/, "").replace(/[^\w.-]+/g, "_") || "upload"; }

  function clearResult(status) {
    st.seq++;  // an answer still on its way for an earlier upload is dropped
    st.report = st.prob = st.lung = st.current = null;
    $("result").hidden = true;
    for (const id of ["dl-map", "dl-mask", "dl-report"]) { $(id).removeAttribute("href"); }
    viewer.clear();
    $("demo-empty").hidden = false;
    $("demo-empty").textContent = status || "The X-ray and its infection map appear here.";
    document.body.dataset.demo = "idle";
    delete document.body.dataset.threshold;
  }

  // Mask, decision, areas and severity at the slider's threshold, from the probabilities.
  function applyThreshold() {
    const r = st.report;
    if (!r) return;
    const t = parseFloat($("threshold").value);
    $("threshold-value").textContent = t.toFixed(2);
    const n = st.w * st.h, mask = new Uint8Array(n);
    let infected = 0, inLung = 0, lungArea = 0;
    for (let i = 0; i < n; i++) {
      const on = st.prob[i] >= t ? 1 : 0;
      mask[i] = on; infected += on;
      if (st.lung && st.lung[i]) { lungArea++; inLung += on; }
    }
    const covid = r.max_probability >= t;
    const fields = { threshold: t, covid19: covid, infected_percent_of_image: 100 * infected / n };
    const op = App.config.threshold;
    const decision = $("decision");
    if (r.warnings && r.warnings.length) {
      decision.textContent = "Not assessed: this does not look like a chest X-ray";
      decision.className = "unsure";
      fields.decision = "not assessed: the upload does not look like a chest X-ray";
    } else {
      decision.textContent = covid ? "COVID-19 detected" : "No COVID-19 detected";
      decision.className = covid ? "positive" : "negative";
      fields.decision = decision.textContent;
    }
    if (Math.abs(t - op) > 1e-9) {
      decision.append(Object.assign(document.createElement("span"), {
        className: "off-op", textContent: ` at threshold ${t.toFixed(2)}, not the validated ${op.toFixed(2)}`,
      }));
    }
    $("max-prob").textContent = r.max_probability.toFixed(3);
    $("pct-image").textContent = fmt(fields.infected_percent_of_image) + " %";
    if (st.lung) {
      const pct = lungArea ? 100 * inLung / lungArea : NaN;
      const [g, name] = grade(pct);
      Object.assign(fields, { infected_percent_of_lung: Number.isNaN(pct) ? null : pct, severity_grade: g, severity: name });
      $("pct-lung").textContent = fmt(pct) + " %";
      $("severity").textContent = `${name} (grade ${g})`;
    } else {
      $("pct-lung").textContent = $("severity").textContent = "needs a lung model";
    }
    st.current = fields;
    st.mask = mask;
    viewer.setLayer("mask", mask, { colour: [255, 255, 255], mode: "outline", visible: overlayMode() === "outline" });
    $("dl-mask").download = `${stem(r.file)}_mask_t${t.toFixed(2)}.png`;
    document.body.dataset.threshold = t.toFixed(2);
    drawLegendNow();
  }

  function overlayMode() { return document.querySelector("input[name=demo-overlay]:checked").value; }

  function applyOverlay() {
    const mode = overlayMode();
    viewer.setOverlay(mode !== "off");
    viewer.setHeatOpacity(mode === "map" ? parseFloat($("demo-opacity").value) : 0);
    const layer = viewer.layers.find((l) => l.name === "mask");
    if (layer) { layer.visible = mode === "outline"; viewer.render(); }
    document.body.dataset.overlay = mode;
  }

  function drawLegendNow() {
    const floor = App.config.display_floor;
    QViewer.drawLegend($("legend"), floor, parseFloat($("threshold").value));
    $("legend-floor2").textContent = floor.toFixed(2);
  }

  function reportJson() {
    const r = Object.assign({}, st.report);
    for (const k of ["map", "mask", "lung_mask", "xray", "xray16", "probability"]) delete r[k];
    Object.assign(r, st.current, {
      notice: "research use only; not for diagnosis",
      validated_threshold: App.config.threshold,
      downloaded_at: new Date().toISOString(),
    });
    return JSON.stringify(r, null, 2);
  }

  function showIdentity(r) {
    $("file-name").textContent = r.file;
    $("file-size").textContent = `${r.width} x ${r.height} px`;
    const ids = $("dicom-ids");
    ids.replaceChildren();
    const names = { patient_id: "Patient ID", patient_name: "Patient name", study_date: "Study date",
                    accession_number: "Accession no.", study_description: "Study" };
    for (const [k, label] of Object.entries(names)) {
      if (!r.dicom || !r.dicom[k]) continue;
      ids.append(Object.assign(document.createElement("dt"), { textContent: label }),
                 Object.assign(document.createElement("dd"), { textContent: r.dicom[k] }));
    }
    ids.hidden = !ids.children.length;
    const warn = $("warnings");
    warn.replaceChildren(...(r.warnings || []).map((w) => Object.assign(document.createElement("li"), { textContent: w })));
    warn.hidden = !warn.children.length;
    $("model-line").textContent = r.model + (r.lung_model ? `; lung: ${r.lung_model}` : "");
    $("intensity").textContent = r.intensity;
    $("analysed-at").textContent = r.analysed_at;
    // The fix differs: a run takes --lung-checkpoint, an export holds its lung model.
    const exported = App.config.engine === "onnxruntime";
    $("no-lung").hidden = !!r.lung_mask || exported;
    $("no-lung-export").hidden = !!r.lung_mask || !exported;
  }

  async function predict(file) {
    showError("");
    if (!file) return;
    clearResult();
    const seq = st.seq;
    $("busy-name").textContent = file.name;
    if (file.size > App.config.max_upload_mb * 1048576) {
      showError(`${file.name} is over the ${App.config.max_upload_mb} MB upload limit`);
      document.body.dataset.demo = "error";
      return;
    }
    document.body.dataset.demo = "busy";
    $("busy").hidden = false;
    $("demo-empty").textContent = `Analysing ${file.name}…`;
    try {
      const form = new FormData();
      form.append("file", file);
      const r = await api("/api/predict", { method: "POST", body: form });
      const [prob, grey, lung] = await Promise.all([
        decodeValues(r.probability, true), decodeValues(r.xray16 || r.xray, !!r.xray16),
        r.lung_mask ? decodeMask(r.lung_mask) : null,
      ]);
      if (seq !== st.seq) return;  // another upload started meanwhile
      Object.assign(st, { report: r, w: r.width, h: r.height, prob: prob.values, lung });
      showIdentity(r);
      $("result").hidden = false;
      $("demo-empty").hidden = true;
      viewer.setImage(grey.values, r.width, r.height);
      viewer.setHeat(st.prob, App.config.display_floor);
      $("threshold").value = r.threshold;
      $("dl-map").href = r.map;
      $("dl-map").download = `${stem(r.file)}_infection_map.png`;
      $("dl-report").download = `${stem(r.file)}_report.json`;
      $("dl-mask").href = "#"; $("dl-report").href = "#";
      applyThreshold();
      applyOverlay();
      document.body.dataset.demo = "ready";
    } catch (e) {
      if (seq !== st.seq) return;
      clearResult(`No result: ${file.name} could not be analysed.`);
      showError(e.message);
      document.body.dataset.demo = "error";
    } finally {
      if (seq === st.seq) $("busy").hidden = true;
    }
  }

  function keys(e) {
    if (viewerKeys(e, viewer)) return true;
    if ((e.key === "o" || e.key === "O") && !e.ctrlKey) {
      const now = overlayMode();
      if (now !== "off") st.lastOverlay = now;
      const want = now === "off" ? st.lastOverlay || "map" : "off";
      document.querySelectorAll("input[name=demo-overlay]").forEach((r) => { r.checked = r.value === want; });
      applyOverlay();
      return true;
    }
    return false;
  }

  function setup() {
    viewer = new QViewer.Viewer($("demo-canvas"));
    Demo.viewer = viewer;
    wireViewerTools($("demo"), viewer, $("demo-zoom"));
    $("file").addEventListener("change", (e) => predict(e.target.files[0]));
    const drop = $("drop");
    drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (e) => {
      e.preventDefault(); drop.classList.remove("over");
      predict(e.dataTransfer.files[0]);
    });
    $("threshold").addEventListener("input", applyThreshold);
    $("threshold-reset").addEventListener("click", () => { $("threshold").value = App.config.threshold; applyThreshold(); });
    document.querySelectorAll("input[name=demo-overlay]").forEach((r) => r.addEventListener("change", () => {
      if (r.value !== "off") st.lastOverlay = r.value;
      applyOverlay();
    }));
    $("demo-opacity").addEventListener("input", applyOverlay);
    $("dl-mask").addEventListener("click", (e) => {
      if (!st.mask) { e.preventDefault(); return; }
      e.currentTarget.href = maskPng(st.mask, st.w, st.h);
    });
    $("dl-report").addEventListener("click", (e) => {
      if (!st.report) { e.preventDefault(); return; }
      e.currentTarget.href = URL.createObjectURL(new Blob([reportJson()], { type: "application/json" }));
    });
    App.keys.demo = keys;
  }

  function configure(cfg) {
    $("threshold").value = cfg.threshold;
    $("op-tick").value = cfg.threshold;
    $("op-value").textContent = cfg.threshold.toFixed(2);
    drawLegendNow();
  }

  window.addEventListener("DOMContentLoaded", setup);
  return { configure, predict, get state() { return st; } };
})();
window.Demo = Demo;
