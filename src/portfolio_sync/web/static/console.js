// Live console: when /events reports a sync of a key this page shows, re-fetch the page's
// live region (its URL is data-live) and morph it in: only nodes that changed are touched,
// so unchanged thumbnails are not loaded again. "tick" events refresh it now and then.
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

  function sameImage(a, b) {
    return a.nodeName === "IMG" && b.nodeName === "IMG" && a.getAttribute("src") === b.getAttribute("src");
  }

  function morph(old, next) {
    var olds = old.childNodes, nexts = next.childNodes;
    for (var i = 0; i < nexts.length; i++) {
      var a = olds[i], b = nexts[i];
      if (a === undefined) { old.appendChild(b.cloneNode(true)); continue; }
      if (a.isEqualNode(b)) { continue; }
      if (a.nodeType === 1 && b.nodeType === 1 && a.nodeName === b.nodeName &&
          (a.nodeName !== "IMG" || sameImage(a, b))) {
        for (var j = a.attributes.length - 1; j >= 0; j--) {
          if (!b.hasAttribute(a.attributes[j].name)) { a.removeAttribute(a.attributes[j].name); }
        }
        for (var k = 0; k < b.attributes.length; k++) {
          if (a.getAttribute(b.attributes[k].name) !== b.attributes[k].value) {
            a.setAttribute(b.attributes[k].name, b.attributes[k].value);
          }
        }
        morph(a, b);
      } else {
        old.replaceChild(b.cloneNode(true), a);
      }
    }
    while (olds.length > nexts.length) { old.removeChild(old.lastChild); }
  }

  function refresh() {
    timer = null;
    if (busy) { again = true; return; }
    busy = true;
    again = false;
    fetch(body.dataset.live, { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var next = document.createElement("template");
        next.innerHTML = html;
        morph(region, next.content);
      })
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
