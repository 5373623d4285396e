#!/usr/bin/env python3
"""The measured tables of the README and the book, generated from bench/results/.

Every published figure lives in a dated JSON file under bench/results/ (one
per measurement run: machine, adapter, driver, commit, command, figures).
A table in a Markdown file is a marked region:

    <!-- table: VIEW -->
    ...generated, do not edit...
    <!-- /table -->

where VIEW names an entry of VIEWS below: which files, which columns. This
script rewrites every region from the JSON (`python3 bench/tables.py`), or
with `--check` fails, printing a diff, when a region differs from what the
JSON gives (CI runs that), when a region names an unknown view, or when a
results file lacks a field a measurement must state.

Files that bench/device.sh writes (`rows`, not `figures`) are left alone.
"""

import argparse
import difflib
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
MARKDOWN = ["README.md"] + sorted(glob.glob(os.path.join(ROOT, "docs", "src", "**", "*.md"), recursive=True))
REQUIRED = ("title", "date", "machine", "adapter", "driver", "commit", "command", "figures")

# A view: the results files (names without .json), the rows' key in each
# ("figures" unless told) and the columns (title, key). A "pick" view names
# single figures instead: (label, file, row index, format string over the row).
CPU_VS_PYTORCH = ["2026-11-29-cpu-vs-pytorch-6b0170c-5rounds", "2026-11-29-cpu-vs-pytorch-6b0170c-7rounds",
                  "2026-11-29-cpu-vs-pytorch-43369a1"]

