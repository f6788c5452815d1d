/* Keyboard-first review queue.
 *
 * j/k move between outputs, a approves, r opens the reject panel (Enter rejects), e opens the
 * edit panel (Enter, or Ctrl+Enter in a text box, saves), u undoes your last decision, c jumps
 * to the comment box, ? shows the keys. Every decision is a POST that returns the output's card,
 * which replaces the old one; the server refuses a decision made on a stale card (409) and the
 * card then shows who decided first.
 */
(function () {
  "use strict";
  var queue = document.getElementById("review-queue");
  if (!queue) return;
  var canReview = queue.dataset.canReview === "1";
  var help = document.getElementById("keys-help");
  var toast = document.getElementById("review-toast");
  var toastTimer = null;
  var busy = false;

  function csrfToken() {
    var input = document.querySelector("input[name=csrfmiddlewaretoken]");
    if (input) return input.value;
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function items() {
    return Array.prototype.slice.call(queue.querySelectorAll(".review-item"));
  }

  function currentItem() {
    return queue.querySelector(".review-item.current") || items()[0] || null;
  }

  function select(item) {
    if (!item) return;
    items().forEach(function (el) { el.classList.toggle("current", el === item); });
    item.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    var all = items();
    var index = all.indexOf(currentItem());
    var next = all[Math.min(all.length - 1, Math.max(0, index + step))];
    select(next);
  }

  function say(text) {
    toast.textContent = text;
    toast.hidden = false;
    if (toastTimer) clearTimeout(toastTimer);
    toastTimer = setTimeout(function () { toast.hidden = true; }, 4000);
  }

  function replaceItem(item, html) {
    var template = document.createElement("template");
    template.innerHTML = html.trim();
    var fresh = template.content.querySelector(".review-item");
    if (!fresh) return item;
    item.replaceWith(fresh);
    select(fresh);
    return fresh;
  }

  function post(url, data) {
    var body = new URLSearchParams(data);
    return fetch(url, {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRFToken": csrfToken(), "X-Review-Fragment": "1" },
    }).then(function (response) {
      return response.text().then(function (text) {
        return { status: response.status, text: text, outputId: response.headers.get("X-Output-Id") };
      });
    });
  }

  var verbs = { approve: "Approved", reject: "Rejected", edit: "Saved the edit on" };

  function decide(item, action, extra) {
    if (!item || busy) return;
    busy = true;
    var data = { action: action, seen_version: item.dataset.version };
    Object.keys(extra || {}).forEach(function (key) { data[key] = extra[key]; });
    var id = item.dataset.outputId;
    post(item.dataset.decideUrl, data)
      .then(function (result) {
        if (result.status === 200) {
          replaceItem(item, result.text);
          say(verbs[action] + " #" + id + ".");
          move(1);
        } else if (result.status === 409) {
          replaceItem(item, result.text);
          say("Not saved: someone else decided #" + id + " first.");
        } else if (result.status === 400) {
          var fresh = replaceItem(item, result.text);
          var panel = fresh.querySelector("[data-panel=edit]:not([hidden])");
          if (panel) {
            // Give the reviewer back what they typed (one text box, or one box per JSON field).
            if (action === "edit" && extra) {
              Object.keys(extra).forEach(function (key) {
                var box = panel.querySelector('[name="' + key.replace(/"/g, '\\"') + '"]');
                if (box && box.type !== "hidden") box.value = extra[key];
              });
            }
            var first = panel.querySelector("input[type=text], textarea");
            if (first) first.focus();
          }
          say("Not saved: " + ((fresh.querySelector("[data-testid=edit-error],[data-testid=item-error]") || {}).textContent || "check the value"));
        } else {
          say("Something went wrong (" + result.status + "); reload the page.");
        }
      })
      .catch(function () { say("The server could not be reached; nothing was saved."); })
      .then(function () { busy = false; });
  }

  function undo() {
    if (busy) return;
    busy = true;
    post(queue.dataset.undoUrl, {})
      .then(function (result) {
        if (result.status === 200) {
          var target = document.getElementById("output-" + result.outputId);
          if (target) replaceItem(target, result.text);
          say("Undid your last decision (#" + result.outputId + ")" + (target ? "." : ", which is not on this page."));
        } else {
          say(result.text || "Nothing to undo.");
        }
      })
      .catch(function () { say("The server could not be reached; nothing was undone."); })
      .then(function () { busy = false; });
  }

  function openPanel(item, name) {
    if (!item) return;
    closePanels(item);
    var panel = item.querySelector("[data-panel=" + name + "]");
    if (!panel) return;
    panel.hidden = false;
    var field = panel.querySelector("input[type=text], select, textarea");
    if (field) {
      field.focus();
      // A label is replaced rather than edited: select it so typing starts afresh.
      if (field.tagName === "INPUT" && field.list) field.select();
    }
  }

  function closePanels(item) {
    if (!item) return;
    item.querySelectorAll("[data-panel]").forEach(function (panel) { panel.hidden = true; });
  }

  function panelValues(form) {
    var values = {};
    new FormData(form).forEach(function (value, key) {
      if (key !== "csrfmiddlewaretoken" && key !== "action" && key !== "seen_version") values[key] = value;
    });
    return values;
  }

  // Mouse: the same actions as the keys.
  queue.addEventListener("click", function (event) {
    var item = event.target.closest(".review-item");
    if (!item) return;
    if (!event.target.closest("a, button, input, select, textarea, summary")) select(item);
    var opener = event.target.closest("[data-open]");
    if (opener) {
      select(item);
      openPanel(item, opener.dataset.open);
    }
  });

  queue.addEventListener("submit", function (event) {
    var form = event.target;
    var item = form.closest(".review-item");
    if (!item) return;
    event.preventDefault();
    select(item);
    if (form.dataset.form === "approve") {
      decide(item, "approve");
    } else if (form.dataset.panel === "reject") {
      decide(item, "reject", panelValues(form));
    } else if (form.dataset.panel === "edit") {
      decide(item, "edit", panelValues(form));
    } else if (form.dataset.form === "comment") {
      post(item.dataset.commentUrl, panelValues(form)).then(function (result) {
        if (result.status === 200 || result.status === 400) replaceItem(item, result.text);
        say(result.status === 200 ? "Comment added to #" + item.dataset.outputId + "." : "Comment not saved.");
      });
    } else if (form.dataset.form === "rationale") {
      post(form.getAttribute("action"), panelValues(form)).then(function (result) {
        if (result.status === 200 || result.status === 400) replaceItem(item, result.text);
        say(result.status === 200 ? "Rationale of #" + item.dataset.outputId + " saved." : "Rationale not saved.");
      });
    }
  });

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    var typing = target.closest && target.closest("input, textarea, select");
    var item = currentItem();
    if (event.key === "Escape") {
      if (help && !help.hidden) { help.hidden = true; return; }
      if (item) { closePanels(item); item.focus({ preventScroll: true }); }
      if (typing) target.blur();
      return;
    }
    if (typing) {
      var panel = target.closest("[data-panel]");
      if (!panel) return;
      // In an edit box, Enter adds a line; Ctrl/Cmd+Enter saves. Elsewhere Enter submits.
      if (event.key === "Enter" && (target.tagName !== "TEXTAREA" || event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        panel.requestSubmit();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    switch (event.key) {
      case "j": event.preventDefault(); move(1); break;
      case "k": event.preventDefault(); move(-1); break;
      case "?": event.preventDefault(); if (help) help.hidden = !help.hidden; break;
      case "a": if (canReview) { event.preventDefault(); decide(item, "approve"); } break;
      case "r": if (canReview) { event.preventDefault(); openPanel(item, "reject"); } break;
      case "e": if (canReview) { event.preventDefault(); openPanel(item, "edit"); } break;
      case "u": if (canReview) { event.preventDefault(); undo(); } break;
      case "c":
        if (canReview && item) {
          event.preventDefault();
          var details = item.querySelector("details");
          if (details) details.open = true;
          var box = item.querySelector("[data-form=comment] input[name=text]");
          if (box) box.focus();
        }
        break;
      default: break;
    }
  });

  if (help) help.addEventListener("click", function (event) { if (event.target === help) help.hidden = true; });
  select(currentItem());
})();
