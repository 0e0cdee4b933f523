// Bourse dashboard: the light/dark toggle. The choice is kept in localStorage; without one
// the page follows the system (prefers-color-scheme). Runs in <head> so the theme is set
// before the page paints.
(function () {
  var key = "bourse-theme";
  var root = document.documentElement;
  function apply(theme) {
    if (theme === "light" || theme === "dark") {
      root.setAttribute("data-theme", theme);
    } else {
      root.removeAttribute("data-theme");
    }
  }
  try {
    apply(window.localStorage.getItem(key));
  } catch (e) {
    // Storage can be off (private windows); the system theme applies.
  }
  document.addEventListener("DOMContentLoaded", function () {
    var button = document.getElementById("theme");
    if (!button) {
      return;
    }
    button.addEventListener("click", function () {
      var current = root.getAttribute("data-theme");
      var dark = current ? current === "dark" : window.matchMedia("(prefers-color-scheme: dark)").matches;
      var next = dark ? "light" : "dark";
      apply(next);
      try {
        window.localStorage.setItem(key, next);
      } catch (e) {
        // Not remembered; the choice holds until the next reload.
      }
    });
  });
})();