VIEWS = {
    "bench-default": {
        "files": ["2026-12-01-bench-default-5c22ce4"],
        "columns": [("backend", "backend"), ("adapter", "adapter"), ("api", "api"), ("schedule", "schedule"),
                    ("batch", "batch"), ("net calls/s", "net_calls_per_s"), ("puzzles/s", "puzzles_per_s"),
                    ("GFLOP/s", "gflop_per_s"), ("GPU ms/step", "gpu_ms_per_step"), ("workgroups", "workgroups")],
    },
    "cpu-vs-pytorch": {
        "files": ["2026-11-29-cpu-vs-pytorch-6b0170c-5rounds", "2026-11-29-cpu-vs-pytorch-6b0170c-7rounds",
                  "2026-11-29-cpu-vs-pytorch-43369a1"],
        "columns": [("commit", "@commit"), ("rounds", "rounds"), ("batch", "batch"),
                    ("trm-wgpu CPU net calls/s", "trm_net_calls_per_s"),
                    ("PyTorch net calls/s", "pytorch_net_calls_per_s"), ("ratio", "ratio"),
                    ("per-round range", "ratio_range")],
    },
    "int8-speed": {
        "files": ["2026-12-01-cpu-int8-matched-644fbfd", "2026-12-01-cpu-int8-matched-7a38e0b"],
        "columns": [("commit", "@commit"), ("comparison", "comparison"), ("batch 1", "batch_1"), ("batch 8", "batch_8")],
    },
    "int8-matched-accuracy": {
        "files": ["2026-12-01-cpu-int8-matched-accuracy-644fbfd"],
        "columns": [("puzzles", "puzzles"), ("int8, matched activations", "int8_matched"), ("f32", "f32")],
    },
    "cpu-instruction-rates": {
        "files": ["2026-12-01-cpu-instruction-rates-644fbfd"],
        "columns": [("instruction", "instruction"), ("GOP/s on one core", "gop_per_s")],
    },
    "precision-accuracy": {
        "files": ["2026-12-01-precision-accuracy-c751f96"],
        "columns": [("puzzles", "puzzles"), ("precision", "precision"), ("valid after 1", "valid_1"),
                    ("valid after 16", "valid_16"), ("cells = f32 after 1", "cells_1"),
                    ("cells = f32 after 16", "cells_16")],
    },
    "precision-random": {
        "files": ["2026-12-01-precision-accuracy-c751f96"],
        "rows": "random_models",
        "columns": [("precision", "precision"), ("block scale", "block_scale"),
                    ("logits rel. L2 after 1 ACT step", "rel_l2_1"), ("after 16 ACT steps", "rel_l2_16")],
    },
    "weight-bytes": {
        "files": ["2026-12-01-weight-bytes-882c019"],
        "columns": [("shape", "shape"), ("f32", "f32"), ("f16, bf16", "half"), ("int8 (scales included)", "int8")],
    },
    "augment": {
        "files": ["2026-12-01-augment-f46322c"],
        "columns": [("puzzles", "puzzles"), ("K = 1", "k1"), ("K = 4 (q-halt / vote / verifier)", "k4"),
                    ("K = 8", "k8"), ("K = 32", "k32")],
    },
    "noise": {
        "files": ["2026-12-01-noise-trajectories-4602610"],
        "columns": [("run", "run"), ("valid of 60", "valid")],
    },
    "streaming": {
        "files": ["2026-12-01-streaming-fef60fb"],
        "columns": [("run", "run"), ("network calls (recursion_steps)", "recursion_steps"),
                    ("puzzle network calls", "puzzle_recursion_steps"), ("CPU puzzles/s", "cpu_puzzles_per_s"),
                    ("lavapipe puzzles/s", "lavapipe_puzzles_per_s")],
    },
    "streaming-hard": {
        "files": ["2026-12-01-streaming-hard-c64bd75"],
        "columns": [("run", "run"), ("network calls", "recursion_steps"),
                    ("puzzle network calls", "puzzle_recursion_steps"), ("puzzles/s", "puzzles_per_s"),
                    ("seconds", "seconds")],
    },
    "hrm-cpu": {
        "files": ["2026-12-01-hrm-cpu-dade1ab"],
        "columns": [("model", "model"), ("batch", "batch"), ("net calls/s", "net_calls_per_s"),
                    ("puzzles/s (16 ACT steps)", "puzzles_per_s"), ("s per puzzle", "s_per_puzzle"),
                    ("GFLOP/s", "gflop_per_s")],
    },
    "hrm-lavapipe": {
        "files": ["2026-12-01-hrm-lavapipe-2292b28"],
        "columns": [("model", "model"), ("schedule", "schedule"), ("net calls/s", "net_calls_per_s"),
                    ("puzzles/s", "puzzles_per_s"), ("s per puzzle", "s_per_puzzle"),
                    ("dispatches per net call", "dispatches")],
    },
    "arc-shape": {
        "files": ["2026-12-01-arc-shape-afb69c2"],
        "columns": [("engine", "engine"), ("batch", "batch"), ("net calls/s", "net_calls_per_s"),
                    ("s per example (16 ACT steps)", "s_per_example")],
    },
    "arc-memory": {
        "files": ["2026-12-01-arc-memory-c6d47b7", "2026-12-01-arc-vote-memory-afb69c2"],
        "columns": [("run", "run"), ("peak resident memory", "peak_resident")],
    },
    "schedules-threads": {
        "files": ["2026-12-01-schedules-threads-1ba4df6"],
        "columns": [("round", "round"), ("spread, 1 thread", "spread_1"), ("spread, 2 threads", "spread_2"),
                    ("speed-up", "spread_speedup"), ("fused, 1 thread", "fused_1"), ("fused, 2 threads", "fused_2"),
                    ("speed-up", "fused_speedup")],
    },
    "schedules-skips": {
        "files": ["2026-12-01-schedules-skips-5accf4d"],
        "columns": [("code", "code"), ("spread, 1 thread", "spread_1"), ("spread, 2 threads", "spread_2"),
                    ("fused, 1 thread", "fused_1"), ("fused, 2 threads", "fused_2")],
    },
    "cpu-vs-pytorch-amx": {
        "files": ["2026-12-06-cpu-compare-pytorch-5abca8e-third", "2026-12-06-cpu-compare-pytorch-a78ae3b-1-thread",
                  "2026-12-06-cpu-compare-pytorch-a78ae3b", "2026-12-06-cpu-compare-pytorch-a78ae3b-second"],
        "columns": [("commit", "@commit"), ("threads", "threads"), ("load", "load"), ("batch", "batch"),
                    ("ours", "ours"), ("net calls/s", "ours_rate"), ("PyTorch", "torch"),
                    ("net calls/s", "torch_rate"), ("ratio", "ratio"), ("per round", "ratio_range")],
    },
    "browser": {
        "files": ["2026-12-06-browser-swiftshader-page"],
        "columns": [("what", "what"), ("SwiftShader in headless Chromium 156", "swiftshader"),
                    ("lavapipe natively", "lavapipe")],
    },
    "headline": {
        # (label, file or files, row index, format); several files: one
        # figure each, joined by " / ", so no run is left out
        "pick": [
            ("CPU engine, f32, over PyTorch float32, batch 1 (three runs)", CPU_VS_PYTORCH, 0, "{ratio}x"),
            ("CPU engine, bf16 on AMX, over PyTorch bfloat16 (batch 1 / batch 8)",
             "2026-12-06-cpu-compare-pytorch-5abca8e-third", [2, 3], "{ratio}"),
            ("CPU engine, f32, over PyTorch float32, batch 8 (three runs)", CPU_VS_PYTORCH, 1, "{ratio}x"),
            ("CPU engine, int8 with matched activations, over its f32, batch 1 (two runs)",
             "2026-12-01-cpu-int8-matched-7a38e0b", [0, 1], "{batch_1}"),
            ("CPU engine, int8 matched, over PyTorch float32, batch 1", "2026-12-01-cpu-int8-matched-7a38e0b", 2,
             "{batch_1}"),
            ("lavapipe (software Vulkan), batch 1, spread schedule", "2026-12-01-bench-default-5c22ce4", 2,
             "{net_calls_per_s} net calls/s"),
            ("sudoku-easy sample puzzles solved at f32 (16 ACT steps)", "2026-12-01-precision-accuracy-c751f96", 0,
             "{valid_16}"),
            ("the same with 8 symmetric variants", "2026-12-01-augment-f46322c", 0,
             "{k8} of 100 (q-halt / vote / verifier)"),
        ],
    },
}


