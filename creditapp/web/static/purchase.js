// A purchase of credits, where Stripe sends the buyer back (`?checkout=success` or `=cancel`):
// its status, read again every POLL_MILLISECONDS while the payment is being confirmed (for at
// most POLLS reads, about two minutes), and the balance it changed.
import { $, credits, dollars, json, purchaseStatus, sessionCheck, signInPage, usd } from "./common.js";

const POLL_MILLISECONDS = 2000;
const POLLS = 60;
const purchaseId = decodeURIComponent(window.location.pathname.split("/").pop());
const cancelled = new URLSearchParams(window.location.search).get("checkout") === "cancel";
let timer = null;

// What the buyer is told of the purchase as it stands; `gaveUp`: no longer read again.
function state(purchase, gaveUp) {
  const amount = `${credits(purchase.credits)} credits`;
  if (purchase.problem === "amount_mismatch") return `Stripe was paid another amount than this purchase's price: the ${amount} are held back until it is looked into.`;
  if (purchase.problem === "session_unknown") return `Stripe no longer knows this purchase's payment page: it is held for review, and nothing more is asked of Stripe for it.`;
  switch (purchase.status) {
    case "paid":
      return `Payment received: ${amount} added.`;
    case "failed":
      return `The payment did not go through (cancelled or expired): no credits were added.`;
    case "refunded":
      return `Payment refunded: the ${amount} were taken back.`;
    case "partially_refunded":
      return `Payment partly refunded: ${credits(purchase.clawed_back)} of the ${amount} were taken back.`;
    case "disputed":
      return `The payment is disputed: the ${amount} were taken back.`;
    default:
      if (cancelled) return "Payment cancelled: nothing was charged and no credits were added.";
      if (gaveUp) return "The payment has not been confirmed yet. Your credits are added as soon as it is: reload this page, or look at your dashboard, later.";
      return "Waiting for the payment to be confirmed…";
  }
}

function show(purchase, gaveUp) {
  const said = $("#purchase-state");
  said.textContent = state(purchase, gaveUp);
  said.dataset.status = purchase.problem || purchase.status;
  $("#purchase-credits").textContent = credits(purchase.credits);
  $("#purchase-price").textContent = dollars(purchase.amount_cents);
  $("#purchase-status").textContent = purchaseStatus(purchase);
}

// Reads the purchase (the `poll`th time) and the balance, and shows them; while the purchase is
// pending after a payment (not a cancel), reads them again later. A read that fails is said and
// ends the reading.
async function watch(poll = 1) {
  timer = null;
  const check = sessionCheck();
  let purchase;
  let balance;
  try {
    [purchase, balance] = await Promise.all([json(`/api/credit/purchases/${encodeURIComponent(purchaseId)}`), json("/api/credit/balance")]);
  } catch (error) {
    if (error.signedOut || check.ended()) return;
    $("#purchase-error").textContent = error.status === 404 ? "You have no such purchase." : `The purchase could not be read: ${error.message}`;
    return;
  }
  const waiting = purchase.status === "pending" && !purchase.problem && !cancelled;
  show(purchase, waiting && poll >= POLLS);
  $("#balance").textContent = credits(balance.balance);
  $("#balance-usd").textContent = usd(balance.balance);
  if (waiting && poll < POLLS) timer = setTimeout(() => watch(poll + 1), POLL_MILLISECONDS);
}

// What the page keeps of a session beyond its tables and messages: the reading in progress and
// the figures shown.
function forget() {
  clearTimeout(timer);
  timer = null;
  for (const figure of ["#purchase-credits", "#purchase-price", "#purchase-status", "#balance"]) $(figure).textContent = "–";
  $("#balance-usd").textContent = "";
}

document.addEventListener("DOMContentLoaded", () => signInPage(watch, undefined, forget));
