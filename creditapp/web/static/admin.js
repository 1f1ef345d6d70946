// The admin console, over the admin endpoints of the JSON API.
import { $, accountFigures, button, clearFieldProblems, credits, fieldProblems, figures, fillTable, instant, json, keyList, keyedTries, lastAsked, memberOfEntry, memberTable, pagedList, purchaseList, signInPage, transactionList, when } from "./common.js";

let nextUsers = null;
let nextAudit = null;
let auditQuery = "";
let userId = null;
let userEmail = null;
// The team open, by id.
let teamId = null;

// The rows of `items` into the table `selector` (after those shown, `again`); a table with none
// says so.
function rows(selector, items, columns, again = false) {
  fillTable(selector, items, columns, { again, none: "None." });
}

// What a refusal says under its form: the API's message, styled as an error; the problems of a
// request that was not valid go beside their fields (those naming no field, after the message).
function refused(form, outcome, error) {
  outcome.textContent = fieldProblems(form, error);
  outcome.classList.add("refused");
}

// An admin action: one form, its tries keyed (see keyedTries: a double click or a retry after a
// lost answer never does it twice). Each try clears what the previous one said; a refusal shows
// the API's message and its field errors. `request` may look things up first (it may be async).
function action(form, request, done) {
  const outcome = form.querySelector(".outcome");
  const tries = keyedTries(form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    outcome.textContent = "";
    outcome.classList.remove("refused");
    clearFieldProblems(form);
    // The button that sent it waits with the form's first (see keyedTries) while it is tried
    // (once read: a disabled button sends nothing).
    const submitter = event.submitter;
    const data = new FormData(form, submitter);
    if (submitter) submitter.disabled = true;
    try {
      const sent = await request(data);
      const { path, method, body } = sent;
      // The page is brought up to date within the try: the button stays disabled until it is.
      outcome.textContent = await tries(sent, async (key) => done(await json(path, { method, body, headers: { "Idempotency-Key": key } }), sent));
    } catch (error) {
      // Signed out meanwhile: the form is the next session's, and says nothing of this one.
      if (!error.signedOut) refused(form, outcome, error);
    } finally {
      if (submitter) submitter.disabled = false;
    }
  });
}

async function findUsers(event, again = false) {
  if (event) event.preventDefault();
  const query = $("#user-query").value.trim();
  const search = query ? `&q=${encodeURIComponent(query)}` : "";
  const cursor = again && nextUsers ? `&cursor=${encodeURIComponent(nextUsers)}` : "";
  const last = lastAsked($("#users"));
  const page = await json(`/api/admin/users?limit=20${search}${cursor}`);
  if (!last()) return;
  rows(
    "#users",
    page.items,
    (user) => [user.email, user.role, user.tier, when(user.created_at), button("Open", () => openUser(user.id), `Open ${user.email}`)],
    again,
  );
  nextUsers = page.next_cursor;
  $("#more-users").hidden = !nextUsers;
}

// The teams whose name contains the query, or whose id it is, newest first.
function findTeams(event) {
  if (event) event.preventDefault();
  const query = $("#team-query").value.trim();
  const path = `/api/admin/teams${query ? `?q=${encodeURIComponent(query)}` : ""}`;
  return pagedList(path, $("#teams"), "teams", (items, again) =>
    fillTable(
      "#teams table",
      items,
      (team) => [team.name, team.id, team.balance, team.reserved, team.available, when(team.created_at), button("Open", () => openTeam(team.id), `Open the team ${team.name}`)],
      { again, none: "No team found." },
    ),
  )();
}

// A team as its owner sees it: its figures, every member with their cap and spending, and every
// entry of its account with the member who caused it, a charge's receipt included.
async function openTeam(id) {
  teamId = id;
  const base = `/api/admin/teams/${encodeURIComponent(id)}`;
  const team = await json(base);
  $("#team-title").textContent = `Team ${team.name} (id ${team.id})`;
  accountFigures($("#team-figures"), team);
  memberTable("#team-members", team.members);
  $("#team-receipt").hidden = true;
  await transactionList(`${base}/transactions`, $("#team-transactions"), $("#team-receipt"), { member: memberOfEntry(team.members) })();
  const section = $("#team");
  if (section.hidden) {
    section.hidden = false;
    section.focus();
  }
}

