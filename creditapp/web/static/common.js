// What every page shares: the JSON API with the session's tokens, table cells and times,
// signing in and out, and the Idempotency-Key of a request tried again.

export const $ = (selector) => document.querySelector(selector);
// The session's pair of tokens, in sessionStorage only (per tab, gone with it; never a cookie).
// The access token lives JWT_ACCESS_MINUTES; the refresh token renews the pair until the session
// ends.
const ACCESS = "creditapp.access_token";
const REFRESH = "creditapp.refresh_token";

function keepTokens(tokens) {
  sessionStorage.setItem(ACCESS, tokens.access_token);
  sessionStorage.setItem(REFRESH, tokens.refresh_token);
}

function forgetTokens() {
  sessionStorage.removeItem(ACCESS);
  sessionStorage.removeItem(REFRESH);
}

// The Error of work whose session ended meanwhile: `signedOut` (the page has nothing more to
// show of it) and `stale` (it is not the session on the page).
const signedOutMeanwhile = () => Object.assign(new Error("Signed out meanwhile."), { signedOut: true, stale: true });

// The requests of the session on the page, stopped together as it ends: what would answer them
// then (a session just revoked refuses them all) is nobody's to read.
let inFlight = new AbortController();

function stopRequests() {
  inFlight.abort();
  inFlight = new AbortController();
}

// A request, or a body read from one, stopped by its session's end throws as work of an ended
// session does.
export async function unlessStopped(pending) {
  try {
    return await pending;
  } catch (error) {
    throw error.name === "AbortError" ? signedOutMeanwhile() : error;
  }
}

function request(path, options, token) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (token) headers.Authorization = `Bearer ${token}`;
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  return unlessStopped(
    fetch(path, {
      method: options.method || "GET",
      headers,
      body: options.body === undefined ? undefined : JSON.stringify(options.body),
      signal: inFlight.signal,
    }),
  );
}

// The longest wait a Retry-After is believed for, in seconds: the service's limits ask for
// minutes; a longer one is taken for a fault (and days overflow a timer: the buttons would come
// back at once).
const LONGEST_WAIT = 3600;

// The seconds a Retry-After asks to wait: a whole number from 1 to LONGEST_WAIT, or null (none,
// a date, a negative, fractional or huge number), for which the page says to wait a few minutes.
function retryAfterSeconds(value) {
  if (!/^\d+$/.test(value?.trim() ?? "")) return null;
  const seconds = Number(value);
  return seconds > 0 && seconds <= LONGEST_WAIT ? seconds : null;
}

// A refused request as an Error: the API's message, with its body, status and (for a 429) the
// seconds its Retry-After asks to wait.
export async function refusal(response) {
  const body = await response.json();
  const retryAfter = retryAfterSeconds(response.headers.get("Retry-After"));
  return Object.assign(new Error(body.error.message), { body, status: response.status, retryAfter });
}

// Why the page shows the sign-in again, by the code of the refusal that ended the session: a
// person sent back to it without a word takes it for a fault of the page.
function sessionEnded(code) {
  return code === "token_revoked"
    ? "You were signed out: this session was revoked (signed out elsewhere, or by an admin). Please sign in again."
    : "Your session has ended: please sign in again.";
}

// The refresh in flight, shared by every request refused meanwhile: a refresh token is spent by
// its use (a refreshed pair replaces it), so the page renews the pair once, not once per request.
// True once the new pair is kept; when the session is over (the refresh token refused), the
// refusal's code.
let refreshing = null;

function refreshTokens() {
  refreshing ||= (async () => {
    try {
      const response = await request("/api/auth/refresh", { method: "POST" }, sessionStorage.getItem(REFRESH));
      if (response.status === 401) return (await response.json()).error.code;
      if (!response.ok) throw await refusal(response);
      keepTokens(await response.json());
      return true;
    } finally {
      refreshing = null;
    }
  })();
  return refreshing;
}

// The session the page shows, counted: each end of one (signedOut) starts the next. Work begun
// for a session (a request, a stream) checks it is still the page's after each wait, so that
// nothing of the previous person's is written into the next one's page.
let generation = 0;

