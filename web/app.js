// The page around trm-wgpu's browser bindings (web/src/lib.rs, built into
// pkg/ by web/build.sh). Plain JavaScript: the bindings do the work, this
// file shows it. window.trmTest is what tests/browser.rs drives.
import init, { Session } from "./pkg/trm_web.js";

const $ = (id) => document.getElementById(id);
let session = null;
let samples = [];
let lastSolve = null;

// ---- progress and errors -------------------------------------------------

function status(text) { $("status").textContent = text; }

// Runs `work` with the progress display up; `fraction()` may report how far.
async function busy(label, work) {
  const buttons = document.querySelectorAll("button");
  buttons.forEach((b) => (b.disabled = true));
  $("progress").hidden = false;
  $("progress-text").textContent = label;
  $("progress-bar").removeAttribute("value");
  try {
    return await work((done, total, text) => {
      $("progress-bar").max = total;
      $("progress-bar").value = done;
      $("progress-text").textContent = `${label}: ${text ?? `${done}/${total}`}`;
      console.log(`${label}: ${text ?? `${done}/${total}`}`); // the browser test prints these
    });
  } finally {
    $("progress").hidden = true;
    buttons.forEach((b) => (b.disabled = false));
  }
}

function showError(id, error) {
  const el = $(id);
  if (!error) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = error instanceof Error ? error.message : String(error);
}

// ---- the GPU ------------------------------------------------------------