// Where a grant's credits came from: a refund or an adjustment is said as such (their grants'
// source is `admin`), as the user's dashboard says it.
function grantSource(grant) {
  if (grant.origin === "refund") return "refund";
  if (grant.origin === "adjust") return "adjustment";
  return grant.source;
}

async function openUser(id) {
  userId = id;
  const base = `/api/admin/users/${encodeURIComponent(id)}`;
  const credit = await json(`${base}/credit`);
  userEmail = credit.email;
  $("#user-title").textContent = credit.email;
  figures($("#user-figures"), [
    ["Balance", credit.balance, "balance"],
    ["Reserved", credit.reserved, "reserved"],
    ["Available", credit.available, "available"],
    ["Tier", credit.tier, "tier"],
    ["Next refresh", when(credit.next_refresh_at)],
  ]);
  $("#user-tier").value = credit.tier;
  rows("#user-grants", credit.grants, (grant) => [
    grantSource(grant),
    grant.amount,
    grant.remaining,
    grant.expires_at ? when(grant.expires_at) : "never",
    grant.status,
    grant.reason,
  ]);
  const loadTransactions = transactionList(`${base}/transactions`, $("#user-transactions"), $("#user-receipt"));
  const loadKeys = keyList(`${base}/keys`, $("#user-keys"), { revokePath: (key) => `/api/admin/keys/${encodeURIComponent(key)}` });
  const loadPurchases = purchaseList(`${base}/purchases`, $("#user-purchases"));
  $("#user-receipt").hidden = true;
  await Promise.all([loadTransactions(), loadKeys(), loadPurchases(), loadCharges()]);
  const section = $("#user");
  if (section.hidden) {
    section.hidden = false;
    section.focus();
  }
}

// The user's message charges, newest first, each with its Refund button (see the refund form).
let nextCharges = null;

async function loadCharges(again = false) {
  const cursor = again && nextCharges ? `&cursor=${encodeURIComponent(nextCharges)}` : "";
  const page = await json(`/api/admin/users/${encodeURIComponent(userId)}/transactions?type=charge&limit=10&describe=true${cursor}`);
  rows(
    "#user-charges",
    page.items,
    (entry) => {
      const amount = entry.amount.replace(/^-/, "");
      // A submit button of the refund form, naming its entry (the form's reason goes with it).
      const refund = Object.assign(document.createElement("button"), { type: "submit", name: "entry", value: entry.id, textContent: "Refund" });
      refund.setAttribute("aria-label", `Refund the charge of ${credits(amount)} credits of ${when(entry.created_at)}`);
      return [when(entry.created_at), amount, entry.description ?? entry.reference, refund];
    },
    again,
  );
  nextCharges = page.next_cursor;
  $("#more-charges").hidden = !nextCharges;
}

async function loadCompensations(event) {
  if (event) event.preventDefault();
  const status = $("#compensation-status").value;
  const last = lastAsked($("#compensations"));
  const page = await json(`/api/admin/credit/compensations?limit=50${status ? `&status=${status}` : ""}`);
  if (!last()) return;
  rows("#compensations", page.items, (item) => [
    when(item.created_at),
    item.user_id === null ? "a team's account" : item.user_email,
    item.amount,
    item.status,
    item.attempts,
    item.reason,
    item.last_error,
  ]);
}

// The newest reconciliation report, as shown; null before the page has read one.
let reconciled = null;

