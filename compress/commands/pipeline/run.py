"""``compress pipeline --config configs/pipelines/<name>.yaml``: run the stages in order, skip finished ones.

Every stage has a fingerprint: its settings as written (``{stage}`` placeholders kept, so the run folder's
path is not part of it), the CLI overrides and the shared data settings where the stage reads them, the
content digests of the local files and folders it names and of the outputs of the stages it reads. A
stage whose manifest holds the same fingerprint, and whose output still has the digest the manifest
recorded, is reused; an interrupted fit stage with the same fingerprint resumes from its last checkpoint;
a changed one reruns, and with it every stage whose inputs changed. One run at a time per output folder
(`claim_output`). At the end a summary table is printed and written to ``summary.md`` and ``summary.json``.

Example:
    compress pipeline --config configs/pipelines/tiny.yaml --output runs/tiny
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

from jsonargparse import ArgumentParser

from compress.commands.pipeline.checks import check_stages
from compress.commands.pipeline.claim import claim_output
from compress.commands.pipeline.config import Pipeline, Stage, load_pipeline
from compress.commands.pipeline.content import Meter, digest, input_digests, outputs_of, shared_data
from compress.commands.pipeline.fit import (
    read_manifest,
    restore_set_aside,
    run_fit_stage,
    write_manifest,
)
from compress.commands.pipeline.stages import (
    run_export,
    run_load,
    run_multitask,
    run_prune,
    run_report,
)


def main(argv: list[str] | None = None, prog: str = "compress pipeline") -> None:
    parser = ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="pipeline YAML; null: the packaged default.yaml")
    parser.add_argument("--output", default=None, help="run folder; null: the config's, else runs/<name>")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="overrides for every fit stage, e.g. --set data.max_train_examples=400 trainer.max_steps=10",
    )  # fmt: skip
    args = parser.parse_args(argv)
    with default_pipeline() as default:
        run_pipeline(args.config or default, args.output, [f"--{kv}" for kv in args.set])


@contextmanager
def default_pipeline() -> Iterator[Path]:
    """The packaged ``configs/pipelines/default.yaml`` as a file path (also from an installed wheel)."""
    with resources.as_file(resources.files("compress.configs") / "pipelines" / "default.yaml") as path:
        yield path


def run_pipeline(
    config: str | Path, output: str | Path | None = None, overrides: list[str] | None = None
) -> list[dict]:
    """Runs (or reuses) every stage; returns one summary row per stage."""
    pipeline = load_pipeline(config, output)
    overrides = overrides or []
    check_stages(pipeline, overrides)  # a typo in the last stage fails now, not after the first ones trained
    print(f"[pipeline] {pipeline.name}: {len(pipeline.stages)} stages into {pipeline.output}")
    with claim_output(pipeline.output, "--output"):
        rows = _run_stages(pipeline, overrides)
    summary = summary_table(rows)
    print("\n" + summary)
    (pipeline.output / "summary.md").write_text(summary + "\n")
    (pipeline.output / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    report = pipeline.output / "report.md"
    if report.is_file():
        print("\n" + report.read_text().split("\n\nHow measured")[0])
    return rows


def _run_stages(pipeline: Pipeline, overrides: list[str]) -> list[dict]:
    digests: dict[str, str] = {}  # stage name -> content digest of its output
    known: dict[str, str | None] = {}  # local input path -> its digest, hashed once per run
    rows = []
    for number, stage in enumerate(pipeline.stages, start=1):
        print(f"[pipeline] stage {number}/{len(pipeline.stages)}: {stage.name} ({stage.kind})")
        start, hashed = time.perf_counter(), Meter.bytes
        inputs = input_digests(stage, pipeline, known)
        upstream = {name: digests[name] for name in stage.inputs}
        data = shared_data(stage, pipeline)
        changes = overrides if stage.kind == "fit" else []  # --set applies to fit stages only
        fingerprint = _fingerprint(stage.kind, stage.raw, data, changes, upstream, inputs)
        result, reused, digests[stage.name] = _run(pipeline, stage, fingerprint, overrides)
        if reused:
            print(f"[pipeline] {stage.name}: content checked, {(Meter.bytes - hashed) / 1e6:.1f} MB in "
                  f"{time.perf_counter() - start:.1f} s")  # fmt: skip
        rows.append({"stage": stage.name, "kind": stage.kind, "reused": reused,
                     "seconds": round(time.perf_counter() - start, 1), "result": result})  # fmt: skip
    return rows


def _run(pipeline: Pipeline, stage: Stage, fingerprint: str, overrides: list[str]) -> tuple[dict, bool, str]:
    """Reuses the stage if its fingerprint and its output's digest match its manifest, else runs it; returns
    its result, whether it was reused and its output's digest."""
    folder = pipeline.stage_dir(stage.name)
    if stage.kind == "fit":
        restore_set_aside(folder, fingerprint)
    saved = read_manifest(folder)
    outputs = outputs_of(pipeline, stage)
    if saved.get("fingerprint") == fingerprint:
        current = digest(outputs)
        if current is not None and current == saved.get("output_digest"):
            print(f"[pipeline] {stage.name}: unchanged, reusing its output")
            return saved["result"], True, current
        state = "missing" if current is None else "changed since it was written"
        shown = ", ".join(map(str, outputs))
        print(f"[pipeline] {stage.name}: its output ({shown}) is {state}; running it again")
    if stage.kind == "fit":
        result = run_fit_stage(folder, stage.settings, overrides, fingerprint, outputs)
        return result, False, read_manifest(folder)["output_digest"]
    runners: dict[str, Callable[[], dict]] = {
        "load": lambda: run_load(stage.settings, folder),
        "prune": lambda: run_prune(stage.settings, folder, pipeline.data),
        "multitask": lambda: run_multitask(stage.settings, folder),
        "export": lambda: run_export(stage.settings, pipeline.output / stage.name, pipeline.data),
        "report": lambda: run_report(stage.settings, pipeline.output, pipeline.data),
    }
    result = runners[stage.kind]()
    folder.mkdir(parents=True, exist_ok=True)
    return result, False, write_manifest(folder, fingerprint, result, outputs=outputs)


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def summary_table(rows: list[dict]) -> str:
    lines = ["| stage | kind | status | time (s) | result |", "|---|---|---|---|---|"]
    for row in rows:
        status = "reused" if row["reused"] else "ran"
        headline = _headline(row["result"])
        lines.append(f"| {row['stage']} | {row['kind']} | {status} | {row['seconds']:.0f} | {headline} |")
    return "\n".join(lines)


def _headline(result: dict) -> str:
    if "test_acc" in result:
        return f"test acc {result['test_acc']:.3f}, {result['parameters'] / 1e6:.1f}M params"
    if "test_perplexity" in result:
        return f"test perplexity {result['test_perplexity']:.2f}, {result['parameters'] / 1e6:.1f}M params"
    if "perplexity" in result and "parameters_before" in result:  # a prune stage
        return (
            f"{result['parameters'] / 1e6:.1f}M params, held-out perplexity {result['perplexity'] or 0:.2f}"
        )
    if "tasks" in result:
        return ", ".join(f"{task} {r['test_acc']:.3f}" for task, r in result["tasks"].items())
    if "models" in result:
        return f"{len(result['models'])} models measured: report.md"
    if "hf_max_abs_diff" in result:
        formats = "HF, GGUF" if any(k.startswith("gguf") for k in result) else "HF, ONNX"
        return f"{result['parameters'] / 1e6:.1f}M params exported ({formats})"
    return f"{result.get('parameters', 0) / 1e6:.1f}M params"
