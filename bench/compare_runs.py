"""Do two `make bench` runs agree? For every measure, the min .. max intervals of the two runs must overlap.

Usage: python -m bench.compare_runs [--markdown] bench/results.previous.json bench/results.json

Prints one row per measure (both intervals, both verdicts, whether the intervals overlap) and exits with
status 1 when a measure's intervals do not overlap or a measure is missing from one run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.rounds import disjoint_chance


def overlap(a: list[float], b: list[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def compare(first: dict, second: dict) -> list[dict]:
    """One row per measure of either run."""
    runs = [{e["name"]: e for e in r["entries"]} for r in (first, second)]
    rows = []
    for name in dict.fromkeys([*runs[0], *runs[1]]):
        a, b = runs[0].get(name), runs[1].get(name)
        both = a is not None and b is not None
        rows.append(
            {
                "name": name,
                "intervals": [e["interval"] if e else None for e in (a, b)],
                "verdicts": [e["verdict"] if e else "missing" for e in (a, b)],
                "rounds": [e["rounds"] if e else 0 for e in (a, b)],
                "overlap": both and overlap(a["interval"], b["interval"]),
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table (``--markdown``), for docs/performance.md."""
    lines = ["| measure | run 1 (min .. max) | run 2 | intervals, verdicts |", "|---|---:|---:|---|"]
    for row in rows:
        shown = [f"{i[0]:.3f} .. {i[1]:.3f}" if i else "-" for i in row["intervals"]]
        said = "overlap" if row["overlap"] else "**apart**"
        lines.append(f"| {row['name']} | {shown[0]} | {shown[1]} | {said}: {', '.join(row['verdicts'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(argv if argv is not None else sys.argv[1:])
    as_markdown = "--markdown" in argv
    argv = [a for a in argv if a != "--markdown"]
    paths = argv or [
        "bench/results.previous.json",
        "bench/results.json",
    ]
    first, second = (json.loads(Path(p).read_text()) for p in paths)
    print(f"{paths[0]}: {first['date']}, {first['machine']['cpu']}; {paths[1]}: {second['date']}, "
          f"{second['machine']['cpu']}")  # fmt: skip
    rows = compare(first, second)
    if as_markdown:
        print(markdown(rows))
    else:
        for row in rows:
            shown = " | ".join(f"{i[0]:.3f} .. {i[1]:.3f}" if i else "-" for i in row["intervals"])
            said = "overlap" if row["overlap"] else "APART  "
            print(f"{said} | {shown} | {' / '.join(row['verdicts'])} | {row['name']}")
    apart = sum(not row["overlap"] for row in rows)
    expected = sum(disjoint_chance(min(row["rounds"])) for row in rows if min(row["rounds"]) > 1)
    print(
        f"{apart} of {len(rows)} apart; from noise alone (exchangeable rounds, bench/rounds.py) "
        f"{expected:.2f} would be expected"
    )
    return 0 if apart == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
