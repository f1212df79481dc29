/*! otel-progress.js: the otel_progress progress widget. One file, no dependencies, no build.
 *
 *   <script src="/static/otel-progress.js"></script>
 *   <div id="progress"></div>
 *   <script>
 *     const handle = OtelProgress.mount(document.getElementById("progress"), {
 *       url: "/tasks/" + taskId,                                  // the status endpoint
 *       traceUrl: "http://localhost:16686/trace/{trace_id}",      // optional "View trace" link
 *       pollInterval: 1000,                                       // ms between polls
 *       events: true,                                             // server-sent events first
 *       onSuccess: (bar, message, result) => { ... },             // celery-progress's callbacks
 *     });
 *     handle.stop();                                              // stop polling from code
 *   // cancellable: true adds a Cancel button (POST <url>/cancel, or options.cancelUrl)
 *   </script>
 *
 * Or without any script of your own: <div data-otel-progress data-url="/tasks/ID"
 * data-trace-url="..."></div> mounts itself when the page has loaded.
 *
 * What it shows: the overall bar (the first role="progressbar", aria-label "overall"), the task
 * state, the latest notification, the section tree with each section's state and a failed one's
 * error type, a "View trace" link, and a visible notice when the payload is stale. It polls with
 * backoff (network errors, 503 and its Retry-After), stops at a final state, never moves a bar
 * backwards, and inserts every string with textContent: nothing from the server becomes HTML.
 * Elapsed time, rate and ETA (elapsed_s, rate, eta_s) show under the bar and beside sections.
 *
 * Where the browser has EventSource (and options.events is not false) it first listens to
 * url + "/events" (server-sent events, GET /tasks/<id>/events on the Starlette/FastAPI app),
 * and falls back to polling when that stream is refused or unavailable (a 404 from an adapter
 * without it, a 403, a 503, repeated errors). data-transport on the widget says which is used.
 *
 * Callbacks take celery-progress's arguments:
 *   onProgress(barElement, messageElement, progress)   progress: {pending, current, total,
 *                                                       percent, description}
 *   onSuccess(barElement, messageElement, result)
 *   onError(barElement, messageElement, message, response)   a failed/revoked task, or an HTTP
 *                                                       ("HTTP Code 503", response) or network
 *                                                       ("Network Error") error
 *   onRetry(barElement, messageElement, message, retrySeconds)
 *   onIgnored(barElement, messageElement, result)
 *   onResult(resultElement, result)                    when the server includes the result
 */
