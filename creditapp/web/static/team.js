// The dashboard's teams: the team chosen (or your own credits), its balance, members, transfers
// into it and its entries; member management for its owner and admins; creating a team.
import { $, accountFigures, api, button, clearFieldProblems, credits, fieldProblems, json, keyedTries, memberOfEntry, memberTable, refusal, sessionCheck, spendLimit, transactionList } from "./common.js";

// The team chosen ({ id, name, role } and, once read, its members and your own row among them),
// or null: your own credits; and who is signed in (read once a session).
let chosen = null;
let me = null;
// What else shows the account in view, told each time it changes (see wireTeams).
let viewChanged = async () => {};

const PERIODS = { day: "day", month: "month" };
const MANAGING = ["owner", "admin"];

// The team that pays what the page spends now (its id), or null.
export function payingTeam() {
  return chosen?.id ?? null;
}

// Where the chat says who pays: your own credits, or the team within your cap.
function showPayer() {
  const said = $("#chat-payer");
  if (!chosen) {
    said.textContent = "Messages are paid from your own credits.";
    return;
  }
  const cap = chosen.me ? ` (your cap there: ${spendLimit(chosen.me.cap, chosen.me.cap_period, "none")})` : "";
  said.textContent = `Messages are paid by the team ${chosen.name}${cap}.`;
}

// What a member now is, in words: "a@b.c is a member of the team, with a cap of 10 a day."
function memberSaid(member) {
  const role = member.role === "admin" ? "an admin" : `a ${member.role}`;
  const cap = member.cap === null ? "no cap" : `a cap of ${spendLimit(member.cap, member.cap_period, "")}`;
  return `${member.email} is ${role} of the team, with ${cap}.`;
}

// What a refused team request says, in words: the refusals of the team endpoints by code (their
// field problems beside their fields); `who` is the email the request named.
function teamRefusal(form, error, who = "") {
  const { code, details } = error.body?.error ?? {};
  const words = {
    user_not_found: `No one has signed up with the email ${who}: they must sign up before they can be added.`,
    already_team_member: `${who} is already a member of this team.`,
    team_owner_fixed: "The team's owner stays its owner: they cannot be removed, and their role cannot change.",
    team_managers_only: "Only the team's owner and its admins can manage its members.",
    team_owner_only: "Only the team's owner can add, make or remove admins, or change an admin's or the owner's role and cap.",
    insufficient_credits: details && `Not enough credits: the transfer needs ${credits(details.required ?? "")} and you have ${credits(details.available ?? "")} available of your own.`,
  }[code];
  return words || fieldProblems(form, error);
}

// A refusal of a message paid by the team, in words; null for any other refusal.
export function capRefusal(error) {
  const { code, details } = error.body?.error ?? {};
  if (code !== "member_cap_reached") return null;
  const period = PERIODS[chosen?.me?.cap_period] ?? "period";
  return (
    `You have reached your cap in this team for the ${period}: of ${credits(details.limit)} credits, ` +
    `${credits(details.spent)} are spent and ${credits(details.reserved)} held, and this message needs up to ${credits(details.required)}.`
  );
}

// The team's figures, as read or as an answer gave them (a transfer's, a message's).
export function showTeamAmounts(amounts) {
  accountFigures($("#team-figures"), amounts);
}

function said(form, text, refused = false) {
  const outcome = form.querySelector(".outcome");
  outcome.textContent = text;
  outcome.classList.toggle("refused", refused);
}

// The member whose row's Change button was pressed, into the change form.
function toChange(member) {
  const form = $("#member-change");
  form.elements.namedItem("user_id").value = String(member.user_id);
  fillChange();
  $("#change-role").focus();
}

// The change form shows the member chosen as they are.
function fillChange() {
  const form = $("#member-change");
  const member = chosen?.members.find((each) => String(each.user_id) === form.elements.namedItem("user_id").value);
  if (!member) return;
  form.elements.namedItem("role").value = member.role;
  form.elements.namedItem("cap").value = member.cap ?? "";
  form.elements.namedItem("cap_period").value = member.cap_period;
  clearFieldProblems(form);
  said(form, "");
}

