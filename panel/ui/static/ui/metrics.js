/* Monitoring graphs (templates/ui/_metrics_card.html) drawn with uPlot (npm, served as static).

   Each card fetches its target's /api/v1/…/metrics/ with the page's session, and draws one
   chart per group of series (CPU, memory, network, disk…) with synced cursors. Presets and a
   custom range choose the period; a drag across a chart zooms in and fetches that range again
   (the API picks a finer tier); a click pins a details pane (the bucket, average and peak of
   every series, the events inside it); event markers and hatched gaps with their reason are
   drawn on every chart; a table and a CSV link sit under the graphs.
   Live (server cards): over the server page's websocket (server.js opens it) a point every few
   seconds is appended to the charts, the last ten minutes shown with the x axis following now;
   asked for only while the toggle is on and the page is visible (panel/metrics/live.py).
   window.panelMetrics[card id] exposes the state for the browser tests. */
(function () {
  "use strict";

  var DPR = window.devicePixelRatio || 1;
  var COLORS = ["#2f5bd3", "#1f8a4c", "#c0352b", "#a05f00", "#7a3fc4", "#0f7d86", "#d0467e", "#5c6478"];
  var EVENT_COLORS = {reboot: "#a05f00", stop: "#c0352b", start: "#1f8a4c", migration: "#7a3fc4",
                      resize: "#0f7d86", throttle: "#c0352b", backup: "#2f5bd3", restore: "#2f5bd3"};
  window.panelMetrics = window.panelMetrics || {};

  // -- the groups of series each kind of target draws -----------------------------------------------
  function deviceSeries(names, suffixes) {
    return names.filter(function (n) {
      var parts = n.split(".");
      return parts.length >= 3 && parts[0] === "disk" && suffixes.indexOf(parts[parts.length - 1]) !== -1;
    });
  }
  var GROUPS = {
    server: [
      {key: "cpu", unit: "%", pick: function () { return ["cpu", "steal"]; }},
      {key: "memory", unit: "B", pick: function () { return ["mem_used", "mem_total"]; }, noPeak: ["mem_total"]},
      {key: "network", unit: "bit/s", scale: 8, pick: function () { return ["net_rx", "net_tx"]; }},
      {key: "disk", unit: "B/s", pick: function (names) { return deviceSeries(names, ["rd_bytes", "wr_bytes"]); }},
      {key: "iops", unit: "op/s", pick: function (names) { return deviceSeries(names, ["rd_ops", "wr_ops"]); }}
    ],
    node: [
      {key: "cpu", unit: "%", pick: function () { return ["cpu", "iowait"]; }},
      {key: "memory", unit: "B", pick: function () { return ["mem_avail", "mem_total"]; }, noPeak: ["mem_total"]},
      {key: "servers", unit: "", pick: function () { return ["running"]; }},
      {key: "vcpus", unit: "", pick: function () { return ["vcpus_committed", "vcpus_physical"]; }, noPeak: ["vcpus_physical"]},
      {key: "ram", unit: "B", pick: function () { return ["ram_committed", "ram_physical"]; }, noPeak: ["ram_physical"]}
    ],
    storage: [{key: "space", unit: "B", pick: function () { return ["capacity", "used", "committed"]; },
               noPeak: ["capacity", "committed"]}],
    network: [{key: "traffic", unit: "bit/s", scale: 8, pick: function () { return ["net_rx", "net_tx"]; }}],
    pool: [{key: "addresses", unit: "", pick: function () { return ["used", "free"]; }, noPeak: ["used", "free"]}]
  };

  // -- formatting -----------------------------------------------------------------------------------
  function scaled(value, units, base) {
    var i = 0, v = Math.abs(value);
    while (v >= base && i < units.length - 1) { v /= base; i++; }
    var digits = v >= 100 || i === 0 && Number.isInteger(value) ? 0 : v >= 10 ? 1 : 2;
    return (value < 0 ? "-" : "") + v.toFixed(digits) + " " + units[i];
  }
  function fmt(value, unit) {
    if (value === null || value === undefined || isNaN(value)) { return "—"; }
    if (unit === "%") { return value.toFixed(1) + " %"; }
    if (unit === "B") { return scaled(value, ["B", "KiB", "MiB", "GiB", "TiB", "PiB"], 1024); }
    if (unit === "B/s") { return scaled(value, ["B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s"], 1024); }
    if (unit === "bit/s") { return scaled(value, ["bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"], 1000); }
    if (unit === "op/s") { return (value >= 100 ? value.toFixed(0) : value.toFixed(1)) + " IOPS"; }
    return Math.abs(value) >= 100 || Number.isInteger(value) ? String(Math.round(value)) : value.toFixed(1);
  }
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function localInput(seconds) {  // for <input type=datetime-local>
    var d = new Date(seconds * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
  }
  function when(seconds, step) {
    var d = new Date(seconds * 1000);
    var date = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate());
    if (step < 60) { return date + " " + pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()); }
    return step >= 86400 ? date : date + " " + pad(d.getHours()) + ":" + pad(d.getMinutes());
  }
  function duration(seconds) {
    var d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600), m = Math.round(seconds % 3600 / 60);
    return [d ? d + " d" : "", h ? h + " h" : "", m || !(d || h) ? m + " min" : ""].filter(Boolean).join(" ");
  }
  function stepText(step) {
    if (step % 86400 === 0) { return step / 86400 + " d"; }
    if (step % 3600 === 0) { return step / 3600 + " h"; }
    if (step % 60 === 0) { return step / 60 + " min"; }
    return step + " s";
  }

  // -- drawing helpers ------------------------------------------------------------------------------
  var hatch = null;
  function hatchPattern(ctx) {
    if (hatch) { return hatch; }
    var c = document.createElement("canvas");
    c.width = c.height = 8 * DPR;
    var g = c.getContext("2d");
    g.strokeStyle = "rgba(107, 115, 133, .38)";
    g.lineWidth = DPR;
    g.beginPath();
    g.moveTo(0, c.height); g.lineTo(c.width, 0);
    g.moveTo(-c.width / 2, c.height / 2); g.lineTo(c.width / 2, -c.height / 2);
    g.moveTo(c.width / 2, c.height * 1.5); g.lineTo(c.width * 1.5, c.height / 2);
    g.stroke();
    hatch = ctx.createPattern(c, "repeat");
    return hatch;
  }

  function Card(el) {
    this.el = el;
    this.url = el.getAttribute("data-metrics-url");
    this.kind = el.getAttribute("data-metrics-kind");
    try { this.s = JSON.parse(el.querySelector(".metrics-strings").textContent); } catch (e) { this.s = {}; }
    this.chartsEl = el.querySelector(".metrics-charts");
    this.details = el.querySelector(".metrics-details");
    this.statusEl = el.querySelector(".metrics-status");
    this.gapsEl = el.querySelector(".metrics-gaps");
    this.tableBox = el.querySelector(".metrics-table-box");
    this.table = el.querySelector(".metrics-table");
    this.csv = el.querySelector(".metrics-csv");
    this.form = el.querySelector(".metrics-range");
    this.zoomOut = el.querySelector("[data-zoom-out]");
    this.plots = [];
    this.charts = [];
    this.data = null;
    this.pinned = null;
    this.history = [];  // ranges zoomed out of
    this.syncKey = el.id;
    this.state = {fetches: [], step: null, from: null, to: null, pinned: null, ready: false,
                  live: {on: false, points: 0, status: ""}};
    window.panelMetrics[el.id] = this.state;
    this.liveBtn = el.querySelector("[data-live]");
    this.liveNote = el.querySelector(".metrics-live-note");
    this.live = null;  // while on: {seconds, window, retry}
    this.bind();
    this.preset(3600);
  }

  Card.prototype.t = function (key, fallback) { return this.s[key] || fallback || key; };

  Card.prototype.bind = function () {
    var self = this;
    var buttons = this.el.querySelectorAll("[data-preset]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener("click", function (ev) {
        self.history = [];
        self.preset(parseInt(ev.currentTarget.getAttribute("data-preset"), 10));
      });
    }
    this.form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var from = Date.parse(self.form.elements.from.value) / 1000;
      var to = Date.parse(self.form.elements.to.value) / 1000;
      if (!(from < to)) { self.status(self.t("badRange"), true); return; }
      self.history = [];
      self.load(Math.floor(from), Math.floor(to), null);
    });
    if (this.liveBtn) {
      this.liveBtn.addEventListener("click", function () {
        if (self.live) { self.stopLive(true); } else { self.startLive(); }
      });
    }
    this.zoomOut.addEventListener("click", function () {
      var range = self.history.pop();
      if (range) { self.load(range[0], range[1], range[2]); }
    });
    if (window.ResizeObserver) {
      var width = this.chartsEl.clientWidth;
      new ResizeObserver(function () {
        if (Math.abs(self.chartsEl.clientWidth - width) < 4) { return; }
        width = self.chartsEl.clientWidth;
        self.plots.forEach(function (u) { u.setSize({width: self.width(), height: u.height}); });
      }).observe(this.chartsEl);
    }
  };

  Card.prototype.width = function () { return Math.max(this.chartsEl.clientWidth, 280); };

  Card.prototype.status = function (text, bad) {
    this.statusEl.textContent = text;
    this.statusEl.classList.toggle("error-text", !!bad);
  };

  Card.prototype.preset = function (seconds) {
    var to = Math.floor(Date.now() / 1000);
    this.load(to - seconds, to, seconds);
  };

  Card.prototype.load = function (from, to, preset) {
    var self = this;
    if (this.live) { this.stopLive(false); }  // a range of the past: live is off
    var query = "?from=" + from + "&to=" + to;
    this.range = [from, to, preset];
    var buttons = this.el.querySelectorAll("[data-preset]");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].setAttribute("aria-pressed", String(parseInt(buttons[i].getAttribute("data-preset"), 10) === preset));
    }
    this.form.elements.from.value = localInput(from);
    this.form.elements.to.value = localInput(to);
    this.csv.href = this.url + query + "&format=csv";
    this.zoomOut.hidden = this.history.length === 0;
    this.status(this.t("loading"));
    this.el.setAttribute("aria-busy", "true");
    var serial = (this.serial = (this.serial || 0) + 1);
    fetch(this.url + query, {credentials: "same-origin", headers: {Accept: "application/json"}})
      .then(function (r) {
        return r.json().then(function (body) { return {ok: r.ok, body: body}; });
      })
      .then(function (answer) {
        if (serial !== self.serial) { return; }  // a newer range was asked for meanwhile
        self.el.removeAttribute("aria-busy");
        if (!answer.ok) { self.status(answer.body.detail || self.t("failed"), true); return; }
        self.state.fetches.push({from: from, to: to, step: answer.body.step, points: answer.body.t.length});
        self.show(answer.body);
      })
      .catch(function () {
        if (serial !== self.serial) { return; }
        self.el.removeAttribute("aria-busy");
        self.status(self.t("failed"), true);
      });
  };

  // -- the charts -----------------------------------------------------------------------------------
  Card.prototype.show = function (data) {
    var self = this;
    this.data = data;
    this.state.step = data.step;
    this.state.from = data.from;
    this.state.to = data.to;
    this.unpin();
    this.plots.forEach(function (u) { u.destroy(); });
    this.plots = [];
    this.chartsEl.textContent = "";
    var names = Object.keys(data.series);
    this.charts = [];
    (GROUPS[this.kind] || []).forEach(function (group) {
      var picked = group.pick(names).filter(function (n) { return data.series[n]; });
      if (picked.length) { self.charts.push({group: group, names: picked}); }
    });
    var hasData = names.some(function (n) {
      return data.series[n].avg.some(function (v) { return v !== null; });
    });
    this.status((hasData ? "" : this.t("noData") + " ") + this.t("step") + " " + stepText(data.step) + " · " +
                data.t.length + " " + this.t("points"));
    this.charts.forEach(function (chart, i) { self.plots.push(self.plot(chart, i)); });
    this.describeGaps();
    if (this.tableBox.open) { this.fillTable(); }
    this.state.ready = true;
  };

  Card.prototype.seriesLabel = function (name) {
    var parts = name.split(".");
    var last = parts[parts.length - 1];
    var label = this.t("s." + last, last);
    return parts.length >= 3 ? parts.slice(1, -1).join(".") + " " + label : label;
  };

  Card.prototype.columns = function (chart) {
    var data = this.data, scale = chart.group.scale || 1, cols = [data.t], series = [];
    var noPeak = chart.group.noPeak || [];
    var self = this;
    chart.names.forEach(function (name, i) {
      var color = COLORS[i % COLORS.length];
      var col = data.series[name];
      cols.push(col.avg.map(function (v) { return v === null ? null : v * scale; }));
      series.push({name: name, kind: "avg", label: self.seriesLabel(name), stroke: color, width: 1.6,
                   fill: chart.names.length === 1 ? color + "1a" : undefined});
      if (noPeak.indexOf(name) === -1) {
        cols.push(col.max.map(function (v) { return v === null ? null : v * scale; }));
        series.push({name: name, kind: "max", label: self.seriesLabel(name) + " " + self.t("peak"), stroke: color + "80",
                     width: 1, dash: [4, 3]});
      }
    });
    return {cols: cols, series: series};
  };

  Card.prototype.plot = function (chart, index) {
    var self = this, unit = chart.group.unit;
    var built = this.columns(chart);
    chart.series = built.series;
    var box = document.createElement("div");
    box.className = "metrics-chart";
    box.setAttribute("data-chart", chart.group.key);
    box.tabIndex = 0;
    box.setAttribute("role", "img");
    box.setAttribute("aria-label", this.t(chart.group.key) + ": " + chart.names.map(this.seriesLabel, this).join(", "));
    var title = document.createElement("h3");
    title.textContent = this.t(chart.group.key);
    box.appendChild(title);
    this.chartsEl.appendChild(box);
    var opts = {
      width: this.width(),
      height: 150,
      cursor: {sync: {key: this.syncKey, setSeries: false}, drag: {x: true, y: false, setScale: false},
               points: {size: 6}},
      select: {show: true},
      legend: {live: true},
      scales: {x: {time: true, range: function () { return self.xRange(); }},
               y: {range: function (u, min, max) {
                 var top = unit === "%" ? Math.max(100, max || 0) : Math.max(max || 0, 1);
                 return [0, top * (unit === "%" ? 1 : 1.08)];
               }}},
      axes: [{stroke: "#6b7385", grid: {stroke: "#eef0f4"}, ticks: {stroke: "#dfe3ea"}},
             {stroke: "#6b7385", grid: {stroke: "#eef0f4"}, ticks: {stroke: "#dfe3ea"}, size: 92,
              values: function (u, vals) { return vals.map(function (v) { return fmt(v, unit); }); }}],
      series: [{value: function (u, v) { return v === null ? "—" : when(v, self.data.step); }}].concat(
        built.series.map(function (s) {
          return {label: s.label, stroke: s.stroke, width: s.width, dash: s.dash, fill: s.fill, spanGaps: false,
                  points: {show: false}, value: function (u, v) { return fmt(v, unit); }};
        })),
      hooks: {
        draw: [function (u) { self.drawGaps(u); self.drawPin(u); }],
        setSelect: [function (u) { self.zoom(u); }],
        ready: [function (u) { self.markers(u, index === 0); self.clicks(u, box); }],
        setSize: [function (u) { self.markers(u, index === 0); }]
      }
    };
    return new window.uPlot(opts, built.cols, box);
  };

  Card.prototype.drawGaps = function (u) {
    var gaps = this.data.gaps, ctx = u.ctx, b = u.bbox;
    ctx.save();
    ctx.beginPath();
    ctx.rect(b.left, b.top, b.width, b.height);
    ctx.clip();
    ctx.fillStyle = hatchPattern(ctx);
    ctx.font = Math.round(11 * DPR) + "px sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    for (var i = 0; i < gaps.length; i++) {
      var x0 = u.valToPos(gaps[i].from, "x", true), x1 = u.valToPos(gaps[i].to, "x", true);
      if (x1 < b.left || x0 > b.left + b.width) { continue; }
      ctx.fillStyle = hatchPattern(ctx);
      ctx.fillRect(x0, b.top, x1 - x0, b.height);
      if (x1 - x0 > 80 * DPR) {
        ctx.fillStyle = "#59627a";
        ctx.fillText(this.t("gap." + gaps[i].reason, gaps[i].reason), Math.max(x0, b.left) + 4 * DPR, b.top + 3 * DPR);
      }
    }
    ctx.restore();
  };

  Card.prototype.drawPin = function (u) {
    if (this.pinned === null) { return; }
    var x = u.valToPos(this.data.t[this.pinned], "x", true), b = u.bbox, ctx = u.ctx;
    var x1 = u.valToPos(this.data.t[this.pinned] + this.data.step, "x", true);
    ctx.save();
    ctx.fillStyle = "rgba(47, 91, 211, .10)";
    ctx.fillRect(x, b.top, Math.max(x1 - x, DPR), b.height);
    ctx.strokeStyle = "rgba(47, 91, 211, .8)";
    ctx.lineWidth = DPR;
    ctx.beginPath(); ctx.moveTo(x, b.top); ctx.lineTo(x, b.top + b.height); ctx.stroke();
    ctx.restore();
  };

  // Event markers: DOM elements over the plot (a line, and on the first chart a flag with the
  // label as its name), so they can be hovered, read by screen readers and found by tests.
  Card.prototype.markers = function (u, flags) {
    var old = u.over.querySelectorAll(".metrics-marker");
    for (var i = 0; i < old.length; i++) { old[i].parentNode.removeChild(old[i]); }
    var events = this.data.events || [];
    var width = u.over.clientWidth || u.bbox.width / DPR;
    for (var j = 0; j < events.length; j++) {
      var left = u.valToPos(events[j].t, "x");
      if (left < 0 || left > width) { continue; }
      var mark = document.createElement("span");
      mark.className = "metrics-marker" + (flags ? " with-flag" : "");
      mark.setAttribute("data-kind", events[j].kind);
      mark.setAttribute("data-t", events[j].t);
      mark.style.left = left + "px";
      mark.style.setProperty("--marker", EVENT_COLORS[events[j].kind] || "#5c6478");
      mark.title = when(events[j].t, 60) + " " + events[j].label;
      if (flags) { mark.setAttribute("aria-label", mark.title); mark.setAttribute("role", "img"); }
      u.over.appendChild(mark);
    }
  };

  Card.prototype.zoom = function (u) {
    if (u.select.width < 4) { return; }
    var from = Math.floor(u.posToVal(u.select.left, "x"));
    var to = Math.ceil(u.posToVal(u.select.left + u.select.width, "x"));
    this.plots.forEach(function (p) { p.setSelect({left: 0, width: 0, top: 0, height: 0}, false); });
    if (to - from < 120) { return; }  // two minutes: the finest tier cannot show less
    this.history.push(this.range);
    this.load(from, to, null);
  };

  Card.prototype.clicks = function (u, box) {
    var self = this, down = null;
    u.over.addEventListener("mousedown", function (ev) { down = [ev.clientX, ev.clientY]; });
    u.over.addEventListener("click", function (ev) {
      if (down && Math.abs(ev.clientX - down[0]) + Math.abs(ev.clientY - down[1]) > 4) { return; }  // a drag
      if (u.cursor.idx !== null && u.cursor.idx !== undefined) { self.pin(u.cursor.idx); }
    });
    box.addEventListener("keydown", function (ev) {
      var n = self.data.t.length;
      if (!n) { return; }
      var idx = self.pinned === null ? n - 1 : self.pinned;
      if (ev.key === "ArrowLeft") { idx = Math.max(0, idx - 1); }
      else if (ev.key === "ArrowRight") { idx = Math.min(n - 1, idx + 1); }
      else if (ev.key === "Escape") { self.unpin(); return; }
      else if (ev.key !== "Enter") { return; }
      ev.preventDefault();
      self.pin(idx);
    });
  };

  // -- the pinned details ---------------------------------------------------------------------------
  Card.prototype.pin = function (idx) {
    var self = this, data = this.data, start = data.t[idx], end = start + data.step;
    this.pinned = idx;
    var pane = this.details;
    pane.textContent = "";
    var head = document.createElement("div");
    head.className = "metrics-details-head";
    var title = document.createElement("strong");
    title.className = "metrics-details-time";
    title.textContent = when(start, data.step) + " – " + when(end, data.step) + " (" + stepText(data.step) + ")";
    var close = document.createElement("button");
    close.type = "button";
    close.className = "btn btn-sm btn-ghost";
    close.textContent = this.t("close");
    close.addEventListener("click", function () { self.unpin(); });
    head.appendChild(title);
    head.appendChild(close);
    pane.appendChild(head);
    var gap = data.gaps.filter(function (g) { return g.from <= start && start < g.to; })[0];
    if (gap) {
      var note = document.createElement("p");
      note.className = "muted small metrics-details-gap";
      note.setAttribute("data-reason", gap.reason);
      note.textContent = this.t("gaps") + ": " + this.t("gap." + gap.reason, gap.reason);
      pane.appendChild(note);
    }
    var table = document.createElement("table");
    table.className = "table metrics-details-table";
    var thead = table.createTHead().insertRow();
    [this.t("series"), this.t("average"), this.t("peak")].forEach(function (text, i) {
      var th = document.createElement("th");
      th.textContent = text;
      if (i) { th.className = "num"; }
      thead.appendChild(th);
    });
    var body = table.createTBody();
    this.charts.forEach(function (chart) {
      var unit = chart.group.unit, scale = chart.group.scale || 1;
      chart.names.forEach(function (name) {
        var col = data.series[name], row = body.insertRow();
        row.setAttribute("data-series", name);
        row.setAttribute("data-avg", col.avg[idx] === null ? "" : col.avg[idx]);
        row.setAttribute("data-max", col.max[idx] === null ? "" : col.max[idx]);
        row.insertCell().textContent = self.t(chart.group.key) + " · " + self.seriesLabel(name);
        var avg = row.insertCell(), max = row.insertCell();
        avg.className = max.className = "num";
        avg.textContent = fmt(col.avg[idx] === null ? null : col.avg[idx] * scale, unit);
        max.textContent = fmt(col.max[idx] === null ? null : col.max[idx] * scale, unit);
      });
    });
    pane.appendChild(table);
    var inside = (data.events || []).filter(function (e) { return e.t >= start && e.t < end; });
    if (inside.length) {
      var list = document.createElement("ul");
      list.className = "metrics-details-events";
      inside.forEach(function (e) {
        var li = document.createElement("li");
        li.setAttribute("data-kind", e.kind);
        li.textContent = when(e.t, 60) + " " + e.label;
        list.appendChild(li);
      });
      var h = document.createElement("h3");
      h.textContent = this.t("events");
      pane.appendChild(h);
      pane.appendChild(list);
    }
    pane.hidden = false;
    this.state.pinned = {t: start, step: data.step};
    this.plots.forEach(function (u) { u.redraw(false, false); });
  };

  Card.prototype.unpin = function () {
    this.pinned = null;
    this.state.pinned = null;
    this.details.hidden = true;
    this.details.textContent = "";
    this.plots.forEach(function (u) { u.redraw(false, false); });
  };

  // -- gaps, table ----------------------------------------------------------------------------------
  Card.prototype.describeGaps = function () {
    var totals = {}, self = this;
    this.data.gaps.forEach(function (g) { totals[g.reason] = (totals[g.reason] || 0) + (g.to - g.from); });
    var parts = Object.keys(totals).map(function (reason) {
      return self.t("gap." + reason, reason) + " " + duration(totals[reason]);
    });
    this.gapsEl.hidden = parts.length === 0;
    this.gapsEl.textContent = parts.length ? this.t("gaps") + ": " + parts.join(", ") : "";
  };

  Card.prototype.fillTable = function () {
    var data = this.data, self = this, table = this.table;
    table.textContent = "";
    var head = table.createTHead().insertRow();
    var columns = [];
    var th = document.createElement("th");
    th.textContent = this.t("time");
    head.appendChild(th);
    this.charts.forEach(function (chart) {
      chart.names.forEach(function (name) {
        ["avg", "max"].forEach(function (which) {
          var cell = document.createElement("th");
          cell.className = "num";
          cell.textContent = self.seriesLabel(name) + (which === "max" ? " " + self.t("peak") : "");
          head.appendChild(cell);
          columns.push({values: data.series[name][which], unit: chart.group.unit, scale: chart.group.scale || 1});
        });
      });
    });
    var body = table.createTBody();
    for (var i = data.t.length - 1; i >= 0; i--) {  // newest first
      var row = body.insertRow();
      row.insertCell().textContent = when(data.t[i], data.step);
      for (var c = 0; c < columns.length; c++) {
        var v = columns[c].values[i], cell = row.insertCell();
        cell.className = "num";
        cell.textContent = fmt(v === null ? null : v * columns[c].scale, columns[c].unit);
      }
    }
  };

  Card.prototype.xRange = function () {
    if (this.live) {
      var now = Date.now() / 1000;
      return [now - this.live.window, now];
    }
    return [this.data.t.length ? this.data.t[0] : this.range[0], this.data.to];
  };

  // -- live mode ------------------------------------------------------------------------------------
  var LIVE_TYPE = "metrics.live";
  var liveCards = [];

  function liveSocket() {
    var socket = window.panelServerSocket;
    return socket && socket.readyState === 1 ? socket : null;
  }

  function attach(socket) {
    if (!socket || socket.panelMetricsAttached) { return; }
    socket.panelMetricsAttached = true;
    socket.addEventListener("message", function (event) {
      var msg;
      try { msg = JSON.parse(event.data); } catch (e) { return; }
      if (!msg || msg.type !== LIVE_TYPE) { return; }
      liveCards.forEach(function (card) { card.onLive(msg); });
    });
    socket.addEventListener("close", function () {
      liveCards.forEach(function (card) { if (card.live) { card.liveStatus("reconnecting"); } });
    });
  }

  window.addEventListener("panel:server-socket", function (event) {
    attach(event.detail);
    liveCards.forEach(function (card) { if (card.live) { card.subscribe(); } });  // a new socket: ask again
  });
  document.addEventListener("visibilitychange", function () {
    // Nobody looks at a hidden tab: no reads for it.
    liveCards.forEach(function (card) {
      if (!card.live) { return; }
      if (document.hidden) { card.send(false); } else { card.subscribe(); }
    });
  });

  Card.prototype.send = function (on) {
    var socket = liveSocket();
    if (!socket) { return false; }
    attach(socket);
    socket.send(JSON.stringify({type: LIVE_TYPE, on: on}));
    return true;
  };

  Card.prototype.subscribe = function () {
    if (!this.live || document.hidden) { return; }
    window.clearTimeout(this.live.retry);
    if (!this.send(true)) { this.liveStatus("reconnecting"); }
  };

  Card.prototype.liveStatus = function (status, text) {
    this.state.live.status = status;
    if (this.liveNote) {
      this.liveNote.textContent = text || this.t("live." + status, "");
      this.liveNote.classList.toggle("error-text", status === "busy" || status === "no_answer" || status === "refused");
    }
  };

  Card.prototype.startLive = function () {
    if (liveCards.indexOf(this) === -1) { liveCards.push(this); }
    this.history = [];
    this.zoomOut.hidden = true;
    var buttons = this.el.querySelectorAll("[data-preset]");
    for (var i = 0; i < buttons.length; i++) { buttons[i].setAttribute("aria-pressed", "false"); }
    this.live = {seconds: 5, window: 600, retry: null};
    this.liveBtn.setAttribute("aria-pressed", "true");
    this.el.classList.add("is-live");
    this.state.live.on = true;
    this.state.live.points = 0;
    // The minutes already drawn inside the window stay; the live points follow them.
    var old = this.data || {t: [], series: {}, events: [], gaps: []}, since = Date.now() / 1000 - this.live.window;
    var keep = [];
    for (var k = 0; k < old.t.length; k++) { if (old.t[k] >= since) { keep.push(k); } }
    var series = {};
    Object.keys(old.series).forEach(function (name) {
      var col = old.series[name];
      series[name] = {avg: keep.map(function (j) { return col.avg[j]; }), max: keep.map(function (j) { return col.max[j]; }),
                      unit: col.unit, counter: col.counter};
    });
    this.show({kind: old.kind, id: old.id, step: this.live.seconds, from: Math.floor(since), to: Math.ceil(since + this.live.window),
               t: keep.map(function (j) { return old.t[j]; }), series: series,
               events: (old.events || []).filter(function (e) { return e.t >= since; }),
               gaps: (old.gaps || []).filter(function (g) { return g.to >= since; })});
    this.form.elements.from.value = localInput(since);  // the range shown is the live window
    this.form.elements.to.value = localInput(since + this.live.window);
    this.liveStatus("waiting");
    this.subscribe();
  };

  Card.prototype.stopLive = function (reload) {
    if (!this.live) { return; }
    window.clearTimeout(this.live.retry);
    this.live = null;
    this.send(false);
    this.liveBtn.setAttribute("aria-pressed", "false");
    this.el.classList.remove("is-live");
    this.state.live.on = false;
    this.liveStatus("", "");
    if (reload) { this.preset(3600); }
  };

  Card.prototype.onLive = function (msg) {
    if (!this.live) { return; }
    var self = this;
    if (msg.status === "point") { this.appendLive(msg.t, msg.series || {}); this.liveStatus("on"); return; }
    if (msg.status === "on") {
      this.live.seconds = msg.seconds || this.live.seconds;
      this.live.window = msg.window || this.live.window;
      this.liveStatus("waiting");
      return;
    }
    if (msg.status === "busy" || msg.status === "refused") {
      this.stopLive(false);  // the toggle goes off with the reason next to it
      this.liveStatus(msg.status);
      return;
    }
    if (msg.status === "stopped") {
      // Not running (or moved to another host): asked again now and then, with no reads meanwhile.
      this.liveStatus("stopped");
      window.clearTimeout(this.live.retry);
      this.live.retry = window.setTimeout(function () { self.subscribe(); }, 15000);
      return;
    }
    if (msg.status === "no_answer") { this.liveStatus("no_answer"); }
  };

  Card.prototype.appendLive = function (t, values) {
    var data = this.data, since = Date.now() / 1000 - this.live.window, rebuilt = false;
    Object.keys(values).forEach(function (name) {
      if (!data.series[name]) {  // a series the minutes did not have (yet): empty before now
        data.series[name] = {avg: data.t.map(function () { return null; }), max: data.t.map(function () { return null; }),
                             unit: "", counter: false};
        rebuilt = true;
      }
    });
    data.t.push(t);
    Object.keys(data.series).forEach(function (name) {
      var v = values.hasOwnProperty(name) ? values[name] : null;
      data.series[name].avg.push(v);
      data.series[name].max.push(v);
    });
    var drop = 0;
    while (drop < data.t.length && data.t[drop] < since) { drop++; }
    if (drop) {
      data.t.splice(0, drop);
      Object.keys(data.series).forEach(function (name) {
        data.series[name].avg.splice(0, drop);
        data.series[name].max.splice(0, drop);
      });
    }
    data.from = Math.floor(since);
    data.to = Math.ceil(since + this.live.window);
    this.state.live.points++;
    this.state.live.last = {t: t, series: values};
    this.state.live.x = this.xRange();
    var pinned = this.pinned;
    if (rebuilt || !this.plots.length) {
      this.show(data);
    } else {
      var self = this;
      this.charts.forEach(function (chart, i) { self.plots[i].setData(self.columns(chart).cols); });
      if (pinned !== null) { this.pinned = Math.max(0, pinned - drop); }
    }
    this.status(data.t.length + " " + this.t("points"));
    if (this.tableBox.open) { this.fillTable(); }
  };

  function start() {
    if (!window.uPlot) { return; }
    var cards = document.querySelectorAll(".metrics-card");
    for (var i = 0; i < cards.length; i++) {
      if (cards[i].getAttribute("data-metrics-ready")) { continue; }
      cards[i].setAttribute("data-metrics-ready", "1");
      var card = new Card(cards[i]);
      card.tableBox.addEventListener("toggle", (function (c) {
        return function () { if (c.tableBox.open && c.data) { c.fillTable(); } };
      })(card));
    }
  }

  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
