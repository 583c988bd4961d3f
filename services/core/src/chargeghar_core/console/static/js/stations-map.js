// The station map: one circle per station (drawn as SVG, so markers show even when tiles cannot load).
(function () {
  "use strict";
  var element = document.getElementById("station-map");
  var data = document.getElementById("station-map-data");
  if (!element || !data || typeof L === "undefined") return;
  var stations = JSON.parse(data.textContent || "[]");
  if (!stations.length) return;
  var colours = { ONLINE: "#157f3b", OFFLINE: "#b42318", MAINTENANCE: "#a15c07" };
  var map = L.map(element, { scrollWheelZoom: false });
  var tiles = element.dataset.tiles;
  if (tiles) {
    L.tileLayer(tiles, { maxZoom: 19, attribution: element.dataset.attribution || "" }).addTo(map);
  }
  var bounds = [];
  stations.forEach(function (station) {
    var point = [station.lat, station.lng];
    bounds.push(point);
    var marker = L.circleMarker(point, {
      radius: 8, weight: 2, color: "#fff", fillOpacity: 0.9, fillColor: colours[station.status] || "#475467"
    }).addTo(map);
    var link = document.createElement("a");
    link.href = station.url;
    link.textContent = station.name + " (" + station.status + ")";
    marker.bindPopup(link);
    marker.getElement && marker.getElement() && marker.getElement().setAttribute("data-imei", station.imei);
  });
  if (bounds.length === 1) { map.setView(bounds[0], 15); } else { map.fitBounds(bounds, { padding: [24, 24] }); }
})();