function showReconciliation(report) {
  reconciled = report;
  figures($("#reconciliation-figures"), [
    ["Last run", report.ran_at ? when(report.ran_at) : "never", "ran-at"],
    ["Accounts checked", report.ran_at ? String(report.checked_accounts) : "–"],
    ["Calls never billed", report.ran_at ? String(report.unbilled_calls) : "–"],
    ["Their cost", report.ran_at ? credits(report.unbilled_cost) : "–"],
  ]);
  const verdict = $("#reconciliation-verdict");
  if (!report.ran_at) {
    verdict.textContent = "Reconciliation has not run yet: no balance has been checked. Run it now, or wait for its schedule.";
    verdict.className = "unknown";
  } else if (report.drift.length) {
    verdict.textContent = `Drift in ${report.drift.length} place(s): every balance must equal the sum of its entries.`;
    verdict.className = "drift";
  } else {
    verdict.textContent = "No drift: every balance equals the sum of its entries.";
    verdict.className = "fine";
  }
  $("#drift").closest(".table-scroll").hidden = !report.ran_at;
  rows("#drift", report.drift, (drift, row) => {
    row.className = "drift";
    return [
      drift.user_id === null ? "a team's account" : button(drift.user_id, () => openUser(drift.user_id), `Open user ${drift.user_id}`),
      drift.invariant,
      drift.expected,
      drift.actual,
    ];
  });
}

async function loadReconciliation() {
  showReconciliation(await json("/api/admin/credit/reconciliation"));
}

const sleep = (milliseconds) => new Promise((resolve) => setTimeout(resolve, milliseconds));

// After a run was queued: the newest report, read every second until one newer than `since`
// (the ran_at shown when it was queued) comes, for up to `seconds`; null if none came.
async function newerReport(since, seconds) {
  for (let waited = 0; waited < seconds; waited += 1) {
    await sleep(1000);
    const report = await json("/api/admin/credit/reconciliation");
    if (report.ran_at && report.ran_at !== since) return report;
  }
  return null;
}

// The price book a page at a time, newest first, as searched: `pricePages` holds the cursor of
// each page shown so far (null for the first), so that Newer goes back the way Older came.
const PRICES_PER_PAGE = 20;
let priceQuery = "";
let pricePages = [null];
let nextPrices = null;

async function loadPrices(page = 0) {
  const cursor = pricePages[page] ? `&cursor=${encodeURIComponent(pricePages[page])}` : "";
  const last = lastAsked($("#prices"));
  const answer = await json(`/api/admin/pricing?limit=${PRICES_PER_PAGE}${priceQuery}${cursor}`);
  if (!last()) return;
  rows("#prices", answer.items, (price) => [
    price.id,
    price.provider,
    price.model,
    price.input,
    price.cached_input,
    price.cache_write,
    price.output,
    when(price.effective_from),
    price.source,
  ]);
  pricePages = pricePages.slice(0, page + 1);
  nextPrices = answer.next_cursor;
  const first = page * PRICES_PER_PAGE + 1;
  $("#prices-shown").textContent = answer.items.length
    ? `Prices ${credits(String(first))} to ${credits(String(first + answer.items.length - 1))}${nextPrices ? "" : ", the last"}`
    : "No price matches.";
  $("#newer-prices").hidden = page === 0;
  $("#older-prices").hidden = !nextPrices;
}

async function searchPrices(event) {
  if (event) event.preventDefault();
  const query = $("#price-query").value.trim();
  priceQuery = query ? `&q=${encodeURIComponent(query)}` : "";
  pricePages = [null];
  await loadPrices();
}

function olderPrices() {
  pricePages.push(nextPrices);
  return loadPrices(pricePages.length - 1);
}

// The audit log as filtered: by a user's email (found among the users), action and dates.
async function loadAudit(again = false) {
  const cursor = again && nextAudit ? `&cursor=${encodeURIComponent(nextAudit)}` : "";
  const last = lastAsked($("#audit"));
  const page = await json(`/api/admin/credit/audit?limit=20${auditQuery}${cursor}`);
  if (!last()) return;
  rows(
    "#audit",
    page.items,
    (record) => [
      when(record.created_at),
      record.action,
      record.user_email ?? (record.user_id === null ? null : `user ${record.user_id}`),
      record.actor_id ? `${record.actor_type} ${record.actor_id}` : record.actor_type,
      record.balance_before,
      record.balance_after,
      Object.entries(record.details)
        .map(([name, value]) => `${name}: ${typeof value === "object" ? JSON.stringify(value) : value}`)
        .join("; "),
    ],
    again,
  );
  nextAudit = page.next_cursor;
  $("#more-audit").hidden = !nextAudit;
}

