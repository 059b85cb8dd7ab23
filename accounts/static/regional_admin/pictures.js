/* Maps, charts and timelines of the admin pages (docs/admin.md, "Maps and charts").
 *
 * Maps are Leaflet with vector layers drawn in SVG over a blank background: a track or a route
 * shows without any map tiles. OpenStreetMap tiles are added while the browser is online and
 * removed when it goes offline. Charts are uPlot. The timeline is drawn here, in SVG: one row per
 * day (UTC), one lane per calculator in each row, a bar per interval (split at midnight).
 */
(function () {
  "use strict";

  const TILES = "https://tile.openstreetmap.org/{z}/{x}/{y}.png";
  const ATTRIBUTION = '&copy; <a href="https://www.openstreetmap.org/copyright">OpenStreetMap</a> contributors';
  const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const DAY = 86400;
  const SVG = "http://www.w3.org/2000/svg";

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function utc(seconds) {
    const d = new Date(seconds * 1000);
    return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
      `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }

  function duration(seconds) {
    const s = Math.round(seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return h ? `${h} h ${pad(m)} min` : m ? `${m} min ${pad(s % 60)} s` : `${s} s`;
  }

  /* A Google encoded polyline (precision 5) as [[lat, lon], ...]. */
  function decodePolyline(text) {
    const points = [];
    let index = 0, lat = 0, lon = 0;
    while (index < text.length) {
      const delta = [0, 0];
      for (let k = 0; k < 2; k++) {
        let shift = 0, result = 0, byte;
        do {
          byte = text.charCodeAt(index++) - 63;
          result |= (byte & 0x1f) << shift;
          shift += 5;
        } while (byte >= 0x20 && index < text.length);
        delta[k] = result & 1 ? ~(result >> 1) : result >> 1;
      }
      lat += delta[0];
      lon += delta[1];
      points.push([lat / 1e5, lon / 1e5]);
    }
    return points;
  }

  /* A map in ``element``: ``show(points, last)`` draws a line through ``points`` ([[lat, lon]])
   * and a marker at ``last`` (or the line's end); both optional. */
  function makeMap(element) {
    const map = L.map(element, { renderer: L.svg(), zoomSnap: 0.25 });
    map.setView([0, 0], 1);
    const tiles = L.tileLayer(TILES, { maxZoom: 19, attribution: ATTRIBUTION, className: "osm-tiles" });
    const layers = L.layerGroup().addTo(map);
    function syncTiles() {
      const online = navigator.onLine;
      if (online && !map.hasLayer(tiles)) tiles.addTo(map);
      if (!online && map.hasLayer(tiles)) tiles.remove();
      element.dataset.tiles = online ? "online" : "offline";
    }
    window.addEventListener("online", syncTiles);
    window.addEventListener("offline", syncTiles);
    syncTiles();

    function show(points, last) {
      map.invalidateSize(); // the page may have laid the container out again since the map was made
      layers.clearLayers();
      points = points || [];
      const bounds = L.latLngBounds([]);
      if (points.length) {
        // Neither simplified nor clipped: every point of the track is a vertex of the path.
        const line = L.polyline(points, { smoothFactor: 0, noClip: true, weight: 3, color: "#1f77b4", className: "track" });
        layers.addLayer(line);
        bounds.extend(line.getBounds());
        layers.addLayer(L.circleMarker(points[0], { radius: 5, color: "#2ca02c", fillOpacity: 1, className: "track-start" }));
      }
      const end = last || (points.length ? points[points.length - 1] : null);
      if (end) {
        layers.addLayer(L.circleMarker(end, { radius: 7, color: "#d62728", fillOpacity: 1, className: "last-position" }));
        bounds.extend(end);
      }
      if (bounds.isValid()) map.fitBounds(bounds, { padding: [40, 40], maxZoom: 17, animate: false });
      element.dataset.points = String(points.length);
    }
    return { map: map, show: show };
  }

  /* A uPlot chart of [[t, value], ...] in ``element``, times shown in UTC. */
  function makeChart(element, label, samples) {
    const xs = samples.map((s) => s[0]);
    const ys = samples.map((s) => s[1]);
    // The admin's content column grows with what is in it: size the chart to what is left of the
    // window rather than to the column.
    const room = () => document.documentElement.clientWidth - element.getBoundingClientRect().left - 24;
    const width = Math.max(320, Math.min(element.clientWidth || 900, room()));
    element.dataset.points = String(samples.length);
    const chart = new uPlot(
      {
        width: width,
        height: 220,
        tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
        scales: { x: { time: true } },
        series: [{ label: "time (UTC)" }, { label: label, stroke: "#1f77b4", width: 1.5, points: { show: false } }],
        axes: [{}, { label: label }],
      },
      [xs, ys],
      element
    );
    window.addEventListener("resize", () => chart.setSize({ width: Math.max(320, room()), height: 220 }));
    return chart;
  }

  function svg(name, attributes, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [key, value] of Object.entries(attributes || {})) node.setAttribute(key, value);
    if (parent) parent.appendChild(node);
    return node;
  }

  /* A timeline in ``element`` of ``intervals`` ([{id, begin, end, lane, ...}]), one lane per entry
   * of ``lanes`` ([{key, name}]) in every day row; ``onSelect(interval)`` on a click. */
  function makeTimeline(element, lanes, intervals, onSelect) {
    element.innerHTML = "";
    const colors = {};
    lanes.forEach((lane, i) => (colors[lane.key] = lane.color || PALETTE[i % PALETTE.length]));
    const legend = document.createElement("ul");
    legend.className = "timeline-legend";
    for (const lane of lanes) {
      const count = intervals.filter((iv) => iv.lane === lane.key).length;
      const item = document.createElement("li");
      item.dataset.lane = lane.key;
      item.innerHTML = `<span class="swatch"></span>`;
      item.querySelector(".swatch").style.background = colors[lane.key];
      item.appendChild(document.createTextNode(`${lane.name}: ${count} interval${count === 1 ? "" : "s"}`));
      legend.appendChild(item);
    }
    element.appendChild(legend);
    if (!intervals.length) {
      const empty = document.createElement("p");
      empty.className = "timeline-empty";
      empty.textContent = "no intervals in this range";
      element.appendChild(empty);
      element.dataset.bars = "0";
      return;
    }
    const first = Math.floor(Math.min(...intervals.map((iv) => iv.begin)) / DAY);
    const lastDay = Math.floor(Math.max(...intervals.map((iv) => iv.end)) / DAY);
    const days = lastDay - first + 1;
    // The axis spans the hours of the day that hold intervals (all of it when one crosses midnight).
    let low = DAY, high = 0;
    for (const iv of intervals) {
      if (Math.floor(iv.begin / DAY) !== Math.floor(iv.end / DAY)) { low = 0; high = DAY; break; }
      low = Math.min(low, iv.begin % DAY);
      high = Math.max(high, iv.end % DAY);
    }
    const step = [600, 900, 1800, 3600, 7200, 10800].find((s) => (high - low) / s <= 12) || 10800;
    low = Math.floor(low / step) * step;
    high = Math.max(low + step, Math.ceil(high / step) * step);
    const room = document.documentElement.clientWidth - element.getBoundingClientRect().left - 24;
    const labelWidth = 90, width = Math.max(600, Math.min(element.clientWidth || 1000, room)), plot = width - labelWidth - 30;
    const laneHeight = 12, rowGap = 8, top = 22;
    const rowHeight = lanes.length * laneHeight + rowGap;
    const root = svg("svg", { width: width, height: top + days * rowHeight, class: "timeline" }, element);
    const x = (seconds) => labelWidth + ((seconds - low) / (high - low)) * plot;
    for (let t = low; t <= high; t += step) {
      svg("line", { x1: x(t), x2: x(t), y1: top - 4, y2: top + days * rowHeight - rowGap, class: "hour" }, root);
      svg("text", { x: x(t), y: top - 8, "text-anchor": "middle", class: "hour" }, root).textContent =
        `${pad(Math.floor(t / 3600))}:${pad(Math.floor((t % 3600) / 60))}`;
    }
    const laneIndex = {};
    lanes.forEach((lane, i) => (laneIndex[lane.key] = i));
    for (let d = 0; d < days; d++) {
      const y = top + d * rowHeight;
      svg("rect", { x: labelWidth, y: y, width: plot, height: lanes.length * laneHeight, class: "day" }, root);
      svg("text", { x: 4, y: y + (lanes.length * laneHeight) / 2 + 4, class: "day" }, root).textContent = utc((first + d) * DAY).slice(0, 10);
    }
    let bars = 0, selected = null;
    for (const iv of intervals) {
      let part = 0;
      for (let day = Math.floor(iv.begin / DAY); day <= Math.floor(iv.end / DAY); day++, part++) {
        const from = Math.max(iv.begin - day * DAY, low);
        const to = Math.min(iv.end - day * DAY, high);
        const y = top + (day - first) * rowHeight + laneIndex[iv.lane] * laneHeight + 1;
        const bar = svg("rect", {
          x: x(from),
          y: y,
          width: Math.max(2, x(to) - x(from)),
          height: laneHeight - 2,
          fill: colors[iv.lane],
          class: "bar",
          "data-interval": iv.id,
          "data-lane": iv.lane,
          "data-part": part,
        }, root);
        svg("title", {}, bar).textContent = `${utc(iv.begin)} .. ${utc(iv.end)} (${duration(iv.end - iv.begin)})`;
        bar.addEventListener("click", () => {
          root.querySelectorAll("rect.bar.selected").forEach((node) => node.classList.remove("selected"));
          root.querySelectorAll(`rect.bar[data-interval="${iv.id}"][data-lane="${iv.lane}"]`).forEach((node) => node.classList.add("selected"));
          selected = iv;
          if (onSelect) onSelect(selected);
        });
      }
      bars++;
    }
    element.dataset.bars = String(bars);
  }

  /* A table of name -> value rows in ``element``. */
  function fillTable(element, rows) {
    element.innerHTML = "";
    for (const [name, value] of rows) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      const td = document.createElement("td");
      th.textContent = name;
      td.textContent = typeof value === "string" ? value : JSON.stringify(value);
      tr.append(th, td);
      element.appendChild(tr);
    }
  }

  function data(id) {
    const node = document.getElementById(id);
    return node ? JSON.parse(node.textContent) : null;
  }

  function csrf() {
    const input = document.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  window.FlespiPictures = { decodePolyline, makeMap, makeChart, makeTimeline, fillTable, data, csrf, utc, duration };
})();
