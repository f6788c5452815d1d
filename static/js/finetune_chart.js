/* Fine-tuning job page: training loss and validation loss/accuracy over steps, updated live.
   Polls the job's points.json for the points after the last step it has; reloads the page once
   when the job ends so the registered student and its downloads appear. */
(function () {
  "use strict";
  var div = document.getElementById("loss-chart");
  if (!div || !window.Plotly) return;
  var url = div.getAttribute("data-points-url");
  var wasLive = div.getAttribute("data-live") === "1";
  var lastStep = -1;
  var count = 0;
  var attempt = null;
  var traces = [
    { type: "scatter", mode: "lines", name: "training loss", x: [], y: [], line: { color: "#3657d6" } },
    { type: "scatter", mode: "lines+markers", name: "validation loss", x: [], y: [], line: { color: "#d6336c" } },
    { type: "scatter", mode: "lines+markers", name: "validation accuracy", x: [], y: [], yaxis: "y2", line: { color: "#137a3b", dash: "dot" } }
  ];
  var layout = {
    margin: { t: 10, r: 70, b: 50, l: 65 },
    legend: { orientation: "h", y: -0.25 },
    xaxis: { title: { text: "step" } },
    yaxis: { title: { text: "loss per answer token" }, rangemode: "tozero" },
    yaxis2: { title: { text: "validation accuracy" }, overlaying: "y", side: "right", range: [0, 1.02],
              tickvals: [0, 0.25, 0.5, 0.75, 1], ticktext: ["0 %", "25 %", "50 %", "75 %", "100 %"], showgrid: false }
  };
  Plotly.newPlot(div, traces, layout, { displayModeBar: false, responsive: true });

  function add(points) {
    var upd = [[], [], [], [], [], []];
    points.forEach(function (p) {
      if (p.loss !== null) { upd[0].push(p.step); upd[1].push(p.loss); }
      if (p.eval_loss !== null) { upd[2].push(p.step); upd[3].push(p.eval_loss); }
      if (p.eval_accuracy !== null) { upd[4].push(p.step); upd[5].push(p.eval_accuracy); }
      lastStep = Math.max(lastStep, p.step);
    });
    if (!points.length) return;
    Plotly.extendTraces(div, { x: [upd[0], upd[2], upd[4]], y: [upd[1], upd[3], upd[5]] }, [0, 1, 2]);
    count += points.length;
    div.setAttribute("data-points", String(count));
    div.setAttribute("data-last-step", String(lastStep));
  }

  function poll() {
    fetch(url + "?after=" + lastStep, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (data) {
        if (attempt !== null && data.attempts !== attempt) {  // resumed from a checkpoint: redraw
          attempt = data.attempts; lastStep = -1; count = 0;
          Plotly.react(div, traces.map(function (t) { return Object.assign({}, t, { x: [], y: [] }); }), layout);
          return setTimeout(poll, 0);
        }
        attempt = data.attempts;
        add(data.points);
        if (data.points.length >= 2000) return setTimeout(poll, 0);
        if (data.is_live) return setTimeout(poll, 1500);
        if (wasLive) { wasLive = false; window.location.reload(); }
      })
      .catch(function () { setTimeout(poll, 5000); });
  }
  poll();
})();
