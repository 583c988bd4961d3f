// The revenue chart of /console/money: uPlot over the JSON block the page carries (no inline script).
(function () {
  "use strict";
  var holder = document.getElementById("revenue-chart");
  var source = document.getElementById("revenue-data");
  if (!holder || !source || typeof uPlot === "undefined") return;
  var data = JSON.parse(source.textContent);
  var labels = data.labels || [];
  var names = Object.keys(data.series || {});
  var colours = { "Rental charges": "#2563eb", "Late fees": "#d97706", "Refunds": "#dc2626", "Net": "#059669" };
  // x is the row's position; the axis and the legend show the row's label (a day, a station, a package).
  var xs = labels.map(function (_, i) { return i; });
  var columns = [xs].concat(names.map(function (name) { return data.series[name]; }));
  var money = function (v) { return v == null ? "—" : "Rs " + v.toFixed(2); };
  var bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.6, 48] }) : null;
  var series = [{ label: "", value: function (_, i) { return i == null ? "" : labels[i] || ""; } }].concat(
    names.map(function (name) {
      var isNet = name === "Net";
      return {
        label: name,
        stroke: colours[name] || "#555",
        fill: isNet ? "rgba(5,150,105,0.25)" : undefined,
        width: isNet ? 1 : 2,
        paths: isNet && bars ? bars : undefined,
        points: { show: !isNet },
        value: function (_, v) { return money(v); },
      };
    })
  );
  function size() {
    var width = Math.max(280, holder.clientWidth || 600);
    return { width: width, height: width < 500 ? 220 : 300 };
  }
  var dims = size();
  var chart = new uPlot(
    {
      width: dims.width,
      height: dims.height,
      series: series,
      scales: {
        x: { time: false, range: function () { return [-0.5, Math.max(0.5, xs.length - 0.5)]; } },
        // Bars start at zero: a scale fitted to the data alone would make small amounts look large.
        y: { range: function (_, min, max) { return [Math.min(0, min || 0), Math.max(1, (max || 0) * 1.1)]; } },
      },
      axes: [
        {
          values: function (_, ticks) {
            return ticks.map(function (t) { return Number.isInteger(t) && labels[t] !== undefined ? labels[t] : ""; });
          },
          splits: function () { return xs; },
        },
        { values: function (_, ticks) { return ticks.map(function (t) { return "Rs " + t; }); }, size: 70 },
      ],
    },
    columns,
    holder
  );
  var pending = null;
  window.addEventListener("resize", function () {
    if (pending) cancelAnimationFrame(pending);
    pending = requestAnimationFrame(function () { chart.setSize(size()); });
  });
})();