(function (root) {
  "use strict";

  var FINAL = { succeeded: true, failed: true, revoked: true };
  var STOP_ON = { 400: true, 401: true, 403: true };
  var MAX_DELAY = 30000;
  var STYLE_ID = "otel-progress-style";
  var CSS = [
    ".otp{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2328;",
    "border:1px solid #d0d7de;border-radius:8px;padding:12px 14px;background:#fff}",
    ".otp-head{display:flex;gap:8px;align-items:baseline;flex-wrap:wrap;margin-bottom:6px}",
    ".otp-name{font-weight:600}",
    ".otp-badge{font-size:12px;padding:1px 8px;border-radius:10px;background:#ddf4ff;color:#0969da}",
    ".otp-badge[data-state=succeeded]{background:#dafbe1;color:#1a7f37}",
    ".otp-badge[data-state=failed],.otp-badge[data-state=revoked]{background:#ffebe9;color:#cf222e}",
    ".otp-badge[data-state=retrying]{background:#fff8c5;color:#9a6700}",
    ".otp-badge[data-state=queued]{background:#eaeef2;color:#57606a}",
    ".otp-row{display:flex;gap:8px;align-items:center}",
    ".otp-bar{flex:1;height:10px;background:#eaeef2;border-radius:5px;overflow:hidden}",
    ".otp-fill{height:100%;width:0;background:#0969da;transition:width .3s ease}",
    ".otp[data-state=succeeded] .otp-overall .otp-fill{background:#1a7f37}",
    ".otp[data-state=failed] .otp-overall .otp-fill,",
    ".otp[data-state=revoked] .otp-overall .otp-fill{background:#cf222e}",
    ".otp-percent{min-width:3.5em;text-align:right;font-variant-numeric:tabular-nums}",
    ".otp-note{margin:6px 0;color:#57606a;min-height:1.45em;overflow-wrap:anywhere}",
    ".otp-stale,.otp-status{margin:6px 0;padding:4px 8px;border-radius:4px;background:#fff8c5;",
    "color:#6c4b00}",
    ".otp-sections,.otp-sections ol{list-style:none;margin:0;padding-left:0}",
    ".otp-sections ol{padding-left:18px;border-left:1px dotted #d0d7de;margin-left:4px}",
    ".otp-section{margin:4px 0}",
    ".otp-section-head{display:grid;grid-template-columns:minmax(6em,14em) 10em auto;gap:10px;",
    "align-items:center}",
    ".otp-section-name{overflow-wrap:anywhere}",
    ".otp-section .otp-bar{height:6px}",
    ".otp-error-message{margin-left:2px}",
    ".otp-section[data-state=succeeded] > .otp-section-head .otp-fill{background:#1a7f37}",
    ".otp-section[data-state=failed] > .otp-section-head .otp-fill{background:#cf222e}",
    ".otp-section-state{font-size:12px;color:#57606a}",
    ".otp-section[data-state=failed] > .otp-section-head .otp-section-state{color:#cf222e}",
    ".otp-error{font-family:ui-monospace,monospace;font-size:12px;color:#cf222e}",
    ".otp-foot{margin-top:8px;display:flex;gap:12px;font-size:12px;color:#57606a}",
    ".otp-foot a{color:#0969da}",
    ".otp-eta{font-size:12px;color:#57606a;margin:2px 0;font-variant-numeric:tabular-nums}",
    ".otp-section-eta{font-size:12px;color:#57606a;margin-left:6px}",
    ".otp-cancel{margin-left:auto;font:inherit;font-size:12px;padding:1px 10px;border-radius:6px;",
    "border:1px solid #cf222e;background:#fff;color:#cf222e;cursor:pointer}",
    ".otp-cancel[disabled]{opacity:.6;cursor:default}",
    ".otp-section[data-state=revoked] > .otp-section-head .otp-fill{background:#cf222e}",
    "[hidden]{display:none!important}"
  ].join("");

  function duration(seconds) {
    var s = Math.max(0, Math.round(Number(seconds)));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  function isNumber(value) {
    return typeof value === "number" && isFinite(value);
  }

  // "elapsed 12 s · 3.5/s · about 40 s left" (each part only when the payload has it)
  function timing(data, running) {
    var parts = [];
    if (isNumber(data.elapsed_s)) parts.push("elapsed " + duration(data.elapsed_s));
    if (running && isNumber(data.rate) && data.rate > 0) {
      parts.push((data.rate >= 10 ? Math.round(data.rate) : data.rate.toFixed(2)) + "/s");
    }
    if (running && isNumber(data.eta_s)) parts.push("about " + duration(data.eta_s) + " left");
    return parts.join(" \u00b7 ");
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function percentOf(value) {
    var n = Number(value);
    if (!isFinite(n)) return 0;
    return Math.max(0, Math.min(100, n));
  }

  function percentText(value) {
    return (Math.round(value * 10) / 10) + "%";
  }

  function makeBar(label) {
    var bar = el("div", "otp-bar");
    bar.setAttribute("role", "progressbar");
    bar.setAttribute("aria-label", label);
    bar.setAttribute("aria-valuemin", "0");
    bar.setAttribute("aria-valuemax", "100");
    bar.setAttribute("aria-valuenow", "0");
    var fill = el("div", "otp-fill");
    bar.appendChild(fill);
    return {
      element: bar,
      set: function (value) {
        bar.setAttribute("aria-valuenow", String(Math.round(value * 100) / 100));
        fill.style.width = value + "%";
      }
    };
  }

  /** A trace link from a template: only http(s), the id percent-encoded, else null. */
  function traceHref(template, traceId) {
    if (!template || typeof traceId !== "string" || !/^[0-9a-fA-F]{16,32}$/.test(traceId)) {
      return null;
    }
    var href = String(template).split("{trace_id}").join(encodeURIComponent(traceId));
    try {
      var url = new URL(href, document.baseURI);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch (e) {
      return null;
    }
  }

  function call(fn, args) {
    if (typeof fn !== "function") return;
    try {
      fn.apply(null, args);
    } catch (e) {
      if (root.console) root.console.error("otel-progress: a callback raised", e);
    }
  }

  function injectStyle() {
    if (root.OtelProgress && root.OtelProgress.noStyle) return;
    if (document.getElementById(STYLE_ID)) return;
    var style = el("style");
    style.id = STYLE_ID;
    style.textContent = CSS;
    (document.head || document.documentElement).appendChild(style);
  }

  function mount(element, options) {
    if (!element || typeof element.appendChild !== "function") {
      throw new TypeError("OtelProgress.mount needs a DOM element");
    }
    options = options || {};
    if (!options.url) throw new TypeError("OtelProgress.mount needs options.url");
    if (element.__otelProgress) element.__otelProgress.stop();
    injectStyle();

    var pollInterval = Math.max(100, Number(options.pollInterval) || 1000);
    var url = String(options.url);
    var cancellable = options.cancellable === true;
    var cancelUrl = options.cancelUrl ? String(options.cancelUrl)
      : url.split("?")[0].replace(/\/+$/, "") + "/cancel";

    // --- the widget's DOM (built once; every text goes in through textContent) -------------
    element.textContent = "";
    var widget = el("div", "otp");
    widget.setAttribute("data-state", "queued");
    var head = el("div", "otp-head");
    var name = el("span", "otp-name", "");
    var badge = el("span", "otp-badge", "queued");
    badge.setAttribute("data-state", "queued");
    head.appendChild(name);
    head.appendChild(badge);
    var cancelButton = el("button", "otp-cancel", "Cancel");
    cancelButton.type = "button";
    cancelButton.hidden = !cancellable;
    head.appendChild(cancelButton);
    var row = el("div", "otp-row otp-overall");
    var overall = makeBar("overall");
    var percent = el("span", "otp-percent", "0%");
    row.appendChild(overall.element);
    row.appendChild(percent);
    var eta = el("div", "otp-eta", "");
    var note = el("p", "otp-note", "");
    note.setAttribute("aria-live", "polite");
    var stale = el("p", "otp-stale", "");
    stale.hidden = true;
    var status = el("p", "otp-status", "");
    status.hidden = true;
    status.setAttribute("role", "status");
    var sections = el("ol", "otp-sections");
    var result = el("div", "otp-result");
    result.hidden = true;
    var foot = el("div", "otp-foot");
    var trace = el("a", "otp-trace", "View trace");
    trace.hidden = true;
    trace.rel = "noopener noreferrer";
    trace.target = "_blank";
    var updated = el("span", "otp-updated", "");
    foot.appendChild(trace);
    foot.appendChild(updated);
    [head, row, eta, note, stale, status, sections, result, foot].forEach(function (node) {
      widget.appendChild(node);
    });
    element.appendChild(widget);

    // --- state -----------------------------------------------------------------------------
    var timer = null;
    var controller = null;
    var source = null; // the EventSource while server-sent events carry the payload
    var stopped = false;
    var failures = 0;
    var polls = 0;
    var last = null;
    var attempt = null;
    var shownOverall = 0;
    var shownSections = {}; // section key -> highest percent shown in this attempt

    function progressOf(data) {
      return {
        pending: data.pending === true,
        current: data.current,
        total: data.total,
        percent: percentOf(data.percent),
        description: data.description || ""
      };
    }

    function renderSections(list, parent, prefix) {
      var seen = {};
      (Array.isArray(list) ? list : []).forEach(function (section) {
        if (!section || typeof section !== "object") return;
        var label = String(section.name === undefined ? "" : section.name);
        var item = el("li", "otp-section");
        if (typeof section.omitted === "number") {
          item.className = "otp-section otp-omitted";
          item.textContent = section.omitted + " more sections";
          parent.appendChild(item);
          return;
        }
        seen[label] = (seen[label] || 0) + 1;
        var key = prefix + "/" + label + "#" + seen[label];
        var state = String(section.state || "running");
        var value = state === "succeeded" ? 100 : percentOf(section.percent);
        value = Math.max(value, shownSections[key] || 0);
        shownSections[key] = value;
        item.setAttribute("data-state", state);
        var sectionHead = el("div", "otp-section-head");
        sectionHead.appendChild(el("span", "otp-section-name", label));
        var bar = makeBar(label);
        bar.set(value);
        sectionHead.appendChild(bar.element);
        var stateText = el("span", "otp-section-status");
        stateText.appendChild(el("span", "otp-section-state", state));
        if (state === "failed" && section.error_type) {
          stateText.appendChild(document.createTextNode(" "));
          stateText.appendChild(el("span", "otp-error", section.error_type));
        }
        if (state === "running" && isNumber(section.eta_s)) {
          stateText.appendChild(el("span", "otp-section-eta", duration(section.eta_s) + " left"));
        }
        sectionHead.appendChild(stateText);
        item.appendChild(sectionHead);
        if (state === "failed" && section.error) {
          var message = el("div", "otp-error otp-error-message", section.error);
          item.appendChild(message);
        }
        if (Array.isArray(section.children) && section.children.length) {
          var children = el("ol");
          renderSections(section.children, children, key);
          item.appendChild(children);
        }
        parent.appendChild(item);
      });
    }

    function render(data) {
      if (data.attempt !== attempt) {
        attempt = data.attempt;
        shownOverall = 0;
        shownSections = {};
      }
      var state = String(data.state || "running");
      var value = Math.max(percentOf(data.percent), shownOverall);
      if (state === "succeeded") value = 100;
      shownOverall = value;
      widget.setAttribute("data-state", state);
      badge.setAttribute("data-state", state);
      var label = state;
      if (data.celery_state && ["PENDING", "RECEIVED", "STARTED", "PROGRESS", "SUCCESS",
        "FAILURE", "RETRY", "REVOKED"].indexOf(String(data.celery_state)) < 0) {
        label += " (" + String(data.celery_state) + ")";
      }
      if (state === "retrying" && data.retry_at) {
        var due = new Date(String(data.retry_at));
        if (!isNaN(due.getTime())) label += " at " + due.toLocaleTimeString();
      }
      badge.textContent = label;
      cancelButton.hidden = !cancellable || !!FINAL[state];
      name.textContent = data.task_name ? String(data.task_name) : "";
      overall.set(value);
      // an estimate while the number of sections is unknown (the payload says indeterminate)
      percent.textContent = (data.indeterminate && !FINAL[state] ? "~" : "") + percentText(value);
      var message = data.description ? String(data.description) : "";
      if (!message && FINAL[state] && data.exc_type) {
        message = String(data.exc_type) + (data.exc_message ? ": " + data.exc_message : "");
      }
      note.textContent = message;
      eta.textContent = timing(data, !FINAL[state]);
      if (data.stale === true) {
        var since = data.updated ? new Date(String(data.updated)) : null;
        stale.textContent = "No progress reported since " +
          (since && !isNaN(since.getTime()) ? since.toLocaleString() : "a while") +
          ": the task may have stopped.";
        stale.hidden = false;
        widget.classList.add("otp-is-stale");
      } else {
        stale.hidden = true;
        widget.classList.remove("otp-is-stale");
      }
      widget.setAttribute("data-stale", data.stale === true ? "true" : "false");
      sections.textContent = "";
      renderSections(data.sections, sections, "");
      var href = traceHref(options.traceUrl, data.trace_id);
      if (href) {
        trace.href = href;
        trace.hidden = false;
      } else {
        trace.removeAttribute("href");
        trace.hidden = true;
      }
      var when = data.updated ? new Date(String(data.updated)) : null;
      updated.textContent = when && !isNaN(when.getTime()) ? "updated " + when.toLocaleString()
        : "";
      updated.title = data.updated ? String(data.updated) : "";
      if (Object.prototype.hasOwnProperty.call(data, "result") && FINAL[state]) {
        result.textContent = typeof data.result === "string" ? data.result
          : JSON.stringify(data.result);
        result.hidden = false;
      }
    }

    function notify(data) {
      var state = String(data.state || "running");
      var progress = progressOf(data);
      call(options.onProgress, [overall.element, note, progress]);
      var hasResult = Object.prototype.hasOwnProperty.call(data, "result");
      if (state === "retrying") {
        var due = data.retry_at ? new Date(String(data.retry_at)).getTime() : NaN;
        var seconds = isNaN(due) ? "Unknown" : Math.max(0, Math.round((due - Date.now()) / 1000));
        call(options.onRetry, [overall.element, note, progress.description || "retrying",
          seconds]);
        return;
      }
      if (!FINAL[state]) return;
      if (data.celery_state === "IGNORED") {
        call(options.onIgnored, [overall.element, note, hasResult ? data.result : undefined]);
      } else if (state === "succeeded") {
        call(options.onSuccess, [overall.element, note, hasResult ? data.result : undefined]);
      } else {
        var exc = data.exc_type ? String(data.exc_type) + (data.exc_message ? ": " +
          data.exc_message : "") : (state === "revoked" ? "Task revoked" : "");
        call(options.onError, [overall.element, note, exc]);
      }
      if (hasResult) call(options.onResult, [result, data.result]);
    }

    function showStatus(text) {
      status.textContent = text;
      status.hidden = !text;
    }

    function schedule(ms) {
      if (stopped) return;
      timer = root.setTimeout(poll, ms);
    }

    function backoff(retryAfterSeconds) {
      var ms = Math.min(MAX_DELAY, pollInterval * Math.pow(2, Math.min(failures, 8)));
      if (retryAfterSeconds > 0) ms = Math.max(ms, Math.min(60, retryAfterSeconds) * 1000);
      return ms;
    }

    function finish() {
      stopped = true;
      if (source) source.close();
      source = null;
      widget.setAttribute("data-polling", "false");
    }

    function onData(data) {
      if (!data || typeof data !== "object") throw new TypeError("not a payload");
      last = data;
      failures = 0;
      showStatus("");
      render(data);
      notify(data);
      if (FINAL[String(data.state)]) {
        finish();
      } else if (!source) {
        schedule(pollInterval);
      }
    }

    function onFailure(text, response) {
      failures += 1;
      var retryAfter = response ? Number(response.headers.get("Retry-After")) : 0;
      var wait = backoff(retryAfter);
      showStatus(text + (stopped ? "" : "; trying again in " + Math.round(wait / 1000) + " s"));
      call(options.onError, response ? [overall.element, note, "HTTP Code " + response.status,
        response] : [overall.element, note, "Network Error"]);
      schedule(wait);
    }

    function poll() {
      timer = null;
      if (stopped) return;
      polls += 1;
      controller = typeof AbortController === "function" ? new AbortController() : null;
      var init = { headers: { Accept: "application/json" }, credentials: "same-origin",
        cache: "no-store" };
      if (controller) init.signal = controller.signal;
      root.fetch(url, init).then(function (response) {
        if (stopped) return;
        if (response.status === 200) {
          return response.json().then(onData).catch(function () {
            if (!stopped) onFailure("The status answer could not be read", null);
          });
        }
        if (STOP_ON[response.status]) {
          finish();
          showStatus(response.status === 400 ? "This is not a valid task id."
            : "You may not see this task.");
          call(options.onError, [overall.element, note, "HTTP Code " + response.status,
            response]);
          return;
        }
        onFailure(response.status === 404 ? "No such task (yet)"
          : response.status === 503 ? "The progress store is not answering"
            : "The status server answered " + response.status, response);
      }, function () {
        if (!stopped) onFailure("Cannot reach the status server", null);
      });
    }

    function eventsUrl() {
      var query = url.indexOf("?");
      return query < 0 ? url.replace(/\/+$/, "") + "/events"
        : url.slice(0, query).replace(/\/+$/, "") + "/events" + url.slice(query);
    }

    // Server-sent events first; polling when the stream is refused or keeps failing. The
    // browser reconnects a dropped stream itself (with Last-Event-ID): that is not a failure.
    function listen() {
      var received = false;
      var errors = 0;
      try {
        source = new root.EventSource(eventsUrl(), { withCredentials: true });
      } catch (err) {
        source = null;
        fallBack();
        return;
      }
      widget.setAttribute("data-transport", "events");
      source.addEventListener("progress", function (event) {
        if (stopped) return;
        received = true;
        errors = 0;
        var data;
        try {
          data = JSON.parse(event.data);
        } catch (err) {
          return;
        }
        onData(data);
      });
      source.addEventListener("gone", function () {
        if (!stopped) fallBack();
      });
      source.onerror = function () {
        if (stopped || !source) return;
        errors += 1;
        if (!received || source.readyState === 2 || errors >= 3) fallBack();
      };
    }

    function fallBack() {
      if (source) source.close();
      source = null;
      widget.setAttribute("data-transport", "polling");
      if (!stopped && timer === null) poll();
    }

    function requestCancel() {
      cancelButton.disabled = true;
      cancelButton.textContent = "Cancelling…";
      // a JSON body and a custom header: a cross-site form can send neither (CSRF)
      root.fetch(cancelUrl, { method: "POST", credentials: "same-origin", cache: "no-store",
        headers: { "Content-Type": "application/json", "X-OTel-Progress": "cancel",
          Accept: "application/json" }, body: "{}" }).then(function (response) {
        if (response.status === 202 || response.status === 409) {
          cancelButton.textContent = response.status === 202 ? "Cancel requested" : "Finished";
          widget.setAttribute("data-cancel", response.status === 202 ? "requested" : "late");
          if (!stopped) {
            if (timer !== null) root.clearTimeout(timer);
            schedule(Math.min(pollInterval, 500));
          }
          return;
        }
        cancelButton.disabled = false;
        cancelButton.textContent = "Cancel";
        showStatus("The cancel was not accepted (HTTP " + response.status + ").");
      }, function () {
        cancelButton.disabled = false;
        cancelButton.textContent = "Cancel";
        showStatus("Cannot reach the status server to cancel.");
      });
    }
    cancelButton.addEventListener("click", requestCancel);

    var handle = {
      /** Stop polling now (an in-flight request is aborted). */
      stop: function () {
        if (timer !== null) root.clearTimeout(timer);
        timer = null;
        if (controller) controller.abort();
        finish();
      }
    };
    Object.defineProperty(handle, "polling", { get: function () { return !stopped; } });
    Object.defineProperty(handle, "polls", { get: function () { return polls; } });
    Object.defineProperty(handle, "payload", { get: function () { return last; } });
    Object.defineProperty(handle, "element", { value: widget });
    element.__otelProgress = handle;
    widget.setAttribute("data-polling", "true");
    if (options.events !== false && typeof root.EventSource === "function") {
      listen();
    } else {
      widget.setAttribute("data-transport", "polling");
      poll();
    }
    return handle;
  }

  function autoMount() {
    var nodes = document.querySelectorAll("[data-otel-progress]");
    Array.prototype.forEach.call(nodes, function (node) {
      if (node.__otelProgress || !node.getAttribute("data-url")) return;
      mount(node, {
        url: node.getAttribute("data-url"),
        traceUrl: node.getAttribute("data-trace-url") || null,
        cancellable: node.getAttribute("data-cancellable") === "true",
        pollInterval: Number(node.getAttribute("data-poll-interval")) || undefined,
        events: node.getAttribute("data-events") !== "false"
      });
    });
  }

  root.OtelProgress = {
    mount: mount,
    traceHref: traceHref,
    noStyle: root.OtelProgress ? !!root.OtelProgress.noStyle : false
  };

  if (typeof document !== "undefined") {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", autoMount);
    } else {
      autoMount();
    }
  }
})(typeof window !== "undefined" ? window : this);
