// Live console: when /events reports a sync of a key this page shows, re-fetch the page's
// live region (its URL is data-live) and swap it in; "tick" events refresh it now and then.
(function () {
  "use strict";
  var body = document.body;
  var region = document.getElementById("live");
  var state = document.getElementById("live-state");
  if (!region || !body.dataset.live || !window.EventSource) {
    if (state) { state.textContent = ""; }
    return;
  }
  var key = body.dataset.key || null;
  var busy = false, again = false, timer = null;

  function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    again = false;
    fetch(body.dataset.live, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) { if (html !== null) { region.innerHTML = html; } })
      .catch(function () { /* the next event retries */ })
      .then(function () { busy = false; if (again) { schedule(0); } });
  }

  function schedule(delay) {
    if (timer === null) { timer = setTimeout(refresh, delay); }
  }

  function shown(keys) {
    if (key !== null) { return keys.indexOf(key) >= 0; }
    var rows = region.querySelectorAll("tr[data-key]");
    for (var i = 0; i < rows.length; i++) {
      if (keys.indexOf(rows[i].dataset.key) >= 0) { return true; }
    }
    return rows.length === 0;
  }

  var source = new EventSource(body.dataset.events);
  source.addEventListener("open", function () { state.className = "live-state on"; });
  source.addEventListener("error", function () { state.className = "live-state"; });
  source.addEventListener("sync", function (event) {
    var data = JSON.parse(event.data);
    if (data.all || shown(data.keys || [])) { schedule(key !== null ? 0 : 250); }
    else if (key === null) { schedule(1000); }  // counts and panels still changed
  });
  source.addEventListener("tick", function () { if (!document.hidden) { schedule(0); } });
  window.addEventListener("pagehide", function () { source.close(); });
})();
