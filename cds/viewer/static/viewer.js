// Clinician viewer: overlay toggles, window/level presets, slice stepping, the Explain button with
// progress polling, and feedback-form hints. Everything works without it except live progress
// (the page then says to reload) and slice stepping (the measured slice is shown).
"use strict";

(function () {
  function each(selector, fn, root) {
    Array.prototype.forEach.call((root || document).querySelectorAll(selector), fn);
  }

  function currentPreset() {
    var select = document.querySelector(".wl-preset");
    return select ? select.value : "standard";
  }

  function withPreset(url) {
    var base = url.split("?")[0];
    return base + "?wl=" + encodeURIComponent(currentPreset());
  }

  // Overlay toggles: one checkbox per overlay layer of the panel it sits in.
  each(".overlay-toggle", function (box) {
    box.addEventListener("change", function () {
      var panel = box.closest("section");
      each('img.overlay[data-overlay="' + box.dataset.overlay + '"]', function (img) {
        img.hidden = !box.checked;
      }, panel);
    });
  });

  // Window/level preset: swap every base image.
  var preset = document.querySelector(".wl-preset");
  if (preset) {
    preset.addEventListener("change", function () {
      each(".stack img.base", function (img) { img.src = withPreset(img.src); });
    });
  }

  // Axial slice stepping.
  function rowUrl(url, level, row) {
    // .../img/axial/<level>/<row>/<layer>.png
    return url.replace(new RegExp("/img/axial/" + level + "/\\d+/"), "/img/axial/" + level + "/" + row + "/");
  }
  function showRow(panel, row) {
    var level = panel.dataset.level;
    var rows = parseInt(panel.dataset.rows, 10);
    row = Math.max(0, Math.min(rows - 1, row));
    panel.dataset.row = String(row);
    each(".stack img", function (img) {
      var url = rowUrl(img.getAttribute("src"), level, row);
      img.src = img.classList.contains("base") ? withPreset(url) : url;
      if (img.classList.contains("base")) {
        img.alt = img.alt.replace(/slice \d+$/, "slice " + (row + 1));
      }
    }, panel);
    each(".slice-pos", function (el) { el.textContent = String(row + 1); }, panel);
    panel.querySelector(".slice-prev").disabled = row === 0;
    panel.querySelector(".slice-next").disabled = row === rows - 1;
    var section = panel.closest("section");
    each(".measurements-legend li[data-row]", function (li) {
      var here = parseInt(li.dataset.row, 10) === row;
      li.classList.toggle("other-slice", !here);
      var where = li.querySelector(".where");
      if (where) {
        where.textContent = here ? "drawn on this slice" : "drawn on slice " + (parseInt(li.dataset.row, 10) + 1);
      }
    }, section);
  }
  each(".axial-panel", function (panel) {
    panel.querySelector(".slice-prev").addEventListener("click", function () {
      showRow(panel, parseInt(panel.dataset.row, 10) - 1);
    });
    panel.querySelector(".slice-next").addEventListener("click", function () {
      showRow(panel, parseInt(panel.dataset.row, 10) + 1);
    });
    showRow(panel, parseInt(panel.dataset.row, 10));
  });

  // Explain: start the job with a POST, then poll its status until it is done.
  var statusEl = document.getElementById("explanation-status");
  function poll(url, startedAt) {
    var elapsed = document.getElementById("explanation-elapsed");
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (data) {
        if (statusEl) {
          statusEl.textContent = data.status_text;
          statusEl.dataset.status = data.status;
        }
        if (data.status === "complete" || data.status === "failed") {
          window.location.hash = "explanation";
          window.location.reload();
          return;
        }
        if (elapsed) {
          elapsed.textContent = Math.round((Date.now() - startedAt) / 1000) + " s";
        }
        window.setTimeout(function () { poll(url, startedAt); }, 1500);
      })
      .catch(function () { window.setTimeout(function () { poll(url, startedAt); }, 4000); });
  }
  each("form.explain-form", function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector("button");
      button.disabled = true;
      fetch(form.action, { method: "POST", headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (r) { return r.json(); })
        .then(function (data) {
          if (statusEl) {
            statusEl.textContent = data.status_text;
            statusEl.dataset.status = data.status;
          }
          var bar = document.createElement("p");
          bar.className = "progress-line";
          bar.innerHTML = '<progress id="explanation-progress" aria-label="Explanation progress"></progress>' +
            '<span class="note" id="explanation-elapsed"></span>';
          form.replaceWith(bar);
          poll(form.dataset.statusUrl, Date.now());
        })
        .catch(function () { form.submit(); });
    });
  });
  each(".explain-poll", function (el) { poll(el.dataset.statusUrl, Date.now()); });

  // Feedback: the reason is needed only when disagreeing (the server checks it too).
  each("form.feedback-form", function (form) {
    var select = form.querySelector("select[name=reason]");
    function sync() {
      var disagree = form.querySelector("input[name=verdict][value=disagree]").checked;
      select.required = disagree;
      select.setAttribute("aria-required", disagree ? "true" : "false");
    }
    each("input[name=verdict]", function (radio) { radio.addEventListener("change", sync); }, form);
    sync();
    // The same checks as the server, before the round trip, with the message next to the form.
    form.addEventListener("submit", function (event) {
      var verdict = form.querySelector("input[name=verdict]:checked");
      var message = null;
      if (!verdict) {
        message = "Choose 'Agree' or 'Disagree'.";
      } else if (verdict.value === "disagree" && !select.value) {
        message = "Please choose a reason for disagreeing.";
      } else if (select.value === "other" && verdict.value === "disagree" &&
                 !form.querySelector("textarea[name=comment]").value.trim()) {
        message = "Please say in the comment why you disagree ('Other').";
      }
      if (!message) { return; }
      event.preventDefault();
      var box = form.querySelector(".form-error");
      if (!box) {
        box = document.createElement("p");
        box.className = "form-error";
        box.setAttribute("role", "alert");
        form.insertBefore(box, form.querySelector("fieldset"));
      }
      box.textContent = message;
      (verdict ? select : form.querySelector("input[name=verdict]")).focus();
    });
  });
  // A form the server sent back with an error: bring it into view and focus its first field.
  var firstError = document.querySelector(".feedback-form .form-error");
  if (firstError) {
    firstError.scrollIntoView({ block: "center" });
    var field = firstError.closest("form").querySelector("select[name=reason]");
    if (field) { field.focus({ preventScroll: true }); }
  }

  // Lazy images (levels below the fold) must all be there on paper.
  window.addEventListener("beforeprint", function () {
    each("img[loading=lazy]", function (img) { img.loading = "eager"; });
  });

  each(".print-link", function (link) {
    link.addEventListener("click", function (event) { event.preventDefault(); window.print(); });
  });
})();
