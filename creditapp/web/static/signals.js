// The dashboard's alerts and webhooks, of the account in view: your own credits, or the team
// chosen in the switcher (its owner and admins change them; a member reads its thresholds
// only, and sees none of its webhooks, as the API allows).
import { $, api, button, cell, clearFieldProblems, credits, fieldProblems, json, keyedTries, pagedList, refusal, sessionCheck, when } from "./common.js";

// The account in view ({ teamId, name, manages }); your own credits until a team is chosen.
let view = { teamId: null, name: "", manages: true };
// The thresholds as the page will save them, each { amount, armed } (armed null: added, not
// saved yet), lowest first; null until they are read (nothing can be changed then: a save would
// replace thresholds never seen), and `reading` while they are asked for.
let draft = null;
let reading = false;
// The endpoint whose deliveries are shown, or null.
let logOf = null;
// The endpoint the endpoint form changes, or null: the form adds one.
let editing = null;
// Which account the section shows, counted: an answer for an account no longer in view (the
// switcher moved meanwhile) is not shown. `shownFor`: the team id it shows (null: your own
// credits; undefined: none yet, this session).
let viewing = 0;
let shownFor;

// The query that names the team in view ("" for your own credits).
const teamQuery = () => (view.teamId === null ? "" : `team_id=${encodeURIComponent(view.teamId)}`);
const withTeam = (body) => (view.teamId === null ? body : { ...body, team_id: view.teamId });

// An amount of credits in micro-credits, to compare and sort exactly (never a float).
function micro(amount) {
  const [whole, fraction = ""] = amount.split(".");
  return BigInt(whole) * 1_000_000n + BigInt(fraction.padEnd(6, "0") || "0");
}

// An amount as the API writes it: "050.50" as "50.5".
function canonical(amount) {
  const value = micro(amount);
  const fraction = String(value % 1_000_000n).padStart(6, "0").replace(/0+$/, "");
  return `${value / 1_000_000n}${fraction ? `.${fraction}` : ""}`;
}

// What a refused request of this section says, in words; the API's field problems beside their
// fields of `form` (when it has them).
function signalRefusal(error, form = null) {
  const code = error.body?.error.code;
  const words = {
    webhook_url_refused: `Webhooks go only to https addresses of public hosts. ${error.message}`,
    invalid_thresholds: "Thresholds are up to 10 different amounts of credits, each above zero.",
    team_managers_only: "Only the team's owner and its admins manage its alerts and webhooks.",
    rate_limited: "Too many changes at once: wait a minute, then try again.",
  }[code];
  if (words) {
    const url = code === "webhook_url_refused" ? form?.elements.namedItem("url") : null;
    if (url) {
      // Marked as fieldProblems marks a field (clearFieldProblems restores it), described by
      // the refusal under the form.
      url.dataset.describedBy = url.getAttribute("aria-describedby") ?? "";
      url.setAttribute("aria-invalid", "true");
      url.setAttribute("aria-describedby", `${form.querySelector(".outcome").id} ${url.dataset.describedBy}`.trim());
    }
    return words;
  }
  return form ? fieldProblems(form, error) : error.message;
}

function said(place, text, refused = false) {
  place.textContent = text;
  place.classList.toggle("refused", refused);
}

// Low-balance thresholds.

// A threshold's state in words.
function thresholdState(threshold) {
  const amount = credits(threshold.amount);
  if (threshold.armed === null) return "New: saved when you press Save thresholds";
  if (threshold.armed) return `Armed: alerts when available credits fall below ${amount}`;
  return `Fired: available credits are below it; armed again once they are above ${amount}`;
}

