// Charts for the dashboard pages, drawn with plotly.js (served by this server) from the JSON
// block #chart-data. Every chart has its numbers in a table beside it; a suppressed count
// ("<11") is labelled, never drawn as a number.
(function () {
  "use strict";
  var config = { displayModeBar: false, responsive: true };
  var font = { family: "system-ui, sans-serif", size: 13 };

  function cascade(steps) {
    var el = document.getElementById("cascade-chart");
    if (!el || !steps || !steps.length) { return; }
    var labels = steps.map(function (s) { return s.label; });
    var values = steps.map(function (s) { return s.value === null ? 0 : s.value; });
    var text = steps.map(function (s) { return s.suppressed ? "<11 (hidden)" : s.shown; });
    var where = steps.map(function (s) { return s.value === null ? "outside" : "auto"; });
    Plotly.newPlot(el, [{
      type: "bar", orientation: "h", x: values, y: labels, text: text,
      textposition: where, cliponaxis: false, marker: { color: "#1f5f8b" }, hoverinfo: "y+text"
    }], {
      font: font, margin: { l: 230, r: 20, t: 10, b: 40 }, height: 320,
      yaxis: { autorange: "reversed" }, xaxis: { title: { text: "Releases" }, rangemode: "tozero" }
    }, config);
  }

  function trends(data) {
    var el = document.getElementById("trends-chart");
    if (!el || !data || !data.months.length) { return; }
    var traces = data.series.map(function (s) {
      return { type: "scatter", mode: "lines+markers", name: s.title, x: data.months,
               y: s.values, connectgaps: false };
    });
    Plotly.newPlot(el, traces, {
      font: font, margin: { l: 50, r: 20, t: 10, b: 40 }, height: 380,
      yaxis: { title: { text: "%" }, range: [0, 100] },
      xaxis: { type: "category" }, legend: { orientation: "h", y: -0.2 }
    }, config);
  }

  var block = document.getElementById("chart-data");
  if (block && window.Plotly) {
    var chart = JSON.parse(block.textContent);
    cascade(chart.cascade);
    trends(chart.trends);
  }
  var print = document.getElementById("print-button");
  if (print) {
    print.addEventListener("click", function () { window.print(); });
  }
})();
