// The page around trm-wgpu's browser bindings (web/src/lib.rs, built into
// pkg/ by web/build.sh). Plain JavaScript: the bindings do the work, this
// file shows it. tests/browser.rs drives it as a user would (clicks, typed
// values, files) and reads window.trm, the page's record of what it did.
import init, { Session } from "./pkg/trm_web.js";

const $ = (id) => document.getElementById(id);
let session = null;
let model = null; // the loaded model's info (load_model's JSON)
let samples = []; // every line of puzzles.txt
let lastSolve = null; // { puzzles, steps } of the solve shown, null when none
let running = null; // the promise of the work under way

// What the page did, for the browser test: every progress report, each
// piece of work's end, and the last results.
window.trm = {
  progress: [],
  ended: [],
  solve: null,
  bench: null,
  pipelines: null,
  // the promise of the last thing a click or a file started
  action: null,
};
const act = (promise) => { window.trm.action = promise; return promise; };

// ---- status, progress and errors -----------------------------------------

function status(text, bad = false) {
  $("status").textContent = text;
  $("status").classList.toggle("no", bad);
}

function showError(id, error) {
  const el = $(id);
  if (!error) { el.hidden = true; el.textContent = ""; return; }
  el.hidden = false;
  el.textContent = error instanceof Error ? error.message : String(error);
}

const isCancel = (e) => (e?.message ?? String(e)) === "cancelled";

// Which buttons can work now: none without a GPU or while work runs;
// Solve only with a Sudoku model loaded.
function updateButtons() {
  const free = session !== null && running === null;
  $("solve").disabled = !(free && model?.sudoku);
  $("solve").title = model && !model.sudoku ? "the loaded model is not a 9 x 9 Sudoku model" : "";
  $("bench").disabled = !free;
  $("pipelines").disabled = !free;
  $("bundled").disabled = !free;
  $("file").disabled = !free;
}

const seconds = (s) => (s < 90 ? `${s.toFixed(0)} s` : `${Math.floor(s / 60)} min ${(s % 60).toFixed(0).padStart(2, "0")} s`);

// Runs `work(progress)` with the progress bar (fixed at the bottom of the
// window), elapsed and estimated time and Cancel; `progress(done, total,
// text)` reports how far.
async function busy(label, work) {
  const started = performance.now();
  let done = 0, total = 0, text = label;
  const show = () => {
    const elapsed = (performance.now() - started) / 1e3;
    let time = `${seconds(elapsed)} elapsed`;
    if (done > 0 && total > done) time += `, about ${seconds((elapsed / done) * (total - done))} left`;
    $("progress-time").textContent = time;
    $("progress-text").textContent = text;
  };
  const progress = (d, t, what) => {
    done = d; total = t; text = `${label}: ${what ?? `${d} of ${t}`}`;
    $("progress-bar").max = t;
    $("progress-bar").value = d;
    window.trm.progress.push({ label, done: d, total: t, at: performance.now() });
    console.log(text); // the browser test prints these
    show();
  };
  $("progress-bar").removeAttribute("value");
  $("progress").hidden = false;
  $("cancel").disabled = false;
  show();
  const timer = setInterval(show, 1000);
  const promise = (async () => work(progress))();
  running = promise;
  updateButtons();
  try {
    return await promise;
  } finally {
    clearInterval(timer);
    window.trm.ended.push({ label, seconds: (performance.now() - started) / 1e3 });
    running = null;
    $("progress").hidden = true;
    updateButtons();
  }
}

// ---- the GPU ------------------------------------------------------------

