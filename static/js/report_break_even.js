// The break-even calculator: the server computes (worker.economics, exact decimals); this page
// asks it for each volume the user types and redraws the figures and the cumulative-cost chart.
(function () {
  var input = document.getElementById("monthly-volume");
  var chart = document.getElementById("be-chart");
  var initial = document.getElementById("be-initial");
  if (!input || !chart || !initial) return;
  var error = document.getElementById("be-error");

  function set(testid, text) {
    var el = document.querySelector('[data-testid="' + testid + '"]');
    if (el) el.textContent = text;
  }

  function draw(data) {
    var c = data.chart;
    var traces = [
      { x: c.months, y: c.teacher_only, name: "Teacher only", mode: "lines", line: { color: "#b42318" } },
      { x: c.months, y: c.distil_then_student, name: "Distil, then the student", mode: "lines", line: { color: "#137a3b" } },
    ];
    var layout = {
      margin: { t: 20, r: 20, b: 45, l: 70 },
      xaxis: { title: { text: "Months after shipping" } },
      yaxis: { title: { text: "Cumulative cost ($)" }, rangemode: "tozero" },
      legend: { orientation: "h", y: 1.1 },
      shapes: [],
    };
    if (data.break_even_month !== null) {
      layout.shapes.push({ type: "line", x0: data.break_even_month, x1: data.break_even_month, yref: "paper", y0: 0, y1: 1, line: { dash: "dot", color: "#667085" } });
    }
    return Plotly.react(chart, traces, layout, { displayModeBar: false, responsive: true }).then(function () {
      chart.dataset.renderedVolume = String(data.monthly_volume);
    });
  }

  function show(data) {
    set("teacher-monthly", data.shown.teacher_monthly);
    set("student-monthly", data.shown.student_monthly);
    set("monthly-savings", data.shown.monthly_savings);
    set("break-even-month", data.shown.break_even);
    draw(data);
  }

  var timer = null, latest = 0;
  input.addEventListener("input", function () {
    clearTimeout(timer);
    timer = setTimeout(function () {
      var volume = input.value.trim();
      var ask = ++latest;
      fetch(input.dataset.url + "?volume=" + encodeURIComponent(volume), { credentials: "same-origin" })
        .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
        .then(function (res) {
          if (ask !== latest) return;  // an older answer arriving late
          if (!res.ok || !res.body.known) { error.textContent = res.body.error || "The calculator needs all three costs."; return; }
          error.textContent = "";
          show(res.body);
        });
    }, 250);
  });

  draw(JSON.parse(initial.textContent));
})();
