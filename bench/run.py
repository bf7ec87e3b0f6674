"""`make bench`: every performance measure, side by side, into bench/results.json and docs/performance.md.

Usage: python -m bench.run [--only overhead training anchors] [--quick] [--threads N]

Each measure prints its entries as it finishes. bench/results.json holds one entry per measure (ratio,
goal, whether it is met, the absolute numbers it came from) and the machine; the table between the
markers in docs/performance.md is rewritten from it (``--quick`` runs write neither: too few steps).
Run it on an otherwise idle machine: other jobs on the cores distort the ratios.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import time
from pathlib import Path

import torch

MEASURES = ("overhead", "training", "anchors", "chunked_loss", "kd_vs_trl")
RESULTS = Path("bench/results.json")
DOC = Path("docs/performance.md")
START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def table(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Measured {results['date']} by `make bench` ({results['seconds']:.0f} s) on {m['cores']} cores "
        f"({m['cpu']}), {m['torch_threads']} torch threads, torch {m['torch']}, lightning {m['lightning']}; "
        f"load average at start {m['load_average_at_start']}.",
        "",
        "| measure | median | min .. max over rounds | goal | verdict |",
        "|---|---:|---:|---:|:---:|",
    ]
    signs = {"higher": ">=", "lower": "<=", "close": "="}
    for e in results["entries"]:
        goal = f"{signs[e['better']]} {e['goal']}" + (
            f" ± {e['tolerance']}" if e["better"] == "close" else ""
        )
        low, high = e["interval"]
        spread = f"{low:.3f} .. {high:.3f} ({e['rounds']})" if e["rounds"] > 1 else "one measurement"
        verdict = e["verdict"] if e["verdict"] == "met" else f"**{e['verdict']}**"
        lines.append(f"| {e['name']} | {e['ratio']:.3f} | {spread} | {goal} | {verdict} |")
    return "\n".join(lines)


def write_doc(results: dict) -> None:
    text = DOC.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{table(results)}\n{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=MEASURES, default=list(MEASURES))
    parser.add_argument("--quick", action="store_true", help="few steps: a smoke run, writes nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.common import machine

    start = time.perf_counter()
    results = {"date": datetime.date.today().isoformat(), "machine": machine(), "entries": []}
    results["measure_seconds"] = {}
    for name in args.only:
        print(f"== {name}", flush=True)
        began = time.perf_counter()
        for entry in importlib.import_module(f"bench.{name}").measure(args.quick):
            print(json.dumps(entry.as_dict()), flush=True)
            results["entries"].append(entry.as_dict())
        results["measure_seconds"][name] = round(time.perf_counter() - began, 1)
        print(f"== {name}: {results['measure_seconds'][name]:.0f} s", flush=True)
    results["seconds"] = round(time.perf_counter() - start, 1)
    print(table(results))
    if not args.quick and args.only == list(MEASURES):
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        write_doc(results)
        print(f"wrote {RESULTS} and the table in {DOC}")


if __name__ == "__main__":
    main()
