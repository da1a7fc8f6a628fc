// The live tail: server-sent events from ROOT/tail/events, shown newest first.
// Rows are built with textContent only: nothing from an event is parsed as HTML.
"use strict";
(function () {
  const table = document.getElementById("tail");
  if (!table) return;
  const body = table.querySelector("tbody");
  const status = document.getElementById("tail-status");
  const keep = 200;
  // Where the next stream starts: the resume point the server names with
  // each message (its SSE id), which moves only past complete positions (an
  // upcaster may split one stored event into several at one position).
  let resume = "after=" + encodeURIComponent(table.dataset.after || "0");
  let source = null;
  // The path the console is served under behind a reverse proxy ("" at the
  // root): the server names it on the page, as it puts every link under it.
  const root = document.body.dataset.root || "";

  // Bidirectional controls in stored text would reorder what the operator
  // reads, and other control characters a browser drops or replaces: each
  // is shown as its escape in a marked span, as the server's pages show it
  // (service/console/html.py), never applied. Line breaks and tabs are a
  // payload's layout; in an aggregate id (``name``) they are escaped too,
  // with every character the API refuses in an id (Python's isprintable:
  // Unicode's "Other" and separators but the space), as the pages do.
  const bidi = "\\u061c\\u200e\\u200f\\u202a-\\u202e\\u2066-\\u2069";
  const controls = new RegExp("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f" + bidi + "]");
  const nameControls = /(?! )[\p{C}\p{Z}]/u;
  const shortEscapes = { "\n": "\\n", "\t": "\\t", "\r": "\\r" };

  function escaped(character) {
    const code = character.codePointAt(0);
    if (shortEscapes[character]) return shortEscapes[character];
    if (code < 0x100) return "\\x" + code.toString(16).padStart(2, "0");
    return code < 0x10000 ? "\\u" + code.toString(16).padStart(4, "0") : "\\U" + code.toString(16).padStart(8, "0");
  }

  function setText(node, text, name) {
    const pattern = name ? nameControls : controls;
    let rest = text;
    let found;
    while ((found = pattern.exec(rest)) !== null) {
      node.appendChild(document.createTextNode(rest.slice(0, found.index)));
      const mark = document.createElement("span");
      mark.className = "ctl";
      mark.textContent = escaped(found[0]);
      node.appendChild(mark);
      rest = rest.slice(found.index + found[0].length);
    }
    node.appendChild(document.createTextNode(rest));
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    if (className) {
      const pre = document.createElement("pre");
      pre.className = className;
      setText(pre, text);
      td.appendChild(pre);
    } else {
      setText(td, text);
    }
    row.appendChild(td);
    return td;
  }

  function show(event) {
    const empty = body.querySelector("td.empty");
    if (empty) empty.parentNode.remove();
    const row = document.createElement("tr");
    row.dataset.position = String(event.position);
    cell(row, String(event.position));
    const link = document.createElement("a");
    link.href = root + "/aggregates/" + encodeURIComponent(event.aggregate_id);
    setText(link, event.aggregate_id, true);
    cell(row, "").appendChild(link);
    cell(row, String(event.version));
    cell(row, event.event_type);
    cell(row, event.recorded);
    cell(row, event.payload, "json payload");
    body.insertBefore(row, body.firstChild);
    while (body.rows.length > keep) body.deleteRow(body.rows.length - 1);
  }

  function connect() {
    source = new EventSource(root + "/tail/events?" + resume);
    source.addEventListener("open", function () { status.textContent = "live"; });
    source.addEventListener("event", function (message) {
      if (message.lastEventId) resume = message.lastEventId;
      show(JSON.parse(message.data));
    });
    source.addEventListener("checkpoint", function (message) {
      if (message.lastEventId) resume = message.lastEventId;
    });
    source.addEventListener("refused", function (message) {
      status.textContent = JSON.parse(message.data);
      status.className = "status error";
      source.close();
    });
    source.addEventListener("end", function () {
      status.textContent = "the server closed the stream; reconnecting…";
      source.close();
      setTimeout(connect, 3000);
    });
    source.addEventListener("error", function () {
      // Reconnect from the resume point of the last message, not from where the page began.
      status.textContent = "reconnecting…";
      source.close();
      setTimeout(connect, 3000);
    });
  }
  connect();
})();
