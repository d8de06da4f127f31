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
  pre.dataset.done = "1";
})();
