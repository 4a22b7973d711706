// The playground: builds a /v1/score or /v1/compare request from the form (a template, a critique
// or none), sends it through the normal API (and its auth), and draws the answer. No build step,
// no dependencies, nothing fetched from anywhere but this server.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const VERDICTS = ["A>>B", "A>B", "A=B", "B>A", "B>>A"];
  let config = null;

  // --- JSON that keeps key order ------------------------------------------------------------
  // A rubric's labels are in score order, but JavaScript objects put integer-like keys ("5", "1")
  // first in ascending order, so label maps are kept as [key, value] pairs and written by hand.
  class OrderedMap {
    constructor(pairs) {
      this.pairs = pairs;
    }
  }

  function toJson(value) {
    if (value instanceof OrderedMap) {
      return "{" + value.pairs.map(([k, v]) => JSON.stringify(k) + ":" + toJson(v)).join(",") + "}";
    }
    if (Array.isArray(value)) return "[" + value.map(toJson).join(",") + "]";
    if (value !== null && typeof value === "object") {
      const entries = Object.entries(value).filter(([, v]) => v !== undefined);
      return "{" + entries.map(([k, v]) => JSON.stringify(k) + ":" + toJson(v)).join(",") + "}";
    }
    return JSON.stringify(value);
  }

  // --- The form -------------------------------------------------------------------------------
  function addRubricRow(label, description) {
    const row = document.createElement("div");
    row.className = "rubric-row";
    const labelInput = document.createElement("input");
    labelInput.type = "text";
    labelInput.className = "rubric-label";
    labelInput.value = label;
    labelInput.spellcheck = false;
    const descriptionInput = document.createElement("input");
    descriptionInput.type = "text";
    descriptionInput.className = "rubric-description";
    descriptionInput.value = description;
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Remove this label";
    remove.addEventListener("click", () => row.remove());
    row.append(labelInput, descriptionInput, remove);
    $("rubric-rows").append(row);
  }

  // --- Templates and critique ---------------------------------------------------------------
  // Each template comes with the rubric and the critique it uses when a request gives none.
  const template = (name) => config.templates.find((t) => t.name === name);
  let shownTemplate = "default";

  function rubricRows() {
    return [...document.querySelectorAll(".rubric-row")].map((row) => [
      row.querySelector(".rubric-label").value,
      row.querySelector(".rubric-description").value,
    ]);
  }

  function isRubricOf(name) {
    const { rubric } = template(name);
    return $("criteria").value === rubric.criteria && toJson(rubricRows()) === toJson(rubric.score_descriptions);
  }

  function resetRubric() {
    const { rubric } = template($("template").value);
    $("criteria").value = rubric.criteria;
    $("rubric-rows").replaceChildren();
    for (const [label, description] of rubric.score_descriptions) addRubricRow(label, description);
  }

  function showCritique() {
    const on = $("critique-on").checked;
    $("critique-max-tokens").disabled = !on;
    $("critique-marker").disabled = !on;
  }

  function setCritique(critique) {
    // A preset writes its critique by default; the other templates start without one.
    $("critique-on").checked = critique !== null;
    const settings = critique || config.critique;
    $("critique-max-tokens").value = String(settings.max_tokens);
    $("critique-marker").value = settings.marker;
    showCritique();
  }

  function changeTemplate() {
    // A rubric the user has not edited follows the template (mt-bench's is 1-10); an edited one stays.
    if (isRubricOf(shownTemplate)) resetRubric();
    shownTemplate = $("template").value;
    setCritique(template(shownTemplate).critique);
  }

  function showFields() {
    const compare = $("mode-compare").checked;
    const raw = $("kind-raw").checked;
    $("score-fields").hidden = compare;
    $("compare-fields").hidden = !compare;
    $("structured-fields").hidden = raw;
    $("raw-fields").hidden = !raw;
  }

  function parseJsonField(id, what) {
    try {
      return JSON.parse($(id).value);
    } catch {
      throw new Error(`${what} is not valid JSON`);
    }
  }

  function critiqueField() {
    const maxTokens = $("critique-max-tokens").value.trim();
    if (!/^[0-9]+$/.test(maxTokens)) throw new Error("Critique max tokens must be a whole number");
    return { max_tokens: Number(maxTokens), marker: $("critique-marker").value };
  }

  // Returns {path, body, labels}: the JSON text to send and the label order to draw.
  function buildRequest() {
    if ($("mode-compare").checked) {
      const pair = {
        id: "playground",
        instruction: $("pair-instruction").value,
        response_a: $("response-a").value,
        response_b: $("response-b").value,
      };
      const body = { pairs: [pair], criteria: $("pair-criteria").value, swap: $("swap").checked };
      if ($("length-k").value !== "") body.length_control = { k: Number($("length-k").value) };
      return { path: "v1/compare", body: toJson(body), labels: VERDICTS };
    }
    const method = $("method").value;
    const critique = $("critique-on").checked ? critiqueField() : undefined;
    if ($("kind-raw").checked) {
      const labels = parseJsonField("labels", "Labels");
      if (!Array.isArray(labels)) throw new Error("Labels must be a JSON list of strings");
      const body = { items: [{ id: "playground", prompt: $("prompt").value }], labels, method };
      if ($("label-values").value.trim() !== "") body.label_values = parseJsonField("label-values", "Label values");
      body.critique = critique;
      return { path: "v1/score", body: toJson(body), labels };
    }
    const item = { id: "playground", instruction: $("instruction").value, response: $("response").value };
    if ($("reference").value !== "") item.reference_answer = $("reference").value;
    const rows = rubricRows();
    const rubric = { criteria: $("criteria").value, score_descriptions: new OrderedMap(rows) };
    const body = { items: [item], rubric, method };
    const name = $("template").value;
    if (name !== "default") body.template = name;
    // A preset writes a critique unless told not to: unticked, the page says so.
    body.critique = critique === undefined && template(name).critique !== null ? null : critique;
    return { path: "v1/score", body: toJson(body), labels: rows.map(([l]) => l) };
  }

  // --- curl -----------------------------------------------------------------------------------
  const shellQuote = (text) => "'" + text.replaceAll("'", "'\\''") + "'";

  function curlCommand(url, body) {
    const lines = [`curl -s ${shellQuote(url)}`, "-H 'content-type: application/json'"];
    // The key itself is never shown: the command reads it from the environment.
    if (config.auth_required) lines.push('-H "authorization: Bearer $JUDGE_API_KEY"');
    lines.push(`-d ${shellQuote(body)}`);
    return lines.join(" \\\n  ");
  }

  // --- Drawing --------------------------------------------------------------------------------
  const fixed = (value, digits) => (value === null || value === undefined ? "—" : value.toFixed(digits));

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // Bars on an absolute 0..1 scale. Each bar carries its label and exact probability as data
  // attributes, so what is drawn can be checked against the API's own numbers.
  function barChart(title, name, distribution, labels, highlight) {
    const figure = element("figure", "chart");
    figure.dataset.chart = name;
    figure.append(element("figcaption", "", title));
    const plot = element("div", "plot");
    const axis = element("div", "axis");
    const order = labels.filter((label) => label in distribution);
    for (const label of Object.keys(distribution)) if (!order.includes(label)) order.push(label);
    for (const label of order) {
      const p = distribution[label];
      const column = element("div", "column");
      column.dataset.label = label;
      column.dataset.p = String(p);
      column.title = `${JSON.stringify(label)}: ${p}`;
      const track = element("div", "track");
      const bar = element("div", label === highlight ? "bar top" : "bar");
      bar.style.height = `${(100 * p).toFixed(3)}%`;
      track.append(bar);
      column.append(element("span", "value", p.toFixed(3)), track);
      plot.append(column);
      axis.append(element("span", "label", label));
    }
    figure.append(plot, axis);
    return figure;
  }

  // Entries are [key, name, value, digits, text]: the value is kept exactly in data-value; what
  // is shown is the text, when given, else the value (numbers to their digits).
  function stats(entries) {
    const list = element("dl", "stats");
    for (const [key, name, value, digits, text] of entries) {
      const term = element("dt", "", name);
      const shown = text !== undefined ? text : typeof value === "number" ? fixed(value, digits) : value;
      const detail = element("dd", "", shown === null ? "—" : String(shown));
      detail.dataset.stat = key;
      detail.dataset.value = value === null ? "null" : String(value);
      list.append(term, detail);
    }
    return list;
  }

  // The judge's own words: always set as text, so markup it writes is shown, never run.
  function critiqueBlock(result) {
    const block = element("div", "critique");
    block.append(element("h2", "", "Critique (the judge wrote this first)"));
    const text = element("pre", "critique-text", result.critique);
    text.id = "critique-text";
    block.append(text);
    block.append(
      stats([
        ["marker_found", "marker found", result.marker_found, 0, result.marker_found ? "yes" : "no (appended)"],
        ["critique_tokens", "critique tokens", result.critique_tokens, 0],
      ]),
    );
    return block;
  }

  function drawScore(answer, labels) {
    const result = answer.results[0];
    const block = element("div", "answer");
    block.append(element("h2", "", `Label distribution (${answer.method}, ${answer.model})`));
    block.append(barChart("P(label); grid lines every 0.25", "distribution", result.distribution, labels, result.mode));
    block.append(
      stats([
        ["expected_score", "expected score", result.expected_score, 3],
        ["std", "std", result.std, 3],
        ["confidence", "confidence", result.confidence, 3],
        ["label_mass", "label mass", result.label_mass, 3],
        ["mode", "most probable label", result.mode],
        ["prompt_tokens", "prompt tokens", result.prompt_tokens, 0],
        ["prompt_version", "prompt version", answer.prompt_version],
      ]),
    );
    if (result.critique !== null && result.critique !== undefined) block.append(critiqueBlock(result));
    return block;
  }

  function drawCompare(answer) {
    const result = answer.results[0];
    const block = element("div", "answer");
    block.append(element("h2", "", `Verdict: ${result.verdict} (${answer.model})`));
    const title = result.orders.ba ? "Both orders averaged" : "A shown first (no swap)";
    block.append(barChart(title, "distribution", result.distribution, VERDICTS, result.verdict));
    block.append(
      stats([
        ["verdict", "verdict", result.verdict],
        ["p_a_wins", "P(A wins)", result.p_a_wins, 3],
        ["p_tie", "P(tie)", result.p_tie, 3],
        ["p_b_wins", "P(B wins)", result.p_b_wins, 3],
        ["position_consistency", "position consistency", result.position_consistency, 3],
        ["prompt_tokens", "prompt tokens", result.prompt_tokens, 0],
        ["prompt_version", "prompt version", answer.prompt_version],
      ]),
    );
    const orders = element("div", "orders");
    const names = { ab: "A shown first", ba: "B shown first" };
    for (const [order, distribution] of Object.entries(result.orders)) {
      orders.append(barChart(names[order] || order, `order-${order}`, distribution, VERDICTS));
    }
    block.append(orders);
    return block;
  }

  // --- Sending --------------------------------------------------------------------------------
  function setState(state, message) {
    $("output").dataset.state = state;
    $("status").textContent = message;
  }

  function showError(status, text) {
    // The server's error envelope, as it came; pretty-printed when it is JSON.
    let shown = text;
    try {
      shown = JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // Not JSON (a proxy's page, say): show the text itself.
    }
    $("error").dataset.status = String(status);
    $("error").textContent = shown;
    $("error").hidden = false;
  }

  async function submit(event) {
    event.preventDefault();
    $("error").hidden = true;
    $("result").replaceChildren();
    let request;
    try {
      request = buildRequest();
    } catch (error) {
      $("curl").textContent = "";
      setState("invalid", `Not sent: ${error.message}.`);
      return;
    }
    const url = new URL(request.path, document.baseURI).href;
    $("curl").textContent = curlCommand(url, request.body);
    const headers = { "content-type": "application/json" };
    const key = $("api-key").value.trim();
    if (key) headers.authorization = `Bearer ${key}`;
    $("submit").disabled = true;
    setState("loading", "Judging…");
    const started = performance.now();
    try {
      const response = await fetch(url, { method: "POST", headers, body: request.body, cache: "no-store" });
      const text = await response.text();
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      if (!response.ok) {
        showError(response.status, text);
        setState("error", `The server answered ${response.status} ${response.statusText} in ${seconds} s:`);
        return;
      }
      const answer = JSON.parse(text);
      const drawn = request.path === "v1/compare" ? drawCompare(answer) : drawScore(answer, request.labels);
      $("result").replaceChildren(drawn);
      setState("done", `Answered in ${seconds} s.`);
    } catch (error) {
      setState("error", `No answer from the server: ${error.message}`);
    } finally {
      $("submit").disabled = false;
    }
  }

  async function start() {
    try {
      const response = await fetch(new URL("playground/config.json", document.baseURI), { cache: "no-store" });
      if (!response.ok) throw new Error(`status ${response.status}`);
      config = await response.json();
    } catch (error) {
      setState("error", `Could not load the playground's settings: ${error.message}`);
      return;
    }
    for (const method of config.methods) $("method").append(new Option(method, method));
    for (const { name } of config.templates) $("template").append(new Option(name, name));
    $("critique-max-tokens").max = String(config.critique.max_tokens_limit);
    resetRubric();
    setCritique(null);
    $("pair-criteria").value = config.pair_criteria;
    $("auth").hidden = !config.auth_required;
    for (const id of ["mode-score", "mode-compare", "kind-structured", "kind-raw"]) {
      $(id).addEventListener("change", showFields);
    }
    $("add-label").addEventListener("click", () => addRubricRow("", ""));
    $("reset-rubric").addEventListener("click", resetRubric);
    $("template").addEventListener("change", changeTemplate);
    $("critique-on").addEventListener("change", showCritique);
    $("judge-form").addEventListener("submit", submit);
    showFields();
    document.body.dataset.ready = "true";
  }

  start();
})();