// A check for the work begun now: it throws once the session it was begun for has ended (the
// Error of signedOutMeanwhile). Its `ended()` says so without throwing.
export function sessionCheck() {
  const begun = generation;
  const ended = () => generation !== begun;
  return Object.assign(
    () => {
      if (ended()) throw signedOutMeanwhile();
    },
    { ended },
  );
}

// A request refused for its access token (expired, most often) is tried once more with the
// renewed one, the same headers (its Idempotency-Key among them); a second refusal, a refresh
// refused, or a revoked session ends the session on the page, saying why. The Error thrown then
// has `signedOut` set: the page has nothing more to show of it.
export async function api(path, options = {}) {
  const check = sessionCheck();
  const token = sessionStorage.getItem(ACCESS);
  let response = await request(path, options, token);
  check();
  if (response.status === 401 && token) {
    let { code } = (await response.json()).error;
    check();
    const current = sessionStorage.getItem(ACCESS);
    let renewed = false;
    if (code === "unauthorized" && current !== null) {
      // Renewed meanwhile by another request's refresh, or renewed now: never a second refresh.
      const refreshed = current !== token || (await refreshTokens());
      check();
      renewed = refreshed === true;
      if (!renewed) code = refreshed;
    }
    if (renewed) response = await request(path, options, sessionStorage.getItem(ACCESS));
    check();
    if (!renewed || response.status === 401) {
      if (renewed) code = (await response.json()).error.code;
      check();
      const reason = sessionEnded(code);
      // Only the first request refused says so: the others refused with it find it done.
      if (sessionStorage.getItem(ACCESS) !== null) signedOut(reason);
      throw Object.assign(new Error(reason), { signedOut: true });
    }
  }
  return response;
}

export async function json(path, options) {
  const check = sessionCheck();
  const response = await api(path, options);
  if (!response.ok) {
    const refused = await refusal(response);
    check();
    throw refused;
  }
  const answer = await response.json();
  check();
  return answer;
}

// The tries of one request from `form`: each is handed the same Idempotency-Key for as long as
// the same request (`sent`: what it sends, and where) is being tried, so that a double click or
// a retry after a lost answer never does it twice. The key is new once the request was answered
// for good (a success or a refusal), or for a request that sends something else; after no
// answer, a 5xx (it may have been done) or "still in progress", the next try of the same request
// sends the same key and gets the first one's answer. The form's button is disabled while a try
// runs.
export function keyedTries(form) {
  const submit = form.querySelector("button[type=submit]");
  let kept = null; // { key, request }
  return async (sent, attempt) => {
    const request = JSON.stringify(sent);
    if (kept?.request !== request) kept = { key: crypto.randomUUID(), request };
    submit.disabled = true;
    try {
      const answer = await attempt(kept.key);
      kept = null;
      return answer;
    } catch (error) {
      const pending = !error.status || error.status >= 500 || error.body?.error.code === "request_in_progress";
      if (!pending) kept = null;
      throw error;
    } finally {
      submit.disabled = false;
    }
  };
}

export function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
  return td;
}

// The rows of `items` into the table `selector` (after those shown, with `again`): a cell for
// each value `columns(item, row)` gives (a Node is put in it, null shows as "–"). The cells under
// a heading of class "amount" are amounts: grouped by thousands and right-aligned (see
// amountCell). `none`: what a table with no rows says, in a row of its own (nothing if empty).
export function fillTable(selector, items, columns, { again = false, none = "" } = {}) {
  const table = $(selector);
  const body = table.tBodies[0];
  const amounts = [...table.tHead.rows[0].cells].map((heading) => heading.classList.contains("amount"));
  if (!again) body.replaceChildren();
  if (!again && !items.length && none) cell(body.insertRow(), none).colSpan = amounts.length;
  for (const item of items) {
    const row = body.insertRow();
    columns(item, row).forEach((value, index) => {
      if (value instanceof Node) cell(row, "").append(value);
      else if (value === null) cell(row, "–");
      else if (amounts[index]) amountCell(row, String(value));
      else cell(row, String(value));
      if (amounts[index]) row.lastElementChild.className = "amount";
    });
  }
}

