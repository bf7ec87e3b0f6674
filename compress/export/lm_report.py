"""The report for causal language models: every model measured the same way, in one process, in turns.

For each model (a Hugging Face folder, or a GGUF file read through transformers' GGUF loader): parameters,
non-embedding parameters, size on disk of its weight file(s), held-out perplexity on the same blocks, the
KL divergence from the reference (teacher) per token at T = 1, top-1 agreement with the reference, and
prefill and decode speed at batch 1 (greedy, KV cache, CPU): Hugging Face folders in fp32 through
torch, GGUF files through llama.cpp itself when ``llama-cpp-python`` is installed (``make llamacpp``;
else they get no speed). Speed is the median over ``rounds`` rounds in which the models take turns (order
reversed every other round), so a busy machine slows them alike. A GGUF file's perplexity and KL are
measured on its weights as transformers dequantises them. The same prompts' greedy continuations are
written side by side. Writes ``report.json`` (every number, the machine, the method), ``report.md`` and
``report.png`` (perplexity against decode speed and size).

Example:
    >>> rows = [{"name": "teacher", "perplexity": 20.0, "kl": 0.0, "top1_agreement": 1.0,
    ...          "parameters": 135e6, "non_embedding_parameters": 106e6, "size_bytes": 540e6,
    ...          "runtime": "torch", "prefill_tokens_per_s": 900.0, "decode_tokens_per_s": 30.0}]
    >>> print(markdown_table(with_ratios(rows)).splitlines()[2].split("|")[1].strip())
    teacher
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from compress.export.llama_cpp import LlamaCppModel, llama_cpp_available
from compress.export.report import WEIGHT_SUFFIXES, machine
from compress.safe_load import load_pretrained

PROMPTS = ("The government said on Monday that", "Shares in the company fell after")


@dataclass
class LanguageModel:
    """A model to measure: ``path`` is a Hugging Face folder or a ``.gguf`` file."""

    name: str
    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.suffix == ".gguf"

    def load(self) -> PreTrainedModel:
        if self.is_gguf:  # dequantised to float32 by transformers
            return AutoModelForCausalLM.from_pretrained(
                self.path.parent, gguf_file=self.path.name, dtype=torch.float32
            ).eval()
        return load_pretrained(AutoModelForCausalLM, self.path, f"models.{self.name}").float().eval()

    def size_on_disk(self) -> int:
        files = (
            [self.path] if self.is_gguf else [f for f in self.path.iterdir() if f.suffix in WEIGHT_SUFFIXES]
        )
        return sum(f.stat().st_size for f in files)


def non_embedding_parameters(model: PreTrainedModel) -> int:
    """Parameters outside the input embeddings and an untied output head (what pruning shrinks)."""
    embeddings = {id(p) for p in model.get_input_embeddings().parameters()}
    head = model.get_output_embeddings()
    embeddings |= {id(p) for p in head.parameters()} if head is not None else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in embeddings)


@torch.inference_mode()
def quality(models: dict[str, PreTrainedModel], batches: Iterable[dict], reference: str) -> dict[str, dict]:
    """Perplexity, KL from ``reference`` and top-1 agreement with it, on the learned tokens of ``batches``."""
    sums = {name: {"nll": 0.0, "kl": 0.0, "agree": 0.0} for name in models}
    count = 0
    for batch in tqdm(list(batches), desc="report: perplexity", unit="batch"):
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        logits = {
            name: m(**inputs).logits[:, :-1][keep].float().log_softmax(-1) for name, m in models.items()
        }
        count += int(keep.sum())
        for name, log_p in logits.items():
            log_ref = logits[reference][:, : log_p.shape[-1]]
            sums[name]["nll"] += float(F.nll_loss(log_p, targets[keep], reduction="sum"))
            sums[name]["kl"] += float(F.kl_div(log_p, log_ref, log_target=True, reduction="sum"))
            sums[name]["agree"] += float((log_p.argmax(-1) == log_ref.argmax(-1)).sum())
    if not count:
        raise ValueError("report: the evaluation batches hold no learned tokens")
    return {
        name: {"perplexity": float(torch.tensor(s["nll"] / count).exp()), "kl": s["kl"] / count,
               "top1_agreement": s["agree"] / count}
        for name, s in sums.items()
    }  # fmt: skip


class TorchRunner:
    """Greedy generation of a transformers model at batch 1 (KV cache), timed like `LlamaCppModel`."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model

    @torch.inference_mode()
    def generate(self, ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        """The new tokens, seconds of one forward over the prompt (prefill), seconds of ``generate``."""
        prompt = torch.tensor([ids])
        mask = torch.ones_like(prompt)
        start = time.perf_counter()
        self.model(input_ids=prompt, attention_mask=mask, use_cache=True)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = self.model.generate(
            input_ids=prompt, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=False, use_cache=True, pad_token_id=self.model.config.eos_token_id,
        )  # fmt: skip
        return out[0, len(ids) :].tolist(), prefill, time.perf_counter() - start


def speed(runners: dict, prompt: list[int], new_tokens: int, rounds: int) -> dict[str, dict]:
    """Prefill and decode tokens/s at batch 1 (greedy), the runners taking turns round by round.

    Decode: ``new_tokens - 1`` steps (the first new token comes from the prefill) over the generation time
    minus the prefill time; medians over the rounds after one warm-up round.
    """
    times: dict[str, dict[str, list[float]]] = {name: {"prefill": [], "total": []} for name in runners}
    order = list(runners)
    for r in tqdm(range(rounds + 1), desc="report: speed", unit="round"):
        for name in order if r % 2 == 0 else order[::-1]:
            _, prefill, total = runners[name].generate(prompt, new_tokens)
            if r:  # round 0 warms up every model
                times[name]["prefill"].append(prefill)
                times[name]["total"].append(total)
    out = {}
    for name, t in times.items():
        prefill, total = statistics.median(t["prefill"]), statistics.median(t["total"])
        out[name] = {
            "prefill_tokens_per_s": len(prompt) / prefill,
            "decode_tokens_per_s": (new_tokens - 1) / max(total - prefill, 1e-9),
        }
    return out


def generations(runners: dict, tokenizer, prompts: Sequence[str], new_tokens: int) -> dict[str, list[str]]:
    """Each runner's greedy continuation of each prompt."""
    texts: dict[str, list[str]] = {}
    for name, runner in runners.items():
        new = [runner.generate(tokenizer(prompt).input_ids, new_tokens)[0] for prompt in prompts]
        texts[name] = [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in new]
    return texts


def runners_for(candidates: Sequence[LanguageModel], models: dict[str, PreTrainedModel]) -> dict:
    """How each candidate generates: transformers, or llama.cpp for a GGUF file when it is installed."""
    runners = {}
    for c in candidates:
        if not c.is_gguf:
            runners[c.name] = TorchRunner(models[c.name])
        elif llama_cpp_available():
            runners[c.name] = LlamaCppModel(c.path, threads=torch.get_num_threads())
    return runners


def measure_lms(
    candidates: Sequence[LanguageModel],
    batches: Iterable[dict],
    reference: str | None = None,
    rounds: int = 5,
    prompt_tokens: int = 64,
    new_tokens: int = 32,
    prompts: Sequence[str] = PROMPTS,
) -> tuple[list[dict], dict]:
    """Every measure of every candidate; returns the rows and the side-by-side generations."""
    reference = reference or candidates[0].name
    if reference not in {c.name for c in candidates}:
        raise ValueError(f"reference: {reference!r} is none of the models {[c.name for c in candidates]}")
    models = {c.name: c.load() for c in tqdm(candidates, desc="report: loading", unit="model")}
    tokenizer = AutoTokenizer.from_pretrained(_tokenizer_folder(candidates))
    batches = list(batches)
    scores = quality(models, batches, reference)
    runners = runners_for(candidates, models)
    prompt = batches[0]["input_ids"][0, :prompt_tokens].tolist()
    speeds = speed(runners, prompt, new_tokens, rounds) if runners else {}
    rows = []
    for c in candidates:
        model = models[c.name]
        rows.append({
            "name": c.name, "path": str(c.path), "runtime": _runtime(c, runners),
            "parameters": sum(p.numel() for p in model.parameters()),
            "non_embedding_parameters": non_embedding_parameters(model),
            "size_bytes": c.size_on_disk(), **scores[c.name],
            **speeds.get(c.name, {"prefill_tokens_per_s": None, "decode_tokens_per_s": None}),
        })  # fmt: skip
    texts = generations(runners, tokenizer, prompts, new_tokens)
    for runner in runners.values():
        getattr(runner, "close", lambda: None)()
    return rows, texts


def _runtime(candidate: LanguageModel, runners: dict) -> str:
    if not candidate.is_gguf:
        return "torch"
    return "llama.cpp" if candidate.name in runners else "none (llama.cpp not installed)"


def _tokenizer_folder(candidates: Sequence[LanguageModel]) -> Path:
    """The first Hugging Face folder among the candidates: its tokenizer writes the prompts."""
    folders = [c.path for c in candidates if not c.is_gguf]
    if not folders:
        raise ValueError("models: list at least one Hugging Face folder (the GGUF files share its tokenizer)")
    return folders[0]


def with_ratios(rows: list[dict], reference: str | None = None) -> list[dict]:
    """Adds perplexity, size and parameter ratios against the reference row (default: the first), and speed
    ratios against the first timed row of the same runtime (torch against torch, llama.cpp against
    llama.cpp: another runtime's kernels are not the model's doing)."""
    ref = next(r for r in rows if r["name"] == (reference or rows[0]["name"]))
    for row in rows:
        row["perplexity_ratio"] = row["perplexity"] / ref["perplexity"]
        row["non_embedding_fraction"] = row["non_embedding_parameters"] / ref["non_embedding_parameters"]
        row["size_fraction"] = row["size_bytes"] / ref["size_bytes"]
        timed = [r for r in rows if r["runtime"] == row["runtime"] and r["decode_tokens_per_s"]]
        base = ref if ref in timed else (timed[0] if timed else None)
        row["speed_reference"] = base["name"] if base else None
        for key in ("prefill", "decode"):
            ours, theirs = row[f"{key}_tokens_per_s"], base and base[f"{key}_tokens_per_s"]
            row[f"{key}_speedup"] = ours / theirs if ours and theirs else None
    return rows


def _number(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | perplexity | x reference | KL | top-1 agreement | parameters | non-embedding | "
        "% of reference | size on disk | runtime | prefill tok/s | decode tok/s | decode speed-up |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['perplexity']:.2f} | {r['perplexity_ratio']:.2f} | {r['kl']:.3f} | "
            f"{r['top1_agreement']:.3f} | {r['parameters'] / 1e6:.1f}M | "
            f"{r['non_embedding_parameters'] / 1e6:.1f}M | {100 * r['non_embedding_fraction']:.1f} | "
            f"{r['size_bytes'] / 1e6:.1f} MB | {r['runtime']} | "
            f"{_number(r['prefill_tokens_per_s'], '.0f')} | "
            f"{_number(r['decode_tokens_per_s'], '.1f')} | {_number(r['decode_speedup'], '.2f', 'x')} |"
        )
    return "\n".join(lines)


METHOD = (
    "Perplexity: exp of the mean next-token cross-entropy over the learned tokens of the same held-out "
    "blocks for every model. KL: KL(reference || model) per token at T = 1 over the same tokens; top-1 "
    "agreement: the share of those tokens where the model's argmax equals the reference's. Speed: batch 1, "
    "greedy with the KV cache, torch's thread count; HF folders in fp32 through torch (prefill = one "
    "forward over the prompt), GGUF files through llama.cpp (prefill = time to the first token; n/a "
    "without llama-cpp-python); decode = (new tokens - 1) / (generation time - prefill time); median over "
    "rounds after one warm-up round, models taking turns (order reversed every other round); speed-up: "
    "against the reference, or the first timed model, in the same runtime. GGUF quality: "
    "its weights dequantised by transformers. Non-embedding "
    "parameters exclude the input embeddings and an untied output head. Size: bytes of the weight file(s)."
)


def write_lm_report(rows: list[dict], texts: dict, folder: Path, reference: str | None = None) -> dict:
    """Writes ``report.json``, ``report.md`` and ``report.png`` into ``folder``; returns the report."""
    rows = with_ratios(rows, reference)
    report = {"models": rows, "generations": texts, "reference": reference or rows[0]["name"],
              "machine": machine(), "method": METHOD}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    text = f"# Compression report (language model)\n\n{markdown_table(rows)}\n\n## Generations\n\n"
    for index, prompt in enumerate(PROMPTS[: len(next(iter(texts.values()), []))]):
        text += f"**{prompt}**\n\n" + "".join(
            f"- {name}: {json.dumps(t[index], ensure_ascii=False)}\n" for name, t in texts.items()
        )
        text += "\n"
    text += f"How measured: {METHOD}\n\nMachine: {json.dumps(report['machine'])}\n"
    (folder / "report.md").write_text(text)
    _plot(rows, folder / "report.png")
    return report


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    panels = (
        (axes[0], "decode_tokens_per_s", "decode tokens/s (batch 1)"),
        (axes[1], "size_bytes", "size (bytes)"),
    )
    for axis, key, label in panels:
        for r in rows:
            if r[key] is not None:
                axis.scatter(r[key], r["perplexity"], label=r["name"], s=40)
        axis.set_xlabel(label)
        axis.set_ylabel("held-out perplexity")
        axis.set_yscale("log")
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
