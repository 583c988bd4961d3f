// Console behaviour that works without it too: forms and links are plain HTML; this only adds comfort.
(function () {
  "use strict";
  // Filter selects submit their form when changed (the search button stays for keyboards).
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target && target.matches && target.matches("form.filters select[data-autosubmit]")) {
      target.form.requestSubmit ? target.form.requestSubmit() : target.form.submit();
    }
  });
  // A second click on a submit button while its form is posting does nothing (no double commands).
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if ((form.getAttribute("method") || "get").toLowerCase() !== "post") return;
    if (form.dataset.submitted === "1") { event.preventDefault(); return; }
    form.dataset.submitted = "1";
  });
  // Coming back through the browser's history must not leave forms locked.
  window.addEventListener("pageshow", function () {
    document.querySelectorAll("form[data-submitted]").forEach(function (form) { delete form.dataset.submitted; });
  });
})();
