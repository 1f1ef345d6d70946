// The user's dashboard, over the JSON API.
import { $, amountCell, api, button, cell, clearFieldProblems, credits, download, fieldProblems, fillTable, instant, json, keyList, keyedTries, lastAsked, purchaseList, refusal, sessionCheck, signInPage, transactionList, unlessStopped, usd, when } from "./common.js";
import { capRefusal, forgetTeams, loadTeam, payingTeam, showTeamAmounts, showTeams, wireTeams } from "./team.js";
import { forgetSignals, refreshThresholds, showSignals, wireSignals } from "./signals.js";

const loadTransactions = transactionList("/api/credit/transactions", $("#transactions"), $("#receipt"));

let conversationId = null;

// The figures in credits, and what the balance and the available credits are worth in dollars.
function showBalance(amounts) {
  for (const name of ["balance", "reserved", "available"]) $(`#${name}`).textContent = credits(amounts[name]);
  for (const name of ["balance", "available"]) $(`#${name}-usd`).textContent = usd(amounts[name]);
}

// Where a grant's credits came from: a refund or an adjustment is said as such (their grants'
// source is `admin`), subscription credits by their period.
function grantSource(grant) {
  if (grant.origin === "refund") return "Refund";
  if (grant.origin === "adjust") return "Adjustment";
  if (grant.source === "subscription") return `Subscription${grant.period ? ` (${grant.period})` : ""}`;
  return { purchase: "Purchase", promo: "Promo", admin: "From an admin" }[grant.source] || grant.source;
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
    cell(row, grantSource(grant));
    cell(row, grant.reason || "");
    amountCell(row, grant.amount);
    amountCell(row, grant.remaining);
    cell(row, grant.expires_at ? when(grant.expires_at) : "never");
    cell(row, grant.status.replace("_", " "));
  }
}

function usageRange() {
  return `from=${$("#usage-from").value}&to=${$("#usage-to").value}`;
}

// The usage chart is drawn by hand in SVG, not with a charting library: it is one kind of chart
// (a bar per day, stacked by model) that needs axes, a value on hover or focus and keyboard
// steps, about 150 lines here; a library able to do it weighs 50 to 200 kB, would have to be
// pinned, served and kept up to date by the service (no CDN: the Content-Security-Policy allows
// only 'self'), and most draw on a <canvas>, which screen readers cannot enter. The table of the
// same numbers beside it is the chart's accessible alternative.
const SVG = "http://www.w3.org/2000/svg";
// Enough distinct colours for the models of a month; beyond them the colours repeat.
const MODEL_COLOURS = ["#1f5bd8", "#d9480f", "#2b8a3e", "#862e9c", "#c2255c", "#0b7285", "#5c940d", "#495057"];
// Room around the bars for the axes' labels, in pixels (the chart is drawn at its own size).
const MARGIN = { top: 22, right: 20, bottom: 26, left: 58 };
const DAY = 86400000;
const dayOf = (date) => new Date(`${date}T00:00:00Z`);
const shortDay = (date) => dayOf(date).toLocaleDateString("en-US", { month: "short", day: "numeric", timeZone: "UTC" });
const longDay = (date) =>
  dayOf(date).toLocaleDateString("en-US", { weekday: "short", month: "short", day: "numeric", year: "numeric", timeZone: "UTC" });

function draw(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (parent) parent.append(element);
  return element;
}

// The gridlines' step: 1, 2 or 5 times a power of ten, for about four lines up to `most`.
function gridStep(most) {
  const rough = most / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  return [1, 2, 5, 10].map((times) => times * power).find((step) => step >= rough * 0.999);
}

// A gridline's value as a label: the float of the geometry rounded back to what it stands for.
const tickLabel = (value) => Number(value.toPrecision(6)).toLocaleString("en-US", { maximumFractionDigits: 6 });

// The days with usage, each with its models' groups as the API keyed them
// ("2026-11-20 openai:gpt-4o"), and the models in the API's order.
function usageDays(groups) {
  const days = new Map();
  const models = [];
  for (const group of groups) {
    const [day, model] = group.key.split(" ");
    if (!models.includes(model)) models.push(model);
    if (!days.has(day)) days.set(day, []);
    days.get(day).push({ model, group });
  }
  return { days, models };
}

const shown = { groups: [], from: "", to: "" };

