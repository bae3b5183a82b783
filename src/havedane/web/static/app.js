// The result page, live: Server-Sent Events tell us the test changed, and we fetch the
// server-rendered fragment (/t/<alias>?fragment=1) and swap it in. When the stream is
// unavailable we poll the same fragment. Without JavaScript the page is complete as
// served. Strings from the network are never turned into markup here: the only markup
// inserted is the fragment that the server rendered (and escaped) itself; everything
// else is set with textContent or as a property.
"use strict";
(function () {
  document.documentElement.classList.add("js");

  const announcer = document.getElementById("announce");
  function announce(text) {
    if (announcer) announcer.textContent = text;
  }

  // -- copy buttons (delegated: the result is re-rendered on every update) ----------
  function fallbackCopy(text) {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (e) {
      ok = false;
    }
    area.remove();
    return ok;
  }

  document.addEventListener("click", async function (ev) {
    const button = ev.target instanceof Element ? ev.target.closest("button.copy") : null;
    if (!button) return;
    const text = button.dataset.copy || "";
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch (e) {
      ok = fallbackCopy(text);
    }
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    button.textContent = ok ? "Copied" : "Select and copy by hand";
    button.classList.toggle("copied", ok);
    announce(ok ? "Copied to the clipboard." : "Could not copy: select the text and copy it by hand.");
    setTimeout(function () {
      button.textContent = label;
      button.classList.remove("copied");
    }, 2000);
  });

  // -- times in the visitor's own time zone ----------------------------------------------
  const formats = {
    datetime: new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "long" }),
    time: new Intl.DateTimeFormat(undefined, { timeStyle: "medium" }),
  };
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      const d = new Date(t.dateTime);
      const format = formats[t.dataset.format] || formats.datetime;
      if (isNaN(d)) return;
      t.title = t.dateTime;
      t.textContent = format.format(d);
    });
  }

  // -- while pending: the grace period's end, counting down ----------------------------------
  // The server renders the time (the verdict comes then at the latest: the API's grace_ends);
  // this only adds how long that is from now. No rule of the verdict is decided here.
  function span(seconds) {
    if (seconds < 60) return seconds + " s";
    const minutes = Math.floor(seconds / 60);
    const rest = seconds % 60;
    return minutes + " min" + (rest ? " " + rest + " s" : "");
  }
  function countdowns() {
    document.querySelectorAll(".countdown[data-until]").forEach(function (el) {
      const left = Math.round((Date.parse(el.dataset.until) - Date.now()) / 1000);
      if (isNaN(left)) return;
      el.textContent = left > 0 ? " (in " + span(left) + ")" : " (any moment now)";
    });
  }
  countdowns();
  setInterval(countdowns, 1000);

  // -- live updates ------------------------------------------------------------------------
  const result = document.getElementById("result");
  if (!result) return;
  const alias = result.dataset.alias;
  const live = document.getElementById("live-status");

  function stateId() {
    const verdict = result.querySelector("#verdict");
    return verdict ? verdict.dataset.state : null;
  }

  // What a person would notice changing: the verdict, each probe's status (cards) or grade
  // (the conformance table's rows for the probes without a card), and the conformance headline.
  function snapshot() {
    const title = result.querySelector("#verdict-title");
    const conformance = result.querySelector("#conformance-headline strong");
    const probes = {};
    result.querySelectorAll("article.probe").forEach(function (card) {
      const host = card.querySelector("h3");
      const label = card.querySelector(".badge .label");
      probes[card.id] = [host ? host.textContent : card.id, label ? label.textContent : ""];
    });
    result.querySelectorAll('tr.row[data-classic="false"]').forEach(function (row) {
      const host = row.querySelector("th");
      const word = row.querySelector(".grade .word");
      probes[row.id] = [host ? host.textContent : row.id, word ? word.textContent : ""];
    });
    return {
      verdict: title ? title.textContent.trim() : "",
      conformance: conformance ? conformance.firstChild.textContent.trim() : "",
      probes: probes,
    };
  }

  // A selector that finds the same control in the new rendering, so focus survives an update.
  function focusKey(el) {
    if (!el || el === document.body || !result.contains(el)) return null;
    if (el.id) return "#" + CSS.escape(el.id);
    if (el.dataset && el.dataset.copy) return 'button.copy[data-copy="' + CSS.escape(el.dataset.copy) + '"]';
    const details = el.closest("details[id]");
    if (el.tagName === "SUMMARY" && details) return "#" + CSS.escape(details.id) + " > summary";
    return null;
  }

  function render(fragment) {
    const before = snapshot();
    const focused = focusKey(document.activeElement);
    const open = new Set();
    result.querySelectorAll("details[id][open]").forEach(function (d) {
      open.add(d.id);
    });
    localTimes(fragment);
    result.replaceChildren(fragment);
    countdowns();
    open.forEach(function (id) {
      const d = document.getElementById(id);
      if (d) d.open = true;
    });
    const refocus = focused ? result.querySelector(focused) : null;
    if (refocus) refocus.focus({ preventScroll: true });
    const after = snapshot();
    const news = [];
    Object.keys(after.probes).forEach(function (id) {
      const was = before.probes[id];
      const now = after.probes[id];
      if (!was || was[1] !== now[1]) news.push(now[0] + ": " + now[1] + ".");
    });
    if (after.conformance && after.conformance !== before.conformance) news.push(after.conformance + ".");
    if (after.verdict !== before.verdict) {
      news.push(after.verdict + ".");
      document.title = after.verdict + " · havedane test " + alias;
    }
    if (news.length) announce(news.join(" "));
    result.dispatchEvent(new CustomEvent("havedane:update", { bubbles: true }));
  }

  let fetching = false;
  let again = false;
  async function refresh() {
    if (fetching) {
      again = true; // a change arrived while fetching: fetch once more when this one is done
      return;
    }
    fetching = true;
    try {
      do {
        again = false;
        const response = await fetch("/t/" + encodeURIComponent(alias) + "?fragment=1", { cache: "no-store" });
        if (response.status === 404) return gone();
        if (!response.ok) break;
        const tpl = document.createElement("template");
        tpl.innerHTML = await response.text(); // the server's own escaped rendering (see the top of this file)
        const verdict = tpl.content.querySelector("#verdict");
        if (!verdict || verdict.dataset.state !== stateId()) render(tpl.content);
      } while (again);
    } catch (e) {
      // offline for a moment: the next event or poll tries again
    } finally {
      fetching = false;
    }
  }

  function setLive(state, text) {
    if (!live) return;
    live.dataset.state = state;
    live.textContent = text;
  }

  let pollTimer = null;
  let source = null;
  let retryTimer = null;

  function poll(every) {
    if (pollTimer) clearInterval(pollTimer);
    pollTimer = setInterval(refresh, every);
  }

  function gone() {
    if (pollTimer) clearInterval(pollTimer);
    if (retryTimer) clearTimeout(retryTimer);
    if (source) source.close();
    setLive("gone", "This test no longer exists (tests are kept for a limited time).");
  }

  function connect() {
    if (!window.EventSource) {
      setLive("polling", "Checking for new mail every few seconds.");
      poll(3000);
      return;
    }
    setLive("connecting", "Connecting for live updates…");
    source = new EventSource("/api/tests/" + encodeURIComponent(alias) + "/events");
    source.addEventListener("open", function () {
      setLive("live", "Live: this page updates by itself as mail arrives.");
      poll(30000); // a safety net for proxies that hold the stream back
    });
    source.addEventListener("update", function (ev) {
      if (ev.lastEventId !== stateId()) refresh();
    });
    source.addEventListener("gone", gone);
    source.addEventListener("error", function () {
      poll(3000);
      if (source.readyState === EventSource.CLOSED) {
        // The server turned the stream down: poll, and try the stream again later.
        setLive("polling", "Live updates are unavailable; checking for new mail every few seconds.");
        if (retryTimer) clearTimeout(retryTimer);
        retryTimer = setTimeout(connect, 30000);
      } else {
        // The browser reconnects by itself, sending Last-Event-ID: only news comes back.
        setLive("reconnecting", "Connection lost; reconnecting (checking every few seconds meanwhile).");
      }
    });
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") refresh();
  });

  localTimes(document);
  connect();
})();