def from_compare_pytorch(data):
    """A benches/compare_pytorch.py run (its `summary` of interleaved rounds)
    in the fields every results file states, a figure per comparison and batch."""
    loads = [r["load_before"] for r in data.get("rounds_detail", []) if r.get("load_before") is not None]
    load = f"{min(loads):.1f} to {max(loads):.1f}" if loads else "-"
    figures = []
    for r in data["summary"]:
        figures.append({
            "threads": data["threads"],
            "load": load,
            "comparison": r["comparison"],
            "batch": r["batch"],
            "ours": f"{r['trm_precision']}, {r['trm_activations']} activations ({r['trm_kernel']})",
            "ours_rate": f"{r['trm_net_calls_per_s']:.0f}",
            "torch": r["torch_mode"],
            "torch_rate": f"{r['pytorch_net_calls_per_s']:.0f}",
            "ratio": f"{r['ratio']:.2f}x",
            "ratio_range": f"{r['ratio_range'][0]:.2f} to {r['ratio_range'][1]:.2f}",
        })
    return {
        "title": "The CPU engine beside PyTorch",
        "date": data["date"][:10],
        "machine": f"{data['cpu']}, {data['logical_cores']} logical cores ({', '.join(data.get('cpu_flags', []))})",
        "adapter": "CPU",
        "driver": f"PyTorch {data['torch']}",
        "commit": data["commit"],
        "command": data["command"],
        "notes": f"{data['rounds']} interleaved rounds of {data['seconds']} s, {data['threads']} threads each; "
                 + data.get("note", ""),
        "figures": figures,
    }


def load_results():
    results = {}
    for path in sorted(glob.glob(os.path.join(RESULTS, "*.json"))):
        with open(path) as f:
            data = json.load(f)
        if "rows" in data and "figures" not in data:
            continue  # a bench/device.sh report: its own tables (bench/device_report.py)
        if "summary" in data and "rounds_detail" in data and "figures" not in data:
            data = from_compare_pytorch(data)
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise SystemExit(f"error: {os.path.relpath(path, ROOT)} lacks {', '.join(missing)}")
        results[os.path.basename(path)[: -len(".json")]] = data
    return results


