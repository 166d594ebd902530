// The console's playground: a panel per model kind, each calling the public API with the
// signed-in key (so it is metered and limited like any client).
"use strict";

(function () {
  const { api, el, showError } = window.maasConsole;
  // A few strokes to start from (pixel values 0-16, as sklearn's digits hold them).
  const SAMPLES = {
    "0": "0,0,10,16,16,10,0,0,0,8,16,4,4,16,8,0,0,12,12,0,0,12,12,0,0,16,8,0,0,8,16,0,0,16,8,0,0,8,16,0,0,12,12,0,0,12,12,0,0,8,16,4,4,16,8,0,0,0,10,16,16,10,0,0",
    "1": "0,0,0,12,16,0,0,0,0,0,8,16,16,0,0,0,0,0,0,12,16,0,0,0,0,0,0,12,16,0,0,0,0,0,0,12,16,0,0,0,0,0,0,12,16,0,0,0,0,0,0,12,16,0,0,0,0,0,8,16,16,8,0,0",
    "7": "0,2,16,16,16,16,12,0,0,0,4,4,4,14,12,0,0,0,0,0,6,16,4,0,0,0,0,0,14,10,0,0,0,0,4,14,16,10,0,0,0,0,12,12,4,0,0,0,0,2,16,6,0,0,0,0,0,4,16,2,0,0,0,0",
  };

  function bars(box, probabilities) {
    box.replaceChildren(el("h4", { text: "Probabilities" }));
    const list = el("ol", { class: "bars", start: "0" });
    probabilities.forEach((p, i) => {
      const fill = el("span", { class: "fill" });
      fill.style.width = `${(p * 100).toFixed(1)}%`;
      list.append(el("li", { "data-class": String(i), "aria-label": `class ${i}: ${(p * 100).toFixed(1)}%` },
        el("span", { class: "label", text: String(i) }), el("span", { class: "track" }, fill),
        el("span", { class: "value", text: p.toFixed(3) })));
    });
    box.append(list);
  }

  function heatmap(box, attributions, side, explanation) {
    const peak = Math.max(1e-12, ...attributions.map(Math.abs));
    const grid = el("div", { class: "grid heat", role: "img", "aria-label": "attribution of each pixel to the predicted class: red for, blue against" });
    attributions.forEach((a, i) => {
      const cell = el("span", { class: "cell", "data-attr": a.toFixed(5), title: `pixel ${Math.floor(i / side)},${i % side}: ${a.toFixed(4)}` });
      const alpha = Math.abs(a) / peak;
      cell.style.backgroundColor = a >= 0 ? `rgba(200, 30, 30, ${alpha.toFixed(3)})` : `rgba(30, 60, 200, ${alpha.toFixed(3)})`;
      grid.append(cell);
    });
    const p = explanation.parameters;
    box.replaceChildren(el("h4", { text: "Why: attributions (Integrated Gradients)" }), grid,
      el("p", { class: "hint", text: `${p.method}, ${p.steps} steps from a baseline of ${p.baseline}; they add up to the class's probability minus the baseline's (largest error ${p.max_abs_delta.toExponential(1)}).` }));
  }

  function tensor(panel, card) {
    const spec = card.inputs[0];
    if (!spec || spec.datatype !== "FP32") { panel.append(el("p", { text: "No playground for this model's inputs." })); return; }
    const width = spec.shape[spec.shape.length - 1];
    const side = Math.round(Math.sqrt(width));
    const values = new Array(width).fill(0);
    const result = el("div", { class: "result" }), why = el("div", { class: "why" });
    const answer = el("p", { id: "pg-answer", "aria-live": "polite" });
    const left = el("div", { class: "input" });
    let input;
    if (side * side === width) {
      input = el("div", { class: "grid draw", role: "group", "aria-label": `${side}×${side} drawing grid: press a cell to ink it` });
      const cells = [];
      let painting = false;
      const paint = (i, v) => { values[i] = v; cells[i].style.backgroundColor = `rgba(20, 20, 20, ${(v / 16).toFixed(3)})`; cells[i].setAttribute("aria-pressed", v > 0 ? "true" : "false"); };
      for (let i = 0; i < width; i++) {
        const cell = el("button", { type: "button", class: "cell", "data-pixel": String(i), "aria-label": `pixel ${Math.floor(i / side)},${i % side}`, "aria-pressed": "false" });
        cell.addEventListener("mousedown", () => { painting = true; paint(i, values[i] > 0 ? 0 : 16); });
        cell.addEventListener("mouseenter", () => { if (painting) paint(i, 16); });
        cell.addEventListener("keydown", e => { if (e.key === " " || e.key === "Enter") { e.preventDefault(); paint(i, values[i] > 0 ? 0 : 16); } });
        cells.push(cell);
        input.append(cell);
      }
      document.addEventListener("mouseup", () => { painting = false; });
      const tools = el("div", { class: "tools" }, el("button", { type: "button", text: "Clear", on: { click: () => values.forEach((_, i) => paint(i, 0)) } }));
      if (width === 64) for (const [digit, text] of Object.entries(SAMPLES))
        tools.append(el("button", { type: "button", "data-sample": digit, text: `Sample ${digit}`, on: { click: () => text.split(",").forEach((v, i) => paint(i, Number(v))) } }));
      left.append(input, tools);
    } else {
      input = el("textarea", { id: "pg-values", rows: "3", "aria-label": `${width} comma-separated numbers` });
      left.append(el("label", { for: "pg-values", text: `${width} numbers, comma-separated` }), input);
    }
    const run = async () => {
      const row = side * side === width ? values : input.value.split(",").map(Number);
      const body = { inputs: [{ name: spec.name, shape: [1, width], datatype: "FP32", data: row }] };
      try {
        const reply = await api(`/v2/models/${encodeURIComponent(card.name)}/infer`, { body });
        const probabilities = reply.outputs.find(o => o.name === "probabilities");
        const label = reply.outputs.find(o => o.name === "label");
        answer.textContent = label ? `Predicted ${label.data[0]} by version ${reply.model_version}` : JSON.stringify(reply.outputs.map(o => [o.name, o.data]));
        if (probabilities) bars(result, probabilities.data);
        const explanation = await api(`/v2/models/${encodeURIComponent(card.name)}/explain`, { body });
        heatmap(why, explanation.outputs.find(o => o.name === "attributions").data, side * side === width ? side : width, explanation);
        showError(null);
      } catch (err) { showError(err); }
    };
    left.append(el("button", { type: "button", id: "pg-run", class: "primary", text: "Predict and explain", on: { click: run } }), answer);
    panel.append(el("div", { class: "row" }, left, result, why));
  }

  function cosine(a, b) {
    let dot = 0, na = 0, nb = 0;
    for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
    return dot / Math.sqrt(na * nb);
  }

  function embeddings(panel, card) {
    const text = el("textarea", { id: "pg-texts", rows: "5", "aria-label": "one sentence per line" });
    text.value = "A cat sat on the mat.\nA kitten rested on the rug.\nThe stock market fell today.";
    const matrix = el("table", { class: "similarity" });
    const run = async () => {
      const lines = text.value.split("\n").map(s => s.trim()).filter(Boolean);
      try {
        const reply = await api("/v1/embeddings", { body: { model: card.name, input: lines } });
        const vectors = reply.data.map(d => d.embedding);
        matrix.replaceChildren(el("caption", { text: `cosine similarity (${reply.usage.prompt_tokens} tokens)` }));
        matrix.append(el("tr", {}, el("th", {}), ...lines.map((_, j) => el("th", { scope: "col", text: `#${j + 1}` }))));
        vectors.forEach((v, i) => {
          const row = el("tr", {}, el("th", { scope: "row", title: lines[i], text: `#${i + 1} ${lines[i].slice(0, 40)}` }));
          vectors.forEach(w => { const s = cosine(v, w); const cell = el("td", { text: s.toFixed(2) }); cell.style.backgroundColor = `rgba(30, 120, 60, ${Math.max(0, s).toFixed(2)})`; row.append(cell); });
          matrix.append(row);
        });
        showError(null);
      } catch (err) { showError(err); }
    };
    panel.append(el("label", { for: "pg-texts", text: "Sentences, one per line" }), text,
      el("button", { type: "button", id: "pg-run", class: "primary", text: "Compare", on: { click: run } }), matrix);
  }

  function chat(panel, card) {
    const prompt = el("textarea", { id: "pg-prompt", rows: "3" });
    prompt.value = "What is the capital of France?";
    const temperature = el("input", { id: "pg-temp", type: "number", min: "0", max: "2", step: "0.1", value: "0" });
    const maxTokens = el("input", { id: "pg-max", type: "number", min: "1", max: "512", value: "48" });
    const out = el("pre", { id: "pg-answer", class: "chat", "aria-live": "polite" }), usage = el("p", { class: "hint" });
    const run = async () => {
      out.textContent = ""; usage.textContent = "";
      const body = { model: card.name, stream: true, stream_options: { include_usage: true }, temperature: Number(temperature.value), max_tokens: Number(maxTokens.value), messages: [{ role: "user", content: prompt.value }] };
      try {
        const reply = await api("/v1/chat/completions", { body, raw: true });
        if (!reply.ok) { const e = await reply.json().catch(() => ({})); throw Object.assign(new Error(`${reply.status}: ${e.error?.message || reply.statusText}`), { status: reply.status }); }
        const reader = reply.body.getReader(), decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buffer.indexOf("\n\n")) >= 0) {
            const event = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
            const data = event.replace(/^data: /, "");
            if (data === "[DONE]") continue;
            const chunk = JSON.parse(data);
            for (const choice of chunk.choices || []) out.textContent += choice.delta?.content || "";
            if (chunk.usage) usage.textContent = `${chunk.usage.prompt_tokens} prompt + ${chunk.usage.completion_tokens} completion tokens`;
          }
        }
        showError(null);
      } catch (err) { showError(err); }
    };
    panel.append(el("label", { for: "pg-prompt", text: "Message" }), prompt,
      el("label", { for: "pg-temp", text: "Temperature" }), temperature,
      el("label", { for: "pg-max", text: "Max tokens" }), maxTokens,
      el("button", { type: "button", id: "pg-run", class: "primary", text: "Send", on: { click: run } }), out, usage);
  }

  window.maasPlay = { tensor, embeddings, chat };
})();
