// The chat page: what a person sees of tokenwire. The protocol (reconnects, exactly-once
// resume, credentials) is tokenwire.js's; this file draws it and keeps the conversation
// across reloads (sessionStorage: it ends with the tab, and so does the credential).

import {
  AuthenticationRequired,
  ROUTING_STRATEGIES,
  TokenwireClient,
  listModels,
  newId,
} from "./tokenwire.js";
import { renderMarkdown } from "./markdown.js";

const CREDENTIAL_KEY = "tokenwire.credential";
const CHAT_KEY = "tokenwire.chat";
const USER_KEY = "tokenwire.user";
const CHOICE_KEY = "tokenwire.choice";

const $ = (id) => document.getElementById(id);
const ui = {
  conversation: $("conversation"),
  empty: $("empty"),
  composer: $("composer"),
  prompt: $("prompt"),
  send: $("send"),
  cancel: $("cancel"),
  status: $("status"),
  provider: $("provider"),
  strategy: $("strategy"),
  newChat: $("new-chat"),
  dialog: $("credential"),
  credentialForm: $("credential-form"),
  token: $("token"),
  credentialError: $("credential-error"),
};

/** What survives a reload: the finished turns, and the answer under way if any. */
const chat = loadChat();
const client = new TokenwireClient({
  token: sessionStorage.getItem(CREDENTIAL_KEY),
  userId: browserUser(),
});
let current = null; // {answer, view} of the answer under way
let answerState = "";

function loadChat() {
  try {
    const saved = JSON.parse(sessionStorage.getItem(CHAT_KEY));
    if (saved && Array.isArray(saved.turns) && saved.conversationId) return saved;
  } catch {
    // a damaged entry starts a new chat
  }
  return { conversationId: newId("c"), turns: [], pending: null };
}

function saveChat() {
  sessionStorage.setItem(CHAT_KEY, JSON.stringify(chat));
}

/** Who this browser is while the server has authentication off (then ignored). */
function browserUser() {
  let user = localStorage.getItem(USER_KEY);
  if (!user) {
    user = newId("web");
    localStorage.setItem(USER_KEY, user);
  }
  return user;
}

// -- status ----------------------------------------------------------------------------

const CONNECTION_LABELS = {
  connecting: "Connecting…",
  open: "Connected",
  reconnecting: "Reconnecting…",
  unauthorized: "Sign-in needed",
  closed: "Offline",
};

function showStatus() {
  const connection = CONNECTION_LABELS[client.state] || client.state;
  ui.status.textContent = answerState ? `${connection} · ${answerState}` : connection;
  ui.status.dataset.connection = client.state;
  ui.status.dataset.answer = answerState;
}

function setAnswerState(state) {
  answerState = state;
  const busy = state === "streaming";
  ui.cancel.hidden = !busy;
  ui.send.hidden = busy;
  showStatus();
}

client.addEventListener("state", showStatus);

// -- turns -----------------------------------------------------------------------------

function addUserTurn(text) {
  const turn = document.createElement("article");
  turn.className = "turn user";
  const bubble = document.createElement("div");
  bubble.className = "bubble";
  bubble.textContent = text;
  turn.append(bubble);
  ui.conversation.append(turn);
  ui.empty.hidden = true;
}

/** An assistant message; the latest one alone carries `data-testid="answer"`. */
function addAnswerView() {
  for (const old of ui.conversation.querySelectorAll('[data-testid="answer"]')) old.removeAttribute("data-testid");
  const turn = document.createElement("article");
  turn.className = "turn assistant";
  turn.dataset.testid = "answer";
  const progress = document.createElement("progress");
  progress.max = 100;
  progress.value = 0;
  progress.dataset.testid = "progress";
  progress.hidden = true;
  const typing = document.createElement("div");
  typing.className = "typing";
  typing.dataset.testid = "typing";
  typing.setAttribute("aria-label", "typing");
  typing.append(document.createElement("span"), document.createElement("span"), document.createElement("span"));
  typing.hidden = true;
  const content = document.createElement("div");
  content.className = "content";
  const error = document.createElement("p");
  error.className = "error";
  error.dataset.testid = "error";
  error.setAttribute("role", "alert");
  error.hidden = true;
  const meta = document.createElement("footer");
  meta.className = "meta";
  meta.dataset.testid = "answer-meta";
  turn.append(progress, content, typing, error, meta);
  ui.conversation.append(turn);
  ui.empty.hidden = true;
  return { turn, progress, typing, content, error, meta, text: "", drawn: -1 };
}

