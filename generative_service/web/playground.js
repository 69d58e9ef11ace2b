// The playground: build a POST /v1/jobs request from the form, follow the job's events, show the
// images. Everything goes through the public API with the key from the API-key field.
"use strict";

import { api, apiJson, ApiError, el, followEvents, imageUrl, setupKeyField, showError } from "/static/common.js";

const $ = (id) => document.getElementById(id);
let controlImage = null; // data: URL of the chosen control image
let lastSeed = null;
let running = null; // { jobId, abort }

function numberOrNull(id) {
  const value = $(id).value.trim();
  return value === "" ? null : Number(value);
}

export function buildRequest() {
  const body = {
    prompt: $("prompt").value.trim() || $("prompt").placeholder,
    negative_prompt: $("negative_prompt").value,
    steps: numberOrNull("steps") ?? 20,
    sampler: $("sampler").value || "dpmpp_2m_karras",
    num_images: numberOrNull("num_images") ?? 1,
    output_format: $("output_format").value,
  };
  for (const field of ["width", "height", "guidance_scale", "seed"]) { // empty: the server's default
    const value = numberOrNull(field);
    if (value !== null) body[field] = value;
  }
  const loras = [...document.querySelectorAll("#loras input[type=checkbox]:checked")].map((box) => ({
    name: box.value,
    scale: Number(document.querySelector(`#loras input[data-scale-for="${box.value}"]`).value || 1),
  }));
  if (loras.length) body.loras = loras;
  if (controlImage) {
    body.control = { type: $("control-type").value, image: controlImage, conditioning_scale: numberOrNull("control-scale") ?? 0.8 };
  }
  if ($("upscale").value) body.upscale = Number($("upscale").value);
  if ($("previews").checked) body.preview = { every_n_steps: 1, max_px: 256 };
  return body;
}

function curlCommand(body) {
  const shown = { ...body };
  if (shown.control) shown.control = { ...shown.control, image: "<base64 image>" };
  const key = $("api-key").value.trim() ? ` \\\n  -H 'Authorization: Bearer $GENSVC_API_KEY'` : "";
  const json = JSON.stringify(shown).replaceAll("'", "'\\''");
  return `curl -sS -X POST '${location.origin}/v1/jobs'${key} \\\n  -H 'Content-Type: application/json' \\\n  -d '${json}'`;
}

function setProgress(percent, text) {
  const value = Math.max(0, Math.min(100, percent));
  $("progress").style.width = `${value}%`;
  $("progress").setAttribute("aria-valuenow", String(value));
  $("progress-text").textContent = text ?? `${value.toFixed(0)} %`;
}

function setStatus(text) {
  $("status").textContent = text;
}

function describeQueued(job) {
  const eta = job.progress && job.progress.eta_s != null ? `, about ${job.progress.eta_s.toFixed(1)} s to go` : "";
  return job.queue_position ? `Queued: position ${job.queue_position}${eta}` : `Queued${eta}`;
}

async function generate(event) {
  event.preventDefault();
  if (running) return;
  $("error").hidden = true;
  $("images").replaceChildren();
  $("preview").hidden = true;
  setProgress(0);
  const body = buildRequest();
  let job;
  try {
    job = await apiJson("/v1/jobs", { method: "POST", json: body });
  } catch (error) {
    showError($("error"), error);
    setStatus("Not submitted.");
    return;
  }
  const abort = new AbortController();
  running = { jobId: job.id, abort };
  $("generate").disabled = true;
  $("cancel").disabled = false;
  setStatus(describeQueued(job));
  try {
    await followEvents(`/v1/jobs/${job.id}/events`, (type, data) => onEvent(job, type, data), abort.signal);
  } catch (error) {
    if (!abort.signal.aborted) showError($("error"), error);
  } finally {
    running = null;
    $("generate").disabled = false;
    $("cancel").disabled = true;
    loadGallery();
  }
}

function onEvent(job, type, data) {
  if (type === "queued") setStatus(describeQueued({ ...job, queue_position: data.position }));
  else if (type === "started") setStatus("Running: loading the model");
  else if (type === "stage") setStatus(`Running: ${data.stage}`);
  else if (type === "progress") {
    setStatus(`Running: step ${data.step} of ${data.total_steps}`);
    setProgress(data.percent ?? 0, `${(data.percent ?? 0).toFixed(0)} % (step ${data.step}/${data.total_steps})`);
    if (data.preview) {
      $("preview").src = data.preview;
      $("preview").hidden = false;
    }
  } else if (type === "succeeded" || type === "failed" || type === "canceled") {
    const finished = data.job;
    if (type === "succeeded") {
      setProgress(100, "100 %");
      setStatus(`Done in ${((finished.timings.total_ms ?? 0) / 1000).toFixed(1)} s`);
      $("preview").hidden = true;
      showImages(finished);
    } else {
      setStatus(type === "canceled" ? "Canceled." : "Failed.");
      const error = data.error || (finished && finished.error);
      if (error) showError($("error"), new ApiError(0, error.code, error.message));
    }
    return false;
  }
  return true;
}

