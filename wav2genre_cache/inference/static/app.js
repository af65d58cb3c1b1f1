"use strict";
// The wav2genre page: upload a song, show its genre (a tagger's tags), the top-k bars and a
// segment timeline.
const $ = (id) => document.getElementById(id);
const PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1",
                 "#ff9da7", "#9c755f", "#bab0ac", "#2f4b7c", "#a05195", "#d45087", "#665191"];
let labels = [];
let thresholds = null;  // a tagger's threshold per tag (null: one label per song)
let objectUrl = null;

function colour(label) {
  const i = labels.indexOf(label);
  return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
}
function pct(p) { return (100 * p).toFixed(1) + "%"; }
function fmtTime(s) { const m = Math.floor(s / 60); return m + ":" + String(Math.floor(s % 60)).padStart(2, "0"); }

function showError(message) {
  $("status").hidden = true;
  $("error").textContent = message;
  $("error").hidden = false;
}

function setStatus(text, value) {
  $("error").hidden = true;
  $("status").hidden = false;
  $("status-text").textContent = text;
  const bar = $("progress");
  if (value === null) bar.removeAttribute("value"); else bar.value = value;
}

async function loadModel() {
  try {
    const r = await fetch("/api/model");
    const m = await r.json();
    labels = m.labels;
    thresholds = m.multi_label ? m.thresholds : null;
    const acc = m.metrics && m.metrics.test_track_accuracy;
    const prAuc = m.metrics && m.metrics.test_track_macro_pr_auc;
    if (thresholds) {
      document.querySelector("h1").textContent = "What tags fit this song?";
      $("bars-title").textContent = "Tag scores (the line: the tag's threshold)";
      $("timeline-title").textContent = "Tags over time";
      $("timeline-hint").textContent = "One cell per segment, striped with its tags over their thresholds. Hover or focus a cell for its tags; click or press Enter to play that part.";
    }
    $("model-info").textContent =
      `Model: ${m.backbone}, layer ${m.layer}, ${m.head} head` +
      (thresholds && prAuc != null ? `, ${testFigure(m.metrics, "macro PR-AUC", prAuc, m.metrics.test_track_macro_pr_auc_ci)}` : "") +
      (!thresholds && acc != null ? `, ${testAccuracy(m.metrics)}` : "") +
      measuredNote(m.metrics) +
      (m.calibration && m.calibration !== "none" ? ` (scores calibrated: ${m.calibration})` : "") +
      (m.untrained_backbone ? " (untrained backbone: a demonstration, not a real model)" : "") +
      ` · ${m.segment_seconds} s segments · uploads up to ${m.limits.max_upload_mb} MB and ${m.limits.max_minutes} min`;
  } catch (e) {
    $("model-info").textContent = "Could not load model information.";
  }
}

// A test figure as a person can weigh it: how many tracks, and its 95 % interval.
function testAccuracy(metrics) {
  const n = metrics.test_tracks, acc = metrics.test_track_accuracy, ci = metrics.test_track_accuracy_ci;
  if (n == null || !ci) return `test accuracy ${pct(acc)}`;
  return `${n} test tracks, ${Math.round(acc * n)} right (95 % CI ${ci[0].toFixed(2)}–${ci[1].toFixed(2)})`;
}

// What the test figure can be trusted for: were its artists heard in training, which labels it
// cannot measure at all, and whether cross-validation or a small validation split chose the model.
function measuredNote(metrics) {
  const g = metrics && metrics.grouping;
  if (!g) return "";
  const parts = [];
  if (!g.by) parts.push("no artists known: same-artist tracks may inflate it");
  else if (g.test_artists_heard) parts.push(`${g.test_artists_heard} test artists also in training: inflated`);
  else parts.push("test artists unheard in training");
  const unmeasured = Object.keys(g.unmeasured_labels || {});
  if (unmeasured.length) parts.push(`not measured on test: ${unmeasured.join(", ")}`);
  if (metrics.selected_on === "cv") parts.push("chosen by cross-validation");
  return ` (${parts.join("; ")})`;
}

function testFigure(metrics, name, value, ci) {
  const n = metrics.test_tracks;
  return `test ${name} ${value.toFixed(3)}` +
    (n != null && ci ? ` on ${n} tracks (95 % CI ${ci[0].toFixed(2)}–${ci[1].toFixed(2)})` : "");
}

