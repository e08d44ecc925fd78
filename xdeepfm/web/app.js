// The page of the ranking service: plain JavaScript over the service's JSON (no build step, no CDN).
// rankedVideos() is the one function that picks a user's videos: POST /v1/recommend (recall over the
// whole catalogue, then the ranker) when the service has a recommender, else the store's items ranked
// with POST /v1/rank by id.
"use strict";

const CANDIDATES = 300;  // items of the store ranked per user (the catalogue, capped)
const TOP_ATTRIBUTIONS = 5;  // field groups drawn as bars per video
const MODALITIES = ["text", "audio", "vision"];
const state = { model: null, candidates: [], items: new Map(), open: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "style") node.setAttribute("style", v);
    else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}

async function api(path, body) {
  const options = body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify(body)};
  const reply = await fetch(path, options);
  const payload = await reply.json();
  if (!reply.ok) {
    const e = payload.error || {};
    throw new Error(`${path}: ${reply.status} ${e.field ? e.field + ": " : ""}${e.message || reply.statusText}`);
  }
  return payload;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

const fmt = (x, digits = 2) => (x >= 0 ? "+" : "\u2212") + Math.abs(x).toFixed(digits);

// ---------------------------------------------------------------------------------------- data

/** The user's ranked videos: [{id, score, explanation}], best first, and the response's explanation header. */
async function rankedVideos(userId, k, context) {
  if (state.model.recommender) return api("/v1/recommend", {user_id: userId, k, context, explain: true});
  return api("/v1/rank", {user_id: userId, candidate_ids: state.candidates, top_k: k, context, explain: true});
}

async function item(id) {
  if (!state.items.has(id)) state.items.set(id, api(`/v1/items/${encodeURIComponent(id)}`));
  return state.items.get(id);
}

/** M/T/A/V of a stored item: the explanation's outputs, else the video_sentiment vector in M, T, A, V order. */
function sentimentOf(record) {
  const outputs = record.explanation && record.explanation.outputs;
  if (outputs) return outputs;
  const vector = record.vectors && (record.vectors.video_sentiment || record.vectors.sentiment);
  if (!vector) return null;
  return Object.fromEntries(vector.map((v, i) => [["M", "T", "A", "V"][i] || `s${i}`, v]));
}

// ---------------------------------------------------------------------------------------- drawing

const TASKS = ["M", "T", "A", "V"];
const TASK_NAMES = {M: "multimodal", T: "text only", A: "audio only", V: "vision only"};

function sentimentChips(sentiment) {
  const box = el("div", {class: "chips"});
  const rank = (t) => (TASKS.includes(t) ? TASKS.indexOf(t) : TASKS.length);
  const entries = Object.entries(sentiment || {}).sort((a, b) => rank(a[0]) - rank(b[0]));
  for (const [task, value] of entries) {
    box.append(el("span", {class: `chip ${value >= 0 ? "pos" : "neg"}`, title: `${TASK_NAMES[task] || task} sentiment`},
                  `${task} ${fmt(value)}`));
  }
  return box;
}

function sharesBar(shares) {
  const bar = el("div", {class: "shares", title: "modality shares"});
  const legend = el("div", {class: "legend"});
  for (const m of MODALITIES) {
    if (shares[m] === undefined) continue;
    bar.append(el("span", {class: `share-${m}`, style: `width:${(100 * shares[m]).toFixed(1)}%`}));
    legend.append(el("i", {class: `share-${m}`}), `${m} ${(100 * shares[m]).toFixed(0)}%`);
  }
  return el("div", {}, bar, legend);
}