async function remove(member) {
  if (!window.confirm(`Remove ${member.email} from the team ${chosen.name}? Their keys for the team stop at once.`)) return;
  const alert = $("#team-members-said");
  alert.textContent = "";
  const check = sessionCheck();
  try {
    const path = `/api/teams/${chosen.id}/members/${member.user_id}`;
    const response = await api(path, { method: "DELETE", headers: { "Idempotency-Key": crypto.randomUUID() } });
    if (!response.ok) throw await refusal(response);
    check();
  } catch (error) {
    if (!error.signedOut && !check.ended()) alert.textContent = `${member.email} was not removed: ${teamRefusal($("#member-change"), error)}`;
    return;
  }
  // Having left it, you pay from your own credits again, and the team is no longer listed.
  if (member.user_id === me.id) await readTeams(() => loadTeams(null));
  else await loadTeam();
}

// Each member's buttons, for the owner and admins, as the service allows them: change (into
// the form; an admin changes plain members only), and remove (never the owner; an admin
// removes plain members, and themselves).
function changeable(member) {
  return chosen.role === "owner" || member.role === "member";
}

function removable(member) {
  return member.role !== "owner" && (changeable(member) || member.user_id === me.id);
}

function memberActions(member) {
  const place = document.createElement("span");
  if (changeable(member)) place.append(button("Change", () => toChange(member), `Change ${member.email}`));
  if (removable(member)) place.append(button("Remove", () => remove(member), `Remove ${member.email}`));
  return place;
}

// The team chosen as the service has it: figures, members (all for its managers, your own row
// for a member), entries.
export async function loadTeam() {
  if (!chosen) return;
  const team = await json(`/api/teams/${chosen.id}`);
  const mine = team.members.find((member) => member.user_id === me.id) ?? null;
  Object.assign(chosen, { name: team.name, role: team.role, members: team.members, me: mine });
  const managing = MANAGING.includes(team.role);
  $("#team-title").textContent = `Team ${team.name}`;
  $("#team-standing").textContent = managing
    ? `You are its ${team.role}: you see every member and manage them.`
    : "You are a member: you see your own spending and entries.";
  showTeamAmounts(team);
  memberTable("#team-members", team.members, managing ? memberActions : null);
  $("#team-manage").hidden = !managing;
  // Admins are the owner's to add and make.
  for (const select of ["#member-role", "#change-role"]) {
    $(select).querySelector('option[value="admin"]').disabled = team.role !== "owner";
  }
  const members = $("#change-member");
  const kept = members.value;
  members.replaceChildren(...team.members.filter(changeable).map((member) => new Option(`${member.email} (${member.role})`, String(member.user_id))));
  if (kept) members.value = kept;
  fillChange();
  showPayer();
  const area = $("#team-transactions");
  await transactionList(`/api/teams/${chosen.id}/transactions`, area, $("#team-receipt"), { member: memberOfEntry(team.members) })();
}

// The teams read by `load` onto the page, or what stopped them said (the rest of the page goes
// on: a team that cannot be read does not sign anyone out).
async function readTeams(load) {
  $("#teams-said").textContent = "";
  const check = sessionCheck();
  try {
    await load();
  } catch (error) {
    if (error.signedOut || check.ended()) return;
    $("#teams-said").textContent = `Your teams could not be read: ${error.message}`;
  }
}

// The teams you are in, for the dashboard to show once signed in.
export const showTeams = () => readTeams(() => loadTeams(null));

// The teams you are in, into the switcher (every page of them), `choose` chosen.
async function loadTeams(choose = payingTeam()) {
  me ??= await json("/api/me");
  const select = $("#team-chosen");
  const options = [select.options[0]];
  let cursor = "";
  do {
    const page = await json(`/api/teams?limit=100${cursor}`);
    for (const team of page.items) {
      const option = new Option(`${team.name} (${team.role})`, String(team.id));
      Object.assign(option.dataset, { name: team.name, role: team.role });
      options.push(option);
    }
    cursor = page.next_cursor ? `&cursor=${encodeURIComponent(page.next_cursor)}` : "";
  } while (cursor);
  select.replaceChildren(...options);
  select.value = choose === null ? "" : String(choose);
  await showChoice();
}

