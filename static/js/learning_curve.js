// The learning curve chart: measured students (dots), the fitted curve and its 95 % band, the
// quality target. The numbers come from the page (json_script "curve-data"), computed on the
// server from the stored per-example scores.
(function () {
  var chart = document.getElementById("curve-chart");
  var source = document.getElementById("curve-data");
  if (!chart || !source || typeof Plotly === "undefined") return;
  var data = JSON.parse(source.textContent);
  var traces = [];
  if (data.fit) {
    traces.push({ x: data.fit.x, y: data.fit.high, mode: "lines", line: { width: 0 }, hoverinfo: "skip", showlegend: false });
    traces.push({ x: data.fit.x, y: data.fit.low, mode: "lines", line: { width: 0 }, fill: "tonexty", fillcolor: "rgba(19,122,59,0.15)", name: "95 % interval", hoverinfo: "skip" });
    traces.push({ x: data.fit.x, y: data.fit.y, mode: "lines", name: "Expected (fitted curve)", line: { color: "#137a3b" }, hovertemplate: "%{x:,} examples: %{y:.0f} %<extra></extra>" });
  }
  traces.push({ x: data.measured.x, y: data.measured.y, mode: "markers", name: "Measured student", marker: { size: 10, color: "#1d4ed8" }, hovertemplate: "trained on %{x:,}: %{y:.1f} %<extra></extra>" });
  var layout = {
    margin: { t: 20, r: 20, b: 50, l: 60 },
    xaxis: { title: { text: "Reviewed training examples (log scale)" }, type: "log" },
    yaxis: { title: { text: "% of the teacher's quality" }, rangemode: "tozero" },
    legend: { orientation: "h", y: 1.12 },
    shapes: [{ type: "line", xref: "paper", x0: 0, x1: 1, y0: data.target, y1: data.target, line: { dash: "dash", color: "#b42318" } }],
    annotations: [{ xref: "paper", x: 0, y: data.target, text: "target " + data.target + " %", showarrow: false, yanchor: "bottom", xanchor: "left", font: { color: "#b42318", size: 11 } }],
  };
  Plotly.newPlot(chart, traces, layout, { displayModeBar: false, responsive: true }).then(function () {
    chart.dataset.rendered = "1";
  });
})();