function attributionBars(explanation) {
  const top = explanation.attributions.slice(0, TOP_ATTRIBUTIONS);
  const scale = Math.max(1e-9, ...top.map((a) => Math.abs(a.value)));
  const box = el("div", {class: "attrs"});
  for (const a of top) {
    const width = (50 * Math.abs(a.value) / scale).toFixed(1);
    const bar = el("span", {class: `attr-bar ${a.value >= 0 ? "pos" : "neg"}`, style: `width:${width}%`,
                            "data-group": a.group, "data-value": String(a.value)});
    box.append(el("div", {class: "attr", title: `${a.group}: ${fmt(a.value, 3)} logits (linear part ${fmt(a.linear, 3)})`},
                  el("span", {class: "attr-name"}, a.group), el("span", {class: "attr-track"}, bar),
                  el("span", {class: "attr-value"}, fmt(a.value))));
  }
  box.append(el("div", {class: "attr-base"},
                `baseline ${explanation.baseline_logit.toFixed(2)} + fields = logit ${explanation.logit.toFixed(2)}`));
  return box;
}

async function renderList(userId, ranking) {
  const list = $("ranked");
  list.replaceChildren();
  const unknownUser = ((ranking.unknown_ids && ranking.unknown_ids.user_id) || []).length > 0;
  $("list-title").textContent = `${state.model.recommender ? "Recommended" : "Ranked"} videos for user ${userId}`;
  $("list-note").textContent = `${ranking.items.length} of ${ranking.n_candidates} candidates` +
    (ranking.n_seen !== undefined ? ` recalled from the catalogue (${ranking.n_seen} seen left out)` : "") +
    (unknownUser ? " \u2014 not in the store: ranked as a new user" : "") +
    ". Bars: what each field added to the logit, against a baseline with every field unknown.";
  const records = await Promise.all(ranking.items.map((r) => item(r.id)));
  ranking.items.forEach((ranked, i) => {
    const record = records[i];
    const explanation = record.explanation;
    const info = el("div", {},
      el("div", {class: "title"}, record.columns.title || ranked.id),
      el("div", {class: "score"}, "score ", el("b", {"data-score": String(ranked.score)}, ranked.score.toFixed(4)),
         ` \u00b7 ${ranked.id}` + (ranked.channel ? ` \u00b7 via ${ranked.channel.replace("_", "-")}` : "")),
      sentimentChips(sentimentOf(record)));
    if (explanation && explanation.shares) info.append(sharesBar(explanation.shares));
    const row = el("li", {class: "item", "data-id": ranked.id},
                   el("span", {class: "rank"}, String(i + 1)), info, attributionBars(ranked.explanation));
    row.addEventListener("click", () => openVideo(ranked.id));
    list.append(row);
  });
}

/** Words of one stream in narration order, shaded by attention weight: the stream's lightest word faint, its heaviest in full colour. */
function narration(name, stream, colour) {
  const words = [...stream.words].sort((a, b) => a.position - b.position);
  const weights = words.map((w) => w.weight);
  const low = Math.min(...weights), high = Math.max(...weights);
  const line = el("div", {class: "narration"});
  for (const w of words) {
    const alpha = high > low ? 0.06 + 0.94 * (w.weight - low) / (high - low) : 1;
    const ink = alpha > 0.6 ? "color: #fff;" : "";
    line.append(el("span", {class: "word", "data-weight": String(w.weight), title: `${(100 * w.weight).toFixed(1)}% of the attention`,
                            style: `${ink} background: rgba(${colour}, ${alpha.toFixed(3)})`}, w.word), " ");
  }
  return el("div", {class: "stream"}, el("div", {class: "stream-name"}, name), line);
}

const COLOURS = {text: "111, 66, 193", audio: "9, 105, 218", vision: "191, 87, 0"};

/** Attention over time of the audio and vision streams: one line per stream, each position's weight r_j times the
 *  stream's number of positions (1 = uniform attention, so the streams compare whatever their pooling), seconds
 *  (or frames, when the clip's rate is unknown) on the x axis; the heaviest segments shaded. */