async function showImages(job) {
  const container = $("images");
  container.replaceChildren();
  for (const image of job.images) {
    const figure = el("figure", { class: "result" });
    container.append(figure);
    const verdict = image.nsfw ? `NSFW ${image.nsfw.flagged ? "flagged" : "not flagged"} (score ${image.nsfw.score.toFixed(2)})` : "NSFW not checked";
    const caption = el("figcaption", {}, el("span", { class: "seed", text: `seed ${image.seed}` }), ` · ${image.width}x${image.height} · ${verdict}${image.blurred ? " · blurred" : ""}`);
    lastSeed = image.seed;
    if (image.blocked || !image.url) {
      figure.append(el("div", { class: "blocked", text: "blocked by the safety filter" }), caption);
      continue;
    }
    const src = await imageUrl(image.url);
    const extension = image.content_type.split("/")[1];
    const download = el("a", { href: src, download: `${job.id}-${image.index}.${extension}`, class: "download", text: "Download" });
    const reuse = el("button", { type: "button", text: "Use this seed" });
    reuse.addEventListener("click", () => ($("seed").value = String(image.seed)));
    figure.append(el("img", { src, alt: `image ${image.index} of ${job.id}`, class: "image" }), caption, download, reuse);
  }
}

async function cancel() {
  if (!running) return;
  try {
    await apiJson(`/v1/jobs/${running.jobId}/cancel`, { method: "POST" });
    setStatus("Canceling...");
  } catch (error) {
    showError($("error"), error);
  }
}

async function loadGallery() {
  const gallery = $("gallery");
  try {
    const jobs = (await apiJson("/v1/jobs?limit=12")).data;
    gallery.replaceChildren();
    for (const job of jobs) {
      const tile = el("button", { type: "button", class: "tile", title: job.request.prompt });
      const image = job.images.find((item) => item.url && !item.blocked);
      if (image) {
        const img = el("img", { alt: job.request.prompt });
        imageUrl(image.url).then((src) => (img.src = src)).catch(() => {});
        tile.append(img);
      } else tile.append(el("span", { class: "muted", text: job.status }));
      tile.append(el("span", { class: "caption", text: job.request.prompt }));
      tile.addEventListener("click", () => loadJob(job));
      gallery.append(tile);
    }
    if (!jobs.length) gallery.append(el("span", { class: "muted", text: "No jobs yet." }));
  } catch (error) {
    gallery.replaceChildren(el("span", { class: "muted", text: error.message }));
  }
}

function loadJob(job) {
  const request = job.request;
  for (const field of ["prompt", "negative_prompt", "width", "height", "steps", "guidance_scale", "num_images", "seed"]) {
    $(field).value = request[field] ?? "";
  }
  $("sampler").value = request.sampler;
  $("upscale").value = request.upscale ?? "";
  $("output_format").value = request.output_format;
  if (job.status === "succeeded") showImages(job);
  setStatus(`Loaded ${job.id} (${job.status}).`);
}

// The form's bounds come from the server (`limits` of GET /v1/models), so no rule is written twice.
let limits = {};

function setBounds(input, attrs) {
  for (const [name, value] of Object.entries(attrs)) if (value != null) input[name] = value;
}

function applyLimits() {
  const side = { min: limits.min_side, max: limits.max_side, step: limits.side_multiple };
  setBounds($("width"), side);
  setBounds($("height"), side);
  setBounds($("steps"), { max: limits.max_steps });
  setBounds($("num_images"), { max: limits.max_images_per_job });
  setBounds($("guidance_scale"), { min: limits.min_guidance, max: limits.max_guidance });
  setBounds($("control-scale"), { max: limits.max_conditioning_scale });
}

async function loadOptions() {
  try {
    const models = await apiJson("/v1/models");
    limits = models.limits || {};
    if (models.default_guidance != null) $("guidance_scale").placeholder = `model default (${models.default_guidance})`;
    applyLimits();
    const sampler = $("sampler");
    const current = sampler.value;
    sampler.replaceChildren(...models.samplers.map((name) => el("option", { value: name, text: name })));
    if (current) sampler.value = current;
    const types = models.controlnets || [];
    for (const option of $("control-type").options) option.disabled = types.length > 0 && !types.includes(option.value);
  } catch (error) {
    showError($("error"), error);
  }
  try {
    const loras = (await apiJson("/v1/loras")).data;
    const box = $("loras");
    if (loras.length) box.replaceChildren();
    for (const lora of loras) {
      box.append(el("label", { class: "lora" },
        el("input", { type: "checkbox", value: lora.name }), ` ${lora.name} `,
        el("input", { type: "number", step: "0.1", min: limits.min_lora_scale, max: limits.max_lora_scale, value: "1", "data-scale-for": lora.name, "aria-label": `${lora.name} scale` })));
    }
  } catch {
    // /v1/models already reported the problem (usually the key)
  }
}

function setup() {
  setupKeyField(() => {
    loadOptions();
    loadGallery();
  });
  $("form").addEventListener("submit", generate);
  $("cancel").addEventListener("click", cancel);
  $("seed-random").addEventListener("click", () => ($("seed").value = ""));
  $("seed-reuse").addEventListener("click", () => {
    if (lastSeed !== null) $("seed").value = String(lastSeed);
  });
  $("control-image").addEventListener("change", () => {
    const file = $("control-image").files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => (controlImage = reader.result);
    reader.readAsDataURL(file);
  });
  $("control-clear").addEventListener("click", () => {
    controlImage = null;
    $("control-image").value = "";
  });
  $("copy-curl").addEventListener("click", async () => {
    const command = curlCommand(buildRequest());
    $("curl").textContent = command;
    $("curl").hidden = false;
    try {
      await navigator.clipboard.writeText(command);
      $("copy-curl").textContent = "Copied";
    } catch {
      $("copy-curl").textContent = "Shown below";
    }
    setTimeout(() => ($("copy-curl").textContent = "Copy as curl"), 1500);
  });
  loadOptions();
  loadGallery();
}

setup();
