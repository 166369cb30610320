/* arhub console: live preview of an email template while it is edited.
   Posts the draft (the form, with the CSRF token also in the X-CSRFToken header) to the form's
   data-preview-url 400 ms after the last keystroke and shows the rendered subject and bodies, or
   the sandbox's errors next to the fields. Without JavaScript the Preview button does the same. */
(function () {
  "use strict";
  var form = document.getElementById("template-form");
  if (!form || !window.fetch) { return; }
  var url = form.getAttribute("data-preview-url");
  var token = form.querySelector("input[name=csrf_token]").value;
  var timer = null, sequence = 0;
  function q(id) { return document.querySelector("[data-testid=" + id + "]"); }

  function show(data) {
    q("preview-subject").textContent = data.subject || "";
    q("preview-text").textContent = data.text || "";
    var frame = q("preview-html");
    frame.srcdoc = data.html || "";
    frame.hidden = !data.html;
    var errors = data.errors || {};
    form.querySelectorAll("[data-error-for]").forEach(function (el) {
      el.textContent = errors[el.getAttribute("data-error-for")] || "";
    });
    var c = data.customer;
    q("preview-customer").textContent = c ? c.name + " · " + (c.number || c.id) + " · locale " + data.locale : "";
    q("preview-state").textContent = Object.keys(errors).length ? "with errors" : "up to date";
  }

  function refresh() {
    var mine = ++sequence;
    q("preview-state").textContent = "updating…";
    fetch(url, {method: "POST", body: new FormData(form), credentials: "same-origin",
                headers: {"X-CSRFToken": token, "Accept": "application/json"}})
      .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
      .then(function (data) { if (mine === sequence) { show(data); } })
      .catch(function (e) { if (mine === sequence) { q("preview-state").textContent = "preview failed: " + e.message; } });
  }

  var typedEarly = false;
  form.querySelectorAll("[data-preview-input]").forEach(function (el) {
    el.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(refresh, 400); });
    typedEarly = typedEarly || el.value !== el.defaultValue;
  });
  if (typedEarly) { refresh(); }  /* typed before this script ran: the page's preview is stale */
})();
