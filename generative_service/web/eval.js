// The rating page: pick a study, rate blind pairs (the server decides order and sides per rater),
// see the results. Arm names appear only in the results.
"use strict";

import { api, apiJson, el, imageUrl, setupKeyField, showError } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const RATER_STORAGE = "gensvc.rater";
const POLL_MS = 1500;
let current = null; // the pair on screen
let pollTimer = null;

function studyId() {
  return $("study").value;
}

function rater() {
  return $("rater").value.trim();
}

async function loadStudies(selected) {
  try {
    const studies = (await apiJson("/v1/evals")).data;
    const select = $("study");
    select.replaceChildren(...studies.map((study) =>
      el("option", { value: study.id, text: `${study.name} (${study.id}, ${study.status})` })));
    if (!studies.length) select.append(el("option", { value: "", text: "no studies yet: create one below" }));
    if (selected) select.value = selected;
  } catch (error) {
    showError($("error"), error);
  }
}

async function nextPair() {
  clearTimeout(pollTimer);
  $("error").hidden = true;
  if (!studyId()) return;
  const query = rater() ? `?rater=${encodeURIComponent(rater())}` : "";
  let pair;
  try {
    pair = await apiJson(`/v1/evals/${studyId()}/next${query}`);
  } catch (error) {
    showError($("error"), error);
    return;
  }
  $("done").hidden = !pair.done;
  $("rating").hidden = pair.done;
  if (pair.done) return;
  $("rating-status").textContent = `${pair.answered} answered, ${pair.remaining} to go` +
    (pair.status === "generating" ? " (images are still being generated)" : "");
  if (!pair.pair_id) {
    current = null;
    setButtons(false);
    $("prompt").textContent = "waiting for images...";
    pollTimer = setTimeout(nextPair, POLL_MS);
    return;
  }
  const [left, right] = await Promise.all([imageUrl(pair.left.image_url), imageUrl(pair.right.image_url)]);
  $("left").src = left;
  $("right").src = right;
  $("prompt").textContent = pair.prompt;
  $("reason").value = "";
  current = pair;
  setButtons(true);
}

function setButtons(enabled) {
  for (const button of document.querySelectorAll(".votes button")) button.disabled = !enabled;
}

async function vote(choice) {
  if (!current) return;
  setButtons(false);
  const body = { pair_id: current.pair_id, choice, reason: $("reason").value };
  if (rater()) body.rater = rater();
  try {
    await apiJson(`/v1/evals/${studyId()}/votes`, { method: "POST", json: body });
  } catch (error) {
    showError($("error"), error);
  }
  await nextPair();
  if (!$("results").hidden) showResults();
}

const percent = (value) => (value === null || value === undefined ? "–" : `${(100 * value).toFixed(1)} %`);
const interval = (ci) => (ci ? `${percent(ci[0])} – ${percent(ci[1])}` : "–");
const number = (value, digits = 3) => (value === null || value === undefined ? "–" : value.toFixed(digits));

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, ...headers.map((text) => el("th", { text })))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((cell) =>
      cell instanceof Node ? el("td", {}, cell) : el("td", { text: String(cell) }))))));
}

