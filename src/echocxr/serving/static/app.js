// echocxr web page: upload views (or pick an example), stream a report block by block, show its stats.
// Plain JS, no build step. Streams POST /v1/reports/stream?steps=true (Server-Sent Events over fetch,
// since EventSource cannot POST) and draws each step: masked positions as ▒, new tokens highlighted; or,
// unstreamed, POST /v1/reports. Tokens whose confidence (their probability when committed) is below the
// threshold control are marked (tint + underline, value in the tooltip); moving the control re-marks live.
"use strict";

const $ = (id) => document.getElementById(id);
const MASK = "\u2592"; // ▒
const state = { files: [], controller: null, events: [], health: null };

// ---- setup ------------------------------------------------------------------------------------------
async function init() {
  try {
    const health = await (await fetch("/health")).json();
    state.health = health;
    $("model-info").textContent = `${health.model} · ${health.decoder}, block ${health.block_length}`;
    $("token-row").hidden = !health.auth;
    const def = $("decoder").querySelector('option[value=""]');
    def.textContent = `model default (${health.decoder})`;
    markUntrained($("decoder"), health.trained_decoders);
    markUntrained($("lang"), health.trained_languages);
  } catch (err) {
    showError(`server not reachable: ${err}`);
  }
  $("token").value = sessionStorage.getItem("echocxr-token") || "";
  $("token").addEventListener("change", () => sessionStorage.setItem("echocxr-token", $("token").value));
  $("file").addEventListener("change", (e) => setFiles([...e.target.files], null));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    setFiles([...e.dataTransfer.files], null);
  });
  $("generate").addEventListener("click", generate);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("replay").addEventListener("click", replay);
  $("conf-threshold").addEventListener("input", applyThreshold);
  loadExamples();
}

// options the model was not trained for (its echocxr.json) stay selectable but say so
function markUntrained(select, trained) {
  if (!trained || !trained.length) return;
  for (const opt of select.options) {
    if (opt.value && !trained.includes(opt.value)) opt.textContent += " — not trained for";
  }
}

async function loadExamples() {
  try {
    const { examples } = await (await fetch("/examples")).json();
    for (const ex of examples) {
      const btn = document.createElement("button");
      btn.className = "example";
      btn.type = "button";
      btn.dataset.name = ex.name;
      btn.title = ex.findings.join(", ");
      btn.innerHTML = `<img alt="" src="${ex.url}"><span></span>`;
      btn.querySelector("span").textContent = ex.name;
      btn.addEventListener("click", async () => {
        const blob = await (await fetch(ex.url)).blob();
        setFiles([new File([blob], `${ex.name}.png`, { type: "image/png" })], btn);
      });
      $("examples").appendChild(btn);
    }
  } catch (err) {
    /* examples are optional */
  }
}

function setFiles(files, exampleButton) {
  state.files = files.slice(0, state.health ? state.health.max_views : 4);
  for (const b of document.querySelectorAll(".example")) b.classList.toggle("selected", b === exampleButton);
  const box = $("previews");
  box.replaceChildren();
  for (const f of state.files) {
    const fig = document.createElement("figure");
    fig.className = "preview";
    fig.style.margin = "0";
    const isDicom = /\.(dcm|dicom)$/i.test(f.name) || f.type === "application/dicom";
    const media = document.createElement(isDicom ? "div" : "img");
    if (isDicom) { media.className = "dicom"; media.textContent = "DICOM"; }
    else { media.src = URL.createObjectURL(f); media.alt = f.name; }
    const cap = document.createElement("figcaption");
    cap.textContent = `${f.name} · ${(f.size / 1024).toFixed(0)} kB`;
    fig.append(media, cap);
    box.appendChild(fig);
  }
  $("generate").disabled = state.files.length === 0;
}