function showAdapter(info, adapter) {
  const i = adapter?.info ?? {};
  // what WebGPU tells of the adapter (wgpu gets no name from it)
  const described = [i.description, i.vendor, i.architecture, i.device].filter(Boolean).join(", ");
  const offered = adapter ? [...adapter.features].sort() : [];
  const l = info.limits;
  const mib = (b) => `${(b / 2 ** 20).toFixed(0)} MiB`;
  const name = `${info.name || described || "(unnamed)"}${info.name && described ? ` (${described})` : ""}`;
  const rows = [
    ["adapter", name],
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
  $("adapter-name").textContent = `${name}, device type ${info.device_type}`;
  $("adapter").innerHTML = "";
  for (const [k, v] of rows) {
    const tr = $("adapter").insertRow();
    tr.insertCell().textContent = k;
    tr.insertCell().textContent = v;
  }
  return { ...info, adapter_described: described, adapter_features: offered };
}

// A plain sentence for a browser without a WebGPU adapter.
const NO_ADAPTER =
  "This browser offers no WebGPU adapter, so the model cannot run here. On Linux, Chrome and Chromium " +
  "need WebGPU switched on: start them with --enable-unsafe-webgpu (with a GPU, add --enable-features=Vulkan), " +
  "or turn on chrome://flags/#enable-unsafe-webgpu. Elsewhere, update the browser and the GPU driver, " +
  "or try Chrome, Edge, Safari 26 or Firefox on Windows or macOS.";

// ---- the model ----------------------------------------------------------

async function loadModel(bytes, name) {
  showError("model-error", null);
  try {
    const info = JSON.parse(await busy(`loading ${name}`, () => session.load_model(bytes, name)));
    model = info;
    const c = info.config;
    $("model-info").textContent =
      `${info.name}: ${(info.parameters / 1e6).toFixed(2)}M parameters, ${c.mlp_t ? "MLP-mixer" : "attention"} ` +
      `${c.arch ?? "trm"}, D = ${c.hidden_size}, ${c.L_layers} layers, n = ${c.L_cycles}, T = ${c.H_cycles}, ` +
      `trained for ${c.halt_max_steps} ACT steps` +
      (info.sudoku ? "" : ". Not a 9 x 9 Sudoku model (the solver needs seq_len 81 and vocab 11): Solve is off; the bench and the kernel check do not use it.");
    $("explain-cycles").textContent =
      `n = ${c.L_cycles} latent updates, then one answer update, T = ${c.H_cycles} times`;
    updateButtons();
    return info;
  } catch (e) {
    // the message names the file; the model loaded before stays
    showError("model-error", e);
    throw e;
  }
}

async function loadBundled() {
  const response = await fetch("pkg/model.safetensors");
  if (!response.ok) throw new Error(`pkg/model.safetensors: HTTP ${response.status} (run web/build.sh)`);
  return loadModel(new Uint8Array(await response.arrayBuffer()), "sudoku-easy (bundled)");
}

async function loadFile(file) {
  await loadModel(new Uint8Array(await file.arrayBuffer()), file.name).catch(() => {});
}

// ---- solving ------------------------------------------------------------

function drawGrid(puzzle, answer, previous) {
  const grid = $("grid");
  grid.innerHTML = "";
  for (let i = 0; i < 81; i++) {
    const cell = document.createElement("div");
    const p = puzzle?.[i] ?? ".";
    const given = p !== "." && p !== "0";
    const digit = answer ? answer[i] : p;
    cell.textContent = digit === "." || digit === "0" ? "" : digit;
    cell.className = given ? "given" : "found";
    if (!given && previous && previous[i] !== answer[i]) cell.classList.add("changed");
    if (i % 9 === 2 || i % 9 === 5) cell.classList.add("c3");
    if (Math.floor(i / 9) === 2 || Math.floor(i / 9) === 5) cell.classList.add("r3");
    grid.appendChild(cell);
  }
}

// Puzzles as the solver reads them (blank and # lines skipped).
const puzzleLines = (text) => text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l.length && !l.startsWith("#"));

// Shows `text`'s puzzles, none solved: the state before a solve, and after
// one that failed (nothing of an earlier solve stays on show).
function clearSolve(text) {
  lastSolve = null;
  const puzzles = puzzleLines(text);
  $("steps").innerHTML = "";
  $("qhalt-plot").innerHTML = "";
  $("qhalt-plot").setAttribute("hidden", ""); // an SVG element: no .hidden
  const slider = $("step-slider");
  slider.min = 1; slider.max = 1; slider.value = 1; slider.disabled = true;
  $("step-label").textContent = "";
  const which = $("which");
  which.innerHTML = "";
  puzzles.forEach((_, i) => which.add(new Option(`puzzle ${i + 1}`, String(i))));
  if (!puzzles.length) which.add(new Option("puzzle 1", "0"));
  which.disabled = puzzles.length < 2;
  $("grid-label").textContent = puzzles.length ? `of ${puzzles.length}` : "";
  drawGrid(puzzles[0], null, null);
}

const shown = () => Number($("which").value) || 0;

