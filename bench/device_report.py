#!/usr/bin/env python3
"""The report of `bench/device.sh run`: every row (trm bench and the
PyTorch reference) and every test binary's result into
OUT/bench/results/DATE-ADAPTER.json, and markdown tables on stdout (and in
OUT/table.md): the tests, all rows, and trm's schedules against PyTorch CUDA
float32 eager at each batch size.

    python3 bench/device_report.py --rows OUT/rows.jsonl --tests OUT/tests.tsv --out OUT

Exits 0 whatever the results say; bench/device.sh decides the exit status.
"""
import argparse
import datetime
import json
import os
import re


def load_rows(path):
    rows = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        pass  # a row cut short by a timeout
    return rows


def load_tests(path):
    """`name <TAB> pass|FAIL <TAB> exit status <TAB> seconds <TAB> summary` lines."""
    tests = []
    if path and os.path.exists(path):
        with open(path) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) >= 4:
                    tests.append({
                        "name": parts[0],
                        "result": parts[1],
                        "exit_status": int(parts[2]),
                        "seconds": float(parts[3]),
                        "summary": parts[4] if len(parts) > 4 else "",
                    })
    return tests


def sanitize(name):
    """A file-name part of letters, digits, '.', '_' and '-' alone."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "unknown"


def num(value, digits=1):
    return "-" if value is None else f"{value:.{digits}f}"


def is_trm_gpu(row):
    return row.get("backend") == "gpu"


def is_torch(row):
    return str(row.get("backend", "")).startswith("pytorch")


def adapter_of(rows, gpu_txt):
    for pick in (is_trm_gpu, is_torch):
        for r in rows:
            if pick(r) and r.get("adapter"):
                return r["adapter"]
    if gpu_txt:
        return gpu_txt.split(",")[0].strip()
    return "unknown"


def subgroups(r):
    """yes / no on GPU rows (whether the reductions used subgroup shuffles), - else."""
    value = r.get("subgroups")
    return "-" if value is None else ("yes" if value else "no")


def workgroups(row):
    w = row.get("workgroups_per_dispatch")
    if isinstance(w, dict):
        return f"{w.get('min')}/{w.get('median')}/{w.get('max')}"
    return "-"


def tables(rows, tests):
    out = []
    if tests:
        out += ["## Tests", "", "| test binary | result | seconds | summary |", "|---|---|---|---|"]
        for t in tests:
            summary = t["summary"].replace("|", "\\|")
            out.append(f"| {t['name']} | {t['result']} | {t['seconds']:.0f} | {summary} |")
        out.append("")
    out += [
        "## All rows",
        "",
        "| backend | adapter | api | precision | subgroups | schedule | batch | net calls/s | GFLOP/s | GPU ms/step | workgroups |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r.get('backend')} | {r.get('adapter')} | {r.get('api', '-')} | {r.get('precision', 'f32')} "
            f"| {subgroups(r)} | {r.get('schedule', '-')} "
            f"| {r.get('batch')} | {num(r.get('net_calls_per_s'))} | {num(r.get('gflops'))} "
            f"| {num(r.get('gpu_ms_per_step'), 3)} | {workgroups(r)} |"
        )
    out.append("")

    # trm series by (api, schedule); PyTorch CUDA by mode
    trm = {}
    for r in rows:
        if is_trm_gpu(r):
            schedule = r.get("schedule")
            if r.get("precision", "f32") != "f32":
                schedule = f"{schedule} {r['precision']}"
            if r.get("subgroups") is False:
                schedule = f"{schedule} no-subgroups"
            trm.setdefault((r.get("api"), schedule), {})[r["batch"]] = r["net_calls_per_s"]
    torch = {}
    for r in rows:
        if is_torch(r) and r.get("api") == "cuda":
            torch.setdefault(r["backend"], {})[r["batch"]] = r["net_calls_per_s"]
    eager = torch.get("pytorch-cuda-f32-eager", {})
    graph = torch.get("pytorch-cuda-f32-graph", {})
    batches = sorted({b for s in list(trm.values()) + list(torch.values()) for b in s})
    if not batches:
        return out
    series = sorted(trm)
    torch_names = [n for n in ("pytorch-cuda-f32-eager", "pytorch-cuda-f32-graph",
                               "pytorch-cuda-bf16-eager") if n in torch]
    torch_names += sorted(n for n in torch if n not in torch_names)
    head = ["batch"]
    head += [f"trm {api} {schedule}" for api, schedule in series]
    head += [n.replace("pytorch-cuda-", "torch ") for n in torch_names]
    head += [f"{schedule} / torch f32 eager" for _, schedule in series]
    if graph:
        head.append("best trm / torch f32 graph")
    out += [
        "## net calls/s: trm against PyTorch CUDA (ratios: trm / torch f32 eager)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for b in batches:
        cells = [str(b)]
        cells += [num(trm[s].get(b)) for s in series]
        cells += [num(torch[n].get(b)) for n in torch_names]
        for s in series:
            mine, ref = trm[s].get(b), eager.get(b)
            cells.append(f"{mine / ref:.2f}x" if mine and ref else "-")
        if graph:
            best = max((trm[s][b] for s in series if trm[s].get(b)), default=None)
            ref = graph.get(b)
            cells.append(f"{best / ref:.2f}x" if best and ref else "-")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", required=True, help="JSON lines: trm bench --json and pytorch_reference.py")
    p.add_argument("--tests", help="tests.tsv written by bench/device.sh")
    p.add_argument("--gpu", help="nvidia-smi's name,driver,memory line")
    p.add_argument("--check", help="trm check --json: the adapter, its driver and type, every variant's verdict")
    p.add_argument("--out", required=True, help="folder for bench/results/ and table.md")
    p.add_argument("--date", default=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"))
    args = p.parse_args()
    rows = load_rows(args.rows)
    tests = load_tests(args.tests)
    gpu_txt = ""
    if args.gpu and os.path.exists(args.gpu):
        with open(args.gpu) as f:
            gpu_txt = f.read().strip()
    check = {}
    if args.check and os.path.exists(args.check):
        with open(args.check) as f:
            try:
                check = json.load(f)
            except json.JSONDecodeError:
                check = {"error": "trm check wrote no JSON"}
    adapter = adapter_of(rows, gpu_txt)
    # what ran, as wgpu names it: the driver's name and version with it
    device = {k: check.get(k) for k in ("adapter", "driver", "driver_info", "api", "device_type")}
    results = os.path.join(args.out, "bench", "results")
    os.makedirs(results, exist_ok=True)
    path = os.path.join(results, f"{sanitize(args.date)}-{sanitize(adapter)}.json")
    with open(path, "w") as f:
        json.dump({"date": args.date, "adapter": adapter, "device": device, "gpu": gpu_txt,
                   "check": check, "tests": tests, "rows": rows}, f, indent=1)
        f.write("\n")
    text = "\n".join(tables(rows, tests))
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)
    print(f"rows and test results: {path}")


if __name__ == "__main__":
    main()