function showThresholds() {
  const body = $("#thresholds tbody");
  const heading = $("#thresholds thead th:last-child");
  heading.hidden = !view.manages;
  body.replaceChildren();
  for (const form of ["#threshold-add", "#alerts-form"]) $(`${form} button[type=submit]`).disabled = draft === null;
  const columns = view.manages ? 3 : 2;
  if (draft === null) {
    const row = body.insertRow();
    row.className = reading ? "reading" : "unread";
    cell(row, reading ? "Reading the thresholds…" : "The thresholds could not be read.").colSpan = columns;
    return;
  }
  if (!draft.length) cell(body.insertRow(), view.manages ? "No thresholds yet: add one below." : "No thresholds.").colSpan = columns;
  for (const threshold of draft) {
    const row = body.insertRow();
    row.className = threshold.armed === null ? "new" : threshold.armed ? "armed" : "fired";
    const amount = cell(row, credits(threshold.amount));
    amount.className = "amount";
    cell(row, thresholdState(threshold)).className = "state-words";
    if (!view.manages) continue;
    const actions = cell(row, "");
    actions.className = "actions";
    actions.append(button("Remove", () => removeThreshold(threshold.amount), `Remove the threshold of ${credits(threshold.amount)} credits`));
  }
}

async function loadThresholds(check) {
  const area = $("#thresholds");
  const mine = viewing;
  area.querySelector("[role=alert]").textContent = "";
  draft = null;
  reading = true;
  showThresholds();
  try {
    const answer = await json(`/api/credit/alerts${teamQuery() ? `?${teamQuery()}` : ""}`);
    check();
    if (mine !== viewing) return;
    draft = answer.thresholds.map((each) => ({ amount: each.threshold, armed: each.armed }));
  } catch (error) {
    if (error.signedOut || check.ended() || mine !== viewing) return;
    area.querySelector("[role=alert]").textContent = `The thresholds could not be read: ${error.message}`;
  }
  reading = false;
  showThresholds();
}

// The thresholds' states as they now are, after credits moved (a message, a transfer): what
// this page added or removed and has not saved stays as it is. Never throws.
export async function refreshThresholds() {
  if (draft === null) return;
  const mine = viewing;
  const check = sessionCheck();
  let answer;
  try {
    answer = await json(`/api/credit/alerts${teamQuery() ? `?${teamQuery()}` : ""}`);
    check();
  } catch {
    return; // what is shown stays: the next change of view reads them again
  }
  if (mine !== viewing || draft === null) return;
  const armed = new Map(answer.thresholds.map((each) => [each.threshold, each.armed]));
  draft = draft.map((each) => (each.armed === null || !armed.has(each.amount) ? each : { ...each, armed: armed.get(each.amount) }));
  showThresholds();
}

function addThreshold(event) {
  event.preventDefault();
  const form = $("#threshold-add");
  const outcome = $("#alerts-said");
  const input = form.elements.namedItem("amount");
  const amount = canonical(input.value.trim());
  if (micro(amount) === 0n) {
    said(outcome, "A threshold is an amount above zero.", true);
    return;
  }
  if (draft.some((each) => each.amount === amount)) {
    said(outcome, `${credits(amount)} is a threshold already.`, true);
    return;
  }
  draft = [...draft, { amount, armed: null }].sort((a, b) => (micro(a.amount) < micro(b.amount) ? -1 : 1));
  said(outcome, "");
  form.reset();
  showThresholds();
  input.focus();
}

function removeThreshold(amount) {
  draft = draft.filter((each) => each.amount !== amount);
  said($("#alerts-said"), "");
  showThresholds();
  $("#threshold-amount").focus();
}

const thresholdTries = keyedTries($("#alerts-form"));

async function saveThresholds(event) {
  event.preventDefault();
  const outcome = $("#alerts-said");
  said(outcome, "");
  const body = withTeam({ thresholds: draft.map((each) => each.amount) });
  const check = sessionCheck();
  let answer;
  try {
    answer = await thresholdTries(body, (key) => json("/api/credit/alerts", { method: "PUT", body, headers: { "Idempotency-Key": key } }));
    check();
  } catch (error) {
    if (!error.signedOut && !check.ended()) said(outcome, `The thresholds were not saved: ${signalRefusal(error, $("#alerts-form"))}`, true);
    return;
  }
  draft = answer.thresholds.map((each) => ({ amount: each.threshold, armed: each.armed }));
  showThresholds();
  const amounts = draft.map((each) => credits(each.amount));
  said(
    outcome,
    amounts.length
      ? `Saved: an alert fires when available credits fall below ${amounts.join(", ")}.`
      : "Saved: no thresholds, so no low-balance alerts.",
  );
}