async function showAdapter() {
  const info = JSON.parse(session.adapter());
  // features as the browser's adapter reports them (the engine asks only
  // for timestamp-query)
  let offered = [];
  let described = "";
  try {
    const adapter = await navigator.gpu.requestAdapter();
    offered = adapter ? [...adapter.features].sort() : [];
    // what WebGPU tells of the adapter (wgpu gets no name from it)
    const i = adapter?.info ?? {};
    described = [i.description, i.vendor, i.architecture, i.device].filter(Boolean).join(", ");
  } catch (_) { /* shown as none */ }
  const l = info.limits;
  const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const rows = [
    ["adapter", `${info.name || described || "(unnamed)"}${info.name && described ? ` (${described})` : ""}`],
    ["backend", `${info.backend}, device type ${info.device_type}${info.driver_info ? `, ${info.driver_info}` : ""}`],
    ["limits the engine uses",
      `buffer ${mib(l.max_buffer_size)}, storage binding ${mib(l.max_storage_buffer_binding_size)}, ` +
      `workgroup memory ${l.max_compute_workgroup_storage_size} B ` +
      `(${l.max_compute_workgroup_storage_size >= 16384 ? "16" : "8"}-deep tiles), ` +
      `${l.max_compute_invocations_per_workgroup} invocations per workgroup, ` +
      `${l.max_compute_workgroups_per_dimension} workgroups per dimension, ` +
      `${l.max_storage_buffers_per_shader_stage} storage buffers per stage`],
    ["features the engine uses", info.features.timestamp_query ? "timestamp-query (GPU time in the bench)" : "none (wall time only)"],
    ["adapter features", offered.length ? offered.join(", ") : "none reported"],
  ];
  $("adapter").innerHTML = "";
  for (const [k, v] of rows) {
    const tr = $("adapter").insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  return { ...info, adapter_described: described, adapter_features: offered };
}

// ---- the model ----------------------------------------------------------

async function loadModel(bytes, name) {
  showError("model-error", null);
  const info = JSON.parse(await busy(`loading ${name}`, () => session.load_model(bytes, name)));
  const c = info.config;
  $("model-info").textContent =
    `${info.name}: ${(info.parameters / 1e6).toFixed(2)}M parameters, ${c.mlp_t ? "MLP-mixer" : "attention"} ` +
    `${c.arch ?? "trm"}, D = ${c.hidden_size}, ${c.L_layers} layers, n = ${c.L_cycles}, T = ${c.H_cycles}, ` +
    `${c.halt_max_steps} ACT steps` + (info.sudoku ? "" : " (not a 9 x 9 Sudoku model: the solver needs seq_len 81, vocab 11)");
  return info;
}

async function loadBundled() {
  const response = await fetch("pkg/model.safetensors");
  if (!response.ok) throw new Error(`pkg/model.safetensors: HTTP ${response.status} (run web/build.sh)`);
  return loadModel(new Uint8Array(await response.arrayBuffer()), "sudoku-easy (bundled)");
}

async function loadFile(file) {
  try {
    await loadModel(new Uint8Array(await file.arrayBuffer()), file.name);
  } catch (e) {
    showError("model-error", `${file.name}: ${e.message ?? e}`);
  }
}

// ---- solving ------------------------------------------------------------

function drawGrid(puzzle, answer, previous) {
  const grid = $("grid");
  grid.innerHTML = "";
  for (let i = 0; i < 81; i++) {
    const cell = document.createElement("div");
    const given = puzzle[i] !== "." && puzzle[i] !== "0";
    const digit = answer ? answer[i] : puzzle[i];
    cell.textContent = digit === "." || digit === "0" ? "" : digit;
    cell.className = given ? "given" : "found";
    if (!given && previous && previous[i] !== answer[i]) cell.classList.add("changed");
    if (i % 9 === 2 || i % 9 === 5) cell.classList.add("c3");
    if (Math.floor(i / 9) === 2 || Math.floor(i / 9) === 5) cell.classList.add("r3");
    grid.appendChild(cell);
  }
}

// q_halt of the first puzzle against the ACT step; the halting bar at 0.
function plotQHalt(steps) {
  const svg = $("qhalt-plot");
  const W = 360, H = 200, L = 36, R = 8, T = 10, B = 26;
  const q = steps.map((s) => s.q_halt[0]);
  const lo = Math.min(0, ...q) - 0.5, hi = Math.max(0, ...q) + 0.5;
  const n = Math.max(steps.length, 2);
  const x = (i) => L + ((W - L - R) * i) / (n - 1);
  const y = (v) => T + ((H - T - B) * (hi - v)) / (hi - lo);
  let s = `<line x1="${L}" y1="${y(0)}" x2="${W - R}" y2="${y(0)}" stroke="#c0392b" stroke-dasharray="4 3"/>`;
  s += `<text x="${W - R}" y="${y(0) - 3}" text-anchor="end">halt above 0</text>`;
  s += `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/>`;
  for (const v of [lo, hi]) s += `<text x="${L - 4}" y="${y(v) + 3}" text-anchor="end">${v.toFixed(1)}</text>`;
  s += `<text x="${L}" y="${H - 8}">ACT step 1</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${steps.length}</text>`;
  s += `<text x="${L + 4}" y="${T + 8}">q_halt (puzzle 1)</text>`;
  const pts = q.map((v, i) => `${x(i)},${y(v)}`).join(" ");
  s += `<polyline points="${pts}" fill="none" stroke="#1f6feb" stroke-width="2"/>`;
  s += q.map((v, i) => `<circle cx="${x(i)}" cy="${y(v)}" r="3" fill="${steps[i].valid[0] ? "#1a7f37" : "#1f6feb"}"/>`).join("");
  svg.innerHTML = s;
}

function showStep(k) {
  if (!lastSolve) return;
  const { puzzles, steps } = lastSolve;
  const step = steps[k - 1];
  drawGrid(puzzles[0], step.answers[0], k > 1 ? steps[k - 2].answers[0] : null);
  $("step-label").textContent =
    `after ACT step ${k}: q_halt ${step.q_halt[0].toFixed(2)}, ${step.changed[0]} cell(s) changed, ` +
    (step.valid[0] ? "a valid solution" : "not yet a valid solution");
  $("grid-label").textContent = `puzzle 1 of ${puzzles.length}`;
  for (const tr of $("steps").rows) tr.classList.toggle("current", tr.dataset.step == k);
}

function stepRow(step) {
  const table = $("steps");
  if (!table.rows.length) {
    table.innerHTML = "<tr><th>ACT step</th><th>q_halt (1)</th><th>changed (1)</th><th>valid</th><th>s</th></tr>";
  }
  const tr = table.insertRow();
  tr.dataset.step = step.step;
  const valid = step.valid.filter(Boolean).length;
  for (const v of [step.step, step.q_halt[0].toFixed(2), step.changed[0], `${valid}/${step.valid.length}`, step.seconds.toFixed(2)]) {
    tr.insertCell().textContent = v;
  }
  tr.onclick = () => { $("step-slider").value = step.step; showStep(step.step); };
}

async function solve(text, actSteps) {
  showError("solve-error", null);
  const puzzles = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length);
  $("steps").innerHTML = "";
  lastSolve = { puzzles, steps: [] };
  if (puzzles.length) drawGrid(puzzles[0], null, null);
  try {
    const all = await busy("solving", (progress) =>
      session.solve(text, actSteps, (json) => {
        const step = JSON.parse(json);
        lastSolve.steps.push(step);
        stepRow(step);
        plotQHalt(lastSolve.steps);
        const slider = $("step-slider");
        slider.max = step.step; slider.value = step.step; slider.disabled = false;
        showStep(step.step);
        progress(step.step, actSteps, `ACT step ${step.step} of ${actSteps}`);
      }));
    lastSolve.steps = JSON.parse(all);
    return lastSolve;
  } catch (e) {
    showError("solve-error", e);
    throw e;
  }
}