// The problems of a refused request that was not valid (a validation_error's `details`, keyed by
// field as the API sends them): each field of `form` they name is marked invalid (aria-invalid).
// With `beside`, each problem is shown beside its field, an alert that describes it, and the
// first such field takes the focus. Returns what to say of the refusal: the API's message, then
// each problem not shown beside its field, named by the field's label (by the API's name when
// `form` has no such field).
export function fieldProblems(form, error, { beside = true } = {}) {
  const details = error.body?.error.code === "validation_error" ? error.body.error.details : {};
  const said = [error.message];
  let first = null;
  for (const [name, problems] of Object.entries(details || {})) {
    const text = (Array.isArray(problems) ? problems : Object.values(problems || {})).flat(Infinity).join(" ");
    const named = form.elements.namedItem(name);
    const field = named instanceof HTMLInputElement || named instanceof HTMLSelectElement ? named : null;
    if (field) field.setAttribute("aria-invalid", "true");
    if (!field || !beside) {
      if (text) said.push(`${field?.labels[0]?.textContent ?? name}: ${text}`);
      continue;
    }
    const note = document.createElement("p");
    note.className = "field-error";
    note.id = `${field.id}-error`;
    note.setAttribute("role", "alert");
    note.textContent = text;
    // The problem first, then what described the field before (its hint), kept to restore.
    field.dataset.describedBy = field.getAttribute("aria-describedby") ?? "";
    field.setAttribute("aria-describedby", `${note.id} ${field.dataset.describedBy}`.trim());
    field.after(note);
    first ||= field;
  }
  first?.focus();
  return said.join(" ");
}

// The fields of `form` as they were before fieldProblems marked them.
export function clearFieldProblems(form) {
  for (const note of form.querySelectorAll(".field-error")) note.remove();
  for (const field of form.querySelectorAll("[aria-invalid]")) {
    field.removeAttribute("aria-invalid");
    if (field.dataset.describedBy) field.setAttribute("aria-describedby", field.dataset.describedBy);
    else field.removeAttribute("aria-describedby");
    delete field.dataset.describedBy;
  }
}

// A cell of credits or counts: grouped by thousands, right-aligned so that digits line up.
export function amountCell(row, amount) {
  const td = cell(row, credits(amount));
  td.className = "amount";
  return td;
}

// Credits as people read them: "1234567.5" as "1,234,567.5". The API's decimal string is
// grouped as text, never through a float, so every digit it sent is shown.
export function credits(amount) {
  const [, sign, whole, fraction] = /^(-?)(\d+)(\.\d+)?$/.exec(amount) || [];
  if (whole === undefined) return amount;
  return `${sign}${whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",")}${fraction || ""}`;
}

// What credits are worth in US dollars (1 credit = $0.001), to the cent: "$1,234.57", or
// "< $0.01" for a few credits. Exact arithmetic on micro-credits (BigInt), as the ledger's.
export function usd(amount) {
  const [, sign, whole, fraction = ""] = /^(-?)(\d+)(?:\.(\d+))?$/.exec(amount) || [];
  if (whole === undefined) return "";
  const micro = BigInt(whole) * 1_000_000n + BigInt(fraction.padEnd(6, "0").slice(0, 6) || "0");
  if (micro === 0n) return "$0.00";
  const cents = (micro + 5_000_000n) / 10_000_000n; // 1 cent = 10,000,000 micro-credits
  if (cents === 0n) return "< $0.01";
  const dollars = credits(String(cents / 100n));
  return `${sign}$${dollars}.${String(cents % 100n).padStart(2, "0")}`;
}

export function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "never";
}

// A datetime-local value (the person's local time) as an ISO 8601 instant, or null.
export function instant(value) {
  return value ? new Date(value).toISOString() : null;
}

export function button(text, onClick, label) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  if (label) element.setAttribute("aria-label", label);
  element.addEventListener("click", onClick);
  return element;
}

