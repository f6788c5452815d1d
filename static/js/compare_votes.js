/* Blind voting on the comparison page, from the keyboard.
 *
 * 1 A better, 2 B better, 3 both acceptable, 4 both wrong (the buttons' data-key), on the
 * current example; j/k move between examples. A vote moves on to the next example you have not
 * voted on. The buttons post through htmx, so a key press and a click do the same thing.
 */
(function () {
  "use strict";
  var table = document.getElementById("blind-votes");
  if (!table) return;

  function rows() {
    return Array.prototype.slice.call(table.querySelectorAll("tbody tr[data-voted]"));
  }

  function current() {
    return table.querySelector("tr.current") || null;
  }

  function select(row) {
    if (!row) return;
    rows().forEach(function (el) { el.classList.toggle("current", el === row); });
    row.scrollIntoView({ block: "nearest" });
  }

  function move(step) {
    var all = rows();
    var index = all.indexOf(current());
    select(all[Math.min(all.length - 1, Math.max(0, index + step))]);
  }

  function nextUnvoted(after) {
    var all = rows();
    var start = all.indexOf(after);
    for (var i = start + 1; i < all.length; i++) {
      if (all[i].dataset.voted !== "1") return all[i];
    }
    return null;
  }

  function vote(row, key) {
    var button = row && row.querySelector('.vote-buttons button[data-key="' + key + '"]');
    if (!button) return;
    row.dataset.voted = "1";
    button.click();
    var next = nextUnvoted(row);
    if (next) select(next);
  }

  table.addEventListener("click", function (event) {
    var row = event.target.closest("tr[data-voted]");
    if (!row) return;
    select(row);
    if (event.target.closest(".vote-buttons button")) {
      row.dataset.voted = "1";
    }
  });

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (target.closest && target.closest("input, textarea, select")) return;
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "j") { event.preventDefault(); move(1); return; }
    if (event.key === "k") { event.preventDefault(); move(-1); return; }
    if (/^[1-4]$/.test(event.key)) {
      event.preventDefault();
      vote(current(), event.key);
    }
  });

  select(nextUnvoted(null) || rows()[0]);
})();
