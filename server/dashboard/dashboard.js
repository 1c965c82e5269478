// chatd live dashboard: polls /api/stats and renders the cluster.
// The admin token, when one is configured, comes from the URL fragment
// (/dashboard#token=...) and is sent as a Bearer header; it is kept in
// sessionStorage and removed from the address bar. Without one, the
// browser's own credentials are used (Basic auth prompt, or a loopback
// client when no admin token is set).
(function () {
  "use strict";
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.has("token")) {
    sessionStorage.setItem("chatd-admin-token", params.get("token"));
    history.replaceState(null, "", location.pathname + location.search);
  }
  const token = sessionStorage.getItem("chatd-admin-token");
  const interval = Math.max(500, Number(new URLSearchParams(location.search).get("interval")) || 2000);
  const prev = new Map(); // node name -> {messages, at}
  const rates = []; // cluster messages per second, oldest first
  const maxPoints = 120;

  const $ = (role) => document.querySelector('[data-role="' + role + '"]');

  function cell(row, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function fmtRate(r) {
    return r === null ? "–" : r < 10 ? r.toFixed(1) : Math.round(r).toString();
  }

  function render(doc, now) {
    const nodes = doc.nodes || [];
    const tbody = $("nodes");
    tbody.replaceChildren();
    let total = 0, haveRate = false, queue = 0;
    for (const n of nodes) {
      const tr = document.createElement("tr");
      tr.className = n.state;
      tr.dataset.node = n.name;
      cell(tr, n.name + (n.local ? " (this node)" : ""));
      cell(tr, n.state, "state-" + n.state);
      cell(tr, n.address || "");
      cell(tr, n.http_addr || "");
      cell(tr, String(n.connections), "num");
      cell(tr, String(n.users), "num");
      cell(tr, String(n.rooms), "num");
      let rate = null;
      const p = prev.get(n.name);
      if (p && n.messages_in >= p.messages && now > p.at) {
        rate = (n.messages_in - p.messages) / ((now - p.at) / 1000);
      }
      if (p === undefined || n.messages_in !== p.messages) {
        prev.set(n.name, { messages: n.messages_in || 0, at: now });
      } else if (rate !== null) {
        rate = 0;
        prev.set(n.name, { messages: p.messages, at: now });
      }
      cell(tr, fmtRate(rate), "num");
      cell(tr, String(n.queue_depth || 0), "num");
      if (n.state === "alive") {
        if (rate !== null) { total += rate; haveRate = true; }
        queue += n.queue_depth || 0;
      }
      tbody.appendChild(tr);
    }
    const t = doc.totals || {};
    $("nodes-alive").textContent = String(t.nodes_alive || 0) + " / " + nodes.length;
    $("connections").textContent = String(t.connections || 0);
    $("users").textContent = String(t.users || 0);
    $("rate").textContent = haveRate ? fmtRate(total) : "–";
    $("queue").textContent = String(queue);
    const ps = doc.persistence || {};
    $("lag").textContent = (ps.lag_seconds || 0).toFixed(1) + " s";
    $("self").textContent = doc.node || "this node";
    const deps = $("deps");
    deps.replaceChildren();
    for (const [name, status] of Object.entries(doc.dependencies || {})) {
      const li = document.createElement("li");
      li.textContent = name + ": " + status;
      deps.appendChild(li);
    }
    if (haveRate) {
      rates.push(total);
      if (rates.length > maxPoints) rates.shift();
      drawChart();
    }
  }

  function drawChart() {
    const max = Math.max(1, ...rates);
    const step = 600 / (maxPoints - 1);
    const pts = rates.map((v, i) => (i * step).toFixed(1) + "," + (78 - (v / max) * 76).toFixed(1));
    $("chart").querySelector("polyline").setAttribute("points", pts.join(" "));
  }

  function setStatus(text, error) {
    const el = $("status");
    el.textContent = text;
    el.classList.toggle("error", !!error);
  }

  async function poll() {
    try {
      const headers = token ? { Authorization: "Bearer " + token } : {};
      const resp = await fetch("/api/stats", { headers, cache: "no-store", credentials: "same-origin" });
      if (!resp.ok) {
        setStatus("GET /api/stats: " + resp.status + " " + resp.statusText, true);
      } else {
        const doc = await resp.json();
        render(doc, Date.now());
        setStatus("updated " + new Date().toLocaleTimeString() + " from " + (doc.node || "?"));
      }
    } catch (e) {
      setStatus("GET /api/stats failed: " + e, true);
    }
    setTimeout(poll, interval);
  }
  poll();
})();