// q_halt of every puzzle against the ACT step (the drawn one in blue), the
// halting line at 0.
function plotQHalt(steps, p) {
  const svg = $("qhalt-plot");
  if (!steps.length) { svg.innerHTML = ""; svg.setAttribute("hidden", ""); return; }
  svg.removeAttribute("hidden");
  const W = 360, H = 200, L = 36, R = 8, T = 10, B = 26;
  const all = steps.flatMap((s) => s.q_halt.filter(Number.isFinite));
  const lo = Math.min(0, ...all) - 0.5, hi = Math.max(0, ...all) + 0.5;
  const n = Math.max(steps.length, 2);
  const x = (i) => L + ((W - L - R) * i) / (n - 1);
  const y = (v) => T + ((H - T - B) * (hi - v)) / (hi - lo);
  let s = `<line x1="${L}" y1="${y(0)}" x2="${W - R}" y2="${y(0)}" stroke="#c0392b" stroke-dasharray="4 3"/>`;
  s += `<text x="${W - R}" y="${y(0) - 3}" text-anchor="end">halts above 0</text>`;
  s += `<line x1="${L}" y1="${T}" x2="${L}" y2="${H - B}" stroke="#999"/><line x1="${L}" y1="${H - B}" x2="${W - R}" y2="${H - B}" stroke="#999"/>`;
  for (const v of [lo, hi]) s += `<text x="${L - 4}" y="${y(v) + 3}" text-anchor="end">${v.toFixed(1)}</text>`;
  s += `<text x="${L}" y="${H - 8}">ACT step 1</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${steps.length}</text>`;
  s += `<text x="${L + 4}" y="${T + 8}">q_halt (puzzle ${p + 1} in blue)</text>`;
  const puzzles = steps[0].q_halt.length;
  for (let k = 0; k < puzzles; k++) {
    if (k === p) continue;
    const pts = steps.map((st, i) => `${x(i)},${y(st.q_halt[k])}`).join(" ");
    s += `<polyline points="${pts}" fill="none" stroke="#c8ced6" stroke-width="1"/>`;
  }
  s += `<polyline points="${steps.map((st, i) => `${x(i)},${y(st.q_halt[p])}`).join(" ")}" fill="none" stroke="#1f6feb" stroke-width="2"/>`;
  s += steps.map((st, i) => `<circle cx="${x(i)}" cy="${y(st.q_halt[p])}" r="3" fill="${st.valid[p] ? "#1a7f37" : "#1f6feb"}"/>`).join("");
  svg.innerHTML = s;
}

function stepRows(steps, p) {
  const table = $("steps");
  table.innerHTML = `<tr><th>ACT step</th><th>q_halt (${p + 1})</th><th>cells changed (${p + 1})</th><th>valid</th><th>halted</th><th>s</th></tr>`;
  for (const step of steps) {
    const tr = table.insertRow();
    tr.dataset.step = step.step;
    const valid = step.valid.filter(Boolean).length;
    const halted = step.halted.filter((h) => h != null).length;
    for (const v of [step.step, step.q_halt[p].toFixed(2), step.changed[p], `${valid} of ${step.valid.length}`,
      `${halted} of ${step.halted.length}`, step.seconds.toFixed(1)]) {
      tr.insertCell().textContent = v;
    }
    tr.onclick = () => { $("step-slider").value = step.step; showStep(step.step); };
  }
}

// Draws the chosen puzzle after ACT step k of the solve on show.
function showStep(k) {
  const step = lastSolve?.steps[k - 1];
  if (!step) return;
  const { puzzles, steps } = lastSolve;
  const p = Math.min(shown(), puzzles.length - 1);
  drawGrid(puzzles[p], step.answers[p], k > 1 ? steps[k - 2].answers[p] : null);
  const halted = step.halted[p];
  $("step-label").textContent =
    `after ACT step ${k}: q_halt ${step.q_halt[p].toFixed(2)}, ${step.changed[p]} cell(s) changed, ` +
    (step.valid[p] ? "a valid solution" : "not yet a valid solution") +
    (halted != null && halted <= k ? ` (halted at step ${halted})` : "");
  for (const tr of $("steps").rows) tr.classList.toggle("current", tr.dataset.step == k);
}

// Redraws everything of the solve on show for the chosen puzzle.
function showSolve() {
  if (!lastSolve?.steps.length) return;
  const p = Math.min(shown(), lastSolve.puzzles.length - 1);
  stepRows(lastSolve.steps, p);
  plotQHalt(lastSolve.steps, p);
  showStep(Number($("step-slider").value));
}

// The ACT steps typed, or why not.
function actSteps() {
  const max = Session.max_act_steps();
  const raw = $("act-steps").value.trim();
  const n = Number(raw);
  if (!raw || !Number.isInteger(n) || n < 1 || n > max) {
    throw new Error(`ACT steps: give a whole number from 1 to ${max} (the bundled model was trained with 16), not "${raw}"`);
  }
  return n;
}

