/* arhub console, field mappings: live preview of the draft mapping (debounced POST of the form,
   the server renders the preview) and polling of a sample-fetch or describe-check job.
   Without this script the Preview button posts the form and the page comes back with the preview. */
(function () {
  "use strict";
  var form = document.getElementById("mapping-form");
  var panel = document.getElementById("preview-panel");
  var state = document.getElementById("preview-state");
  var timer = null, sequence = 0;

  function showRowErrors(rowErrors) {
    document.querySelectorAll("[data-row-errors]").forEach(function (tr) {
      var n = tr.getAttribute("data-row-errors");
      var errors = rowErrors[n] || [];
      tr.hidden = errors.length === 0;
      tr.firstElementChild.textContent = errors.join("; ");
      var row = document.querySelector('tr[data-row="' + n + '"]');
      if (row) { row.classList.toggle("table-danger", errors.length > 0); }
    });
  }

  function refresh() {
    var mine = ++sequence;
    if (state) { state.textContent = "updating preview…"; }
    fetch(form.getAttribute("data-preview-url"), {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: {"X-Requested-With": "fetch", "Accept": "application/json"}
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (data) {
      if (mine !== sequence) { return; }  // a newer edit is on its way
      panel.innerHTML = data.html;
      showRowErrors(data.row_errors || {});
      if (state) { state.textContent = data.ok ? "preview up to date" : "preview up to date: see the errors"; }
    }).catch(function (error) {
      if (mine === sequence && state) { state.textContent = "preview failed (" + error.message + "): use the Preview button"; }
    });
  }

  if (form && panel) {
    var schedule = function () { clearTimeout(timer); timer = setTimeout(refresh, 300); };
    form.addEventListener("input", schedule);
    form.addEventListener("change", schedule);
    // typed into before this script ran (a slow connection, a quick hand): preview that at once
    var edited = Array.prototype.some.call(form.elements, function (el) {
      if (el.type === "checkbox" || el.type === "radio") { return el.checked !== el.defaultChecked; }
      if (el.tagName === "SELECT") {
        return Array.prototype.some.call(el.options, function (o) { return o.selected !== o.defaultSelected; });
      }
      return "defaultValue" in el && el.type !== "hidden" && el.value !== el.defaultValue;
    });
    if (edited) { refresh(); }
    form.setAttribute("data-live", "1");
  }

  var job = document.getElementById("job-status");
  if (job) {
    var poll = function () {
      fetch(job.getAttribute("data-job-url"), {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (response) { return response.json(); })
        .then(function (data) {
          if (data.done || data.status === "missing") {
            if (data.error) {
              job.className = "alert alert-danger py-1 small";
              job.textContent = "The job failed: " + data.error;
              return;
            }
            window.location.assign(job.getAttribute("data-done-url"));
            return;
          }
          setTimeout(poll, 1000);
        })
        .catch(function () { setTimeout(poll, 3000); });
    };
    setTimeout(poll, 500);
  }
})();
