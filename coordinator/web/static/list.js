// The builds page, live: while it shows the newest builds, its rows are
// fetched again every few seconds (the same page, rendered and escaped by
// the server) and replace the table's body.
"use strict";
(() => {
  const table = document.getElementById("builds");
  if (!table || table.dataset.live !== "1") return;
  const every = 5000;
  async function refresh() {
    if (document.visibilityState !== "visible") return;
    try {
      const res = await fetch(location.href, {headers: {"Accept": "text/html"}});
      if (!res.ok) return;
      const doc = new DOMParser().parseFromString(await res.text(), "text/html");
      const body = doc.querySelector("#builds tbody");
      if (body) table.tBodies[0].replaceWith(document.adoptNode(body));
    } catch (e) { /* the next refresh tries again */ }
  }
  setInterval(refresh, every);
})();
