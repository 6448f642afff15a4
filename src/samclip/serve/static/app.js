// samclip web page: upload once, then every click runs only the mask decoder + label head on the server.
// Coordinates sent to the API are (x, y) pixels of the ORIGINAL image; boxes are XYXY.
// Test hooks: window.samclipState (below) and data-* attributes on #mask-label, #legend, #status.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const imageCanvas = $("image-canvas");
  const overlayCanvas = $("overlay-canvas");
  const promptCanvas = $("prompt-canvas");
  const labelEl = $("mask-label");
  const legendEl = $("legend");
  const statusEl = $("status");
  const DRAG_PX = 5; // screen pixels before a press becomes a box drag
  const OVERLAY_ALPHA = 0.6;

  const state = {
    imageId: null, width: 0, height: 0,
    points: [], pointLabels: [], box: null,     // current prompts, original-image pixels
    lastMode: null,                             // "mask" | "semseg" | "text" | "everything"
    lastLabel: null, lastScore: null, lastMaskPixels: 0, lastRequest: null, lastResponse: null,
    legend: [], overlayVersion: 0, busy: false, requests: 0, errors: 0, lastError: null,
  };
  window.samclipState = state;
  let seq = 0; // newest request wins; stale responses are dropped
  let drag = null;

  // ------------------------------------------------------------------------------------ helpers
  function setStatus(text, kind = "idle") {
    statusEl.textContent = text;
    statusEl.dataset.state = kind;
  }

  function parseWords(text) {
    const out = [];
    for (const raw of text.split(/[,\n]/)) {
      const w = raw.trim().replace(/\s+/g, " ");
      if (w && !out.includes(w)) out.push(w);
    }
    return out;
  }

  const KEY_STORE = "samclip-api-key";

  function withKey(options) {
    const key = sessionStorage.getItem(KEY_STORE);
    if (!key) return options;
    const opts = Object.assign({}, options);
    opts.headers = Object.assign({}, (options && options.headers) || {}, { "Authorization": `Bearer ${key}` });
    return opts;
  }

  async function api(path, options) {
    state.requests += 1;
    let res = await fetch(path, withKey(options));
    if (res.status === 401) {  // a server started with an API key: ask for it once per tab, then retry
      const key = window.prompt("This samclip server needs its API key:");
      if (key) {
        sessionStorage.setItem(KEY_STORE, key.trim());
        res = await fetch(path, withKey(options));
      }
    }
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (!res.ok) {
      const err = new Error(data && data.detail ? `${data.error}: ${typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail)}` : `HTTP ${res.status}`);
      err.status = res.status;
      err.code = data && data.error;
      throw err;
    }
    return data;
  }

  function postJSON(path, body) {
    return api(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  }

  function fail(err) {
    state.errors += 1;
    state.lastError = String(err.message || err);
    if (err.code === "image_not_found") {
      state.imageId = null;
      setStatus("The server evicted this image from its cache; open it again.", "error");
    } else {
      setStatus(state.lastError, "error");
    }
  }

  async function busy(label, fn) {
    const my = ++seq;
    state.busy = true;
    setStatus(label, "busy");
    try {
      const result = await fn(() => my === seq);
      if (my === seq) setStatus("Ready.", "idle");
      return result;
    } catch (err) {
      if (my === seq) fail(err);
      return null;
    } finally {
      if (my === seq) state.busy = false;
    }
  }

  // ----------------------------------------------------------------------------- canvas layout
  function layout() {
    if (!state.width) return;
    const avail = Math.max(200, Math.min(960, $("viewer").clientWidth || 720));
    const scale = Math.min(avail / state.width, 720 / state.height, 8);
    const w = Math.max(1, Math.round(state.width * scale));
    const h = Math.max(1, Math.round(state.height * scale));
    imageCanvas.style.width = `${w}px`;
    imageCanvas.style.height = `${h}px`;
    const dpr = window.devicePixelRatio || 1;
    promptCanvas.width = Math.round(w * dpr);
    promptCanvas.height = Math.round(h * dpr);
    drawPrompts();
  }

  // screen event -> original-image pixel coordinates (clamped to [0, W] x [0, H])
  function toImage(ev) {
    const r = promptCanvas.getBoundingClientRect();
    const x = ((ev.clientX - r.left) / r.width) * state.width;
    const y = ((ev.clientY - r.top) / r.height) * state.height;
    return [Math.min(state.width, Math.max(0, x)), Math.min(state.height, Math.max(0, y))];
  }

  function drawPrompts(rubber) {
    const ctx = promptCanvas.getContext("2d");
    ctx.clearRect(0, 0, promptCanvas.width, promptCanvas.height);
    if (!state.width) return;
    const sx = promptCanvas.width / state.width;
    const sy = promptCanvas.height / state.height;
    const box = rubber || state.box;
    if (box) {
      ctx.strokeStyle = "#ffe600";
      ctx.lineWidth = 2;
      ctx.setLineDash(rubber ? [6, 4] : []);
      ctx.strokeRect(box[0] * sx, box[1] * sy, (box[2] - box[0]) * sx, (box[3] - box[1]) * sy);
      ctx.setLineDash([]);
    }
    state.points.forEach(([x, y], i) => {
      ctx.beginPath();
      ctx.arc(x * sx, y * sy, 6, 0, 2 * Math.PI);
      ctx.fillStyle = state.pointLabels[i] === 1 ? "#00c853" : "#e53935";
      ctx.fill();
      ctx.lineWidth = 2;
      ctx.strokeStyle = "#fff";
      ctx.stroke();
    });
  }

  async function drawLabelMap(dataUrl) {
    const ctx = overlayCanvas.getContext("2d");
    let img = null;
    if (dataUrl) {
      img = new Image();
      img.src = dataUrl;
      await img.decode();
    }
    ctx.clearRect(0, 0, overlayCanvas.width, overlayCanvas.height);
    if (img) {
      ctx.imageSmoothingEnabled = false;
      ctx.globalAlpha = OVERLAY_ALPHA;
      ctx.drawImage(img, 0, 0, overlayCanvas.width, overlayCanvas.height);
      ctx.globalAlpha = 1;
    }
    state.overlayVersion += 1;
  }

  function showLegend(entries, mode) {
    legendEl.innerHTML = "";
    legendEl.dataset.mode = mode;
    const total = state.width * state.height || 1;
    for (const e of entries) {
      const li = document.createElement("li");
      li.dataset.name = e.name;
      li.dataset.id = String(e.id);
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = e.color;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = e.name;
      const area = document.createElement("span");
      area.className = "area";
      area.textContent = `${((100 * e.area) / total).toFixed(1)}%` + (e.score != null && (mode === "everything" || mode === "text") ? ` · ${e.score.toFixed(2)}` : "");
      li.append(sw, name, area);
      legendEl.append(li);
    }
    state.legend = entries.map((e) => e.name);
  }

  function showLabel(label, score) {
    state.lastLabel = label;
    state.lastScore = score;
    labelEl.dataset.label = label || "";
    labelEl.dataset.score = score == null ? "" : String(score);
    labelEl.textContent = label ? `${label} (${Math.round(100 * score)}%)` : "(empty mask)";
  }

  function clearPrompts() {
    state.points = [];
    state.pointLabels = [];
    state.box = null;
    drawPrompts();
  }

  // ------------------------------------------------------------------------------------ actions
  async function openImage(file) {
    clearPrompts();
    await busy(`Uploading ${file.name} (the backbone runs once)…`, async (current) => {
      const form = new FormData();
      form.append("file", file, file.name);
      const data = await api("/images", { method: "POST", body: form });
      if (!current()) return;
      Object.assign(state, { imageId: data.image_id, width: data.width, height: data.height, lastMode: null });
      for (const c of [imageCanvas, overlayCanvas]) {
        c.width = data.width;
        c.height = data.height;
      }
      const ctx = imageCanvas.getContext("2d");
      ctx.fillStyle = "#999";
      ctx.fillRect(0, 0, data.width, data.height);
      try { // the server applied the EXIF orientation; so does createImageBitmap with "from-image"
        const bmp = await createImageBitmap(file, { imageOrientation: "from-image" });
        ctx.drawImage(bmp, 0, 0, data.width, data.height);
      } catch (e) {
        setStatus("This browser cannot display the image format; prompts still work.", "error");
      }
      await drawLabelMap(null);
      showLegend([], "");
      labelEl.textContent = "–";
      labelEl.dataset.label = "";
      layout();
    });
    if (state.imageId) setStatus(`Image ${state.width}×${state.height} ready: click on an object.`, "idle");
  }

  async function runPrompts() {
    if (!state.imageId) return setStatus("Open an image first.", "error");
    const labels = parseWords($("vocab").value);
    if (!labels.length) return setStatus("The vocabulary is empty: type some comma-separated words.", "error");
    drawPrompts();
    const body = { labels, multimask: true, png: true };
    // zoom in: the mask from a pass over the object's neighbourhood, labelled on such a pass too; + the crop:
    // the mask's crop read as well; each read with its mirror image (the best labels, a few more passes)
    const zoom = $("prompt-zoom").checked, crop = $("label-crop").checked;
    if (zoom || crop) Object.assign(body, { pooling: (zoom ? "zoom" : "max") + (crop ? "+crop" : ""), tta: true });
    if (state.points.length) {
      body.points = state.points;
      body.point_labels = state.pointLabels;
    }
    if (state.box) body.box = state.box;
    if (zoom) body.zoom = true; // a second pass over the object's neighbourhood
    state.lastRequest = body;
    await busy("Segmenting…", async (current) => {
      const data = await postJSON(`/images/${state.imageId}/label`, body);
      if (!current()) return;
      await drawLabelMap(data.label_map_png);
      state.lastMode = "mask";
      state.lastMaskPixels = data.mask.area;
      state.lastResponse = data;
      showLabel(data.label, data.label_score);
      showLegend(data.legend || [], "mask");
    });
  }

  async function runSemantic() {
    if (!state.imageId) return setStatus("Open an image first.", "error");
    const words = parseWords($("sem-words").value);
    if (!words.length) return setStatus("Type at least one word, e.g. star, ring.", "error");
    clearPrompts();
    const refine = $("sem-refine").checked;
    // "+ crops": the refinement's unsure masks are also read from their crops (samclip eval's row (d+))
    const body = { labels: words, refine, crop_margin: refine && $("sem-crops").checked ? 0.7 : 0, png: true };
    await runMapTask("Semantic map…", "semseg", body, "semseg");
  }

  async function runText() {
    if (!state.imageId) return setStatus("Open an image first.", "error");
    const phrase = $("text-phrase").value.trim();
    if (!phrase) return setStatus("Type a phrase, e.g. star.", "error");
    // the vocabulary's other words compete with the phrase (distractors)
    const vocabulary = parseWords($("vocab").value).filter((w) => w !== phrase);
    // "every mask": candidates from the everything mode, each named by its zoomed read and its crop
    const body = { phrase, png: true, candidates: $("text-every").checked ? "everything" : "regions" };
    if (vocabulary.length) body.vocabulary = vocabulary;
    clearPrompts();
    await runMapTask("Finding instances…", "segment_text", body, "text", (data) => {
      if (!data.instances.length) setStatus(`No instance of “${phrase}” found.`, "idle");
    });
  }

  async function runEverything() {
    if (!state.imageId) return setStatus("Open an image first.", "error");
    const labels = parseWords($("vocab").value);
    clearPrompts();
    const body = { png: true };
    if (labels.length) body.labels = labels;
    await runMapTask("Everything mode…", "everything", body, "everything", (data) => {
      if (!data.count) setStatus("Everything mode found no confident masks.", "idle");
    });
  }

  // one image-level request whose answer is a label map with a legend (semseg, segment_text, everything);
  // ``after(data)`` runs once it is drawn, unless a newer request superseded it
  async function runMapTask(label, endpoint, body, mode, after = null) {
    state.lastRequest = body;
    await busy(label, async (current) => {
      const data = await postJSON(`/images/${state.imageId}/${endpoint}`, body);
      if (!current()) return;
      await drawLabelMap(data.label_map_png);
      state.lastMode = mode;
      state.lastResponse = data;
      showLegend(data.legend, mode);
      if (after) after(data);
    });
  }

  // ------------------------------------------------------------------------------------- events
  $("file-input").addEventListener("change", (ev) => {
    const file = ev.target.files && ev.target.files[0];
    if (file) openImage(file);
  });
  $("clear-prompts").addEventListener("click", () => { clearPrompts(); drawLabelMap(null); });
  $("sem-run").addEventListener("click", runSemantic);
  $("sem-words").addEventListener("keydown", (ev) => { if (ev.key === "Enter") runSemantic(); });
  $("everything-run").addEventListener("click", runEverything);
  $("text-run").addEventListener("click", runText);
  $("text-phrase").addEventListener("keydown", (ev) => { if (ev.key === "Enter") runText(); });
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") { clearPrompts(); drawLabelMap(null); }
  });
  window.addEventListener("resize", layout);

  promptCanvas.addEventListener("contextmenu", (ev) => ev.preventDefault());
  promptCanvas.addEventListener("pointerdown", (ev) => {
    if (!state.imageId || (ev.button !== 0 && ev.button !== 2)) return;
    ev.preventDefault();
    promptCanvas.setPointerCapture(ev.pointerId);
    drag = { button: ev.button, sx: ev.clientX, sy: ev.clientY, start: toImage(ev), moved: false };
  });
  promptCanvas.addEventListener("pointermove", (ev) => {
    if (!drag || drag.button !== 0) return;
    if (Math.hypot(ev.clientX - drag.sx, ev.clientY - drag.sy) >= DRAG_PX) drag.moved = true;
    if (drag.moved) {
      const [x, y] = toImage(ev);
      const [x0, y0] = drag.start;
      drawPrompts([Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)]);
    }
  });
  promptCanvas.addEventListener("pointerup", (ev) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    const [x, y] = toImage(ev);
    if (d.button === 0 && d.moved) {
      const [x0, y0] = d.start;
      state.box = [Math.min(x0, x), Math.min(y0, y), Math.max(x0, x), Math.max(y0, y)];
    } else {
      // a click: the pixel under the cursor (integer pixel index, as in the API)
      const px = Math.min(state.width - 1, Math.floor(d.start[0]));
      const py = Math.min(state.height - 1, Math.floor(d.start[1]));
      state.points.push([px, py]);
      state.pointLabels.push(d.button === 2 ? 0 : 1);
    }
    runPrompts();
  });

  // model summary + the server's default vocabulary
  api("/info").then((info) => {
    $("model-info").textContent = `model ${info.model} · ${info.img_size}px frame · ${info.dtype} · ${info.device}`;
    const vocab = $("vocab");
    if (vocab.value === vocab.defaultValue && info.vocabulary && info.vocabulary.length) {
      vocab.value = info.vocabulary.join(", ");
    }
  }).catch(() => { $("model-info").textContent = "model info unavailable"; });
})();