// A <dl> of figures: [label, value, field name] each.
export function figures(list, items) {
  list.replaceChildren();
  for (const [label, value, field] of items) {
    const group = document.createElement("div");
    const term = document.createElement("dt");
    const description = document.createElement("dd");
    term.textContent = label;
    description.textContent = value;
    if (field) description.dataset.field = field;
    group.append(term, description);
    list.append(group);
  }
}

export async function download(path, filename) {
  const check = sessionCheck();
  const response = await api(path, { headers: { Accept: "text/csv" } });
  const blob = await response.blob();
  check();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  link.click();
  URL.revokeObjectURL(url);
}

const BUCKETS = { input: "Input (not cached)", cached_input: "Cached input", cache_write: "Cache writes", output: "Output" };

function showReceipt(place, { entry, receipt }) {
  place.querySelector(".summary").textContent =
    `${receipt.provider}:${receipt.model}, price #${receipt.price.id} in force since ` +
    `${when(receipt.price.effective_from)}${receipt.usage.estimated ? ", usage estimated" : ""}` +
    `${receipt.partial ? ", reply cut short (partial)" : ""}; entry ${entry.amount} credits.`;
  const body = place.querySelector(".lines tbody");
  body.replaceChildren();
  for (const line of receipt.lines) {
    const row = body.insertRow();
    cell(row, BUCKETS[line.bucket]);
    for (const value of [String(line.tokens), line.usd_per_million, line.credits]) amountCell(row, value);
  }
  figures(place.querySelector(".totals"), [
    ["Exact cost", receipt.exact, "exact-cost"],
    ["Rounded up", receipt.rounded_up, "rounded-up"],
    ["Charged", receipt.charged, "charged"],
    ["Held", receipt.held, "held"],
    ["Released", receipt.released, "released"],
  ]);
  place.hidden = false;
  place.focus();
}

// The ledger entries under `path`, newest first, into `area` (its table, and its "Load more"
// button following the cursor); each charge's button opens its receipt in `receiptPlace` (none
// without one: its table has no Receipt column). An area marked data-described shows what each
// entry was for (asked with describe=true); with `member`, who caused each entry (a team's
// entries name their member: its table has a Member column after For).
// Returns the loader: load() starts again, load(true) adds the next page.
export function transactionList(path, area, receiptPlace, { member = null } = {}) {
  let next = null;
  const more = area.querySelector(".more");
  const described = "described" in area.dataset;
  async function load(again = false) {
    const cursor = again && next ? `&cursor=${encodeURIComponent(next)}` : "";
    const page = await json(`${path}?limit=20${described ? "&describe=true" : ""}${cursor}`);
    const body = area.querySelector("tbody");
    if (!again) body.replaceChildren();
    for (const entry of page.items) {
      const row = body.insertRow();
      cell(row, when(entry.created_at));
      cell(row, entry.type);
      if (described) cell(row, entry.description || "");
      if (member) cell(row, "").append(wrappableEmail(member(entry)));
      amountCell(row, entry.amount);
      amountCell(row, entry.balance_after);
      if (!receiptPlace) continue;
      const action = cell(row, "");
      if (entry.type === "charge") {
        const open = async () => showReceipt(receiptPlace, await json(`${path}/${encodeURIComponent(entry.id)}`));
        action.append(button("Receipt", open, `Receipt of the charge of ${credits(entry.amount)} credits`));
      }
    }
    next = page.next_cursor;
    more.hidden = !next;
  }
  more.onclick = () => load(true);
  return load;
}

// An API key's standing: revoked, expired (its expiry has passed) or active.
export function keyStatus(key, now = new Date()) {
  if (key.revoked_at) return "revoked";
  if (key.expires_at && new Date(key.expires_at) <= now) return "expired";
  return "active";
}

const LIMIT_PERIODS = { day: "a day", week: "a week", month: "a month", total: "in total" };

// A spending limit in words, "10 a day" (an API key's limit, a team member's cap); `none` when
// there is none.
export function spendLimit(amount, period, none) {
  return amount === null ? none : `${credits(amount)} ${LIMIT_PERIODS[period]}`;
}

