// The build page, live: follows the log from where the server's rendering
// of it ends (GET /api/builds/{id}/log?follow=1&offset=N), adds each line
// with its runs as text (never HTML), numbers and times it, marks the
// steps as forgexec's "+ command" lines come, and keeps the state, the
// elapsed time and the buttons current.
"use strict";
(() => {
  const log = document.getElementById("log");
  if (!log || typeof ForgeANSI === "undefined") return;
  const id = log.dataset.build;
  const api = "/api/builds/" + encodeURIComponent(id);
  const skew = (Number(log.dataset.now) || Date.now()) - Date.now(); // the server's clock minus ours
  const now = () => Date.now() + skew;
  let started = Number(log.dataset.started) || 0;
  let finished = Number(log.dataset.finished) || 0;
  let final = log.dataset.final === "1";
  let n = (Number(log.dataset.first) || 0) + (Number(log.dataset.lines) || 0);
  let offset = Number(log.dataset.offset) || 0;
  let style = ForgeANSI.style(log.dataset.sgr); // at the start of the open line
  const maxPending = 256 << 10;
  let open = null; // the line being received: {el, lc, raw, over, st}

  const $ = (sel) => document.querySelector(sel);
  const steps = Array.from(document.querySelectorAll("#steps li[data-marker]"));
  let nextStep = Number(($("#steps") || {dataset: {}}).dataset.next) || 0;

  // duration writes ms as the server does (list.go): 45s, 3m 05s, 1h 02m.
  function duration(ms) {
    const t = Math.max(0, Math.round(ms / 1000));
    const h = Math.floor(t / 3600), m = Math.floor(t / 60) % 60, s = t % 60;
    const two = (x) => String(x).padStart(2, "0");
    if (h > 0) return h + "h " + two(m) + "m";
    if (m > 0) return m + "m " + two(s) + "s";
    return s + "s";
  }
  // clock writes a line's time since the build started: 0:05, 1:02:03.
  function clock(ms) {
    const t = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(t / 3600), m = Math.floor(t / 60) % 60, s = t % 60;
    const two = (x) => String(x).padStart(2, "0");
    return (h > 0 ? h + ":" + two(m) : String(m)) + ":" + two(s);
  }

  function newLine() {
    n++;
    const el = document.createElement("div");
    el.className = "ll";
    el.id = "L" + n;
    const a = document.createElement("a");
    a.className = "ln";
    a.href = "#L" + n;
    a.textContent = String(n);
    const lt = document.createElement("span");
    lt.className = "lt";
    if (started) {
      lt.textContent = clock(now() - started);
      lt.title = "received " + new Date(now()).toLocaleTimeString() + ", after the build started";
    }
    const lc = document.createElement("span");
    lc.className = "lc";
    el.append(a, lt, lc);
    if (location.hash === "#" + el.id) {
      el.classList.add("hl");
      requestAnimationFrame(() => el.scrollIntoView({block: "center"}));
    }
    return {el, lc, raw: "", over: 0, st: style};
  }

  // paint renders an open line again from its text so far.
  function paint(line) {
    const r = ForgeANSI.renderLine(line.raw, line.st);
    const kids = r.segs.map((s) => {
      if (!s.cls) return document.createTextNode(s.text);
      const sp = document.createElement("span");
      sp.className = s.cls;
      sp.textContent = s.text;
      return sp;
    });
    if (r.cut > 0 || line.over > 0) {
      const c = document.createElement("span");
      c.className = "cut";
      c.title = "the rest of this line is not shown";
      c.textContent = "…";
      kids.push(c);
    }
    line.lc.replaceChildren(...kids);
    return r.state;
  }

  function step(line) {
    if (nextStep >= steps.length) return;
    const text = line.raw.replace(/\r+$/, "");
    if (line.over > 0 || text !== steps[nextStep].dataset.marker) return;
    if (nextStep > 0) setStep(steps[nextStep - 1], "done");
    const li = steps[nextStep];
    setStep(li, "running");
    const a = li.querySelector("a.goto");
    if (a) a.href = "#L" + n;
    nextStep++;
  }
  function setStep(li, st) {
    li.classList.remove("pending", "running", "done", "failed", "skipped");
    li.classList.add(st);
  }

  // feed takes decoded text from the stream.
  function feed(text) {
    if (text === "") return;
    const atEnd = window.innerHeight + window.scrollY >= document.documentElement.scrollHeight - 40;
    const frag = document.createDocumentFragment();
    const parts = text.split("\n");
    parts.forEach((part, i) => {
      if (part !== "" || i < parts.length - 1) {
        if (!open) {
          open = newLine();
          frag.append(open.el);
        }
        const room = maxPending - open.raw.length;
        if (part.length <= room) open.raw += part;
        else { open.raw += part.slice(0, Math.max(room, 0)); open.over += part.length - Math.max(room, 0); }
      }
      if (i < parts.length - 1) { // the line is whole
        style = paint(open);
        step(open);
        open = null;
      }
    });
    if (open) paint(open);
    log.append(frag);
    tick(); // the elapsed time agrees with the newest line's
    if (atEnd && !location.hash) window.scrollTo(0, document.documentElement.scrollHeight);
  }

  function setText(sel, text) {
    const el = $(sel);
    if (el) el.textContent = text;
  }

  function tick() {
    if (started) setText("#elapsed", duration((finished || now()) - started));
  }

  // update shows the build as the API gives it.
  function update(b) {
    const s = $("#state");
    if (s) { s.textContent = b.state; s.className = "state " + b.state; }
    const r = $("#reason");
    if (r) { r.textContent = b.reason || ""; r.hidden = !b.reason; }
    if (b.exit_code !== null && b.exit_code !== undefined) setText("#exit", String(b.exit_code));
    const node = $("#node");
    if (node && b.node_id && node.textContent === "—") node.textContent = b.node_id.slice(0, 12);
    if (b.started) started = Date.parse(b.started);
    if (b.finished) finished = Date.parse(b.finished);
    if (b.awaiting_approval === false) { const ap = $("#approve"); if (ap) ap.remove(); }
    tick();
    if (["success", "failure", "error"].includes(b.state)) end(b);
  }

  async function end(b) {
    if (final) return;
    final = true;
    if (open) { style = paint(open); step(open); open = null; }
    for (const sel of ["#cancel", "#approve"]) { const f = $(sel); if (f) f.remove(); }
    steps.forEach((li, i) => {
      if (i < nextStep - 1) setStep(li, "done");
      else if (i === nextStep - 1) setStep(li, b.state === "success" ? "done" : "failed");
      else setStep(li, "skipped");
    });
    log.dataset.final = "1";
    try { await showArtifacts(id); } catch (e) { /* the list stays as the page came */ }
    log.dataset.done = "1";
  }

  async function build() {
    const res = await fetch(api, {headers: {"Accept": "application/json"}});
    if (!res.ok) throw new Error("build: " + res.status);
    return res.json();
  }

  const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

  function note(text) {
    const p = $("#log-note");
    if (p) { p.textContent = text; p.hidden = false; }
  }

  // follow reads the log from offset until the build is over; a dropped
  // stream is taken up again where it broke.
  async function follow() {
    let failures = 0;
    while (!final) {
      try {
        const res = await fetch(api + "/log?follow=1&offset=" + offset);
        if (!res.ok) throw new Error("log: " + res.status);
        const rd = res.body.getReader();
        const dec = new TextDecoder();
        for (;;) {
          const {value, done} = await rd.read();
          if (done) break;
          offset += value.byteLength;
          feed(dec.decode(value, {stream: true}));
          failures = 0;
        }
        feed(dec.decode());
        update(await build()); // the stream ends when the build does
        if (!final) await sleep(1000);
      } catch (e) {
        if (++failures > 5) { note("The live log stopped (" + e.message + "): reload the page."); return; }
        await sleep(1000 * failures);
      }
    }
  }

  async function poll() {
    while (!final) {
      await sleep(3000);
      if (final) return;
      try { update(await build()); } catch (e) { /* the next poll tries again */ }
    }
  }

  // A line's link highlights its line, also when only the hash changes.
  function highlight() {
    document.querySelectorAll("#log .ll.hl").forEach((el) => el.classList.remove("hl"));
    const el = location.hash.startsWith("#L") && document.getElementById(location.hash.slice(1));
    if (el) el.classList.add("hl");
  }
  window.addEventListener("hashchange", highlight);
  highlight();
  if (!final) {
    const timer = setInterval(() => { tick(); if (final) clearInterval(timer); }, 1000);
    follow();
    poll();
  }
})();

// Lists the artifacts of a build that ended while the page was open, as
// the page lists those of a build that had ended: names as text, links
// to their downloads.
async function showArtifacts(id) {
  const sec = document.getElementById("artifacts");
  if (!sec || sec.dataset.done) return;
  sec.dataset.done = "1";
  const res = await fetch("/api/builds/" + encodeURIComponent(id) + "/artifacts");
  if (!res.ok) return;
  const list = await res.json();
  const ul = sec.querySelector("ul");
  for (const a of list) {
    const li = document.createElement("li");
    const link = document.createElement("a");
    link.href = "/api/builds/" + encodeURIComponent(id) + "/artifacts/" + a.path.split("/").map(encodeURIComponent).join("/");
    link.download = "";
    link.textContent = a.path;
    li.append(link, a.link ? " (link to " + a.link + ")" : " " + a.size + " bytes");
    if (a.original_size) li.append(" (cut from " + a.original_size + " bytes)");
    ul.append(li);
  }
  if (list.length) sec.hidden = false;
}