def cell(value):
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def source_lines(names, results):
    out = []
    machines = []
    for name in names:
        d = results[name]
        adapter = d["adapter"] if isinstance(d["adapter"], str) else "; ".join(d["adapter"])
        line = f"- `bench/results/{name}.json`: {d['date']}, commit {d['commit']}, {adapter}"
        if d["driver"] not in ("-", ""):
            line += f" ({d['driver']})"
        line += f"; `{d['command']}`."
        notes = d.get("notes", "").strip()
        if notes:
            line += " " + notes[0].upper() + notes[1:] + ("" if notes.endswith(".") else ".")
        out.append(line)
        if d["machine"] not in machines:
            machines.append(d["machine"])
    out.append("- Machine: " + "; ".join(machines) + ".")
    return out


def render(view_name, results):
    view = VIEWS.get(view_name)
    if view is None:
        raise KeyError(view_name)
    if "pick" in view:
        rows, names = [], []
        for label, files, indices, fmt in view["pick"]:
            files = [files] if isinstance(files, str) else files
            indices = [indices] if isinstance(indices, int) else indices
            picks = [(f, i) for f in files for i in indices]
            figure = " / ".join(fmt.format(**results[f]["figures"][i]) for f, i in picks)
            dates = sorted({results[f]["date"] for f in files})
            rows.append([label, figure, ", ".join(dates), ", ".join(f"`{f}.json`" for f in files)])
            names += [f for f in files if f not in names]
        machines = sorted({results[n]["machine"] for n in names})
        lines = table(["measured", "figure", "date", "bench/results/"], rows)
        lines += ["", "Machine: " + "; ".join(machines) + "."]
        return lines
    rows = []
    for name in view["files"]:
        d = results[name]
        for r in d[view.get("rows", "figures")]:
            rows.append([d["commit"] if key == "@commit" else r.get(key, "") for _, key in view["columns"]])
    lines = table([title for title, _ in view["columns"]], rows)
    return lines + ["", "Sources:", ""] + source_lines(view["files"], results)


MARK = re.compile(r"^<!-- table: ([A-Za-z0-9_-]+) -->\s*$")
END = "<!-- /table -->"


def regenerate(text, results, path):
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        m = MARK.match(line)
        i += 1
        if not m:
            continue
        j = i
        while j < len(lines) and lines[j].strip() != END:
            if MARK.match(lines[j]):
                raise SystemExit(f"error: {path}: a table region opened before '{END}' closed the last one")
            j += 1
        if j == len(lines):
            raise SystemExit(f"error: {path}: '{line}' has no '{END}'")
        try:
            out += ["", *render(m.group(1), results), ""]
        except KeyError:
            raise SystemExit(f"error: {path}: no view named {m.group(1)!r} in bench/tables.py")
        out.append(END)
        i = j + 1
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="fail if a table differs from what bench/results/ gives")
    args = p.parse_args()
    results = load_results()
    for view in VIEWS.values():
        picked = [[p[1]] if isinstance(p[1], str) else p[1] for p in view.get("pick", [])]
        for name in view.get("files", []) + [f for files in picked for f in files]:
            if name not in results:
                raise SystemExit(f"error: bench/tables.py names bench/results/{name}.json, which is missing")
    stale = []
    for path in MARKDOWN:
        if not os.path.exists(path):
            continue
        with open(path) as f:
            text = f.read()
        new = regenerate(text, results, os.path.relpath(path, ROOT))
        if new == text:
            continue
        rel = os.path.relpath(path, ROOT)
        if args.check:
            stale.append(rel)
            sys.stdout.writelines(difflib.unified_diff(
                text.splitlines(True), new.splitlines(True), f"{rel} (as committed)", f"{rel} (from bench/results)"))
        else:
            with open(path, "w") as f:
                f.write(new)
            print(f"wrote {rel}")
    if stale:
        print(f"error: tables differ from bench/results/ in {', '.join(stale)}; run python3 bench/tables.py",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