// ---- streaming ----------------------------------------------------------------------------------
async function generate() {
  if (!state.files.length) return;
  const form = new FormData();
  for (const f of state.files) form.append("images", f, f.name);
  form.append("lang", $("lang").value);
  if ($("decoder").value) form.append("decoder", $("decoder").value);
  const refine = $("decoder").selectedOptions[0]?.dataset.refine;  // tokens below it get one more forward
  if (refine) form.append("refine", refine);
  const headers = {};
  if ($("token").value) headers.Authorization = `Bearer ${$("token").value}`;

  resetReport();
  setStatus("running", "queued");
  state.events = [];
  state.controller = new AbortController();
  $("generate").disabled = true;
  $("stop").hidden = false;
  $("replay").hidden = true;
  const streamed = $("stream").checked;
  try {
    const resp = await fetch(streamed ? "/v1/reports/stream?steps=true" : "/v1/reports", {
      method: "POST", body: form, headers, signal: state.controller.signal,
    });
    if (!resp.ok) {
      let msg = `HTTP ${resp.status}`;
      try { msg = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    if (streamed) await readEvents(resp.body, (ev) => { state.events.push(ev); draw(ev); });
    else draw({ type: "done", data: await resp.json() }); // the same fields as the stream's done event
  } catch (err) {
    if (err.name === "AbortError") setStatus("idle", "stopped");
    else { setStatus("error", "error"); showError(err.message || String(err)); }
  } finally {
    state.controller = null;
    $("generate").disabled = state.files.length === 0;
    $("stop").hidden = true;
    $("replay").hidden = state.events.length === 0;
  }
}

async function readEvents(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const raw = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      let type = "message";
      const data = [];
      for (const line of raw.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent({ type, data: JSON.parse(data.join("\n")) });
    }
  }
}

// ---- drawing --------------------------------------------------------------------------------------
function resetReport() {
  $("report").replaceChildren();
  delete $("report").dataset.final;
  showSentences([]);
  $("error").hidden = true;
  showWarnings([]);
  for (const id of ["tokens", "forwards", "tpf", "latency", "decode", "queue", "batch", "decoder"]) {
    $(`stat-${id}`).textContent = "–";
  }
}

function currentSpan() {
  let cur = $("report").querySelector(".current");
  if (!cur) {
    cur = document.createElement("span");
    cur.className = "current";
    $("report").appendChild(cur);
  }
  return cur;
}

function draw(ev) {
  const report = $("report");
  if (ev.type === "step") {
    setStatus("running", `block ${ev.data.block + 1}`);
    const cur = currentSpan();
    cur.replaceChildren();
    for (const t of ev.data.tokens) {
      const s = document.createElement("span");
      s.className = "tok" + (t.masked ? " mask" : "") + (t.new ? " new" : "");
      s.textContent = t.masked ? MASK : t.text;
      if (!t.masked && t.confidence != null) setConfidence(s, t.confidence);
      cur.appendChild(s);
    }
  } else if (ev.type === "block") {
    const cur = report.querySelector(".current");
    if (cur) cur.remove();
    if (!ev.data.text) return;
    const s = document.createElement("span");
    s.className = `block b${ev.data.index % 2} fresh`;
    if (ev.data.pieces) s.append(...ev.data.pieces.map((p) => pieceSpan(p)));
    else s.textContent = ev.data.text;
    report.appendChild(s);
  } else if (ev.type === "done") {
    const cur = report.querySelector(".current");
    if (cur) cur.remove();
    if (report.textContent !== ev.data.report) { // unstreamed, or the deltas were display only: the final pieces
      if (ev.data.pieces) report.replaceChildren(...ev.data.pieces.map((p) => pieceSpan(p)));
      else report.textContent = ev.data.report;
    }
    report.dataset.final = "true";
    showSentences(ev.data.sentences || []);
    showStats(ev.data.stats);
    showWarnings(ev.data.warnings || []);
    setStatus("done", ev.data.stats.stop === "eos" ? "done" : `done (${ev.data.stats.stop})`);
  } else if (ev.type === "error") {
    setStatus("error", "error");
    showError(ev.data.error.message);
  }
}

// ---- confidence -----------------------------------------------------------------------------------
function threshold() {
  return parseFloat($("conf-threshold").value);
}

function setConfidence(el, conf) {
  el.dataset.conf = conf;
  el.title = `confidence ${conf.toFixed(2)}`;
  el.classList.toggle("low", conf < threshold());
}

function pieceSpan(piece) {
  const s = document.createElement("span");
  s.className = "piece";
  s.textContent = piece.text;
  if (piece.confidence != null) setConfidence(s, piece.confidence);
  return s;
}

function showSentences(sentences) {
  const rows = sentences.map((st) => {
    const tr = document.createElement("tr");
    const cells = [st.text, st.mean_confidence.toFixed(2), st.min_confidence.toFixed(2)];
    tr.append(...cells.map((text, i) => Object.assign(document.createElement("td"), {
      textContent: text, className: i ? "num" : "" })));
    setConfidence(tr.firstChild, st.min_confidence); // a sentence is marked when its least sure token is
    tr.firstChild.title = `mean ${st.mean_confidence.toFixed(2)}, lowest ${st.min_confidence.toFixed(2)}`;
    return tr;
  });
  $("sentence-rows").replaceChildren(...rows);
  $("sentences").hidden = rows.length === 0;
  applyThreshold();
}

// re-mark everything already drawn: no regeneration needed
function applyThreshold() {
  const t = threshold();
  $("conf-value").textContent = t.toFixed(2);
  for (const el of document.querySelectorAll("#report [data-conf], #sentence-rows [data-conf]")) {
    el.classList.toggle("low", parseFloat(el.dataset.conf) < t);
  }
  const low = document.querySelectorAll("#report .piece.low").length;
  const all = document.querySelectorAll("#report .piece").length;
  $("conf-count").textContent = all ? `${low} of ${all} pieces marked` : "";
}

function showStats(s) {
  $("stat-tokens").textContent = s.tokens;
  $("stat-forwards").textContent = s.forwards;
  $("stat-tpf").textContent = s.tpf.toFixed(2);
  $("stat-latency").textContent = `${(s.latency_s * 1000).toFixed(0)} ms`;
  $("stat-decode").textContent = `${(s.decode_s * 1000).toFixed(0)} ms`;
  $("stat-queue").textContent = `${(s.queue_s * 1000).toFixed(0)} ms`;
  $("stat-batch").textContent = s.batch_size;
  $("stat-decoder").textContent = s.decoder + (s.decoder === "ar" ? "" : ` ·L${s.block_length}`);
}

async function replay() {
  const events = state.events.slice();
  resetReport();
  $("replay").disabled = true;
  for (const ev of events) {
    draw(ev);
    if (ev.type === "step") await new Promise((r) => setTimeout(r, 90));
  }
  $("replay").disabled = false;
}

function setStatus(kind, text) {
  const el = $("status");
  el.dataset.state = kind;
  el.textContent = text;
}

function showWarnings(lines) {
  const el = $("warnings");
  el.replaceChildren(...lines.map((w) => Object.assign(document.createElement("li"), { textContent: w })));
  el.hidden = lines.length === 0;
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = false;
}

init();