// A field's problem found by the page itself, shown as the API's are (beside the field).
function fieldProblem(name, message) {
  const details = { [name]: [message] };
  return Object.assign(new Error("The filter is not valid."), { body: { error: { code: "validation_error", details } } });
}

// The id of the user with this email (or the only one whose email contains it).
async function userWithEmail(email) {
  const { items } = await json(`/api/admin/users?limit=20&q=${encodeURIComponent(email)}`);
  const exact = items.find((user) => user.email === email.toLowerCase());
  if (exact || items.length === 1) return (exact || items[0]).id;
  throw fieldProblem("user", items.length ? `${items.length}${items.length === 20 ? " or more" : ""} users' emails contain this: give the whole email.` : "No user's email contains this.");
}

async function filterAudit(event) {
  if (event) event.preventDefault();
  const form = $("#audit-filter");
  const outcome = form.querySelector(".outcome");
  outcome.textContent = "";
  outcome.classList.remove("refused");
  clearFieldProblems(form);
  try {
    const data = new FormData(form);
    const filter = new URLSearchParams();
    const email = data.get("user").trim();
    if (email) filter.set("user_id", await userWithEmail(email));
    if (data.get("action").trim()) filter.set("action", data.get("action").trim());
    for (const name of ["from", "to"]) if (data.get(name)) filter.set(name, instant(data.get(name)));
    auditQuery = filter.toString() ? `&${filter}` : "";
    await loadAudit();
  } catch (error) {
    refused(form, outcome, error);
  }
}

// The audit log of the user open above.
async function auditOfUser() {
  const form = $("#audit-filter");
  form.reset();
  form.elements.namedItem("user").value = userEmail;
  await filterAudit();
  $("#audit-section").focus();
}

async function loadTiers() {
  const { items } = await json("/api/admin/tiers");
  rows("#tiers", items, (tier) => [
    tier.name,
    tier.monthly_credits,
    tier.allowed_models.join(", "),
    tier.default_max_tokens,
    tier.max_max_tokens,
    tier.rate_limits ? Object.entries(tier.rate_limits).map(([name, limit]) => `${name}: ${limit}`).join("; ") : "the defaults",
  ]);
  const select = $("#user-tier");
  select.replaceChildren(...items.map((tier) => Object.assign(document.createElement("option"), { value: tier.name, textContent: tier.name })));
}

// What the console keeps of a session beyond its forms and tables (see signInPage): the user
// open is the signed-out admin's, and so are their figures.
function forget() {
  userId = null;
  userEmail = null;
  nextUsers = null;
  nextAudit = null;
  nextCharges = null;
  auditQuery = "";
  $("#user").hidden = true;
  $("#user-title").textContent = "User";
  $("#user-figures").replaceChildren();
  $("#user-receipt").hidden = true;
  teamId = null;
  $("#team").hidden = true;
  $("#team-title").textContent = "Team";
  $("#team-figures").replaceChildren();
}

// The grant and adjust forms of the account open (their ids start with `prefix`): `owner()`
// names it ({ user_id } or { team_id }), `reopen()` shows it again once changed.
function creditForms(prefix, owner, reopen) {
  action(
    $(`#${prefix}grant-form`),
    (form) => ({
      path: "/api/admin/credit/grant",
      method: "POST",
      body: { ...owner(), amount: form.get("amount"), reason: form.get("reason"), expires_at: instant(form.get("expires_at")) },
    }),
    async (answer) => {
      await reopen();
      return `Granted ${credits(answer.grant.amount)} credits: the balance is ${credits(answer.balance.balance)}.`;
    },
  );
  action(
    $(`#${prefix}adjust-form`),
    (form) => ({ path: "/api/admin/credit/adjust", method: "POST", body: { ...owner(), amount: form.get("amount"), reason: form.get("reason") } }),
    async (answer) => {
      await reopen();
      return `Adjusted by ${credits(answer.amount)} credits: the balance is ${credits(answer.balance.balance)}.`;
    },
  );
}

async function showConsole() {
  const me = await json("/api/me");
  if (me.role !== "admin") throw new Error(`${me.email} is not an admin: the console is for admins.`);
  await Promise.all([findUsers(), findTeams(), loadCompensations(), loadReconciliation(), searchPrices(), loadTiers(), filterAudit()]);
}