// Webhook endpoints.

// An endpoint's status in words.
function endpointStatus(endpoint) {
  if (endpoint.enabled) return "Enabled";
  if (endpoint.disabled_reason === "gone") return "Disabled: it answered 410 Gone";
  if (endpoint.disabled_reason === "creator_left") {
    return "Disabled: the admin who made it left the team or no longer manages it";
  }
  return "Disabled";
}

const endpointsPath = () => `/api/webhook-endpoints${teamQuery() ? `?${teamQuery()}` : ""}`;
const endpointPath = (endpoint) => `/api/webhook-endpoints/${encodeURIComponent(endpoint.id)}`;

// A request of an endpoint's row, its buttons disabled meanwhile: what it answers (parsed
// JSON, or null for a 204), or null when refused (said in the list's alert) or signed out.
async function rowRequest(row, path, options, failed) {
  const alert = $("#endpoints [role=alert]");
  alert.textContent = "";
  said($("#endpoints-said"), "");
  const check = sessionCheck();
  const buttons = [...row.querySelectorAll("button")];
  for (const each of buttons) each.disabled = true;
  try {
    const response = await api(path, { ...options, headers: { "Idempotency-Key": crypto.randomUUID() } });
    if (!response.ok) throw await refusal(response);
    const answer = response.status === 204 ? {} : await response.json();
    check();
    return answer;
  } catch (error) {
    if (!error.signedOut && !check.ended()) alert.textContent = `${failed}: ${signalRefusal(error)}`;
    return null;
  } finally {
    for (const each of buttons) each.disabled = false;
  }
}

function fillEndpoint(row, endpoint) {
  row.replaceChildren();
  cell(row, endpoint.url).className = "url";
  cell(row, endpoint.events.join(", ")).className = "events";
  const status = endpointStatus(endpoint);
  cell(row, status).className = `status ${endpoint.enabled ? "active" : "disabled"}`;
  cell(row, when(endpoint.created_at));
  const actions = cell(row, "");
  actions.className = "actions";
  const url = endpoint.url;
  // (Not "Send…": the chat's Send button is named so.)
  if (endpoint.enabled) actions.append(button("Post a test event", () => sendTest(row, endpoint), `Post a test event to ${url}`));
  actions.append(button("Deliveries", () => showDeliveries(endpoint), `Deliveries to ${url}`));
  actions.append(button("Edit", () => editEndpoint(endpoint), `Edit ${url}`));
  const toggle = endpoint.enabled ? "Disable" : "Enable";
  actions.append(button(toggle, () => setEnabled(row, endpoint, !endpoint.enabled), `${toggle} ${url}`));
  actions.append(button("Delete", () => deleteEndpoint(row, endpoint), `Delete ${url}`));
}

function loadEndpoints() {
  const mine = viewing;
  return pagedList(endpointsPath(), $("#endpoints"), "webhook endpoints", (items, again) => {
    if (mine !== viewing) return;
    const body = $("#endpoints tbody");
    if (!again) body.replaceChildren();
    if (!again && !items.length) cell(body.insertRow(), "No endpoints yet.").colSpan = 5;
    for (const endpoint of items) fillEndpoint(body.insertRow(), endpoint);
  });
}

let endpointPages = loadEndpoints();

async function sendTest(row, endpoint) {
  const sent = await rowRequest(row, `${endpointPath(endpoint)}/test`, { method: "POST" }, "The test event was not sent");
  if (!sent) return;
  await showDeliveries(endpoint);
  said($("#endpoints-said"), `A test event (${sent.event_id}) is on its way to ${endpoint.url}: see its delivery below.`);
}

