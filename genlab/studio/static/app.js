// genlab studio page: plain JS, no build step. Every request carries the API key (if one is set),
// so server-sent events are read with fetch() rather than EventSource, which cannot send headers.
"use strict";
const $ = (id) => document.getElementById(id);
const STAGES = ["text", "illustration", "narration", "music", "bundle"];
const objectUrls = [];

function headers(extra = {}) {
  const key = $("apikey").value.trim();
  localStorage.setItem("genlab-key", key);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: headers(options.headers || {}) });
  if (!res.ok) {
    let msg = `${res.status}`;
    try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

async function blobUrl(path) {
  const url = URL.createObjectURL(await (await api(path)).blob());
  objectUrls.push(url);
  return url;
}

// The JSON events of a server-sent-events response, as they arrive (the chat view reads its replies
// with this too); OpenAI streams end with "data: [DONE]".
async function* sseEvents(res) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, cut); buf = buf.slice(cut + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
      if (data === "[DONE]") return;
      if (data) yield JSON.parse(data);
    }
  }
}

async function* events(path) {
  yield* sseEvents(await api(path));
}

function showStages(status = {}) {
  $("stages").replaceChildren(...STAGES.map((s) => {
    const li = document.createElement("li");
    li.textContent = s; li.className = status[s] || ""; li.dataset.stage = s;
    return li;
  }));
}

async function showJob(job) {
  $("result").hidden = false;
  $("title").textContent = job.title || job.prompt;
  if (job.status !== "done") return;
  const manifest = job.manifest || (await (await api(`/v1/studio/jobs/${job.id}`)).json()).manifest;
  const md = await (await api(`/v1/studio/jobs/${job.id}/files/article.md`)).text();
  $("article").textContent = md.replace(/^# .*\n+/, "");
  const img = $("illustration"), audio = $("narration");
  img.hidden = !manifest.assets["images/illustration.png"];
  if (!img.hidden) img.src = await blobUrl(`/v1/studio/jobs/${job.id}/files/images/illustration.png`);
  audio.hidden = !manifest.assets["narration.wav"];
  if (!audio.hidden) audio.src = await blobUrl(`/v1/studio/jobs/${job.id}/files/narration.wav`);
  const music = $("music");  // with the server's --music-run
  music.hidden = !manifest.assets["music/music.wav"];
  if (!music.hidden) music.src = await blobUrl(`/v1/studio/jobs/${job.id}/files/music/music.wav`);
  const mixed = $("soundtrack");  // narration and music: one player for the mix (the bundle keeps both files)
  mixed.hidden = !manifest.assets["soundtrack.wav"];
  if (!mixed.hidden) {
    mixed.src = await blobUrl(`/v1/studio/jobs/${job.id}/files/soundtrack.wav`);
    audio.hidden = true; music.hidden = true;
  }
  const link = $("download");
  link.href = await blobUrl(`/v1/studio/jobs/${job.id}/bundle`);
  link.download = `genlab-studio-${job.id.slice(0, 8)}.zip`;
  link.hidden = false;
}

async function make(ev) {
  ev.preventDefault();
  $("error").hidden = true; $("go").disabled = true;
  $("result").hidden = false; $("article").textContent = ""; $("title").textContent = $("prompt").value;
  $("illustration").hidden = true; $("narration").hidden = true; $("music").hidden = true; $("soundtrack").hidden = true;
  $("download").hidden = true;
  const status = {}; showStages(status);
  try {
    const body = { prompt: $("prompt").value, max_tokens: +$("max_tokens").value, seed: +$("seed").value,
                   voice: $("voice").value, narrate: $("narrate").checked };
    const job = await (await api("/v1/studio/jobs", { method: "POST", body: JSON.stringify(body),
                                                       headers: { "Content-Type": "application/json" } })).json();
    for await (const e of events(`/v1/studio/jobs/${job.id}/events`)) {
      if (e.event === "stage") { status[e.stage] = e.status; showStages(status); if (e.title) $("title").textContent = e.title; }
      else if (e.event === "title") $("title").textContent = e.title;
      else if (e.event === "text") $("article").textContent += e.text;
      else if (e.event === "retry") $("article").textContent = "";  // the quality gate writes it again
      else if (e.event === "article") { $("title").textContent = e.title; $("article").textContent = e.text; }
      else if (e.event === "failed") throw new Error(e.error);
    }
    await showJob(await (await api(`/v1/studio/jobs/${job.id}`)).json());
  } catch (e) {
    $("error").textContent = `Failed: ${e.message}`; $("error").hidden = false;
  } finally {
    $("go").disabled = false;
    loadHistory();
  }
}

async function loadHistory() {
  let jobs;
  try { jobs = (await (await api("/v1/studio/jobs")).json()).data; } catch (e) { return; }
  const items = await Promise.all(jobs.map(async (job) => {
    const li = document.createElement("li");
    li.dataset.id = job.id;
    if (job.assets.includes("images/illustration.png")) {
      const img = document.createElement("img"); img.alt = job.prompt;
      img.src = await blobUrl(`/v1/studio/jobs/${job.id}/files/images/illustration.png`).catch(() => "");
      li.append(img);
    }
    const title = document.createElement("div"); title.textContent = job.title || job.prompt;
    const st = document.createElement("div"); st.className = "status"; st.textContent = job.status + (job.error ? `: ${job.error}` : "");
    const del = document.createElement("button"); del.className = "del"; del.textContent = "delete";
    del.onclick = async (e) => { e.stopPropagation(); await api(`/v1/studio/jobs/${job.id}`, { method: "DELETE" }).catch(() => {}); loadHistory(); };
    li.append(title, st, del);
    li.onclick = async () => showJob(await (await api(`/v1/studio/jobs/${job.id}`)).json()).catch((err) => {
      $("error").textContent = err.message; $("error").hidden = false; });
    return li;
  }));
  $("history").replaceChildren(...items);
}

$("apikey").value = localStorage.getItem("genlab-key") || "";
$("make").addEventListener("submit", make);
showStages();
loadHistory();