function attentionChart(explanation) {
  const streams = ["audio", "vision"].filter((m) => explanation[m] && explanation[m].curve && explanation[m].curve.length);
  if (!streams.length) return el("p", {class: "note"}, "no attention over time in this explanation");
  const W = 520, H = 170, L = 40, R = 10, T = 10, B = 30;
  const seconds = streams.every((m) => explanation[m].rate);
  const span = (m) => {
    const s = explanation[m];
    return s.curve.map((_, j) => (j + 0.5) * s.frame_stride / (seconds ? s.rate : 1));
  };
  const xmax = Math.max(...streams.map((m) => explanation[m].frames / (seconds ? explanation[m].rate : 1)));
  const relative = (m) => explanation[m].curve.map((v) => v * explanation[m].curve.length);
  const ymax = Math.max(1.5, ...streams.flatMap(relative)) * 1.05;
  const X = (x) => L + (W - L - R) * x / xmax, Y = (y) => T + (H - T - B) * (1 - y / ymax);
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "attention");
  svg.setAttribute("role", "img");
  const add = (tag, attrs, text) => {
    const node = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", {x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "#999"});
  add("line", {x1: L, y1: T, x2: L, y2: H - B, stroke: "#999"});
  for (let i = 0; i <= 4; i++) {
    const x = xmax * i / 4;
    add("text", {x: X(x), y: H - B + 14, "text-anchor": i === 4 ? "end" : "middle"}, seconds ? `${x.toFixed(1)} s` : `${Math.round(x)}`);
  }
  add("text", {x: (L + W - R) / 2, y: H - 2, "text-anchor": "middle"}, seconds ? "time" : "frame");
  add("line", {x1: L, y1: Y(1), x2: W - R, y2: Y(1), stroke: "#999", "stroke-dasharray": "3 3"});
  add("text", {x: L - 4, y: Y(1) + 3, "text-anchor": "end"}, "1\u00d7");
  add("text", {x: L - 4, y: Y(0), "text-anchor": "end"}, "0");
  add("text", {x: L - 4, y: T + 8, "text-anchor": "end"}, `${(ymax).toFixed(1)}\u00d7`);
  streams.forEach((m, k) => {
    const s = explanation[m], xs = span(m), colour = `rgb(${COLOURS[m]})`;
    for (const seg of s.segments || []) {
      const a = seg.start_frame / (seconds ? s.rate : 1), b = seg.end_frame / (seconds ? s.rate : 1);
      add("rect", {x: X(a), y: T, width: Math.max(1, X(b) - X(a)), height: H - T - B, fill: colour, opacity: 0.08});
    }
    const points = relative(m).map((y, j) => `${X(xs[j]).toFixed(1)},${Y(y).toFixed(1)}`).join(" ");
    add("polyline", {points, fill: "none", stroke: colour, "stroke-width": 1.8, "data-stream": m});
    add("rect", {x: L + 10 + 120 * k, y: T + 2, width: 10, height: 3, fill: colour});
    add("text", {x: L + 24 + 120 * k, y: T + 7, style: `fill:${colour}`}, `${m} attention`);
  });
  return svg;
}

async function openVideo(id) {
  state.open = id;
  for (const row of document.querySelectorAll(".item")) row.classList.toggle("open", row.dataset.id === id);
  const record = await item(id);
  const explanation = record.explanation;
  $("video").hidden = false;
  $("video-title").textContent = record.columns.title || id;
  $("video-meta").textContent = Object.entries(record.columns).filter(([k]) => k !== "title")
    .map(([k, v]) => `${k}: ${v}`).join(" \u00b7 ");
  $("video-sentiment").replaceChildren(sentimentChips(sentimentOf(record)));
  if (!explanation) {
    $("video-shares").replaceChildren(el("p", {class: "note"}, "no explanation stored for this video"));
    $("narration").replaceChildren();
    $("attention").replaceChildren();
    return;
  }
  $("video-shares").replaceChildren(sharesBar(explanation.shares || {}));
  $("video-decisive").replaceChildren(explanation.decisive ? sharesBar(explanation.decisive)
                                                           : el("p", {class: "note"}, "not in this explanation (made before it existed)"));
  const streams = el("div", {});
  const names = {text: "text stream", audio: "read for the audio", vision: "read for the vision"};
  for (const m of ["audio", "vision", "text"]) {
    if (explanation[m] && explanation[m].words && explanation[m].words.length) {
      streams.append(narration(names[m], explanation[m], COLOURS[m]));
    }
  }
  if (!streams.childNodes.length) streams.append(el("p", {class: "note"}, explanation.narration || "no words"));
  $("narration").replaceChildren(streams);
  $("attention").replaceChildren(attentionChart(explanation),
    el("p", {class: "note"}, "Attention mass per position relative to uniform (1\u00d7 = every moment weighted alike); " +
       "shaded: the heaviest segments."));
}