async function showResults() {
  if (!studyId()) return;
  const flagged = $("include-flagged").checked ? "?include_flagged=true" : "";
  let results;
  try {
    results = await apiJson(`/v1/evals/${studyId()}/results${flagged}`);
  } catch (error) {
    showError($("error"), error);
    return;
  }
  const box = $("results");
  const votes = results.votes;
  box.replaceChildren(
    el("p", { id: "results-summary", text: `${votes.counted} votes counted (${votes.total} in all: ${votes.skips} skips, ${votes.attention_checks} attention checks, ${votes.from_flagged_raters} from flagged raters)` }),
    el("h2", { text: "Win rate per pair of arms" }),
    table(["first arm", "second arm", "wins", "ties", "first arm's win rate", "95 % interval", "p (vs 50 %)", "more votes needed"],
      results.pairs.map((p) => [p.arms[0], p.arms[1], `${p.wins[0]} : ${p.wins[1]}`, p.ties, percent(p.win_rate), interval(p.win_rate_ci95), number(p.p_value), p.more_votes_needed])),
  );
  if (results.bradley_terry) {
    box.append(el("h2", { text: "Bradley-Terry strengths" }),
      table(["arm", "strength", "95 % interval"], results.bradley_terry.arms.map((a) => [a.arm, number(a.strength), `${number(a.ci95[0])} – ${number(a.ci95[1])}`])));
  }
  const bias = results.position_bias;
  const agreement = results.agreement;
  box.append(
    el("h2", { text: "Per prompt" }),
    table(["prompt", "first arm", "second arm", "wins", "ties"], results.per_prompt.flatMap((prompt) =>
      prompt.pairs.map((p) => [prompt.prompt, p.arms[0], p.arms[1], `${p.wins[0]} : ${p.wins[1]}`, p.ties]))),
    el("h2", { text: "Checks" }),
    table(["measure", "value"], [
      ["left image chosen (position bias)", `${percent(bias.left_share)} of ${bias.decisive} (interval ${interval(bias.left_share_ci95)}, p ${number(bias.p_value)})`],
      ["Fleiss' kappa (raters agreeing)", `${number(agreement.fleiss_kappa)} over ${agreement.items} pairs rated by two or more`],
      [`decisive votes to detect a ${percent(results.votes_needed.difference)} edge`, results.votes_needed.decisive_votes],
    ]),
    el("h2", { text: "Raters" }),
    table(["rater", "votes", "skips", "attention checks failed", "flagged"], results.raters.map((r) => [
      r.rater, r.votes, r.skips, `${r.checks_failed} of ${r.checks}`,
      r.flagged ? el("span", { class: "flagged", text: "flagged" }) : "no"])),
  );
  box.hidden = false;
}

async function download(format) {
  if (!studyId()) return;
  try {
    const response = await api(`/v1/evals/${studyId()}/votes?format=${format}`);
    const link = el("a", { href: URL.createObjectURL(await response.blob()), download: `${studyId()}-votes.${format}` });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (error) {
    showError($("error"), error);
  }
}

async function createStudy() {
  const status = $("create-status");
  try {
    const prompts = $("new-prompts").value.split("\n").map((line) => line.trim()).filter(Boolean);
    const body = {
      name: $("new-name").value,
      arms: JSON.parse($("new-arms").value),
      base: JSON.parse($("new-base").value || "{}"),
      seeds_per_prompt: Number($("new-seeds").value),
      attention_share: Number($("new-attention").value),
    };
    if (prompts.length) body.prompts = prompts;
    const study = await apiJson("/v1/evals", { method: "POST", json: body });
    status.textContent = `Created ${study.id}: ${study.images.total} images are being generated.`;
    await loadStudies(study.id);
  } catch (error) {
    showError($("error"), error);
  }
}

function setup() {
  const params = new URLSearchParams(location.search);
  $("rater").value = params.get("rater") || localStorage.getItem(RATER_STORAGE) || "";
  setupKeyField(() => loadStudies(studyId()));
  $("start").addEventListener("click", () => {
    localStorage.setItem(RATER_STORAGE, rater());
    nextPair();
  });
  $("study").addEventListener("change", () => {
    $("rating").hidden = true;
    $("done").hidden = true;
    $("results").hidden = true;
  });
  for (const button of document.querySelectorAll(".votes button")) {
    button.addEventListener("click", () => vote(button.dataset.choice));
  }
  $("show-results").addEventListener("click", showResults);
  $("include-flagged").addEventListener("change", () => !$("results").hidden && showResults());
  $("export-csv").addEventListener("click", () => download("csv"));
  $("export-json").addEventListener("click", () => download("json"));
  $("create").addEventListener("click", createStudy);
  loadStudies(params.get("study"));
}

setup();