// ---- the bench ----------------------------------------------------------

function plotBench(rows) {
  const svg = $("bench-plot");
  const W = 360, H = 220, L = 48, R = 10, T = 12, B = 30;
  if (!rows.length) { svg.innerHTML = ""; return; }
  const xs = rows.map((r) => Math.log2(r.batch));
  const ys = rows.map((r) => r.net_calls_per_second);
  const x0 = Math.min(...xs), x1 = Math.max(...xs, x0 + 1);
  const y1 = Math.max(...ys) * 1.15;
  const x = (v) => L + ((W - L - R) * (v - x0)) / (x1 - x0);
  const y = (v) => H - B - ((H - T - B) * v) / y1;
  let s = `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/>`;
  for (const f of [0, 0.5, 1]) s += `<text x="${L - 4}" y="${y(f * y1) + 3}" text-anchor="end">${(f * y1).toPrecision(3)}</text>`;
  for (const r of rows) s += `<text x="${x(Math.log2(r.batch))}" y="${H - B + 12}" text-anchor="middle">${r.batch}</text>`;
  s += `<text x="${(L + W) / 2}" y="${H - 4}" text-anchor="middle">batch size</text>`;
  s += `<text x="${L + 4}" y="${T + 8}">net calls / s</text>`;
  s += `<polyline points="${rows.map((r, i) => `${x(xs[i])},${y(ys[i])}`).join(" ")}" fill="none" stroke="#1f6feb" stroke-width="2"/>`;
  s += rows.map((r, i) => `<circle cx="${x(xs[i])}" cy="${y(ys[i])}" r="3" fill="#1f6feb"><title>${r.schedule}</title></circle>`).join("");
  svg.innerHTML = s;
}

function benchRow(row) {
  const table = $("bench-rows");
  if (!table.rows.length) {
    table.innerHTML = "<tr><th>batch</th><th>schedule</th><th>net calls/s</th><th>puzzles/s (336 calls)</th><th>GFLOP/s</th><th>GPU ms/step</th></tr>";
  }
  const tr = table.insertRow();
  const gpu = row.gpu_seconds != null ? ((row.gpu_seconds / (row.net_calls / row.batch)) * 1e3).toFixed(1) : "-";
  for (const v of [row.batch, row.schedule, row.net_calls_per_second.toFixed(2), (row.net_calls_per_second / 336).toFixed(4), row.gflops.toFixed(2), gpu]) {
    tr.insertCell().textContent = v;
  }
}

async function bench(batches, seconds) {
  showError("bench-error", null);
  $("bench-rows").innerHTML = "";
  const rows = [];
  plotBench(rows);
  try {
    const all = await busy("bench", (progress) => {
      progress(0, batches.length, "building the random 5M-parameter model");
      return session.bench(new Uint32Array(batches), seconds, (json) => {
        const row = JSON.parse(json);
        rows.push(row);
        benchRow(row);
        plotBench(rows);
        progress(rows.length, batches.length, `batch ${row.batch}: ${row.net_calls_per_second.toFixed(2)} net calls/s`);
      });
    });
    return JSON.parse(all);
  } catch (e) {
    showError("bench-error", e);
    throw e;
  }
}

// ---- every pipeline ------------------------------------------------------