async function solve() {
  showError("solve-error", null);
  const text = $("puzzle").value;
  let steps;
  try {
    steps = actSteps();
  } catch (e) {
    showError("solve-error", e);
    return null;
  }
  const halt = $("halt").checked;
  clearSolve(text);
  const solving = { puzzles: puzzleLines(text), steps: [], halt };
  window.trm.solve = solving;
  try {
    await busy("solving", (progress) =>
      session.solve(text, steps, halt, (json) => {
        const step = JSON.parse(json);
        solving.steps.push(step);
        lastSolve = solving;
        const slider = $("step-slider");
        slider.max = step.step; slider.value = step.step; slider.disabled = false;
        showSolve();
        // the last step (every puzzle done) fills the bar
        const total = step.running === 0 ? step.step : step.act_steps;
        progress(step.step, total, `ACT step ${step.step} of at most ${step.act_steps}` +
          (halt ? `, ${step.running} of ${step.q_halt.length} still running` : ""));
      }));
    const last = solving.steps.at(-1);
    status(`solved ${solving.puzzles.length} puzzle(s) in ${last.step} ACT step(s): ` +
      `${last.valid.filter(Boolean).length} valid`);
  } catch (e) {
    if (isCancel(e)) {
      solving.cancelled = true;
      status(`solve cancelled after ${solving.steps.length} ACT step(s)`);
    } else {
      showError("solve-error", e);
    }
  }
  return solving;
}

// ---- the bench ----------------------------------------------------------

function plotBench(rows) {
  const svg = $("bench-plot");
  const W = 360, H = 220, L = 48, R = 10, T = 12, B = 30;
  if (!rows.length) { svg.innerHTML = ""; svg.setAttribute("hidden", ""); return; }
  svg.removeAttribute("hidden");
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
    table.innerHTML = "<tr><th>batch</th><th>schedule</th><th>net calls/s</th><th>puzzles/s (336 calls)</th><th>GFLOP/s</th><th>GPU ms a call</th></tr>";
  }
  const tr = table.insertRow();
  const gpu = row.gpu_seconds != null ? ((row.gpu_seconds / (row.net_calls / row.batch)) * 1e3).toFixed(1) : "-";
  for (const v of [row.batch, row.schedule, row.net_calls_per_second.toFixed(3), (row.net_calls_per_second / 336).toFixed(5),
    row.gflops.toFixed(3), gpu]) {
    tr.insertCell().textContent = v;
  }
}

async function bench() {
  showError("bench-error", null);
  const batches = $("batches").value.split(/[ ,]+/).filter(Boolean).map(Number);
  if (!batches.length || batches.some((b) => !Number.isInteger(b) || b < 1)) {
    showError("bench-error", `batch sizes: whole numbers from 1, separated by commas, not "${$("batches").value}"`);
    return null;
  }
  const budget = Number($("seconds").value);
  if (!(budget > 0)) {
    showError("bench-error", `seconds per size: a number above 0, not "${$("seconds").value}"`);
    return null;
  }
  $("bench-rows").innerHTML = "";
  const rows = [];
  const skipped = [];
  window.trm.bench = rows;
  plotBench(rows);
  try {
    await busy("bench", (progress) => {
      progress(0, batches.length, "building the random 5M-parameter model");
      return session.bench(new Uint32Array(batches), budget, (json) => {
        const p = JSON.parse(json);
        if (p.row) {
          rows.push(p.row);
          benchRow(p.row);
          plotBench(rows);
        }
        if (p.skipped) { skipped.push(p.skipped); showError("bench-error", `skipped ${skipped.join("; ")}`); }
        progress(p.done, p.total, p.row ? `batch ${p.batch}: ${p.row.net_calls_per_second.toFixed(3)} net calls/s` : `batch ${p.batch} skipped`);
      });
    });
  } catch (e) {
    if (isCancel(e)) { rows.cancelled = true; status(`bench cancelled after ${rows.length} batch size(s)`); }
    else showError("bench-error", e);
  }
  return rows;
}

// ---- every pipeline ------------------------------------------------------

