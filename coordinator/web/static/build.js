// Follows a build's log into <pre id="log"> as text (never HTML), then
// shows the build's final state.
(async () => {
  const pre = document.getElementById("log");
  const id = pre.dataset.build;
  const res = await fetch("/api/builds/" + encodeURIComponent(id) + "/log?follow=1");
  pre.textContent = "";
  if (!res.ok) { pre.textContent = "log unavailable: " + res.status; return; }
  const rd = res.body.getReader(); const dec = new TextDecoder();
  for (;;) {
    const {value, done} = await rd.read();
    if (done) break;
    pre.textContent += dec.decode(value, {stream: true});
  }
  const b = await (await fetch("/api/builds/" + encodeURIComponent(id))).json();
  const s = document.getElementById("state");
  s.textContent = b.state; s.className = b.state;
  const c = document.getElementById("cancel");
  if (c) c.remove();
  try { await showArtifacts(id); } catch (e) { /* the list stays as the page came */ }
  pre.dataset.done = "1";
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