async function checkPipelines() {
  showError("pipelines-error", null);
  const table = $("pipeline-rows");
  table.innerHTML = "<tr><th>device</th><th>model</th><th>pipelines on the device</th><th>vs the CPU engine (fused, spread)</th></tr>";
  try {
    const all = await busy("building every pipeline", (progress) => {
      let done = 0;
      return session.check_pipelines((json) => {
        const c = JSON.parse(json);
        const tr = table.insertRow();
        const agree = c.passed == null ? "built only"
          : `${(c.fused_vs_cpu ?? Infinity).toExponential(1)}, ${(c.spread_vs_cpu ?? Infinity).toExponential(1)}: ${c.passed ? "ok" : "WRONG on this GPU"}`;
        for (const v of [c.device, c.model, c.pipelines, agree]) tr.insertCell().textContent = v;
        progress(++done, 8, `${c.model} on ${c.device}`);
      });
    });
    return JSON.parse(all);
  } catch (e) {
    showError("pipelines-error", e);
    throw e;
  }
}

// ---- wiring -------------------------------------------------------------

function wire() {
  $("solve").onclick = () => solve($("puzzle").value, Number($("act-steps").value) || 16).catch(() => {});
  $("bench").onclick = () => {
    const batches = $("batches").value.split(/[ ,]+/).map(Number).filter((b) => b >= 1);
    bench(batches, Number($("seconds").value) || 3).catch(() => {});
  };
  $("pipelines").onclick = () => checkPipelines().catch(() => {});
  $("step-slider").oninput = (e) => showStep(Number(e.target.value));
  $("bundled").onclick = () => loadBundled().catch((e) => showError("model-error", e));
  $("file").onchange = (e) => e.target.files[0] && loadFile(e.target.files[0]);
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) loadFile(e.dataTransfer.files[0]);
  };
}

async function loadSamples() {
  const response = await fetch("pkg/puzzles.txt");
  if (!response.ok) return;
  samples = (await response.text()).split(/\r?\n/).filter((l) => l.trim().length === 81);
  const span = $("samples");
  samples.slice(0, 10).forEach((p, i) => {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = `${i + 1}`;
    b.title = p;
    b.onclick = () => { $("puzzle").value = p; drawGrid(p, null, null); };
    span.appendChild(b);
  });
  const all = document.createElement("button");
  all.type = "button";
  all.textContent = "first 10";
  all.onclick = () => { $("puzzle").value = samples.slice(0, 10).join("\n"); drawGrid(samples[0], null, null); };
  span.appendChild(all);
  if (samples.length) { $("puzzle").value = samples[0]; drawGrid(samples[0], null, null); }
}

// Resolves once the page is ready (or rejects with why not).
const ready = (async () => {
  wire();
  if (!navigator.gpu) throw new Error("this browser has no WebGPU (navigator.gpu is missing; it needs a secure context: https or localhost)");
  await init();
  status("opening the GPU…");
  session = await Session.open(null);
  const adapter = await showAdapter();
  await loadSamples();
  await loadBundled();
  status(`ready on ${adapter.name || adapter.adapter_described || adapter.backend}`);
  return adapter;
})();
ready.catch((e) => { status(`not available: ${e.message ?? e}`); });
window.trmReady = ready.then(() => "ok", (e) => `not ready: ${e.message ?? e}`);

// The browser test's entry (tests/browser.rs): everything the page does,
// sized by `options`, in one JSON answer.
window.trmTest = async (options) => {
  const adapter = await ready;
  const t0 = performance.now();
  const pipelines = await checkPipelines();
  const t1 = performance.now();
  const text = samples.slice(0, options.puzzles).join("\n");
  $("puzzle").value = text;
  const solved = await solve(text, options.act_steps);
  const t2 = performance.now();
  const rows = await bench(options.batches, options.seconds);
  const t3 = performance.now();
  // a bad file gets a readable message, not a crash
  let badModel = null;
  try { await session.load_model(new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 9]), "bad.safetensors"); }
  catch (e) { badModel = e.message ?? String(e); }
  showError("model-error", badModel && `bad.safetensors: ${badModel}`);
  return JSON.stringify({
    adapter, pipelines, solve: solved.steps, puzzles: solved.puzzles, bench: rows, bad_model: badModel,
    seconds: { pipelines: (t1 - t0) / 1e3, solve: (t2 - t1) / 1e3, bench: (t3 - t2) / 1e3 },
  });
};
