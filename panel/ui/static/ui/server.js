/* Live state of one server: a websocket to /ws/servers/<id>/ updates the page in place. */
(function () {
  "use strict";

  var power = document.getElementById("power");
  if (!power) { return; }

  function readJson(id) {
    var el = document.getElementById(id);
    try { return el ? JSON.parse(el.textContent) : {}; } catch (e) { return {}; }
  }

  var texts = readJson("server-i18n");
  var stateBadge = document.getElementById("server-state");
  var progress = document.getElementById("op-progress");
  var statusText = document.getElementById("op-status");
  var logLine = document.getElementById("op-log");
  var errorLine = document.getElementById("op-error");
  var live = document.getElementById("live-indicator");
  var notice = document.getElementById("suspend-notice");
  var consoleActions = document.getElementById("console-actions");
  var reason = document.getElementById("suspend-reason");
  var opTable = document.querySelector("#operations tbody");
  var opUrl = power.getAttribute("data-op-url") || "";
  var finished = false;
  var current = null;  // the last state shown

  function operationText(op) {
    if (!op) { return texts.noOperations || ""; }
    var text = op.kind_label + ": " + op.status_label;
    if (op.active) { text += " (" + op.progress + "%)"; }
    return text;
  }

  function updateButtons(actions, busy) {
    var forms = document.querySelectorAll("form[data-action]");
    for (var i = 0; i < forms.length; i++) {
      var kind = forms[i].getAttribute("data-action");
      var allowed = !busy && !finished && actions.indexOf(kind) !== -1;
      var controls = forms[i].querySelectorAll("button, input");
      for (var j = 0; j < controls.length; j++) {
        if (controls[j].type === "hidden") { continue; }
        if (controls[j].tagName === "BUTTON") { controls[j].disabled = !allowed; }
      }
      forms[i].classList.toggle("is-disabled", !allowed);
    }
  }

  function updateTable(op) {
    if (!opTable || !op) { return; }
    var row = opTable.querySelector('tr[data-op-id="' + op.id + '"]');
    if (!row) {
      var empty = opTable.querySelector("tr.empty");
      if (empty) { empty.parentNode.removeChild(empty); }
      row = document.createElement("tr");
      row.setAttribute("data-op-id", op.id);
      var link = document.createElement("a");
      link.href = opUrl.replace(/\/0\/$/, "/" + op.id + "/");
      link.textContent = op.id;
      var cells = [];
      for (var i = 0; i < 7; i++) { cells.push(document.createElement("td")); row.appendChild(cells[i]); }
      cells[0].appendChild(link);
      cells[1].textContent = op.kind_label;
      var badge = document.createElement("span");
      badge.className = "badge";
      cells[2].appendChild(badge);
      cells[3].className = "num op-progress-cell";
      cells[4].textContent = cells[5].textContent = cells[6].textContent = "—";
      opTable.insertBefore(row, opTable.firstChild);
    }
    var statusBadge = row.querySelector(".badge");
    if (statusBadge) {
      statusBadge.textContent = op.status_label;
      statusBadge.setAttribute("data-status", op.status);
    }
    var progressCell = row.querySelector(".op-progress-cell");
    if (progressCell) { progressCell.textContent = op.progress + "%"; }
  }

  function apply(msg) {
    if (!msg || !msg.state) { return; }
    current = msg;
    if (msg.state === "deleted") { finished = true; }
    stateBadge.textContent = msg.state_label;
    stateBadge.setAttribute("data-state", msg.state);
    if (consoleActions) { consoleActions.hidden = msg.state !== "running"; }
    if (notice) {
      notice.hidden = msg.state !== "suspended";
      if (reason && msg.state === "suspended") { reason.textContent = msg.suspend_reason || texts.noReason || ""; }
    }
    var op = msg.operation;
    statusText.textContent = finished ? (texts.deleted || "") : operationText(op);
    if (op) {
      progress.hidden = false;
      progress.value = op.progress;
      progress.textContent = op.progress + "%";
      progress.setAttribute("data-status", op.status);
      logLine.textContent = op.log_tail || "";
      errorLine.textContent = op.error || "";
      errorLine.hidden = !op.error;
      updateTable(op);
    } else {
      progress.hidden = true;
    }
    updateButtons(msg.actions || [], !!msg.busy);
  }

  function flash(text, tone) {
    var box = document.getElementById("live-messages");
    if (!box || !text) { return; }
    box.innerHTML = "";
    var item = document.createElement("li");
    item.className = "msg msg-" + tone;
    item.setAttribute("role", "status");
    item.textContent = text;
    box.appendChild(item);
  }

  function shownOperationId() {
    return current && current.operation ? current.operation.id : 0;
  }

  // The buttons post in the background, so the page (and its websocket) stays open and the
  // progress of the new operation shows at once. Without JavaScript they are plain forms.
  function onSubmit(event) {
    var form = event.currentTarget;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { event.preventDefault(); return; }
    if (form.getAttribute("data-action") === "delete" || !window.fetch || !window.FormData) { return; }
    event.preventDefault();
    var buttons = form.querySelectorAll("button");
    for (var i = 0; i < buttons.length; i++) { buttons[i].disabled = true; }
    window.fetch(form.action, {
      method: "POST",
      body: new window.FormData(form),
      credentials: "same-origin",
      headers: {"X-Requested-With": "XMLHttpRequest", "Accept": "application/json"}
    }).then(function (response) {
      var type = response.headers.get("Content-Type") || "";
      if (type.indexOf("application/json") === -1) { throw new Error("unexpected answer"); }
      return response.json();
    }).then(function (data) {
      flash(data.message, data.ok ? "success" : "error");
      var snap = data.snapshot;
      // The websocket may already have shown this operation (or a later state): keep that.
      if (snap && (!snap.operation || snap.operation.id > shownOperationId())) {
        apply(snap);
      } else if (current) {
        apply(current);
      }
      if (data.ok) {
        var reasonInput = form.querySelector("input[name=reason]");
        if (reasonInput) { reasonInput.value = ""; }
      }
    }).catch(function () {
      window.HTMLFormElement.prototype.submit.call(form);  // fall back to the plain form
    });
  }

  var actionForms = document.querySelectorAll("form[data-action]");
  for (var f = 0; f < actionForms.length; f++) { actionForms[f].addEventListener("submit", onSubmit); }

  apply(readJson("server-snapshot"));

  if (!("WebSocket" in window)) { return; }
  var path = power.getAttribute("data-ws-path");
  var scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
  var delay = 1000;

  function offline() {
    live.hidden = true;
    if (!finished && texts.offline) { power.setAttribute("title", texts.offline); }
  }

  function connect() {
    var socket;
    try { socket = new WebSocket(scheme + window.location.host + path); } catch (e) { offline(); return; }
    socket.onopen = function () {
      delay = 1000; live.hidden = false; power.removeAttribute("title");
      // The graphs' live mode (metrics.js) talks over this socket too; its messages have a "type".
      window.panelServerSocket = socket;
      window.dispatchEvent(new CustomEvent("panel:server-socket", {detail: socket}));
    };
    socket.onmessage = function (event) {
      try { apply(JSON.parse(event.data)); } catch (e) { /* ignore a malformed message */ }
    };
    socket.onclose = function (event) {
      offline();
      // 4401: signed out, 4404: no such server (or not yours); do not retry those.
      if (finished || event.code === 4401 || event.code === 4404) { return; }
      window.setTimeout(connect, delay);
      delay = Math.min(delay * 2, 30000);
    };
  }

  connect();
})();
