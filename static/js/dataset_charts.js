/* Stats page of a dataset version: label distribution per split and output length histogram. */
(function () {
  "use strict";
  var source = document.getElementById("dataset-charts");
  if (!source || !window.Plotly) return;
  var data = JSON.parse(source.textContent);
  var colours = { train: "#3657d6", validation: "#7a5af8", test: "#137a3b" };
  var layout = { barmode: "group", margin: { t: 10, r: 10, b: 80, l: 50 }, legend: { orientation: "h" } };
  var config = { displayModeBar: false, responsive: true };
  var labelsDiv = document.getElementById("chart-labels");
  if (labelsDiv && data.labels.length) {
    Plotly.newPlot(labelsDiv, data.splits.map(function (split) {
      return { type: "bar", name: split, x: data.labels, y: data.label_counts[split], marker: { color: colours[split] } };
    }), Object.assign({}, layout, { yaxis: { title: "rows" } }), config);
  }
  var lengthsDiv = document.getElementById("chart-lengths");
  var edges = data.length_edges || [];
  if (lengthsDiv && edges.length > 1) {
    var centres = [];
    var labels = [];
    for (var i = 0; i + 1 < edges.length; i++) {
      centres.push((edges[i] + edges[i + 1]) / 2);
      labels.push(Math.round(edges[i]) + "–" + Math.round(edges[i + 1]));
    }
    Plotly.newPlot(lengthsDiv, data.splits.map(function (split) {
      return { type: "bar", name: split, x: centres, y: data.length_counts[split] || [], text: labels, textposition: "none",
               hovertemplate: "%{text} characters: %{y} rows<extra>" + split + "</extra>", marker: { color: colours[split] } };
    }), Object.assign({}, layout, { barmode: "stack", bargap: 0.05, xaxis: { title: "characters" }, yaxis: { title: "rows" } }), config);
  }
})();
