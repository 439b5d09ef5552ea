"use strict";
// The gallery: a virtual grid (only the cards near the viewport are in the DOM), a state
// filter, a search, a large view with keyboard navigation, and "copy ids".
// Data is only ever put in the page with textContent and setAttribute: never parsed as HTML.
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const JOBS = DATA.jobs;
  const LABELS = { all: "All", succeeded: "Succeeded", failed: "Failed", pending: "Pending", missing: "Missing files" };
  const WHAT = {
    failed: "Failed",
    pending: "Not generated yet",
    missing: "File missing or changed: the next run fetches it again from its run",
  };
  const CARD_MIN = 220, GAP = 16, BODY_H = 128, OVERSCAN_ROWS = 2, PROMPT_CHARS = 280;

  const grid = document.getElementById("grid");
  const search = document.getElementById("search");
  const shown = document.getElementById("shown");
  const empty = document.getElementById("empty");
  const viewer = document.getElementById("viewer");

  // Lower-cased text each job is searched in, built at the first search (not before the first render).
  let HAY = null;
  function haystack() {
    HAY = HAY || JOBS.map(function (job) {
      const parts = [job.id, job.input.prompt || "", job.error || "", job.run || ""];
      for (const key of Object.keys(job.meta)) parts.push(key + ":" + text(job.meta[key]), text(job.meta[key]));
      return parts.join("\n").toLowerCase();
    });
    return HAY;
  }

  let state = "all", query = "", view = [], cols = 1, cardW = CARD_MIN, frameH = CARD_MIN, rowH = 0;
  const live = new Map(); // position in view -> card element
  let current = -1; // position in view of the large view's job
  let earlierShown = -1; // which earlier version the large view shows (-1: the current image)

  function el(tag, cls, content) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (content !== undefined && content !== null) node.textContent = String(content);
    return node;
  }
  function number(n) {
    return n.toLocaleString("en-US");
  }
  function text(value) {
    return typeof value === "string" ? value : JSON.stringify(value);
  }
  function when(seconds) {
    return seconds ? new Date(seconds * 1000).toLocaleString() : "";
  }
  function bytes(n) {
    if (n === null || n === undefined) return "?";
    if (n < 1024) return n + " B";
    if (n < 1048576) return (n / 1024).toFixed(1) + " KiB";
    return (n / 1048576).toFixed(1) + " MiB";
  }
  function options(job) {
    const out = [];
    if (job.input.aspect_ratio) out.push(job.input.aspect_ratio);
    if (job.input.quality) out.push(job.input.quality);
    const refs = (job.input.image_urls || []).length;
    if (refs) out.push(refs + (refs === 1 ? " reference image" : " reference images"));
    out.push(job.attempts + (job.attempts === 1 ? " attempt" : " attempts"));
    if (job.earlier.length) out.push(job.earlier.length + " earlier");
    return out.join(" · ");
  }
  function metaLine(job) {
    return Object.keys(job.meta).map(function (k) { return k + "=" + text(job.meta[k]); }).join(" · ");
  }
  function shortPrompt(prompt) {
    return prompt.length > PROMPT_CHARS ? prompt.slice(0, PROMPT_CHARS) + "…" : prompt;
  }
  function fit(ratio, boxW, boxH) {
    const scale = Math.min(boxW / ratio[0], boxH / ratio[1]);
    return [Math.max(1, Math.floor(ratio[0] * scale)), Math.max(1, Math.floor(ratio[1] * scale))];
  }
  function image(href, ratio, boxW, boxH, alt, lazy) {
    const img = document.createElement("img");
    const size = fit(ratio, boxW, boxH);
    img.width = size[0];
    img.height = size[1];
    img.style.width = size[0] + "px";
    img.style.height = size[1] + "px";
    if (lazy) img.loading = "lazy";
    img.decoding = "async";
    img.alt = alt;
    img.setAttribute("src", href);
    return img;
  }
  function problem(job, full) {
    const box = el("div", "problem");
    box.appendChild(el("div", "what", WHAT[job.state]));
    let detail = job.error;
    if (job.state === "missing") {
      const bad = job.files.filter(function (f) { return f.status !== "ok"; });
      detail = bad.length
        ? bad.map(function (f) { return f.path + ": " + describeFile(f); }).join("\n")
        : "the ledger lists no file for this job";
    } else if (job.state === "pending" && !detail) {
      detail = job.attempts ? "a run is pending or in flight" : "no run has been made for it yet";
    }
    if (detail) box.appendChild(el("p", "error", full ? detail : detail.slice(0, 600)));
    if (job.fix) box.appendChild(el("code", "fix", job.fix));
    return box;
  }
  function describeFile(f) {
    if (f.status === "missing") return "not on disk";
    if (f.status === "outside") return "recorded outside the output folder; not shown";
    if (f.status === "changed") return "changed on disk (" + bytes(f.disk) + ", saved as " + bytes(f.bytes) + ")";
    return bytes(f.disk);
  }
  function firstFile(job) {
    for (const f of job.files) if (f.href && f.status !== "missing") return f;
    return null;
  }

  // -- the grid -------------------------------------------------------------

  function card(job, pos) {
    const node = el("article", "card state-" + job.state);
    node.setAttribute("role", "listitem");
    node.tabIndex = 0;
    node.dataset.id = job.id;
    node.dataset.pos = pos;
    node.style.width = cardW + "px";
    node.style.height = frameH + BODY_H + "px";
    const frame = el("div", "frame");
    frame.style.height = frameH + "px";
    const file = firstFile(job);
    if (file && (job.state === "succeeded" || job.state === "missing")) {
      frame.appendChild(image(file.href, job.ratio, cardW - 2, frameH, job.input.prompt || job.id, true));
      if (job.state === "missing") frame.appendChild(el("div", "banner", "changed on disk: the next run fetches it again"));
    } else {
      frame.appendChild(problem(job, false));
    }
    node.appendChild(frame);
    const body = el("div", "body");
    const head = el("div", "head");
    head.appendChild(el("span", "id mono", job.id));
    head.appendChild(el("span", "badge " + job.state, job.state));
    body.appendChild(head);
    const prompt = el("p", "prompt", shortPrompt(job.input.prompt || ""));
    prompt.title = shortPrompt(job.input.prompt || "");
    body.appendChild(prompt);
    const more = el("button", "more", "whole prompt and details");
    more.type = "button";
    body.appendChild(more);
    body.appendChild(el("p", "opts", options(job)));
    const meta = metaLine(job);
    if (meta) body.appendChild(el("p", "meta", meta));
    node.appendChild(body);
    return node;
  }

  function layout() {
    const width = grid.clientWidth || document.documentElement.clientWidth - 48;
    cols = Math.max(1, Math.floor((width + GAP) / (CARD_MIN + GAP)));
    cardW = Math.floor((width - GAP * (cols - 1)) / cols);
    frameH = cardW;
    rowH = frameH + BODY_H + GAP;
    const rows = Math.ceil(view.length / cols);
    grid.style.height = Math.max(0, rows * rowH - GAP) + "px";
  }

  function clearCards() {
    for (const node of live.values()) node.remove();
    live.clear();
  }

  function renderVisible() {
    const top = grid.getBoundingClientRect().top;
    const first = Math.max(0, Math.floor(-top / rowH) - OVERSCAN_ROWS);
    const last = Math.floor((window.innerHeight - top) / rowH) + OVERSCAN_ROWS;
    const from = first * cols, to = Math.min(view.length, (last + 1) * cols);
    for (const [pos, node] of live) {
      if (pos < from || pos >= to) { node.remove(); live.delete(pos); }
    }
    for (let pos = from; pos < to; pos++) {
      if (live.has(pos)) continue;
      const node = card(JOBS[view[pos]], pos);
      const row = Math.floor(pos / cols), col = pos % cols;
      node.style.transform = "translate(" + col * (cardW + GAP) + "px," + row * rowH + "px)";
      grid.appendChild(node);
      live.set(pos, node);
    }
  }

  let frameRequested = false;
  function schedule() {
    if (frameRequested) return;
    frameRequested = true;
    requestAnimationFrame(function () { frameRequested = false; renderVisible(); });
  }

  function matches(i) {
    if (state !== "all" && JOBS[i].state !== state) return false;
    if (!query) return true;
    const hay = haystack()[i];
    for (const word of query) if (hay.indexOf(word) < 0) return false;
    return true;
  }

  function apply() {
    view = [];
    for (let i = 0; i < JOBS.length; i++) if (matches(i)) view.push(i);
    shown.textContent = number(view.length) + " of " + number(JOBS.length) + " shown";
    empty.hidden = view.length > 0;
    document.getElementById("copy-ids").textContent = "Copy " + number(view.length) + (view.length === 1 ? " id" : " ids");
    for (const button of document.querySelectorAll("#filters button")) {
      button.setAttribute("aria-pressed", String(button.dataset.state === state));
    }
    clearCards();
    layout();
    renderVisible();
    const hash = new URLSearchParams();
    if (state !== "all") hash.set("state", state);
    if (search.value) hash.set("q", search.value);
    const fragment = hash.toString();
    if (location.hash.slice(1) !== fragment) history.replaceState(null, "", fragment ? "#" + fragment : location.pathname);
  }

  function setQuery(value) {
    query = value.toLowerCase().split(/\s+/).filter(Boolean);
  }

  // -- filters, search, copy ids -------------------------------------------

  const filters = document.getElementById("filters");
  const counts = DATA.summary.counts;
  for (const name of ["all"].concat(DATA.states)) {
    const button = el("button", "", LABELS[name] || name);
    button.type = "button";
    button.dataset.state = name;
    button.appendChild(el("span", "n", number(name === "all" ? JOBS.length : counts[name] || 0)));
    button.addEventListener("click", function () { state = name; apply(); });
    filters.appendChild(button);
  }

  let searchTimer = 0;
  search.addEventListener("input", function () {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(function () { setQuery(search.value); apply(); }, 120);
  });
  search.addEventListener("keydown", function (event) {
    if (event.key === "Enter") { clearTimeout(searchTimer); setQuery(search.value); apply(); }
  });

  document.getElementById("copy-ids").addEventListener("click", function () {
    const ids = view.map(function (i) { return JOBS[i].id; }).join(",");
    const where = DATA.summary.location ? " " + DATA.summary.location : "";
    document.getElementById("copied").hidden = false;
    document.getElementById("copied-ids").value = ids;
    document.getElementById("copied-command").textContent =
      "batchgen retry" + where + " --ids " + (ids || "ID") + "   then   batchgen run " +
      (DATA.summary.manifest || "MANIFEST") + where;
    const status = document.getElementById("copied-status");
    const done = function (ok) {
      status.textContent = ok
        ? "Copied " + number(view.length) + (view.length === 1 ? " id" : " ids") + " to the clipboard."
        : "Select the ids below and copy them (the browser refused the clipboard).";
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(ids).then(function () { done(true); }, function () { done(legacyCopy()); });
    } else {
      done(legacyCopy());
    }
  });
  function legacyCopy() {
    const area = document.getElementById("copied-ids");
    area.focus();
    area.select();
    try { return document.execCommand("copy"); } catch (e) { return false; }
  }
  document.getElementById("copied-close").addEventListener("click", function () {
    document.getElementById("copied").hidden = true;
  });

  // -- the large view --------------------------------------------------------

  grid.addEventListener("click", function (event) {
    const node = event.target.closest(".card");
    if (node && !event.target.closest(".fix")) open(Number(node.dataset.pos));
  });
  grid.addEventListener("keydown", function (event) {
    const node = event.target.closest(".card");
    if (node && (event.key === "Enter" || event.key === " ") && event.target === node) {
      event.preventDefault();
      open(Number(node.dataset.pos));
    }
  });

  function open(pos) {
    if (pos < 0 || pos >= view.length) return;
    current = pos;
    earlierShown = -1;
    fill();
    if (!viewer.open) viewer.showModal();
  }

  function row(table, label, value) {
    if (value === null || value === undefined || value === "") return;
    const tr = document.createElement("tr");
    tr.appendChild(el("th", "", label));
    tr.appendChild(el("td", "", value));
    table.appendChild(tr);
  }

  function fill() {
    const job = JOBS[view[current]];
    document.getElementById("v-pos").textContent = number(current + 1) + " of " + number(view.length);
    document.getElementById("v-prev").disabled = current === 0;
    document.getElementById("v-next").disabled = current === view.length - 1;
    viewer.dataset.id = job.id;
    fillFigure(job);
    const info = document.getElementById("v-info");
    info.replaceChildren();
    const head = el("h2", "mono", job.id);
    info.appendChild(head);
    info.appendChild(el("span", "badge " + job.state, job.state));
    info.appendChild(el("h3", "", "Prompt"));
    info.appendChild(el("p", "full-prompt", job.input.prompt || ""));
    if (job.error) {
      info.appendChild(el("h3", "", job.state === "failed" ? "Error" : "Last error"));
      info.appendChild(el("p", "error", job.error));
    }
    if (job.fix) {
      info.appendChild(el("h3", "", "To fix"));
      info.appendChild(el("code", "fix", job.fix));
    }
    info.appendChild(el("h3", "", "Options"));
    const opts = document.createElement("table");
    for (const key of Object.keys(job.input)) if (key !== "prompt") row(opts, key, text(job.input[key]));
    row(opts, "attempts", String(job.attempts));
    if (job.source) row(opts, "image", job.source === "reused" ? "reused from an identical request" : "found in the folder and adopted");
    if (job.kind) row(opts, "error kind", job.kind);
    if (job.unknown) row(opts, "possible double charges", String(job.unknown));
    row(opts, "run id", job.run);
    info.appendChild(opts);
    if (Object.keys(job.meta).length) {
      info.appendChild(el("h3", "", "Metadata"));
      const meta = document.createElement("table");
      for (const key of Object.keys(job.meta)) row(meta, key, text(job.meta[key]));
      info.appendChild(meta);
    }
    if (job.files.length) {
      info.appendChild(el("h3", "", "Files"));
      const files = document.createElement("table");
      for (const f of job.files) row(files, f.path, describeFile(f) + (f.sha256 ? " · sha256 " + f.sha256.slice(0, 12) + "…" : ""));
      info.appendChild(files);
    }
    if (job.earlier.length) {
      info.appendChild(el("h3", "", "Earlier versions (" + job.earlier.length + ")"));
      const strip = el("div", "versions");
      const latest = firstFile(job);
      const choices = [{ label: "current", href: latest && latest.href, index: -1 }];
      job.earlier.forEach(function (e, index) {
        const label = (when(e.at) || "earlier " + (index + 1)) + (e.exists ? "" : " (file gone)");
        choices.push({ label: label, href: e.exists ? e.href : null, index: e.exists && e.href ? index : null });
      });
      for (const choice of choices) {
        const button = el("button", "version");
        button.type = "button";
        button.setAttribute("aria-pressed", String(choice.index === earlierShown));
        if (choice.href) {
          const img = document.createElement("img");
          img.loading = "lazy";
          img.alt = choice.label;
          img.setAttribute("src", choice.href);
          button.appendChild(img);
        }
        button.appendChild(el("span", "", choice.label));
        if (choice.index === null) button.disabled = true;
        else button.addEventListener("click", function () { earlierShown = choice.index; fill(); });
        strip.appendChild(button);
      }
      info.appendChild(strip);
    }
    if (job.log) {
      info.appendChild(el("h3", "", "Attempts"));
      const log = document.createElement("table");
      for (const a of job.log) row(log, when(a.started_at) || "?", [a.status, a.run_id, a.error].filter(Boolean).join(" · "));
      info.appendChild(log);
    }
  }

  function fillFigure(job) {
    const figure = document.getElementById("v-figure");
    figure.replaceChildren();
    const boxW = Math.min(760, window.innerWidth * 0.55), boxH = window.innerHeight * 0.72;
    if (earlierShown >= 0) {
      const e = job.earlier[earlierShown];
      const ratio = e.w && e.h ? [e.w, e.h] : job.ratio;
      figure.appendChild(image(e.href, ratio, boxW, boxH, "earlier version of " + job.id, false));
      figure.appendChild(el("figcaption", "", "Earlier version" + (e.at ? ", replaced " + when(e.at) : "") + ": " + e.path));
      return;
    }
    const file = firstFile(job);
    if (file && (job.state === "succeeded" || job.state === "missing")) {
      figure.appendChild(image(file.href, job.ratio, boxW, boxH, job.input.prompt || job.id, false));
      figure.appendChild(el("figcaption", "", file.path + (file.w ? " · " + file.w + "×" + file.h : "")));
    } else {
      figure.appendChild(problem(job, true));
    }
  }

  function step(delta) {
    const next = current + delta;
    if (next >= 0 && next < view.length) open(next);
  }
  document.getElementById("v-prev").addEventListener("click", function () { step(-1); });
  document.getElementById("v-next").addEventListener("click", function () { step(1); });
  document.getElementById("v-close").addEventListener("click", function () { viewer.close(); });
  viewer.addEventListener("keydown", function (event) {
    if (event.key === "ArrowLeft") { event.preventDefault(); step(-1); }
    else if (event.key === "ArrowRight") { event.preventDefault(); step(1); }
  });
  viewer.addEventListener("click", function (event) {
    if (event.target === viewer) viewer.close(); // a click on the backdrop
  });
  viewer.addEventListener("close", function () {
    // Back to the grid where the large view was: scroll that card into view and focus it.
    const row = Math.floor(current / cols);
    const top = grid.getBoundingClientRect().top + window.scrollY + row * rowH;
    if (top < window.scrollY + 60 || top + rowH > window.scrollY + window.innerHeight) window.scrollTo(0, top - 80);
    renderVisible();
    const node = live.get(current);
    if (node) node.focus({ preventScroll: true });
  });

  // -- start -----------------------------------------------------------------

  const start = new URLSearchParams(location.hash.slice(1));
  if (start.get("state") && (start.get("state") === "all" || DATA.states.indexOf(start.get("state")) >= 0)) state = start.get("state");
  if (start.get("q")) { search.value = start.get("q"); setQuery(search.value); }
  window.addEventListener("scroll", schedule, { passive: true });
  window.addEventListener("resize", function () { clearCards(); layout(); schedule(); });
  apply();
  performance.mark("batchgen-first-render");
  document.body.dataset.ready = "true";
})();
