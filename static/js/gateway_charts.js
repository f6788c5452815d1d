/* Gateway page: requests by who answered with agreement over time, and the cascade curve
   (share answered by the student vs agreement, per confidence threshold: from traffic, and
   from the latest evaluation on the frozen test split). */
(function () {
  "use strict";
  var data = document.getElementById("gateway-charts");
  if (!data || !window.Plotly) return;
  var charts = JSON.parse(data.textContent);
  var s = charts.series;
  var traffic = document.getElementById("gateway-traffic");
  if (traffic && s.t.length) {
    Plotly.newPlot(traffic, [
      { type: "bar", name: "teacher", x: s.t, y: s.teacher, marker: { color: "#3657d6" } },
      { type: "bar", name: "student", x: s.t, y: s.student, marker: { color: "#137a3b" } },
      { type: "scatter", mode: "lines+markers", name: "agreement %", x: s.t, y: s.agreement, yaxis: "y2", line: { color: "#d6336c" } }
    ], {
      barmode: "stack", margin: { t: 10, r: 60, b: 50, l: 60 }, legend: { orientation: "h", y: -0.3 },
      yaxis: { title: { text: "requests per " + s.bucket_minutes + " min" } },
      yaxis2: { title: { text: "agreement %" }, overlaying: "y", side: "right", range: [0, 100.5], showgrid: false }
    }, { displayModeBar: false, responsive: true });
  } else if (traffic) {
    traffic.textContent = "No traffic in the last 24 hours.";
    traffic.style.height = "auto";
  }
  var curve = document.getElementById("gateway-curve");
  var evalCurve = charts.eval_curve || [];
  function trace(points, name, color) {
    return {
      type: "scatter", mode: "lines+markers", name: name, line: { color: color },
      x: points.map(function (p) { return p.share; }),
      y: points.map(function (p) { return p.agreement; }),
      text: points.map(function (p) { return "threshold " + p.threshold; })
    };
  }
  if (curve && (charts.curve.length || evalCurve.length)) {
    var traces = [];
    if (charts.curve.length) traces.push(trace(charts.curve, "traffic", "#3657d6"));
    if (evalCurve.length) traces.push(trace(evalCurve, "evaluation (test split)", "#137a3b"));
    Plotly.newPlot(curve, traces, {
      margin: { t: 10, r: 20, b: 50, l: 60 }, legend: { orientation: "h", y: -0.3 },
      xaxis: { title: { text: "share answered by the student (%)" }, range: [0, 100.5] },
      yaxis: { title: { text: "agreement with the teacher (%)" } }
    }, { displayModeBar: false, responsive: true });
  }
})();
