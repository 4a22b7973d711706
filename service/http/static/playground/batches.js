// The playground's Batches panel: the batch jobs of the key in the form (GET /v1/batches), with
// their progress, and their output and error files to download. Everything the server sends is
// set as text, never as markup. Refreshed on demand, and every few seconds while a batch runs.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const FINAL = ["completed", "failed", "expired", "cancelled"];
  const REFRESH_MS = 2000;
  let timer = null;
  let loading = null;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function headers() {
    const key = $("api-key").value.trim();
    return key ? { authorization: `Bearer ${key}` } : {};
  }

  const url = (path) => new URL(path, document.baseURI).href;

  // A file needs the key, so a plain link would not do where keys are on: fetch it, then save it.
  async function download(event, fileId, name) {
    event.preventDefault();
    try {
      const response = await fetch(url(`v1/files/${encodeURIComponent(fileId)}/content`), {
        headers: headers(),
        cache: "no-store",
      });
      if (!response.ok) throw new Error(await failure(response));
      const blobUrl = URL.createObjectURL(await response.blob());
      const save = element("a");
      save.href = blobUrl;
      save.download = name;
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(blobUrl), 60000);
    } catch (error) {
      $("batches-status").textContent = `Could not download ${fileId}: ${error.message}`;
    }
  }

  function fileLink(batch, fileId, what) {
    const link = element("a", "file", what);
    link.href = url(`v1/files/${encodeURIComponent(fileId)}/content`);
    link.dataset.file = what;
    link.dataset.fileId = fileId;
    link.addEventListener("click", (event) => download(event, fileId, `${batch.id}-${what}.jsonl`));
    return link;
  }

  // Completed and failed answers as two segments of one bar, exact counts in data attributes.
  function progress(counts) {
    const { total, completed, failed } = counts;
    const cell = element("td", "progress");
    const bar = element("div", "progress-bar");
    bar.title = `${completed} completed, ${failed} failed of ${total}`;
    for (const [name, count] of [["completed", completed], ["failed", failed]]) {
      const part = element("div", `part ${name}`);
      part.style.width = total > 0 ? `${((100 * count) / total).toFixed(3)}%` : "0%";
      bar.append(part);
    }
    const text = `${completed + failed}/${total} done` + (failed ? `, ${failed} failed` : "");
    cell.append(bar, element("span", "counts", text));
    return cell;
  }

  function created(seconds) {
    const cell = element("td");
    const when = new Date(seconds * 1000);
    const time = element("time", "", when.toLocaleString());
    time.dateTime = when.toISOString();
    cell.append(time);
    return cell;
  }

  function row(batch) {
    const counts = batch.request_counts || { total: 0, completed: 0, failed: 0 };
    const tr = element("tr");
    Object.assign(tr.dataset, {
      batchId: batch.id,
      status: batch.status,
      total: String(counts.total),
      completed: String(counts.completed),
      failed: String(counts.failed),
    });
    const name = element("td");
    name.append(element("code", "", batch.id), element("div", "hint", batch.endpoint));
    const metadata = Object.entries(batch.metadata || {}).map(([k, v]) => `${k}: ${v}`);
    if (metadata.length) name.append(element("div", "metadata", metadata.join(", ")));
    const files = element("td", "files");
    if (batch.output_file_id) files.append(fileLink(batch, batch.output_file_id, "output"), " ");
    if (batch.error_file_id) files.append(fileLink(batch, batch.error_file_id, "errors"));
    tr.append(name, element("td", `status ${batch.status}`, batch.status), progress(counts), created(batch.created_at));
    tr.append(files);
    return tr;
  }

  async function failure(response) {
    const text = await response.text();
    try {
      return `${response.status}: ${JSON.parse(text).error.message}`;
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  function schedule(batches) {
    clearTimeout(timer);
    timer = null;
    if (batches.some((batch) => !FINAL.includes(batch.status))) timer = setTimeout(refresh, REFRESH_MS);
  }

  async function load() {
    const panel = $("batches");
    panel.dataset.state = "loading";
    try {
      const response = await fetch(url("v1/batches?limit=20"), { headers: headers(), cache: "no-store" });
      if (!response.ok) throw new Error(await failure(response));
      const batches = (await response.json()).data;
      $("batches-rows").replaceChildren(...batches.map(row));
      $("batches-table").hidden = batches.length === 0;
      const running = batches.filter((batch) => !FINAL.includes(batch.status)).length;
      $("batches-status").textContent = batches.length
        ? `${batches.length} most recent` + (running ? `; ${running} running, refreshed every 2 s.` : ".")
        : "No batches for this key yet.";
      panel.dataset.state = "done";
      schedule(batches);
    } catch (error) {
      clearTimeout(timer);
      $("batches-rows").replaceChildren();
      $("batches-table").hidden = true;
      $("batches-status").textContent = `Could not list the batches: ${error.message}`;
      panel.dataset.state = "error";
    }
  }

  // One load at a time: a click during a load waits for it, then loads again.
  function refresh() {
    loading = (loading || Promise.resolve()).then(load);
    return loading;
  }

  $("batches-refresh").addEventListener("click", refresh);
  $("api-key").addEventListener("change", refresh);
  refresh();
})();