async function setEnabled(row, endpoint, enabled) {
  const what = enabled ? "enabled" : "disabled";
  const changed = await rowRequest(row, endpointPath(endpoint), { method: "PATCH", body: { enabled } }, `${endpoint.url} was not ${what}`);
  if (!changed) return;
  fillEndpoint(row, changed);
  // Its log first, as it now is (disabling failed its waiting deliveries), then what was done.
  if (logOf?.id === changed.id) await showDeliveries(changed);
  said($("#endpoints-said"), enabled ? `${changed.url} is enabled: events are posted to it again.` : `${changed.url} is disabled: nothing is posted to it, and its pending deliveries failed.`);
}

async function deleteEndpoint(row, endpoint) {
  if (!window.confirm(`Delete the endpoint ${endpoint.url}? Nothing more is posted to it, and its pending deliveries fail.`)) return;
  const gone = await rowRequest(row, endpointPath(endpoint), { method: "DELETE" }, `${endpoint.url} was not deleted`);
  if (!gone) return;
  if (logOf?.id === endpoint.id) closeDeliveries();
  if (editing?.id === endpoint.id) stopEditing();
  await endpointPages();
  said($("#endpoints-said"), `${endpoint.url} is deleted.`);
}

// The signing secret of the endpoint just added is on the page only while its box shows: never
// kept elsewhere, gone with a reload, another endpoint, the box's Hide button or the sign-out.
function showSecret(made) {
  $("#new-secret-for").textContent = `For ${made.url}.`;
  $("#new-secret-text").textContent = made.secret;
  $("#copy-secret-outcome").textContent = "";
  $("#new-secret").hidden = false;
  $("#new-secret").focus();
}

function hideSecret() {
  $("#new-secret").hidden = true;
  $("#new-secret-text").textContent = "";
  $("#new-secret-for").textContent = "";
  $("#copy-secret-outcome").textContent = "";
}

// The secret into the clipboard; where the page may not write it, selected for the person to copy.
async function copySecret() {
  const text = $("#new-secret-text");
  const outcome = $("#copy-secret-outcome");
  try {
    await navigator.clipboard.writeText(text.textContent);
    outcome.textContent = "Copied to the clipboard.";
  } catch {
    const range = document.createRange();
    range.selectNodeContents(text);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    outcome.textContent = "The secret is selected: press Ctrl+C (⌘C on a Mac) to copy it.";
  }
}

// A double click or a retry after a lost answer adds one endpoint (one Idempotency-Key while the
// same request is tried); a replay answers the endpoint without its secret, which is then lost.
// A change is tried with keys of its own: trying one keeps the key of an add left unanswered.
const endpointTries = keyedTries($("#endpoint-form"));
const endpointChangeTries = keyedTries($("#endpoint-form"));

// The form adds an endpoint, or changes the one being edited.
async function saveEndpoint(event) {
  event.preventDefault();
  const form = $("#endpoint-form");
  const outcome = form.querySelector(".outcome");
  said(outcome, "");
  clearFieldProblems(form);
  const data = new FormData(form);
  const events = data.getAll("events");
  if (!events.length) {
    said(outcome, "Choose at least one event to post.", true);
    form.querySelector("input[name=events]").focus();
    return;
  }
  const url = data.get("url").trim();
  if (editing) await changeEndpoint(form, editing, { url, events });
  else await addEndpoint(form, withTeam({ url, events }));
}

async function addEndpoint(form, body) {
  const outcome = form.querySelector(".outcome");
  hideSecret();
  const check = sessionCheck();
  let made;
  try {
    made = await endpointTries(body, (key) => json("/api/webhook-endpoints", { method: "POST", body, headers: { "Idempotency-Key": key } }));
    check();
  } catch (error) {
    if (!error.signedOut && !check.ended()) said(outcome, `The endpoint was not added: ${signalRefusal(error, form)}`, true);
    return;
  }
  // (An endpoint opened for a change meanwhile keeps the form.)
  if (!editing) form.reset();
  if (made.secret) {
    said(outcome, `Added ${made.url}: copy its signing secret now.`);
    showSecret(made);
  } else {
    said(outcome, `Added ${made.url}, but the answer carrying its secret was lost: it cannot be shown again. Delete it and add it again.`, true);
  }
  await endpointPages();
}