function keyLimit(key) {
  return spendLimit(key.limit, key.limit_period, "none");
}

// The API keys under `path`, newest first, into `area` (its table, its "Load more" button
// following the cursor, and its alert saying what could not be done). Each active key has a
// Revoke button: after a confirm, DELETE at `revokePath(id)`, and the row then says revoked;
// with `use`, a Use button too, that hands the key to it. A list that cannot be read says so
// in the alert (the rest of the page goes on). Returns the loader: load() starts again,
// load(true) adds the next page.
export function keyList(path, area, { revokePath, use = null }) {
  const said = area.querySelector("[role=alert]");
  const body = area.querySelector("tbody");

  function fillRow(row, key) {
    row.replaceChildren();
    cell(row, key.name);
    cell(row, `${key.prefix}…`).className = "prefix";
    cell(row, keyLimit(key));
    amountCell(row, key.spent);
    cell(row, key.allowed_models ? key.allowed_models.join(", ") : "all the tier allows");
    cell(row, when(key.last_used_at));
    cell(row, key.expires_at ? when(key.expires_at) : "never");
    const status = keyStatus(key);
    cell(row, status).className = `status ${status}`;
    const actions = cell(row, "");
    actions.className = "actions";
    if (status !== "active") return;
    if (use) actions.append(button("Use", () => use(key), `Use the key ${key.name} in the example`));
    actions.append(button("Revoke", () => revoke(row, key), `Revoke the key ${key.name}`));
  }

  async function revoke(row, key) {
    const question = `Revoke the key "${key.name}" (${key.prefix}…)? Every call with it is refused from now on; this cannot be undone.`;
    if (!window.confirm(question)) return;
    said.textContent = "";
    const check = sessionCheck();
    for (const each of row.querySelectorAll("button")) each.disabled = true;
    try {
      const response = await api(revokePath(key.id), { method: "DELETE", headers: { "Idempotency-Key": crypto.randomUUID() } });
      if (!response.ok) throw await refusal(response);
      check();
      fillRow(row, { ...key, revoked_at: new Date().toISOString() });
      area.querySelector(".table-scroll").focus();
    } catch (error) {
      if (error.signedOut || check.ended()) return;
      for (const each of row.querySelectorAll("button")) each.disabled = false;
      said.textContent = `The key ${key.name} was not revoked: ${error.message}`;
    }
  }

  return pagedList(path, area, "keys", (items, again) => {
    if (!again) body.replaceChildren();
    if (!again && !items.length) cell(body.insertRow(), "No keys yet.").colSpan = body.closest("table").tHead.rows[0].cells.length;
    for (const key of items) fillRow(body.insertRow(), key);
  });
}

// Marks a load as the last one asked of `list` (its element): the function returned says whether
// it still is when its answer comes. An answer overtaken by a later load of the same list (the
// page's first listing, answered after a search sent while it was on its way) is not shown.
const lastLoads = new WeakMap();
export function lastAsked(list) {
  const load = {};
  lastLoads.set(list, load);
  return () => lastLoads.get(list) === load;
}

// A list under `path` (which may carry a query of its own) read a page at a time into `area`:
// `show(items, again)` puts a page on the table (again: after the earlier ones), "Load more"
// follows the cursor, and a page that cannot be read says so in the area's alert (naming
// `what`). Returns the loader: load() starts again, load(true) adds the next page.
export function pagedList(path, area, what, show) {
  let next = null;
  const more = area.querySelector(".more");
  const said = area.querySelector("[role=alert]");
  const joined = path.includes("?") ? "&" : "?";
  async function load(again = false) {
    const cursor = again && next ? `&cursor=${encodeURIComponent(next)}` : "";
    const check = sessionCheck();
    const last = lastAsked(area);
    said.textContent = "";
    let page;
    try {
      page = await json(`${path}${joined}limit=20${cursor}`);
    } catch (error) {
      if (!error.signedOut && !check.ended() && last()) said.textContent = `The ${what} could not be read: ${error.message}`;
      return;
    }
    if (!last()) return;
    show(page.items, again);
    next = page.next_cursor;
    more.hidden = !next;
  }
  more.onclick = () => load(true);
  return load;
}

