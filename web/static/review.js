// Keyboard shortcuts of the review queue. The page works without them: every action is a plain form.
(function () {
  "use strict";
  const pairs = Array.from(document.querySelectorAll("[data-candidate]"));
  if (!pairs.length) return;
  let current = 0;
  function select(index) {
    pairs[current].removeAttribute("data-selected");
    current = Math.max(0, Math.min(pairs.length - 1, index));
    pairs[current].setAttribute("data-selected", "");
    pairs[current].scrollIntoView({ block: "nearest" });
  }
  select(0);
  document.addEventListener("keydown", function (event) {
    const typing = event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement ||
      event.target instanceof HTMLSelectElement;
    if (typing) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target.form) {
        event.preventDefault();
        event.target.form.requestSubmit();
      } else if (event.key === "Escape") {
        event.target.blur();
      }
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const pair = pairs[current];
    if (event.key === "j") select(current + 1);
    else if (event.key === "k") select(current - 1);
    else if (event.key === "a" || event.key === "r") pair.querySelector('[data-key="' + event.key + '"]').click();
    else if (event.key === "e") { event.preventDefault(); pair.querySelector('[data-key="e"]').focus(); }
    else return;
  });
})();
