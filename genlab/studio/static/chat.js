// The chat view: plain JS over app.js's helpers ($, api, sseEvents). Each turn sends the whole
// conversation to /v1/chat/completions (stream: true) and shows the reply as it arrives; the user's
// turn and the finished reply are saved through /v1/conversations, so a conversation can be reopened.
"use strict";
const MAX_TURNS = 255;  // the chat endpoint takes 256 messages: the system prompt and the newest turns
let chat = { id: null, messages: [] };  // the open conversation: its id once saved, its turns so far
let busy = false;

function showView() {
  const onChat = location.hash === "#chat";
  $("chat-view").hidden = !onChat; $("studio-view").hidden = onChat;
  $("tab-chat").classList.toggle("on", onChat); $("tab-studio").classList.toggle("on", !onChat);
}

async function call(path, method, body) {
  const options = { method, headers: { "Content-Type": "application/json" } };
  if (body !== undefined) options.body = JSON.stringify(body);
  return (await api(path, options)).json();
}

function showChatError(message) {
  $("chat-error").textContent = `Failed: ${message}`; $("chat-error").hidden = false;
}

// An empty or unreadable number field falls back to its default, so the server never gets NaN.
function numberField(id) {
  const el = $(id);
  return Number.isFinite(el.valueAsNumber) ? el.valueAsNumber : +el.defaultValue;
}

function chatSettings() {
  const seed = $("chat-seed").valueAsNumber;  // empty: a new random reply each time
  return { temperature: numberField("chat-temperature"), top_p: numberField("chat-top-p"),
           max_tokens: numberField("chat-max-tokens"), seed: Number.isInteger(seed) ? seed : null };
}

function addTurn(role, text) {
  const li = document.createElement("li");
  li.className = role; li.textContent = text;
  $("transcript").append(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

function showTranscript() {
  $("transcript").replaceChildren();
  for (const m of chat.messages) addTurn(m.role, m.content);
}

// Stream the reply into `li`; `li.dataset.chunks` counts the pieces as they came.
async function streamReply(system, settings, li) {
  const messages = chat.messages.slice(-MAX_TURNS);
  if (system.trim()) messages.unshift({ role: "system", content: system });
  const res = await api("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ messages, stream: true, ...settings }),
  });
  let text = "", chunks = 0;
  for await (const e of sseEvents(res)) {
    if (e.error) throw new Error(e.error.message);
    const piece = e.choices && e.choices[0] && e.choices[0].delta.content;
    if (piece) { text += piece; li.textContent = text; li.dataset.chunks = ++chunks; li.scrollIntoView({ block: "nearest" }); }
  }
  return text;
}

async function send(ev) {
  ev.preventDefault();
  const text = $("chat-input").value;
  if (busy || !text.trim()) return;
  busy = true; $("chat-send").disabled = true; $("chat-error").hidden = true;
  const system = $("chat-system").value, settings = chatSettings();
  let reply = null;
  try {
    // The conversation keeps the settings of its latest turn, so reopening it restores them.
    if (chat.id) await call(`/v1/conversations/${chat.id}`, "PATCH", { system, settings });
    else chat.id = (await call("/v1/conversations", "POST", { system, settings })).id;
    await call(`/v1/conversations/${chat.id}/messages`, "POST", { role: "user", content: text });
    chat.messages.push({ role: "user", content: text });
    addTurn("user", text);
    $("chat-input").value = "";
    reply = addTurn("assistant", "");
    reply.classList.add("streaming");
    const answer = await streamReply(system, settings, reply);
    await call(`/v1/conversations/${chat.id}/messages`, "POST", { role: "assistant", content: answer });
    chat.messages.push({ role: "assistant", content: answer });
  } catch (e) {
    if (reply) reply.classList.add("failed");  // shown, but neither saved nor sent with later turns
    showChatError(e.message);
  } finally {
    if (reply) reply.classList.remove("streaming");
    busy = false; $("chat-send").disabled = false;
    loadConversations();
  }
}

function newConversation() {
  if (busy) return;
  chat = { id: null, messages: [] };
  showTranscript();
  $("chat-error").hidden = true;
  loadConversations();
  $("chat-input").focus();
}

async function openConversation(id) {
  if (busy) return;
  const conv = await call(`/v1/conversations/${id}`, "GET");
  chat = { id: conv.id, messages: conv.messages.map((m) => ({ role: m.role, content: m.content })) };
  $("chat-system").value = conv.system;
  $("chat-temperature").value = conv.settings.temperature;
  $("chat-top-p").value = conv.settings.top_p;
  $("chat-max-tokens").value = conv.settings.max_tokens;
  $("chat-seed").value = conv.settings.seed ?? "";
  $("chat-error").hidden = true;
  showTranscript();
  loadConversations();
}

async function loadConversations() {
  let list;
  try { list = (await call("/v1/conversations", "GET")).data; } catch (e) { return; }
  $("conversations").replaceChildren(...list.map((c) => {
    const li = document.createElement("li");
    li.dataset.id = c.id;
    li.classList.toggle("open", c.id === chat.id);
    const title = document.createElement("div"); title.textContent = c.title || "(no messages yet)";
    const meta = document.createElement("div"); meta.className = "status";
    meta.textContent = `${c.message_count} messages, ${new Date(c.updated * 1000).toLocaleString()}`;
    const del = document.createElement("button"); del.className = "del"; del.textContent = "delete";
    del.onclick = async (e) => {
      e.stopPropagation();
      if (busy) return;
      await call(`/v1/conversations/${c.id}`, "DELETE").catch((err) => showChatError(err.message));
      if (c.id === chat.id) newConversation(); else loadConversations();
    };
    li.append(title, meta, del);
    li.onclick = () => openConversation(c.id).catch((err) => showChatError(err.message));
    return li;
  }));
}

// Say plainly what the served model will see: without a chat template, a plain transcript.
async function loadChatInfo() {
  let info;
  try { info = await call("/v1/chat/info", "GET"); } catch (e) { return; }
  const note = $("chat-note");
  if (!info.model) {
    note.textContent = "This server has no text model to chat with (start it with --text-run).";
  } else if (!info.chat_template) {
    note.textContent = `The served model (${info.model}) has no chat template: it is sent a plain ` +
      "\"User: ... / Assistant: ...\" transcript and continues it, so expect a base model's continuation " +
      "rather than an answer that follows instructions.";
  }
  note.hidden = Boolean(info.model && info.chat_template);
}

$("chat-form").addEventListener("submit", send);
$("chat-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("chat-form").requestSubmit(); }
});
$("chat-new").addEventListener("click", newConversation);
$("apikey").addEventListener("change", () => { loadHistory(); loadConversations(); loadChatInfo(); });
window.addEventListener("hashchange", showView);
showView();
loadConversations();
loadChatInfo();
