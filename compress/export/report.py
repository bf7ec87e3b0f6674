"""The compression report: every model measured the same way, in one process, one after another.

For each model (a stock Hugging Face folder, or an ONNX file next to its tokenizer): parameters and
non-zero parameters, size on disk of its weight file(s), accuracy and macro-F1 on the same test rows,
and CPU latency at batch 1 and 32. Latency is the median over ``rounds`` calls per model; the models take
turns call by call (A, B, C, A, B, C, ...), so a busy machine slows all of them alike and the ratios stay
meaningful. Writes ``report.json`` (every number, the machine, the method), ``report.md`` and
``report.png`` (accuracy against latency and against size).

Example:
    >>> rows = [{"name": "teacher", "accuracy": 0.8, "f1": 0.8, "latency_b32_ms": 100.0, "latency_b1_ms": 9.0,
    ...          "size_bytes": 90e6, "parameters": 22e6, "nonzero": 22e6}]
    >>> print(markdown_table(with_ratios(rows)).splitlines()[2].split("|")[1].strip())
    teacher
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_f1_score
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.safe_load import load_pretrained

Predict = Callable[[dict[str, np.ndarray]], np.ndarray]
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".data")


@dataclass
class Candidate:
    """A model to measure: ``path`` is an HF folder or an ``.onnx`` file; the tokenizer sits in ``tokenizer``
    (default: the folder itself, or the ONNX file's folder)."""

    name: str
    path: Path
    tokenizer: Path | None = None

    @property
    def is_onnx(self) -> bool:
        return self.path.suffix == ".onnx"

    def tokenizer_folder(self) -> Path:
        return self.tokenizer or (self.path.parent if self.is_onnx else self.path)


def load_predict(candidate: Candidate) -> tuple[Predict, int, int]:
    """A batch → logits function, the parameter count and the non-zero count."""
    if candidate.is_onnx:
        return _onnx_predict(candidate.path)
    model = load_pretrained(
        AutoModelForSequenceClassification, candidate.path, f"models.{candidate.name}"
    ).eval()

    def predict(batch: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()

    params = list(model.parameters())
    return predict, sum(p.numel() for p in params), sum(int(p.count_nonzero()) for p in params)


def _onnx_predict(path: Path) -> tuple[Predict, int, int]:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # idle onnxruntime threads would spin into the next model's turn (models take turns call by call)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer]
    weights = [w for w in weights if w.ndim >= 2]  # matrices and embeddings, not scales or shapes

    def predict(batch: dict[str, np.ndarray]) -> np.ndarray:
        return session.run(None, {k: batch[k] for k in names if k in batch})[0]

    return predict, sum(w.size for w in weights), sum(int(np.count_nonzero(w)) for w in weights)


def size_on_disk(candidate: Candidate) -> int:
    """Bytes of the weight file(s): ``model.safetensors``, or the ONNX file and its external data."""
    if candidate.is_onnx:
        files = [candidate.path, *candidate.path.parent.glob(candidate.path.name + ".data")]
    else:
        files = [f for f in candidate.path.iterdir() if f.suffix in WEIGHT_SUFFIXES]
    return sum(f.stat().st_size for f in files)


def measure(
    candidates: Sequence[Candidate],
    texts: Sequence[str],
    labels: Sequence[int],
    max_length: int,
    rounds: int = 10,
) -> list[dict]:
    """Accuracy, F1, size and interleaved latency of every candidate on the same rows."""
    loaded = [(c, *load_predict(c)) for c in candidates]
    encode = {c.name: _encoder(c, max_length) for c in candidates}
    rows = []
    for c, predict, params, nonzero in tqdm(loaded, desc="report: accuracy", unit="model"):
        accuracy, f1 = _evaluate(predict, encode[c.name], texts, labels)
        rows.append(
            {"name": c.name, "path": str(c.path), "parameters": params, "nonzero": nonzero,
             "size_bytes": size_on_disk(c), "accuracy": accuracy, "f1": f1}
        )  # fmt: skip
    for batch_size in (32, 1):
        batches = {c.name: encode[c.name](list(texts[:batch_size])) for c in candidates}
        times = _interleaved({c.name: (p, batches[c.name]) for c, p, *_ in loaded}, rounds)
        for row in rows:
            row[f"latency_b{batch_size}_ms"] = times[row["name"]]
    return rows


def _encoder(candidate: Candidate, max_length: int) -> Callable[[list[str]], dict[str, np.ndarray]]:
    tokenizer = AutoTokenizer.from_pretrained(candidate.tokenizer_folder())

    def encode(batch: list[str]) -> dict[str, np.ndarray]:
        out = tokenizer(batch, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        return {k: v.astype(np.int64) for k, v in out.items()}

    return encode


def _evaluate(predict: Predict, encode, texts, labels, batch_size: int = 64) -> tuple[float, float]:
    """Micro accuracy and macro-F1 over all of the model's classes, as the training modules log them."""
    logits = np.concatenate(
        [predict(encode(list(texts[i : i + batch_size]))) for i in range(0, len(texts), batch_size)]
    )
    predictions, gold = torch.from_numpy(logits).argmax(-1), torch.as_tensor(list(labels))
    classes = logits.shape[-1]
    accuracy = multiclass_accuracy(predictions, gold, classes, average="micro")
    return float(accuracy), float(multiclass_f1_score(predictions, gold, classes, average="macro"))


def _interleaved(models: dict[str, tuple[Predict, dict]], rounds: int) -> dict[str, float]:
    for predict, batch in models.values():
        predict(batch)  # warm-up: first calls allocate and pick kernels
    samples: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    for r in tqdm(range(rounds), desc="report: latency", unit="round"):
        for name in order if r % 2 == 0 else order[::-1]:
            predict, batch = models[name]
            start = time.perf_counter()
            predict(batch)
            samples[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in samples.items()}


def with_ratios(rows: list[dict], reference: str | None = None) -> list[dict]:
    """Adds retention and speed/size ratios against the reference row (default: the first)."""
    ref = next(r for r in rows if r["name"] == (reference or rows[0]["name"]))
    for row in rows:
        row["accuracy_retention"] = row["accuracy"] / ref["accuracy"]
        row["speedup_b32"] = ref["latency_b32_ms"] / row["latency_b32_ms"]
        row["speedup_b1"] = ref["latency_b1_ms"] / row["latency_b1_ms"]
        row["size_fraction"] = row["size_bytes"] / ref["size_bytes"]
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | accuracy | macro-F1 | % of reference acc | parameters | non-zero | size on disk | "
        "% of reference size | latency b32 (ms) | speed-up b32 | latency b1 (ms) | speed-up b1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['accuracy']:.3f} | {r['f1']:.3f} | {100 * r['accuracy_retention']:.1f} | "
            f"{r['parameters'] / 1e6:.2f}M | {r['nonzero'] / 1e6:.2f}M | {r['size_bytes'] / 1e6:.1f} MB | "
            f"{100 * r['size_fraction']:.1f} | {r['latency_b32_ms']:.1f} | {r['speedup_b32']:.2f}x | "
            f"{r['latency_b1_ms']:.2f} | {r['speedup_b1']:.2f}x |"
        )
    return "\n".join(lines)


def machine() -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


METHOD = (
    "Accuracy and macro-F1: every model on the same test rows, tokenized by its own tokenizer (truncation "
    "at max_length, padding to the longest row of each batch of 64). Latency: eval mode, "
    "torch.inference_mode / onnxruntime CPU with torch's thread count; the first 32 test rows (batch 32) "
    "and the first row (batch 1), after one warm-up call; models take turns call by call (order reversed "
    "every other round) and each number is the median over the rounds. Size: bytes of the weight file(s) "
    "(model.safetensors, or the .onnx file). Parameters of an ONNX file: elements of its weight tensors "
    "with 2 or more dimensions."
)


def write_report(rows: list[dict], folder: Path, reference: str | None = None, notes: str = "") -> dict:
    """Writes ``report.json``, ``report.md`` and ``report.png`` into ``folder``; returns the report."""
    rows = with_ratios(rows, reference)
    report = {
        "models": rows,
        "reference": reference or rows[0]["name"],
        "machine": machine(),
        "method": METHOD,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = f"# Compression report\n\n{markdown_table(rows)}\n\n{notes}\n\nHow measured: {METHOD}\n\n"
    text += f"Machine: {json.dumps(report['machine'])}\n"
    (folder / "report.md").write_text(text)
    _plot(rows, folder / "report.png")
    return report


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (
        (axes[0], "latency_b32_ms", "latency, batch 32 (ms)"),
        (axes[1], "size_bytes", "size on disk (bytes)"),
    )
    for axis, key, label in panels:
        for r in rows:  # a legend, not labels on the points: compressed models often sit close together
            axis.scatter(r[key], r["accuracy"], label=r["name"], s=40)
        axis.set_xscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("test accuracy")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