function draw(view) {
  if (view.drawn === view.text.length) return;
  view.drawn = view.text.length;
  view.content.replaceChildren(renderMarkdown(view.text));
}

let drawQueued = null;
function drawSoon(view) {
  if (drawQueued === view) return;
  drawQueued = view;
  requestAnimationFrame(() => {
    drawQueued = null;
    draw(view);
    follow();
  });
}

function follow() {
  const gap = ui.conversation.scrollHeight - ui.conversation.scrollTop - ui.conversation.clientHeight;
  if (gap < 160) ui.conversation.scrollTop = ui.conversation.scrollHeight;
}

function showFinished(view, turn) {
  view.text = turn.text;
  draw(view);
  view.turn.dataset.state = turn.status;
  if (turn.error) showError(view, turn.error);
  view.meta.textContent = turn.meta || "";
}

// -- what the events say ---------------------------------------------------------------

const ERROR_LABELS = {
  rate_limited: "Rate limited",
  provider_busy: "Every provider is busy",
  provider_unavailable: "No provider is available",
  budget_exceeded: "Today's budget is spent",
  too_many_streams: "Too many answers at once",
  timeout: "Timed out",
  authentication_failed: "Not signed in",
  not_recovered: "This answer could not be recovered",
  unknown_request: "This answer is no longer available",
};

/** @param {Record<string, any>} data an `error` event's data */
export function describeError(data) {
  const label = ERROR_LABELS[data.error_type] || "Error";
  const message = String(data.error || "").trim();
  const said = message ? ` ${message[0].toUpperCase()}${message.slice(1)}${/[.!?]$/.test(message) ? "" : "."}` : "";
  const wait = data.retry_after != null ? ` Try again in ${Math.ceil(data.retry_after)} s.` : "";
  return `${label}.${said}${wait}`;
}

function showError(view, message) {
  view.error.textContent = message;
  view.error.hidden = false;
}

/** Provider, model, time to first token and tokens/s, from the answer's events. */
export function describeAnswer(end, firstText) {
  const parts = [end.provider_used, end.model].filter(Boolean);
  const ttft = end.ttft ?? firstText;
  if (ttft != null) parts.push(`first token ${formatSeconds(ttft)}`);
  const tokens = end.usage?.completion_tokens;
  const generating = ttft != null ? end.duration - ttft : end.duration;
  if (tokens && generating > 0) parts.push(`${Math.round(tokens / generating)} tokens/s`);
  if (tokens) parts.push(`${tokens} tokens${end.usage.estimated ? " (estimated)" : ""}`);
  if (end.status && end.status !== "completed") parts.push(end.status);
  return parts.join(" · ");
}

function formatSeconds(seconds) {
  return seconds < 1 ? `${Math.round(seconds * 1000)} ms` : `${seconds.toFixed(2)} s`;
}

/** Draw one answer's events as they come, then keep it in the conversation. */
async function play(answer, view, prompt) {
  current = { answer, view };
  setAnswerState("streaming");
  view.turn.dataset.state = "streaming";
  view.turn.dataset.requestId = answer.requestId;
  const turn = { role: "assistant", prompt, requestId: answer.requestId, text: "", status: "error", meta: "", error: "" };
  let started = null;
  let firstText = null;
  for await (const event of answer) {
    const data = event.data;
    switch (event.event_type) {
      case "stream_start":
        started = event.timestamp;
        view.progress.hidden = false;
        break;
      case "typing_indicator":
        view.typing.hidden = !data.is_typing;
        break;
      case "metadata":
        view.meta.textContent = [data.recommended_provider, data.model].filter(Boolean).join(" · ");
        break;
      case "chunk":
      case "token":
        if (firstText == null && started != null && !data.compacted) firstText = event.timestamp - started;
        view.text += event.event_type === "chunk" ? data.chunk : data.token;
        drawSoon(view);
        break;
      case "progress":
        view.progress.value = data.progress;
        break;
      case "error":
        turn.error = describeError(data);
        showError(view, turn.error);
        break;
      case "stream_end":
        turn.status = data.status;
        turn.meta = describeAnswer(data, firstText);
        break;
    }
  }
  turn.text = view.text;
  view.typing.hidden = true;
  view.progress.hidden = true;
  showFinished(view, turn);
  chat.turns.push(turn);
  chat.pending = null;
  saveChat();
  current = null;
  setAnswerState(turn.status);
}

// -- asking ------------------------------------------------------------------------------

