// The console's usage page: the tenant's metered requests, rows, tokens and cost per period
// (GET /v2/tenant/usage, the numbers `maas usage` prints), as uPlot charts and a table.
"use strict";

(function () {
  const { el } = window.maasConsole;
  const COLORS = ["#1f6feb", "#d1242f", "#1a7f37", "#9a6700", "#8250df", "#bf3989", "#0a7e8c"];
  const BUCKET_S = { hour: 3600, day: 86400 };

  function periods(data) {
    const step = BUCKET_S[data.bucket];
    const now = Math.floor(Date.now() / 1000 / step) * step;
    const first = now - Math.ceil(data.hours * 3600 / step) * step + step;
    const xs = [];
    for (let t = first; t <= now; t += step) xs.push(t);
    return xs;
  }

  function seriesBy(data, xs, value) {
    const index = new Map(xs.map((t, i) => [t, i]));
    const byModel = new Map();
    for (const row of data.series) {
      const t = Date.parse(row.start) / 1000;
      if (!index.has(t)) continue;
      if (!byModel.has(row.model)) byModel.set(row.model, new Array(xs.length).fill(0));
      byModel.get(row.model)[index.get(t)] += value(row);
    }
    return byModel;
  }

  function chart(box, title, xs, byModel, width) {
    const holder = el("figure", { class: "chart", "aria-label": title }, el("figcaption", { text: title }));
    box.append(holder);
    const names = [...byModel.keys()];
    if (!names.length) { holder.append(el("p", { class: "hint", text: "nothing in this period" })); return; }
    const opts = {
      width, height: 160, legend: { show: true },
      scales: { x: { time: true } },
      series: [{}, ...names.map((name, i) => ({ label: name, stroke: COLORS[i % COLORS.length], width: 2, points: { show: true, size: 4 } }))],
      axes: [{}, { size: 60 }],
    };
    new window.uPlot(opts, [xs, ...names.map(n => byModel.get(n))], holder);
  }

  function totals(table, data) {
    table.querySelectorAll("tr").forEach(r => r.remove());
    const heads = ["model", "status", "requests", "rows", "prompt tokens", "completion tokens", "cost"];
    table.append(el("tr", {}, ...heads.map(h => el("th", { scope: "col", text: h }))));
    const sums = new Map();
    for (const row of data.series) {
      const key = `${row.model}\u0000${row.status}`;
      const sum = sums.get(key) || { model: row.model, status: row.status, requests: 0, rows: 0, prompt: 0, completion: 0, cost: null, currency: row.currency };
      sum.requests += row.requests; sum.rows += row.rows;
      sum.prompt += row.prompt_tokens; sum.completion += row.completion_tokens;
      if (row.cost != null) sum.cost = (sum.cost || 0) + row.cost;
      sums.set(key, sum);
    }
    for (const s of [...sums.values()].sort((a, b) => a.model.localeCompare(b.model) || a.status - b.status)) {
      table.append(el("tr", { "data-model": s.model, "data-status": String(s.status) },
        el("td", { text: s.model }), el("td", { text: String(s.status) }),
        el("td", { class: "requests", text: String(s.requests) }), el("td", { text: String(s.rows) }),
        el("td", { text: String(s.prompt) }), el("td", { text: String(s.completion) }),
        el("td", { text: s.cost == null ? "-" : `${s.cost.toFixed(4)} ${s.currency}` })));
    }
  }

  function draw(data, charts, table) {
    charts.replaceChildren();
    const xs = periods(data);
    const width = Math.max(300, Math.min(520, Math.floor((charts.clientWidth || 1040) / 2) - 20));
    chart(charts, `Requests per ${data.bucket}`, xs, seriesBy(data, xs, r => r.requests), width);
    chart(charts, `Refused or failed requests per ${data.bucket}`, xs, seriesBy(data, xs, r => (r.status >= 400 ? r.requests : 0)), width);
    chart(charts, `Rows and tokens per ${data.bucket}`, xs, seriesBy(data, xs, r => r.rows + r.prompt_tokens + r.completion_tokens), width);
    chart(charts, `Cost per ${data.bucket}`, xs, seriesBy(data, xs, r => r.cost || 0), width);
    totals(table, data);
  }

  window.maasUsage = { draw };
})();