// A team's members into the table `selector` (the markup of teams.html): email, role, cap,
// spent this period and reserved by calls in flight, since when; with `actions(member)`, the
// buttons of each row (the last column, shown only then).
export function memberTable(selector, members, actions = null) {
  const table = $(selector);
  table.tHead.rows[0].lastElementChild.hidden = !actions;
  fillTable(selector, members, (member) => [
    member.email,
    member.role,
    spendLimit(member.cap, member.cap_period, "no cap"),
    member.spent_this_period,
    member.reserved,
    when(member.created_at),
    ...(actions ? [actions(member)] : []),
  ]);
}

// An email address that may wrap after its "@" (a narrow table's column then takes the width of
// its longer half, not of the whole address), as a node to put in a cell.
function wrappableEmail(email) {
  const at = email.lastIndexOf("@");
  const text = document.createDocumentFragment();
  if (at < 0) {
    text.append(email);
    return text;
  }
  text.append(email.slice(0, at + 1), document.createElement("wbr"), email.slice(at + 1));
  return text;
}

// Who caused a team's entry, by the members known (`members`): their email, or the user's id
// for someone no longer listed; "–" for an entry of no one (an admin's grant).
export function memberOfEntry(members) {
  const emails = new Map(members.map((member) => [member.user_id, member.email]));
  return (entry) => (entry.user_id === null || entry.user_id === undefined ? "–" : (emails.get(entry.user_id) ?? `user ${entry.user_id}`));
}

// An account's figures in credits, grouped as people read them.
export function accountFigures(list, amounts) {
  figures(list, [
    ["Balance", credits(amounts.balance), "balance"],
    ["Reserved", credits(amounts.reserved), "reserved"],
    ["Available", credits(amounts.available), "available"],
  ]);
}

// US cents as dollars: 500 as "$5.00" (integers only: an amount of money is never a float).
export function dollars(cents) {
  return `$${credits(String(Math.floor(cents / 100)))}.${String(cents % 100).padStart(2, "0")}`;
}

// A purchase's status as its buyer reads it; a payment of another amount than the purchase's is
// held back (not granted) whatever its status says.
export function purchaseStatus(purchase) {
  if (purchase.problem === "amount_mismatch") return "Paid another amount: held for review";
  if (purchase.problem === "session_unknown") return "Unknown to Stripe: held for review";
  return {
    pending: "Not paid yet",
    paid: "Paid",
    failed: "Not paid (cancelled or expired)",
    refunded: "Refunded",
    partially_refunded: "Partly refunded",
    disputed: "Disputed",
  }[purchase.status] ?? purchase.status;
}

// Credits shown only when some: "–" for none (a purchase nothing was taken back from).
const some = (amount) => (/^0(\.0*)?$/.test(amount) ? null : amount);

// The purchases under `path`, newest first, into `area` (its table, its "Load more" button
// following the cursor, and its alert saying what could not be read): when, credits, price,
// status in words, and what refunds and disputes took back, with the shortfall (credits spent
// before they were taken back) highlighted. Returns the loader: load() starts again, load(true)
// adds the next page.
export function purchaseList(path, area) {
  const rows = area.querySelector("tbody").rows;
  const columns = (purchase, row) => {
    row.dataset.status = purchase.status;
    return [when(purchase.created_at), purchase.credits, dollars(purchase.amount_cents), purchaseStatus(purchase), some(purchase.clawed_back), some(purchase.shortfall)];
  };
  return pagedList(path, area, "purchases", (items, again) => {
    fillTable(`#${area.id} table`, items, columns, { again, none: "No purchases yet." });
    for (const row of rows) if (row.cells.length > 1 && row.cells[5].textContent !== "–") row.cells[5].classList.add("shortfall");
  });
}

let onSignedIn = async () => {};
let forgetPage = () => {};

