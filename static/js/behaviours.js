// Small page behaviours wired by data attributes, so pages need no inline event handlers
// (the Content-Security-Policy allows no inline script without the page's nonce).
document.addEventListener("change", function (e) {
  if (e.target.matches("[data-autosubmit]")) e.target.form.submit();
});
document.addEventListener("click", function (e) {
  if (e.target.closest("[data-print]")) window.print();
  if (e.target.matches("[data-select-on-click]")) e.target.select();
});