// The switcher's choice shown: the team's section, or none (your own credits); and told to
// what else shows the account in view ({ teamId, name, role } as the list of teams has them).
async function showChoice() {
  const select = $("#team-chosen");
  const id = select.value;
  $("#team-receipt").hidden = true;
  const { name = "", role = "" } = select.selectedOptions[0]?.dataset ?? {};
  const viewed = viewChanged({ teamId: id || null, name, role });
  if (!id) {
    chosen = null;
    $("#team").hidden = true;
    showPayer();
    await viewed;
    return;
  }
  if (String(chosen?.id) !== id) chosen = { id, name: "", members: [], me: null };
  $("#team").hidden = false;
  await Promise.all([loadTeam(), viewed]);
}

// What the page keeps of the teams (see signInPage's forget).
export function forgetTeams() {
  chosen = null;
  me = null;
  $("#team").hidden = true;
  $("#team-members-said").textContent = "";
  $("#team-figures").replaceChildren();
  $("#change-member").replaceChildren();
  $("#team-chosen").replaceChildren(new Option("Personal: your own credits", ""));
  $("#chat-payer").textContent = "";
}

// A team form: its tries keyed (a double click or a retry after a lost answer does it once),
// each clearing what the previous one said; `request(data)` says what to send (null: nothing),
// `done(answer, data)` what to say of it.
function teamForm(form, request, done) {
  const tries = keyedTries(form);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    said(form, "");
    clearFieldProblems(form);
    const data = new FormData(form);
    const sent = request(data);
    if (!sent) return;
    const check = sessionCheck();
    let answer;
    try {
      answer = await tries(sent, (key) => json(sent.path, { method: sent.method, body: sent.body, headers: { "Idempotency-Key": key } }));
    } catch (error) {
      if (!error.signedOut && !check.ended()) said(form, teamRefusal(form, error, sent.email ?? sent.body.email), true);
      return;
    }
    said(form, await done(answer, data));
  });
}

// A cap as the API takes it: credits, or null (no cap) when left empty.
const capOf = (data) => data.get("cap").trim() || null;

// Wires the switcher and the team forms; `changed()` brings your own credits on the page up to
// date after a transfer; `viewed(account)` is told the account in view each time it changes
// (it never throws: a refusal there is not the teams').
export function wireTeams(changed, viewed = async () => {}) {
  viewChanged = viewed;
  $("#team-chosen").addEventListener("change", async () => {
    await readTeams(showChoice);
    if (chosen) $("#team").focus();
  });
  teamForm(
    $("#team-form"),
    (data) => ({ path: "/api/teams", method: "POST", body: { name: data.get("name").trim() } }),
    async (team) => {
      $("#team-form").reset();
      await loadTeams(team.id);
      return `The team ${team.name} is made, and chosen above: move credits to it, then add its members.`;
    },
  );
  teamForm(
    $("#transfer-form"),
    (data) => ({ path: `/api/teams/${chosen.id}/transfers`, method: "POST", body: { amount: data.get("amount").trim() } }),
    async (moved) => {
      $("#transfer-form").reset();
      showTeamAmounts(moved.team);
      await Promise.all([loadTeam(), changed()]);
      return `Moved ${credits(moved.amount)} credits to the team: it has ${credits(moved.team.available)} available, and you ${credits(moved.personal.available)} of your own.`;
    },
  );
  teamForm(
    $("#member-form"),
    (data) => {
      const body = { email: data.get("email").trim(), role: data.get("role"), cap_period: data.get("cap_period") };
      if (capOf(data)) body.cap = capOf(data);
      return { path: `/api/teams/${chosen.id}/members`, method: "POST", body };
    },
    async (member) => {
      $("#member-form").reset();
      await loadTeam();
      return memberSaid(member);
    },
  );
  $("#change-member").addEventListener("change", fillChange);
  teamForm(
    $("#member-change"),
    (data) => {
      const member = chosen.members.find((each) => String(each.user_id) === data.get("user_id"));
      if (!member) return null;
      const body = { cap: capOf(data), cap_period: data.get("cap_period") };
      if (data.get("role") !== member.role) body.role = data.get("role");
      return { path: `/api/teams/${chosen.id}/members/${member.user_id}`, method: "PATCH", body, email: member.email };
    },
    async (member) => {
      await loadTeam();
      return memberSaid(member);
    },
  );
}