function upload(file) {
  $("result").hidden = true;
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = URL.createObjectURL(file);
  const form = new FormData();
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/predict?top_k=5");
  xhr.responseType = "json";
  xhr.upload.onprogress = (e) => {
    if (e.lengthComputable) setStatus(`Uploading ${file.name}... ${Math.round(100 * e.loaded / e.total)}%`, 100 * e.loaded / e.total);
  };
  xhr.upload.onload = () => setStatus(`Analysing ${file.name}...`, null);
  xhr.onerror = () => showError("The upload failed: the server could not be reached.");
  xhr.onload = () => {
    const body = xhr.response;
    if (xhr.status !== 200) {
      const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : xhr.statusText;
      showError(`Could not analyse this file: ${detail}`);
      return;
    }
    $("status").hidden = true;
    render(body);
  };
  setStatus(`Uploading ${file.name}...`, 0);
  xhr.send(form);
}

function render(r) {
  $("result").hidden = false;
  $("player").src = objectUrl;
  const tagList = $("tags");
  tagList.replaceChildren();
  tagList.hidden = !r.tags;
  if (r.tags) {
    $("top-label").textContent = r.tags.length ? `${r.tags.length} tag${r.tags.length > 1 ? "s" : ""}` : "No tag";
    $("top-confidence").textContent = r.tags.length ? "over their thresholds" : "scores over its threshold";
    for (const t of r.tags) {
      const li = document.createElement("li");
      li.style.background = colour(t.label);
      const score = document.createElement("span"); score.textContent = pct(t.probability);
      li.append(document.createTextNode(t.label), score);
      tagList.appendChild(li);
    }
  } else {
    $("top-label").textContent = r.label;
    $("top-confidence").textContent = `${pct(r.top[0].probability)} confidence`;
  }

  const bars = $("bars");
  bars.replaceChildren();
  for (const t of r.top) {
    const li = document.createElement("li");
    const name = document.createElement("span"); name.className = "name"; name.textContent = t.label;
    const track = document.createElement("div");
    const bar = document.createElement("div"); bar.className = "bar";
    bar.style.width = pct(t.probability); bar.style.background = colour(t.label);
    track.appendChild(bar);
    if (thresholds) {
      const mark = document.createElement("i"); mark.className = "threshold";
      mark.style.left = pct(thresholds[t.label]); mark.title = `threshold ${pct(thresholds[t.label])}`;
      track.appendChild(mark);
    }
    const value = document.createElement("span"); value.className = "pct"; value.textContent = pct(t.probability);
    li.append(name, track, value);
    bars.appendChild(li);
  }

  const timeline = $("timeline");
  timeline.replaceChildren();
  const seen = new Set();
  r.timeline.forEach((seg, i) => {
    const cell = document.createElement("button");
    cell.type = "button";
    cell.className = "cell";
    cell.setAttribute("role", "listitem");
    let detail = `${fmtTime(seg.start)}–${fmtTime(seg.end)}: `;
    if (seg.tags) {
      // One stripe per tag over its threshold (grey: none).
      seg.tags.forEach((t) => seen.add(t.label));
      const n = seg.tags.length;
      cell.style.background = n
        ? `linear-gradient(${seg.tags.map((t, k) => `${colour(t.label)} ${100 * k / n}% ${100 * (k + 1) / n}%`).join(", ")})`
        : "#d0d4da";
      detail += n ? "tags " + seg.tags.map((t) => `${t.label} ${pct(t.probability)}`).join(", ") : "no tag over its threshold";
    } else {
      seen.add(seg.label);
      cell.style.background = colour(seg.label);
      const ranked = Object.entries(seg.probabilities).sort((a, b) => b[1] - a[1]);
      detail += ranked.slice(0, 3).map(([l, p]) => `${l} ${pct(p)}`).join(", ");
    }
    cell.title = detail;
    cell.setAttribute("aria-label", `Segment ${i + 1}, ${detail}`);
    const show = () => { $("cell-detail").textContent = detail; };
    cell.addEventListener("mouseenter", show);
    cell.addEventListener("focus", show);
    cell.addEventListener("click", () => {
      const player = $("player");
      player.currentTime = seg.start;
      player.play().catch(() => {});
      document.querySelectorAll(".cell.playing").forEach((c) => c.classList.remove("playing"));
      cell.classList.add("playing");
      show();
    });
    timeline.appendChild(cell);
  });
  const legend = $("legend");
  legend.replaceChildren();
  for (const label of labels.filter((l) => seen.has(l))) {
    const li = document.createElement("li");
    const swatch = document.createElement("i"); swatch.style.background = colour(label);
    li.append(swatch, document.createTextNode(label));
    legend.appendChild(li);
  }
}

const drop = $("upload-form");
$("pick").addEventListener("click", () => $("file-input").click());
$("file-input").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => { if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]); });
loadModel();