function showTip(bar) {
  const tip = $("#usage-tip");
  tip.replaceChildren();
  const heading = document.createElement("strong");
  heading.textContent = bar.dataset.day;
  tip.append(heading);
  for (const line of bar.dataset.lines.split("\n")) {
    const item = document.createElement("span");
    item.textContent = line;
    tip.append(item);
  }
  tip.hidden = false;
  const place = $("#usage-figure").getBoundingClientRect();
  const box = bar.querySelector(".hit").getBoundingClientRect();
  const half = tip.offsetWidth / 2;
  const left = Math.min(Math.max(box.left + box.width / 2 - place.left, half), place.width - half);
  tip.style.left = `${left}px`;
  tip.style.top = `${Number(bar.dataset.top) - 6}px`;
}

function hideTip() {
  $("#usage-tip").hidden = true;
}

// A slot per day from `from` to `to` with dates below it (as many as fit), credits up the side
// with gridlines, and on each day with usage a bar stacked by model, as tall as its credits.
// Each bar shows its numbers on hover and on focus; one bar is in the Tab order at a time, the
// arrow keys (and Home, End) step between them.
function drawChart(groups, from = shown.from, to = shown.to) {
  Object.assign(shown, { groups, from, to });
  const chart = $("#usage-chart");
  chart.replaceChildren();
  hideTip();
  const { width: boxWidth, height: boxHeight } = chart.getBoundingClientRect();
  const width = Math.round(boxWidth) || 600;
  const height = Math.round(boxHeight) || 240;
  chart.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const plotHeight = height - MARGIN.top - MARGIN.bottom;
  const dayCount = Math.max(Math.round((dayOf(to) - dayOf(from)) / DAY) + 1, 1) || 1;
  const slot = plotWidth / dayCount;
  const { days, models } = usageDays(groups);
  const dayTotal = (parts) => parts.reduce((sum, { group }) => sum + Number(group.credits), 0);
  const most = Math.max(...[...days.values()].map(dayTotal), 0);
  const step = most > 0 ? gridStep(most) : 1;
  const top = most > 0 ? Math.ceil(most / step - 1e-9) * step : 1;
  const y = (value) => MARGIN.top + plotHeight - (value / top) * plotHeight;

  const yAxis = draw("g", { class: "axis y-axis", "aria-hidden": "true" }, chart);
  draw("text", { x: 4, y: 12, class: "unit" }, yAxis).textContent = "Credits";
  for (let index = 0; index * step <= top * (1 + 1e-9); index += 1) {
    const value = index * step;
    draw("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(value), y2: y(value), class: index ? "grid" : "base" }, yAxis);
    const label = draw("text", { x: MARGIN.left - 6, y: y(value) + 4, "text-anchor": "end" }, yAxis);
    label.textContent = tickLabel(value);
  }
  const xAxis = draw("g", { class: "axis x-axis", "aria-hidden": "true" }, chart);
  const every = Math.ceil(56 / slot); // a date's label is about 56 pixels wide
  if (from && to) {
    for (let index = 0; index < dayCount; index += every) {
      const date = new Date(dayOf(from).getTime() + index * DAY).toISOString().slice(0, 10);
      const middle = MARGIN.left + (index + 0.5) * slot;
      draw("line", { x1: middle, x2: middle, y1: y(0), y2: y(0) + 4 }, xAxis);
      const label = draw("text", { x: middle, y: height - 8, "text-anchor": "middle" }, xAxis);
      label.textContent = shortDay(date);
    }
  }

  const bars = [];
  for (const day of [...days.keys()].sort()) {
    const parts = days.get(day);
    const left = MARGIN.left + Math.round((dayOf(day) - dayOf(from)) / DAY) * slot;
    const lines = parts.map(({ model, group }) => `${model}: ${credits(group.credits)} credits`);
    const bar = draw("g", { class: "bar", role: "img", tabindex: -1 }, chart);
    bar.dataset.day = longDay(day);
    bar.dataset.lines = lines.join("\n");
    bar.dataset.top = String(y(dayTotal(parts)));
    bar.setAttribute("aria-label", `${longDay(day)}: ${lines.join(", ")}`);
    draw("rect", { class: "hit", x: left, y: MARGIN.top, width: slot, height: plotHeight }, bar);
    let bottom = y(0);
    const barWidth = Math.max(slot * 0.7, 1);
    for (const { model, group } of parts) {
      const pieceHeight = (Number(group.credits) / top) * plotHeight;
      bottom -= pieceHeight;
      const colour = MODEL_COLOURS[models.indexOf(model) % MODEL_COLOURS.length];
      draw("rect", { x: left + (slot - barWidth) / 2, y: bottom, width: barWidth, height: pieceHeight, fill: colour }, bar);
    }
    bar.addEventListener("mouseenter", () => showTip(bar));
    bar.addEventListener("mouseleave", () => (bar === document.activeElement ? showTip(bar) : hideTip()));
    bar.addEventListener("focus", () => showTip(bar));
    bar.addEventListener("blur", hideTip);
    bars.push(bar);
  }
  // The newest day is the one Tab reaches.
  if (bars.length) bars[bars.length - 1].setAttribute("tabindex", "0");
  chart.onkeydown = (event) => {
    const at = bars.indexOf(document.activeElement);
    const next = { ArrowLeft: at - 1, ArrowRight: at + 1, Home: 0, End: bars.length - 1 }[event.key];
    if (at < 0 || next === undefined || !bars[next]) return;
    event.preventDefault();
    bars[at].setAttribute("tabindex", "-1");
    bars[next].setAttribute("tabindex", "0");
    bars[next].focus();
  };

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
  fillTable("#usage-days", groups, (group) => {
    const [day, model] = group.key.split(" ");
    return [day, model, group.requests, group.credits];
  });
}

// The note under the range: what the API refused in it (its message, and each field's by the
// field's label), or that the range has no usage; "" clears it.
function usageNote(text, refused = false) {
  const note = $("#usage-note");
  note.textContent = text;
  note.classList.toggle("error", refused);
}

// The usage of the range: the chart and the tables show the API's answer, or nothing (never the
// previous range's) with the note saying why.
async function loadUsage(event) {
  if (event) event.preventDefault();
  clearFieldProblems($("#usage-range"));
  const last = lastAsked($("#usage-range"));
  let answers;
  try {
    answers = await Promise.all(
      ["day_model", "model", "provider"].map((grouping) => json(`/api/credit/usage?group_by=${grouping}&${usageRange()}`)),
    );
  } catch (error) {
    if (error.signedOut || !last()) return;
    drawChart([], $("#usage-from").value, $("#usage-to").value);
    fillTable("#usage-models", [], () => []);
    fillTable("#usage-providers", [], () => []);
    usageNote(fieldProblems($("#usage-range"), error, { beside: false }), true);
    return;
  }
  if (!last()) return;
  const [byDay, byModel, byProvider] = answers;
  usageNote(byDay.groups.length ? "" : "No usage in this range.");
  drawChart(byDay.groups, $("#usage-from").value, $("#usage-to").value);
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
  // Until the characters are known there is nothing to start a conversation with (a click
  // before would send no character and be refused).
  $("#start-chat button").disabled = select.options.length === 0;
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
    const { value, done } = await unlessStopped(reader.read());
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

// One message sent, paid by `team` (its id; null: your own credits): its reply streamed into
// the conversation, and the balance that paid it shown. Throws as `json` does when the message
// is refused, and a TypeError when no answer came back (or it broke off). A reply still
// streaming when its session ends is written nowhere (see sessionCheck).
async function sendMessage(content, team, key, check) {
  const response = await api(`/api/conversations/${conversationId}/messages`, {
    method: "POST",
    body: team === null ? { content, stream: true } : { content, stream: true, team_id: team },
    headers: { "Idempotency-Key": key },
  });
  const paid = team === null ? showBalance : showTeamAmounts;
  if (!response.ok) {
    const refused = await refusal(response);
    check();
    throw refused;
  }
  let reply = null;
  await readEvents(response, (name, data) => {
    check();
    if (name === "message") {
      addLine("user", data.content);
      reply = addLine("assistant", "");
    } else if (name === "delta") {
      reply.firstChild.textContent += data.text;
    } else if (name === "done") {
      const cost = document.createElement("p");
      cost.className = "cost";
      cost.textContent = `${credits(data.credits_charged)} credits`;
      reply.append(cost);
      paid(data.balance);
    } else if (name === "error") {
      $("#chat-error").textContent = `${data.error.message} (charged ${data.credits_charged} credits)`;
      if (data.balance) paid(data.balance);
    }
  });
}

function chatError(error, team) {
  if (error instanceof TypeError) return "No answer came back: press Send again to retry (a message is never charged twice).";
  const capped = capRefusal(error);
  if (capped) return capped;
  if (error.body?.error.code !== "insufficient_credits") return error.message;
  const { details } = error.body.error;
  const where = team === null ? "" : " in the team";
  return `Not enough credits${where}: this message needs up to ${credits(details.required)}, and ${credits(details.available)} are available.`;
}

// The same text sent again to the same conversation, paid by the same, after a lost answer is
// the same send (one Idempotency-Key, one charge); once answered, or for another text or payer,
// it is a new message.
const sendTries = keyedTries($("#send"));

async function send(event) {
  event.preventDefault();
  $("#chat-error").textContent = "";
  const content = $("#message").value;
  const team = payingTeam();
  const check = sessionCheck();
  try {
    await sendTries({ conversationId, content, team }, (key) => sendMessage(content, team, key, check));
    check();
  } catch (error) {
    // Refused, or no answer: said in the chat, unless the session ended meanwhile.
    if (!error.signedOut && !check.ended()) $("#chat-error").textContent = chatError(error, team);
    return;
  }
  if ($("#message").value === content) $("#message").value = "";
  await Promise.all([loadCredits(), loadTransactions(), loadUsage(), team === null ? null : loadTeam(), refreshThresholds()]);
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

// API keys. The key just made is on the page only while its box shows (see showNewKey): never
// stored, gone with a reload, a new key, the box's Hide button or the sign-out.
const example = { key: null, secret: null };

const loadKeys = keyList("/api/keys", $("#keys"), {
  revokePath: (key) => `/api/keys/${encodeURIComponent(key)}`,
  use: (key) => {
    Object.assign(example, { key, secret: key.id === example.key?.id ? example.secret : null });
    showExample();
    $("#key-snippet").focus();
  },
});

// The model of the example: the first character's (a priced model: in the demo, the demo
// provider's), as the gateway names it.
function exampleModel() {
  const first = characters.values().next().value;
  return first ? `${first.provider}/${first.model}` : "demo/demo-chat";
}

// What to paste for the key chosen (the one just made, with the key itself while it shows; a
// key of the list, with a placeholder): the OpenAI SDK's variables, and a call in Python.
function showExample() {
  const { key, secret } = example;
  let intro = "Set these two variables, putting your key in place of ca-…; any OpenAI SDK then calls this service:";
  if (secret) intro = `For the key ${key.name}, just made (its key is in the example until the box above is hidden):`;
  else if (key) intro = `For the key ${key.name} (${key.prefix}…): put the key itself, as you copied it when it was made, in place of ca-…:`;
  $("#snippet-for").textContent = intro;
  $("#key-snippet").textContent = [
    `export OPENAI_BASE_URL=${window.location.origin}/v1`,
    `export OPENAI_API_KEY=${secret ?? "ca-…"}`,
    "# then, in Python (pip install openai):",
    "from openai import OpenAI",
    `print(OpenAI().chat.completions.create(model="${exampleModel()}", messages=[{"role": "user", "content": "Hello!"}]).choices[0].message.content)`,
  ].join("\n");
}

function showNewKey(made) {
  $("#new-key-text").textContent = made.key;
  $("#copy-outcome").textContent = "";
  $("#new-key").hidden = false;
  $("#new-key").focus();
  Object.assign(example, { key: made, secret: made.key });
  showExample();
}

function hideNewKey() {
  $("#new-key").hidden = true;
  $("#new-key-text").textContent = "";
  $("#copy-outcome").textContent = "";
  if (example.secret) {
    example.secret = null;
    showExample();
  }
}

// The key into the clipboard; where the page may not write it (a page not served over HTTPS or
// from this computer, or the permission refused), the key is selected for the person to copy.
async function copyKey() {
  const text = $("#new-key-text");
  const said = $("#copy-outcome");
  try {
    await navigator.clipboard.writeText(text.textContent);
    said.textContent = "Copied to the clipboard.";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(text);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    said.textContent = "The key is selected: press Ctrl+C (⌘C on a Mac) to copy it.";
  }
}

// The form as the API takes it: a limit with its period, or none; the models as a list, or
// none (all the tier allows).
function keyRequest(form) {
  const data = new FormData(form);
  const body = { name: data.get("name") };
  const limit = data.get("limit").trim();
  if (limit) Object.assign(body, { limit, limit_period: data.get("limit_period") });
  const models = data.get("allowed_models").split(",").map((model) => model.trim()).filter(Boolean);
  if (models.length) body.allowed_models = models;
  if (data.get("expires_at")) body.expires_at = instant(data.get("expires_at"));
  return body;
}

// A double click or a retry after a lost answer makes one key (one Idempotency-Key while the
// same request is tried); a replay answers the record without the key, which is then lost.
const keyTries = keyedTries($("#key-form"));

async function createKey(event) {
  event.preventDefault();
  const form = $("#key-form");
  const outcome = form.querySelector(".outcome");
  outcome.textContent = "";
  outcome.classList.remove("refused");
  clearFieldProblems(form);
  hideNewKey();
  const body = keyRequest(form);
  const check = sessionCheck();
  let made;
  try {
    made = await keyTries(body, (key) => json("/api/keys", { method: "POST", body, headers: { "Idempotency-Key": key } }));
  } catch (error) {
    if (error.signedOut || check.ended()) return;
    outcome.textContent = fieldProblems(form, error);
    outcome.classList.add("refused");
    return;
  }
  form.reset();
  if (made.key) showNewKey(made);
  else outcome.textContent = `The key ${made.name} was made, but the answer carrying it was lost: it cannot be shown again. Revoke it and create another.`;
  await loadKeys();
}

// Buying credits: the price as the amount is typed, then Stripe's payment page. The service
// judges the amount (its 400 names the limits beside the field); the page only prices it.
const loadPurchases = purchaseList("/api/credit/purchases", $("#purchases"));
const buyTries = keyedTries($("#buy-form"));

function showPrice() {
  const amount = $("#buy-credits").value.trim();
  $("#buy-price").textContent = /^\d+$/.test(amount) ? usd(amount) : "–";
}

// A new amount: priced, and what was said of the previous one cleared.
function amountChanged() {
  const form = $("#buy-form");
  clearFieldProblems(form);
  form.querySelector(".outcome").textContent = "";
  form.querySelector(".outcome").classList.remove("refused");
  showPrice();
}

// What a refused purchase says: a 503 means no purchase was made, and says whether to try again.
function buyError(form, error) {
  const code = error.body?.error.code;
  if (code === "purchases_unavailable") return "Buying credits is not available here.";
  if (code === "payment_provider_unavailable") return "The payment service cannot be reached just now; nothing was charged. Try again in a moment.";
  return fieldProblems(form, error);
}

async function buy(event) {
  event.preventDefault();
  const form = $("#buy-form");
  const outcome = form.querySelector(".outcome");
  outcome.textContent = "";
  outcome.classList.remove("refused");
  clearFieldProblems(form);
  const body = { credits: $("#buy-credits").value.trim() };
  const check = sessionCheck();
  let purchase;
  try {
    purchase = await buyTries(body, (key) => json("/api/credit/purchases", { method: "POST", body, headers: { "Idempotency-Key": key } }));
  } catch (error) {
    if (error.signedOut || check.ended()) return;
    outcome.textContent = buyError(form, error);
    outcome.classList.add("refused");
    return;
  }
  outcome.textContent = "Taking you to the payment page…";
  window.location.assign(purchase.checkout_url);
}

// What the dashboard keeps of a session beyond its forms and tables (see signInPage): the open
// conversation, the receipt, the figures and the chart are the signed-out person's.
function forget() {
  conversationId = null;
  characters.clear();
  Object.assign(shown, { groups: [], from: "", to: "" });
  for (const place of ["#conversation", "#conversations", "#character", "#usage-chart", "#usage-legend"]) $(place).replaceChildren();
  $("#start-chat button").disabled = true;
  $("#send").hidden = true;
  $("#receipt").hidden = true;
  showBalance({ balance: "–", reserved: "–", available: "–" });
  $("#tier").textContent = "–";
  $("#next-refresh").textContent = "–";
  hideNewKey();
  Object.assign(example, { key: null, secret: null });
  $("#key-snippet").textContent = "";
  $("#snippet-for").textContent = "";
  showPrice();
  forgetTeams();
  forgetSignals();
}

async function showDashboard() {
  lastThirtyDays();
  showExample();
  showPrice();
  // Your own alerts and webhooks with the rest (the teams then choose none: nothing more to read).
  await Promise.all([showTeams(), showSignals({ teamId: null }), loadCredits(), loadPurchases(), loadTransactions(), loadCharacters().then(() => {
      showExample();
      return loadConversations();
    }), loadUsage(), loadKeys()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#transactions-csv").addEventListener("click", () => download("/api/credit/transactions?format=csv", "transactions.csv"));
  $("#usage-csv").addEventListener("click", () => download(`/api/credit/usage?group_by=day_model&format=csv&${usageRange()}`, "usage-by-day-and-model.csv"));
  $("#usage-range").addEventListener("submit", loadUsage);
  window.addEventListener("resize", () => {
    if (!$("#signed-in").hidden) drawChart(shown.groups);
  });
  $("#start-chat").addEventListener("submit", startChat);
  $("#send").addEventListener("submit", send);
  $("#key-form").addEventListener("submit", createKey);
  $("#copy-key").addEventListener("click", copyKey);
  $("#hide-key").addEventListener("click", hideNewKey);
  $("#buy-credits").addEventListener("input", amountChanged);
  $("#buy-form").addEventListener("submit", buy);
  wireTeams(() => Promise.all([loadCredits(), loadTransactions(), refreshThresholds()]), showSignals);
  wireSignals();
  signInPage(showDashboard, undefined, forget);
});
