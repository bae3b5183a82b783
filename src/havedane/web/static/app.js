// Live updates for a result page: Server-Sent Events, with polling as the fallback.
// The server renders the result; this file only fetches the fresh fragment and
// shows times in the visitor's own time zone. Nothing from the network is
// inserted as markup except the server-rendered (escaped) fragment.
"use strict";
(function () {
  const result = document.getElementById("result");
  if (!result) return;
  const alias = result.dataset.alias;
  const live = document.getElementById("live-status");

  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) t.textContent = d.toLocaleString();
    });
  }

  let fetching = null;
  async function refresh() {
    if (fetching) return fetching;
    fetching = (async function () {
      try {
        const r = await fetch("/t/" + alias + "?fragment=1", { cache: "no-store" });
        if (r.ok) {
          const html = await r.text();
          const tpl = document.createElement("template");
          tpl.innerHTML = html;
          localTimes(tpl.content);
          result.replaceChildren(tpl.content);
        }
      } finally {
        fetching = null;
      }
    })();
    return fetching;
  }

  function poll() {
    live.textContent = "Checking for new mail every few seconds.";
    setInterval(refresh, 3000);
  }

  function listen() {
    if (!window.EventSource) return poll();
    let failures = 0;
    const es = new EventSource("/api/tests/" + alias + "/events");
    es.addEventListener("update", function () {
      failures = 0;
      live.textContent = "Live: updates appear here as mail arrives.";
      refresh();
    });
    es.onerror = function () {
      failures += 1;
      live.textContent = "Connection lost, reconnecting…";
      if (failures >= 5) { es.close(); poll(); }
    };
  }

  const copy = document.getElementById("copy");
  if (copy) copy.addEventListener("click", async function () {
    const status = document.getElementById("copied");
    try {
      await navigator.clipboard.writeText(copy.dataset.copy);
      status.textContent = "Copied.";
    } catch (e) {
      status.textContent = "Select the addresses above and copy them.";
    }
  });

  localTimes(document);
  listen();
})();