function requestConfig() {
  if (ui.provider.value) return { provider: ui.provider.value };
  if (ui.strategy.value) return { routing_strategy: ui.strategy.value };
  return undefined;
}

function send() {
  const prompt = ui.prompt.value.trim();
  if (!prompt || current) return;
  ui.prompt.value = "";
  fitPrompt();
  addUserTurn(prompt);
  const view = addAnswerView();
  const answer = client.stream(prompt, { conversationId: chat.conversationId, config: requestConfig() });
  chat.pending = { requestId: answer.requestId, prompt };
  saveChat();
  play(answer, view, prompt);
}

function stop() {
  if (current) current.answer.cancel();
}

function newChat() {
  stop();
  chat.conversationId = newId("c");
  chat.turns = [];
  chat.pending = null;
  saveChat();
  for (const turn of ui.conversation.querySelectorAll(".turn")) turn.remove();
  ui.empty.hidden = false;
  setAnswerState("");
  ui.prompt.focus();
}

function fitPrompt() {
  ui.prompt.style.height = "auto";
  ui.prompt.style.height = `${Math.min(ui.prompt.scrollHeight, 200)}px`;
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  send();
});
ui.prompt.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    send();
  }
});
ui.prompt.addEventListener("input", fitPrompt);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && current && !ui.dialog.open) {
    event.preventDefault();
    stop();
  }
});
ui.cancel.addEventListener("click", stop);
ui.newChat.addEventListener("click", newChat);

// -- selectors and the credential --------------------------------------------------------

function option(value, label) {
  const node = document.createElement("option");
  node.value = value;
  node.textContent = label;
  return node;
}

async function loadProviders() {
  const models = await listModels({ token: client.token });
  const choice = JSON.parse(localStorage.getItem(CHOICE_KEY) || "{}");
  ui.provider.replaceChildren(
    option("", "auto"),
    ...models.filter((m) => m.id !== "auto").map((m) => option(m.id, m.id)),
  );
  ui.strategy.replaceChildren(option("", "default routing"), ...ROUTING_STRATEGIES.map((s) => option(s, s.replace(/_/g, " "))));
  if ([...ui.provider.options].some((o) => o.value === choice.provider)) ui.provider.value = choice.provider;
  if (ROUTING_STRATEGIES.includes(choice.strategy)) ui.strategy.value = choice.strategy;
  ui.strategy.disabled = Boolean(ui.provider.value);
}

function rememberChoice() {
  ui.strategy.disabled = Boolean(ui.provider.value);
  localStorage.setItem(CHOICE_KEY, JSON.stringify({ provider: ui.provider.value, strategy: ui.strategy.value }));
}
ui.provider.addEventListener("change", rememberChoice);
ui.strategy.addEventListener("change", rememberChoice);

function askForCredential(message) {
  ui.credentialError.textContent = message || "";
  ui.credentialError.hidden = !message;
  if (!ui.dialog.open) ui.dialog.showModal();
  ui.token.focus();
}

// The page cannot work without it: Esc does not dismiss the question.
ui.dialog.addEventListener("cancel", (event) => event.preventDefault());
ui.credentialForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const token = ui.token.value.trim();
  if (!token) return;
  client.token = token;
  sessionStorage.setItem(CREDENTIAL_KEY, token);
  ui.token.value = "";
  ui.dialog.close();
  start();
});

/** The server refused the credential (at start, or when it expired): ask for one. */
function credentialRefused() {
  const hadOne = Boolean(client.token);
  sessionStorage.removeItem(CREDENTIAL_KEY);
  askForCredential(hadOne ? "That credential was refused or has expired. Try another." : "");
}

client.addEventListener("state", () => {
  if (client.state === "unauthorized") credentialRefused();
});

async function start() {
  try {
    await Promise.all([client.connect(), loadProviders()]);
  } catch (error) {
    if (!(error instanceof AuthenticationRequired)) throw error;
    credentialRefused();
  }
}

// -- on load: the conversation so far, then the answer that was under way ----------------

for (const turn of chat.turns) {
  addUserTurn(turn.prompt);
  showFinished(addAnswerView(), turn);
}
if (chat.pending) {
  addUserTurn(chat.pending.prompt);
  const view = addAnswerView();
  play(client.attach(chat.pending.requestId), view, chat.pending.prompt);
} else if (chat.turns.length) {
  setAnswerState(chat.turns[chat.turns.length - 1].status);
}
ui.conversation.scrollTop = ui.conversation.scrollHeight;
showStatus();
start();
ui.prompt.focus();