async function checkPipelines() {
  showError("pipelines-error", null);
  const table = $("pipeline-rows");
  table.innerHTML = "<tr><th>device</th><th>model</th><th>pipelines on the device</th><th>vs the CPU engine (fused, spread)</th></tr>";
  const cases = [];
  window.trm.pipelines = cases;
  try {
    await busy("building every pipeline", (progress) =>
      session.check_pipelines((json) => {
        const c = JSON.parse(json);
        cases.push(c);
        const tr = table.insertRow();
        const agree = c.passed == null ? "built only"
          : `${(c.fused_vs_cpu ?? Infinity).toExponential(1)}, ${(c.spread_vs_cpu ?? Infinity).toExponential(1)}: ${c.passed ? "ok" : "WRONG on this GPU"}`;
        for (const v of [c.device, c.model, c.pipelines, agree]) tr.insertCell().textContent = v;
        progress(c.done, c.total, `${c.model} on ${c.device}`);
      }));
  } catch (e) {
    if (isCancel(e)) { cases.cancelled = true; status(`kernel check cancelled after ${cases.length} case(s)`); }
    else showError("pipelines-error", e);
  }
  return cases;
}

// ---- wiring -------------------------------------------------------------

function wire() {
  $("solve").onclick = () => act(solve());
  $("bench").onclick = () => act(bench());
  $("pipelines").onclick = () => act(checkPipelines());
  $("cancel").onclick = () => { session?.cancel(); $("cancel").disabled = true; $("progress-text").textContent += " (cancelling after this part)"; };
  $("step-slider").oninput = (e) => showStep(Number(e.target.value));
  $("which").onchange = () => showSolve();
  $("bundled").onclick = () => act(loadBundled().catch(() => {}));
  $("file").onchange = (e) => e.target.files[0] && act(loadFile(e.target.files[0]));
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0] && session && !running) act(loadFile(e.dataTransfer.files[0]));
  };
}

async function loadSamples() {
  const [lines, chosen] = await Promise.all([
    fetch("pkg/puzzles.txt").then((r) => (r.ok ? r.text() : "")),
    fetch("samples.json").then((r) => (r.ok ? r.json() : { samples: [] })),
  ]);
  samples = lines.split(/\r?\n/).filter((l) => l.trim().length === 81);
  const span = $("samples");
  const offered = chosen.samples.filter((s) => samples[s.line - 1]);
  const pick = (text) => { $("puzzle").value = text; clearSolve(text); };
  for (const s of offered) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = s.valid_at ? `#${s.line}: ${s.valid_at} step${s.valid_at > 1 ? "s" : ""}` : `#${s.line}: unsolved`;
    b.title = `line ${s.line} of puzzles.txt; PyTorch's answer is valid from ACT step ${s.valid_at ?? "(never in 16)"}, ` +
      `q_halt > 0 from step ${s.halts_at ?? "(never in 16)"}`;
    b.onclick = () => pick(samples[s.line - 1]);
    span.appendChild(b);
  }
  const all = document.createElement("button");
  all.type = "button";
  all.textContent = "all together";
  all.onclick = () => pick(offered.map((s) => samples[s.line - 1]).join("\n"));
  span.appendChild(all);
  const first = offered.find((s) => s.valid_at > 2) ?? offered[0];
  if (first) pick(samples[first.line - 1]);
}

// Resolves once the page is ready (or rejects with why not).
const ready = (async () => {
  wire();
  updateButtons();
  await loadSamples().catch(() => {});
  if (!navigator.gpu) {
    throw new Error(window.isSecureContext ? NO_ADAPTER.replace("offers no WebGPU adapter", "has no WebGPU")
      : "WebGPU needs a secure context: open the page as http://localhost:PORT or over https (README, \"In the browser\")");
  }
  // wgpu's own message lists every backend it was not built with; ask
  // WebGPU first and say it plainly
  const adapter = await navigator.gpu.requestAdapter().catch(() => null);
  if (!adapter) throw new Error(NO_ADAPTER);
  await init();
  status("opening the GPU…");
  try {
    session = await Session.open(null);
  } catch (e) {
    throw new Error(`The GPU did not open: ${e.message ?? e}`);
  }
  const info = showAdapter(JSON.parse(session.adapter()), adapter);
  updateButtons();
  await loadBundled();
  status(`ready on ${info.name || info.adapter_described || info.backend}: pick a sample and press Solve`);
  return info;
})();
ready.catch((e) => {
  status(e.message ?? String(e), true);
  if (!model) $("model-info").textContent = session ? "no model loaded" : "no model loaded: the page needs a WebGPU adapter";
  updateButtons();
});
window.trmReady = ready.then(() => "ok", (e) => `not ready: ${e.message ?? e}`);