// Nothing of a session stays on the page once it ends, so that the next person to sign in on
// this tab sees none of it: every form back to its first values (a draft gone), every table
// emptied, every message and receipt cleared, and what the page itself keeps forgotten.
function clearPage() {
  const place = $("#signed-in");
  for (const form of place.querySelectorAll("form")) form.reset();
  for (const body of place.querySelectorAll("tbody")) body.replaceChildren();
  for (const note of place.querySelectorAll("[role=alert], [role=status], .summary")) note.textContent = "";
  for (const list of place.querySelectorAll(".totals")) list.replaceChildren();
  for (const more of place.querySelectorAll("button.more")) more.hidden = true;
  forgetPage();
}

function signedOut(reason = "") {
  generation += 1;
  stopRequests();
  forgetTokens();
  clearPage();
  $("#signed-in").hidden = true;
  $("#sign-out").hidden = true;
  $("#sign-in").hidden = false;
  $("#sign-in-error").textContent = reason;
}

async function show() {
  $("#sign-in").hidden = true;
  $("#signed-in").hidden = false;
  $("#sign-out").hidden = false;
  await onSignedIn();
}

// "4 minutes 30 seconds": a wait the service asked for, in words.
export function duration(seconds) {
  const minutes = Math.floor(seconds / 60);
  const parts = [];
  if (minutes) parts.push(`${minutes} minute${minutes === 1 ? "" : "s"}`);
  if (seconds % 60 || !minutes) parts.push(`${seconds % 60} second${seconds % 60 === 1 ? "" : "s"}`);
  return parts.join(" ");
}

// Sign-in is limited per address (Google's by RATELIMIT_SENSITIVE, the demo button's by
// DEMO_SIGN_IN_LIMIT): a refusal says how long to wait, and the buttons come back when the wait
// is over.
function tooManySignIns(error) {
  if (!error.retryAfter) return `${error.message} Please wait a few minutes before signing in again.`;
  const buttons = document.querySelectorAll("#sign-in button");
  for (const each of buttons) each.disabled = true;
  setTimeout(() => {
    for (const each of buttons) each.disabled = false;
  }, error.retryAfter * 1000);
  return `Too many sign-ins from this address for now: try again in ${duration(error.retryAfter)}.`;
}

async function signIn(path, body) {
  try {
    keepTokens(await json(path, { method: "POST", body }));
    $("#sign-in-error").textContent = "";
    await show();
  } catch (error) {
    forgetTokens();
    $("#sign-in-error").textContent = error.status === 429 ? tooManySignIns(error) : error.message;
  }
}

// Google Identity Services, when the page offers it (GOOGLE_CLIENT_ID is set): its button
// hands over an ID token, which the service verifies and exchanges for its own tokens.
function offerGoogle() {
  const place = $("#google-sign-in");
  if (!place) return;
  const start = () => {
    google.accounts.id.initialize({
      client_id: place.dataset.clientId,
      callback: (answer) => signIn("/api/auth/google", { id_token: answer.credential }),
    });
    google.accounts.id.renderButton(place, { theme: "outline", size: "large", text: "signin_with" });
  };
  if (window.google?.accounts?.id) start();
  else $("#google-script").addEventListener("load", start);
}

// Wires the sign-in page and the sign-out button; `whenSignedIn` fills the page (and throws
// to refuse the account, as the admin console does for a user); `forget` clears what the page
// keeps of a session beyond its forms, tables and messages (see clearPage).
export function signInPage(whenSignedIn, demoBody, forget = () => {}) {
  forgetPage = forget;
  onSignedIn = async () => {
    try {
      await whenSignedIn();
    } catch (error) {
      // A session ended meanwhile is not ended again: the page may be the next person's.
      if (!error.stale) signedOut(error.message);
    }
  };
  $("#demo-sign-in")?.addEventListener("click", () => signIn("/api/auth/demo", demoBody));
  $("#sign-out").addEventListener("click", async () => {
    // What the session has in flight stops first: revoked, the session would refuse it.
    stopRequests();
    try {
      await api("/api/auth/logout", { method: "POST" }); // revokes the session on the server
    } finally {
      if (sessionStorage.getItem(ACCESS) !== null) signedOut();
    }
  });
  offerGoogle();
  if (sessionStorage.getItem(ACCESS)) show();
}