document.addEventListener("DOMContentLoaded", () => {
  $("#user-search").addEventListener("submit", findUsers);
  $("#team-search").addEventListener("submit", findTeams);
  $("#more-users").addEventListener("click", () => findUsers(null, true));
  $("#price-search").addEventListener("submit", searchPrices);
  $("#newer-prices").addEventListener("click", () => loadPrices(pricePages.length - 2));
  $("#older-prices").addEventListener("click", olderPrices);
  $("#audit-filter").addEventListener("submit", filterAudit);
  $("#more-audit").addEventListener("click", () => loadAudit(true));
  $("#user-audit").addEventListener("click", auditOfUser);
  $("#more-charges").addEventListener("click", () => loadCharges(true));
  // Enter in the reason refunds nothing: which charge is refunded is said by its own button.
  $("#refund-reason").addEventListener("keydown", (event) => {
    if (event.key === "Enter") event.preventDefault();
  });
  $("#compensation-filter").addEventListener("submit", loadCompensations);
  const userPath = () => `/api/admin/users/${encodeURIComponent(userId)}`;
  creditForms("", () => ({ user_id: userId }), () => openUser(userId));
  creditForms("team-", () => ({ team_id: teamId }), () => openTeam(teamId));
  action(
    $("#tier-form"),
    (form) => ({ path: `${userPath()}/tier`, method: "PUT", body: { tier: form.get("tier") } }),
    async (answer) => {
      await openUser(userId);
      return `The tier is ${answer.tier}.`;
    },
  );
  action(
    $("#revoke-form"),
    () => ({ path: `${userPath()}/revoke-sessions`, method: "POST" }),
    async (answer) => `${answer.revoked_sessions} session(s) revoked.`,
  );
  action(
    $("#refund-form"),
    async (form) => {
      const entry = form.get("entry");
      if (!entry) throw new Error("Choose the charge to refund with its Refund button.");
      const found = await json(`${userPath()}/transactions/${encodeURIComponent(entry)}`);
      if (!found.message_id) throw new Error("This charge was for no chat message: nothing here refunds it.");
      return { path: "/api/admin/credit/refund", method: "POST", body: { message_id: found.message_id, reason: form.get("reason") } };
    },
    async (answer) => {
      await openUser(userId);
      return `Refunded ${credits(answer.amount)} credits (message ${answer.message_id}): the balance is ${credits(answer.balance.balance)}.`;
    },
  );
  action(
    $("#process-form"),
    () => ({ path: "/api/admin/credit/process-compensations", method: "POST" }),
    async (answer) => {
      await loadCompensations();
      return `Processing ${answer.pending} pending compensation(s) (task ${answer.task_id}).`;
    },
  );
  action(
    $("#reconcile-form"),
    () => ({ path: "/api/admin/credit/reconciliation/run", method: "POST" }),
    async (answer) => {
      const since = reconciled?.ran_at ?? null;
      $("#reconcile-form .outcome").textContent = `Queued (task ${answer.task_id}): waiting for a worker to run it…`;
      const report = await newerReport(since, 60);
      if (!report) return `Queued (task ${answer.task_id}), not run within a minute: the report shows here once a worker has run it (reload the page).`;
      showReconciliation(report);
      const found = report.drift.length ? `drift in ${report.drift.length} place(s)` : "no drift";
      return `Reconciliation ran at ${when(report.ran_at)}: ${found} in ${report.checked_accounts} account(s).`;
    },
  );
  action(
    $("#price-form"),
    (form) => {
      const body = { provider: form.get("provider"), model: form.get("model"), input: form.get("input"), output: form.get("output") };
      for (const name of ["cached_input", "cache_write"]) if (form.get(name)) body[name] = form.get(name);
      if (form.get("effective_from")) body.effective_from = instant(form.get("effective_from"));
      return { path: "/api/admin/pricing", method: "PUT", body };
    },
    async (answer) => {
      await searchPrices();
      return `Price #${answer.id} added for ${answer.provider}:${answer.model}, in force from ${when(answer.effective_from)}.`;
    },
  );
  signInPage(showConsole, { role: "admin" }, forget);
});
