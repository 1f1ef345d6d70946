// The user's dashboard, over the JSON API.
import { $, api, button, cell, download, json, keyedTries, refusal, signInPage, transactionList, when } from "./common.js";

const loadTransactions = transactionList("/api/credit/transactions", $("#transactions"), $("#receipt"));

let conversationId = null;

function showBalance(amounts) {
  for (const name of ["balance", "reserved", "available"]) $(`#${name}`).textContent = amounts[name];
}

async function loadCredits() {
  const balance = await json("/api/credit/balance");
  showBalance(balance);
  $("#tier").textContent = balance.tier;
  $("#next-refresh").textContent = when(balance.next_refresh_at);
  const grants = await json("/api/credit/grants?limit=200");
  const body = $("#grants tbody");
  body.replaceChildren();
  for (const grant of grants.items) {
    const row = body.insertRow();
    cell(row, grant.source);
    cell(row, grant.amount);
    cell(row, grant.remaining);
    cell(row, grant.expires_at ? when(grant.expires_at) : "never");
    cell(row, grant.status);
  }
}

const SVG = "http://www.w3.org/2000/svg";

function usageRange() {
  return `from=${$("#usage-from").value}&to=${$("#usage-to").value}`;
}

// Enough distinct colours for the models of a month; beyond them the colours repeat.
const MODEL_COLOURS = ["#1f5bd8", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#495057"];

function daysBetween(from, to) {
  return Math.round((new Date(`${to}T00:00:00Z`) - new Date(`${from}T00:00:00Z`)) / 86400000);
}

// A slot per day of the range, a bar on each day with usage, as tall as its credits against
// the busiest day's, stacked by model.
function drawChart(groups) {
  const chart = $("#usage-chart");
  chart.replaceChildren();
  const from = $("#usage-from").value;
  const width = 600 / Math.max(daysBetween(from, $("#usage-to").value) + 1, 1);
  const days = new Map();
  const models = [];
  for (const group of groups) {
    const [day, model] = group.key.split(" ");
    if (!models.includes(model)) models.push(model);
    if (!days.has(day)) days.set(day, []);
    days.get(day).push({ model, group });
  }
  const dayTotal = (parts) => parts.reduce((sum, { group }) => sum + Number(group.credits), 0);
  const most = Math.max(...[...days.values()].map(dayTotal), 0);
  for (const [day, parts] of days) {
    const bar = document.createElementNS(SVG, "g");
    bar.setAttribute("class", "bar");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${day}: ` + parts.map(({ model, group }) => `${model} ${group.credits} credits`).join(", ");
    bar.append(title);
    let top = 150;
    for (const { model, group } of parts) {
      const height = most ? (Number(group.credits) / most) * 140 : 0;
      top -= height;
      const piece = document.createElementNS(SVG, "rect");
      piece.setAttribute("x", String(daysBetween(from, day) * width + width * 0.15));
      piece.setAttribute("y", String(top));
      piece.setAttribute("width", String(width * 0.7));
      piece.setAttribute("height", String(height));
      piece.setAttribute("fill", MODEL_COLOURS[models.indexOf(model) % MODEL_COLOURS.length]);
      bar.append(piece);
    }
    chart.append(bar);
  }
  const legend = $("#usage-legend");
  legend.replaceChildren();
  for (const [index, model] of models.entries()) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = MODEL_COLOURS[index % MODEL_COLOURS.length];
    item.append(swatch, model);
    legend.append(item);
  }
}

function fillTable(selector, groups, columns) {
  const body = $(`${selector} tbody`);
  body.replaceChildren();
  for (const group of groups) {
    const row = body.insertRow();
    for (const value of columns(group)) cell(row, String(value));
  }
}

async function loadUsage(event) {
  if (event) event.preventDefault();
  const [byDay, byModel, byProvider] = await Promise.all(
    ["day_model", "model", "provider"].map((grouping) => json(`/api/credit/usage?group_by=${grouping}&${usageRange()}`)),
  );
  drawChart(byDay.groups);
  const counts = (group) => [group.requests, group.input_tokens, group.output_tokens, group.credits];
  fillTable("#usage-models", byModel.groups, (group) => [...group.key.split(/:(.*)/s, 2), ...counts(group)]);
  fillTable("#usage-providers", byProvider.groups, (group) => [group.key, ...counts(group)]);
}

function lastThirtyDays() {
  const today = new Date();
  const from = new Date(today.getTime() - 29 * 24 * 3600 * 1000);
  $("#usage-to").value = today.toISOString().slice(0, 10);
  $("#usage-from").value = from.toISOString().slice(0, 10);
}

const characters = new Map();

async function loadCharacters() {
  const page = await json("/api/characters?limit=200");
  const select = $("#character");
  select.replaceChildren();
  for (const character of page.items) {
    characters.set(character.id, character);
    const option = document.createElement("option");
    option.value = character.id;
    option.textContent = `${character.name} (${character.provider}:${character.model})`;
    select.append(option);
  }
}

// The newest conversations, each a button that opens it.
async function loadConversations() {
  const page = await json("/api/conversations?limit=20");
  const list = $("#conversations");
  list.replaceChildren();
  for (const conversation of page.items) {
    const character = characters.get(conversation.character_id);
    const open = button(`${character ? character.name : "A character"}, started ${when(conversation.created_at)}`, () =>
      openConversation(conversation.id),
    );
    open.className = "link";
    const item = document.createElement("li");
    item.append(open);
    list.append(item);
  }
}

async function openConversation(id) {
  const page = await json(`/api/conversations/${encodeURIComponent(id)}/messages?limit=100`);
  conversationId = id;
  $("#conversation").replaceChildren();
  for (const message of page.items.reverse()) {
    addLine(message.role, message.partial ? `${message.content} (cut short)` : message.content);
  }
  $("#send").hidden = false;
  $("#message").focus();
}

function addLine(role, text) {
  const item = document.createElement("li");
  item.className = role;
  const words = document.createElement("p");
  words.textContent = text;
  item.append(words);
  $("#conversation").append(item);
  return item;
}

// Server-Sent Events read from a fetch body: one callback per event.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += value;
    let end;
    while ((end = pending.indexOf("\n\n")) >= 0) {
      const block = pending.slice(0, end);
      pending = pending.slice(end + 2);
      if (block.startsWith(":")) continue;
      const fields = Object.fromEntries(
        block.split("\n").map((line) => [line.slice(0, line.indexOf(": ")), line.slice(line.indexOf(": ") + 2)]),
      );
      onEvent(fields.event, JSON.parse(fields.data));
    }
  }
}

// One message sent: its reply streamed into the conversation. Throws as `json` does when the
// message is refused, and a TypeError when no answer came back (or it broke off).
async function sendMessage(content, key) {
  const response = await api(`/api/conversations/${conversationId}/messages`, {
    method: "POST",
    body: { content, stream: true },
    headers: { "Idempotency-Key": key },
  });
  if (!response.ok) throw await refusal(response);
  let reply = null;
  await readEvents(response, (name, data) => {
    if (name === "message") {
      addLine("user", data.content);
      reply = addLine("assistant", "");
    } else if (name === "delta") {
      reply.firstChild.textContent += data.text;
    } else if (name === "done") {
      const cost = document.createElement("p");
      cost.className = "cost";
      cost.textContent = `${data.credits_charged} credits`;
      reply.append(cost);
      showBalance(data.balance);
    } else if (name === "error") {
      $("#chat-error").textContent = `${data.error.message} (charged ${data.credits_charged} credits)`;
      if (data.balance) showBalance(data.balance);
    }
  });
}

function chatError(error) {
  if (error instanceof TypeError) return "No answer came back: press Send again to retry (a message is never charged twice).";
  if (error.body?.error.code !== "insufficient_credits") return error.message;
  const { details } = error.body.error;
  return `Not enough credits: this message needs up to ${details.required}, and ${details.available} are available.`;
}

// The same text sent again to the same conversation after a lost answer is the same send (one
// Idempotency-Key, one charge); once answered, or for another text, it is a new message.
const sendTries = keyedTries($("#send"));

async function send(event) {
  event.preventDefault();
  $("#chat-error").textContent = "";
  const content = $("#message").value;
  try {
    await sendTries({ conversationId, content }, (key) => sendMessage(content, key));
  } catch (error) {
    $("#chat-error").textContent = chatError(error);
    return;
  }
  if ($("#message").value === content) $("#message").value = "";
  await Promise.all([loadCredits(), loadTransactions(), loadUsage()]);
}

async function startChat(event) {
  event.preventDefault();
  const conversation = await json("/api/conversations", {
    method: "POST",
    body: { character_id: $("#character").value },
    headers: { "Idempotency-Key": crypto.randomUUID() },
  });
  await openConversation(conversation.id);
  await loadConversations();
}

async function showDashboard() {
  lastThirtyDays();
  await Promise.all([loadCredits(), loadTransactions(), loadCharacters().then(loadConversations), loadUsage()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#transactions-csv").addEventListener("click", () => download("/api/credit/transactions?format=csv", "transactions.csv"));
  $("#usage-csv").addEventListener("click", () => download(`/api/credit/usage?group_by=day_model&format=csv&${usageRange()}`, "usage-by-day-and-model.csv"));
  $("#usage-range").addEventListener("submit", loadUsage);
  $("#start-chat").addEventListener("submit", startChat);
  $("#send").addEventListener("submit", send);
  signInPage(showDashboard);
});