// ---------------------------------------------------------------------------------------- start

function contextValues() {
  const out = {};
  for (const input of document.querySelectorAll("#context input")) {
    const text = input.value.trim();
    out[input.name] = text === "" ? null : (isNaN(Number(text)) ? text : Number(text));
  }
  return out;
}

async function rank() {
  showError(null);
  const userId = $("user-input").value.trim() || $("user-select").value;
  if (!userId) return showError("pick a user or type an id");
  const k = Math.max(1, Math.min(Number($("top-k").value) || 10, state.model.limits.max_explained));
  try {
    const ranking = await rankedVideos(userId, k, contextValues());
    await renderList(userId, ranking);
    if (ranking.items.length) await openVideo(ranking.items[0].id);
  } catch (error) {
    showError(error);
  }
}

async function upload() {
  const result = $("upload-result");
  try {
    const columns = JSON.parse($("upload-columns").value);
    const entry = {columns, transcript: $("upload-transcript").value};
    const file = $("upload-file").files[0];
    if (file) {
      const bytes = new Uint8Array(await file.arrayBuffer());
      let binary = "";
      for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
      entry.video = btoa(binary);
    }
    const reply = await api("/v1/items", {items: [entry]});
    result.textContent = `stored ${reply.items.map((i) => i.id).join(", ")}; the store holds ${reply.n_items} items`;
    state.items.clear();
    state.candidates = (await api(`/v1/items?limit=${CANDIDATES}`)).ids;
  } catch (error) {
    result.textContent = String(error.message || error);
  }
}

async function start() {
  try {
    state.model = await api("/v1/model");
    const store = state.model.store;
    if (!store) throw new Error("this service has no item/user store (start it with --store): nothing to browse");
    const cap = Math.min(CANDIDATES, state.model.limits.max_candidates);
    const [users, items] = await Promise.all([api("/v1/users?limit=200"), api(`/v1/items?limit=${cap}`)]);
    state.candidates = items.ids;
    const how = state.model.recommender ? `recommending from all ${store.items} (recall: ${state.model.recommender.channels.join(", ")})`
                                        : `ranking ${items.ids.length} items per user`;
    $("status").textContent = `${store.items} items, ${store.users} users; ${how}` +
      (state.model.ingestion.items ? "; accepts new items" : "; read-only");
    $("user-select").replaceChildren(...users.ids.map((id) => el("option", {value: id}, id)));
    for (const column of store.context_columns) {
      $("context").append(el("label", {for: `ctx-${column}`}, column), el("input", {id: `ctx-${column}`, name: column, size: 8}));
    }
    $("upload").hidden = !state.model.ingestion.items;
    $("rank-button").addEventListener("click", rank);
    $("upload-button").addEventListener("click", upload);
    $("user-select").addEventListener("change", () => { $("user-input").value = ""; rank(); });
    $("user-input").addEventListener("keydown", (e) => { if (e.key === "Enter") rank(); });
    if (users.ids.length) await rank();
  } catch (error) {
    $("status").textContent = "";
    showError(error);
  }
}

start();