// The endpoint form, filled with `endpoint`'s URL and events, changes it. (A secret shown
// stays: it is shown once.)
function editEndpoint(endpoint) {
  const form = $("#endpoint-form");
  stopEditing();
  said(form.querySelector(".outcome"), "");
  editing = endpoint;
  form.elements.namedItem("url").value = endpoint.url;
  for (const box of form.querySelectorAll("input[name=events]")) box.checked = endpoint.events.includes(box.value);
  $("#endpoint-form-title").textContent = `Change the endpoint ${endpoint.url}`;
  $("#endpoint-submit").textContent = "Save changes";
  $("#endpoint-cancel").hidden = false;
  form.elements.namedItem("url").focus();
}

// The endpoint form back to adding one, as it first was.
function stopEditing() {
  const form = $("#endpoint-form");
  editing = null;
  form.reset();
  clearFieldProblems(form);
  $("#endpoint-form-title").textContent = "Add an endpoint";
  $("#endpoint-submit").textContent = "Add endpoint";
  $("#endpoint-cancel").hidden = true;
}

// What the form says of the change of `endpoint` it sent is said only while the form still
// changes it (not after Cancel, another endpoint's Edit, or another account chosen).
async function changeEndpoint(form, endpoint, body) {
  const outcome = form.querySelector(".outcome");
  const path = endpointPath(endpoint);
  const mine = viewing;
  const check = sessionCheck();
  let changed;
  try {
    changed = await endpointChangeTries({ path, body }, (key) => json(path, { method: "PATCH", body, headers: { "Idempotency-Key": key } }));
    check();
  } catch (error) {
    if (!error.signedOut && !check.ended() && editing === endpoint) said(outcome, `The endpoint was not changed: ${signalRefusal(error, form)}`, true);
    return;
  }
  if (mine !== viewing) return;
  const still = editing === endpoint;
  if (still) stopEditing();
  // The list read again, after the change (a reading asked before it may answer the old URL).
  await endpointPages();
  if (logOf?.id === changed.id) await showDeliveries(changed);
  if (still) said(outcome, `Saved: ${changed.events.join(", ")} are posted to ${changed.url}.`);
}

// Deliveries.

// A delivery's status in words.
function deliveryStatus(delivery) {
  if (delivery.status === "delivered") return `Delivered ${when(delivery.delivered_at)}`;
  if (delivery.status === "failed") return "Failed: it will not be tried again unless you retry it";
  if (!delivery.attempts) return `Waiting: to be sent ${delivery.next_attempt_at ? when(delivery.next_attempt_at) : "soon"}`;
  return `Waiting: tried ${delivery.attempts} time${delivery.attempts === 1 ? "" : "s"}, next at ${when(delivery.next_attempt_at)}`;
}

// What the receiver last answered, or why no answer came (the service says it in words).
function lastAnswer(delivery) {
  if (delivery.last_error) return delivery.last_error;
  return delivery.last_status === null ? null : `HTTP ${delivery.last_status}`;
}

function fillDelivery(row, delivery, endpoint) {
  row.replaceChildren();
  row.dataset.status = delivery.status;
  cell(row, when(delivery.created_at));
  const event = cell(row, "");
  const type = document.createElement("code");
  type.textContent = delivery.type;
  const id = document.createElement("span");
  id.className = "muted";
  id.textContent = ` ${delivery.event_id}`;
  event.append(type, id);
  cell(row, deliveryStatus(delivery)).className = `status ${delivery.status}`;
  cell(row, String(delivery.attempts)).className = "amount";
  cell(row, lastAnswer(delivery) ?? "–");
  const actions = cell(row, "");
  actions.className = "actions";
  if (delivery.status === "failed") {
    actions.append(button("Retry", () => retry(row, delivery, endpoint), `Retry the delivery of ${delivery.event_id}`));
  }
}

async function retry(row, delivery, endpoint) {
  const alert = $("#deliveries [role=alert]");
  alert.textContent = "";
  const check = sessionCheck();
  for (const each of row.querySelectorAll("button")) each.disabled = true;
  let again;
  try {
    const path = `${endpointPath(endpoint)}/deliveries/${encodeURIComponent(delivery.id)}/retry`;
    again = await json(path, { method: "POST", headers: { "Idempotency-Key": crypto.randomUUID() } });
    check();
  } catch (error) {
    if (error.signedOut || check.ended()) return;
    for (const each of row.querySelectorAll("button")) each.disabled = false;
    alert.textContent = `The delivery of ${delivery.event_id} was not retried: ${signalRefusal(error)}`;
    return;
  }
  fillDelivery(row, again, endpoint);
}

let deliveryPages = null;

async function showDeliveries(endpoint) {
  logOf = endpoint;
  $("#deliveries-title").textContent = `Deliveries to ${endpoint.url}`;
  const place = $("#deliveries-section");
  place.hidden = false;
  deliveryPages = pagedList(`${endpointPath(endpoint)}/deliveries`, $("#deliveries"), "deliveries", (items, again) => {
    if (logOf !== endpoint) return;
    const body = $("#deliveries tbody");
    if (!again) body.replaceChildren();
    if (!again && !items.length) cell(body.insertRow(), "No deliveries yet: post a test event.").colSpan = 6;
    for (const delivery of items) fillDelivery(body.insertRow(), delivery, endpoint);
  });
  await deliveryPages();
  place.focus();
}

function closeDeliveries() {
  logOf = null;
  deliveryPages = null;
  $("#deliveries-section").hidden = true;
  $("#deliveries tbody").replaceChildren();
}

// The account in view, said above the alerts.
function showView() {
  let words = "For your own credits.";
  if (view.teamId !== null) {
    words = view.manages
      ? `For the team ${view.name}: you manage its alerts and webhooks.`
      : `For the team ${view.name}: you see its thresholds; only its owner and its admins change them and manage its webhooks.`;
  }
  $("#signals-for").textContent = words;
  $("#thresholds-manage").hidden = !view.manages;
  $("#endpoints-manage").hidden = !view.manages;
  $("#endpoints-closed").hidden = view.manages;
}

// The section for the account now in view ({ teamId, name, role }; teamId null: your own),
// unless it shows that account already: its thresholds and, for whoever manages it, its
// endpoints. Never throws: what cannot be read is said in its place.
export async function showSignals(viewed) {
  if (viewed.teamId === shownFor) return;
  shownFor = viewed.teamId;
  viewing += 1;
  view = { teamId: viewed.teamId, name: viewed.name ?? "", manages: viewed.teamId === null || ["owner", "admin"].includes(viewed.role) };
  draft = null;
  reading = true;
  hideSecret();
  closeDeliveries();
  for (const form of ["#threshold-add", "#alerts-form"]) {
    $(form).reset();
    clearFieldProblems($(form));
  }
  stopEditing();
  said($("#alerts-said"), "");
  said($("#endpoints-said"), "");
  $("#endpoints [role=alert]").textContent = "";
  $("#endpoints tbody").replaceChildren();
  showView();
  showThresholds();
  endpointPages = loadEndpoints();
  const check = sessionCheck();
  await Promise.all([loadThresholds(check), view.manages ? endpointPages() : null]);
}

// What the section keeps of a session (see signInPage's forget).
export function forgetSignals() {
  shownFor = undefined;
  viewing += 1;
  view = { teamId: null, name: "", manages: true };
  draft = null;
  reading = false;
  hideSecret();
  closeDeliveries();
  stopEditing();
  showView();
  $("#signals-for").textContent = "";
}

export function wireSignals() {
  $("#threshold-add").addEventListener("submit", addThreshold);
  $("#alerts-form").addEventListener("submit", saveThresholds);
  $("#endpoint-form").addEventListener("submit", saveEndpoint);
  $("#endpoint-cancel").addEventListener("click", () => {
    stopEditing();
    said($("#endpoint-form .outcome"), "");
  });
  $("#copy-secret").addEventListener("click", copySecret);
  $("#hide-secret").addEventListener("click", hideSecret);
  $("#deliveries-refresh").addEventListener("click", () => deliveryPages?.());
  $("#deliveries-close").addEventListener("click", closeDeliveries);
}
