"""The language-model pipeline on the tiny Llama end to end: prune, recover, export (HF, GGUF), report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from compress.commands.pipeline import run_pipeline
from compress.export.llama_cpp import llama_cpp_available

TINY = Path(__file__).resolve().parents[3] / "configs" / "pipelines" / "llm_tiny.yaml"
PROMPT = "The government said on Monday that"

GENERATE = """
import json, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, prompt = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder)
ids = model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=12, do_sample=False)
print(json.dumps({"ids": ids[0].tolist(), "compress": any(m.startswith("compress") for m in sys.modules)}))
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("llm") / "run"
    return out, {r["stage"]: r for r in run_pipeline(TINY, out)}


def test_stages_shrink_the_model_and_report_every_measure(run):
    out, rows = run
    pruned = AutoConfig.from_pretrained(out / "stages" / "pruned" / "model")
    assert (pruned.num_hidden_layers, pruned.intermediate_size, pruned.num_key_value_heads) == (3, 64, 1)
    recovered = out / "stages" / "recovered" / "model"
    assert not (recovered / "adapter_config.json").exists()  # LoRA merged
    assert rows["recovered"]["result"]["optimizer_steps"] == 4
    assert rows["recovered"]["result"]["test_perplexity"] > 1 and rows["recovered"]["result"]["test_kl"] >= 0
    report = json.loads((out / "report.json").read_text())
    by_name = {m["name"]: m for m in report["models"]}
    assert list(by_name) == [
        "teacher", "pruned", "recovered", "export (HF)", "teacher (GGUF q8_0)", "export (GGUF q8_0)"
    ]  # fmt: skip
    assert (
        by_name["teacher"]["kl"] == pytest.approx(0.0, abs=1e-6) and by_name["teacher"]["top1_agreement"] == 1
    )
    assert by_name["pruned"]["non_embedding_fraction"] < 0.5 < by_name["pruned"]["top1_agreement"]
    for name in ("teacher", "pruned", "recovered", "export (HF)"):
        assert by_name[name]["decode_tokens_per_s"] > 0 and by_name[name]["prefill_tokens_per_s"] > 0
    gguf = by_name["export (GGUF q8_0)"]
    assert gguf["size_bytes"] < by_name["export (HF)"]["size_bytes"]
    assert by_name["recovered"]["speed_reference"] == "teacher"
    if llama_cpp_available():  # the GGUF file is timed by llama.cpp itself, against the teacher's GGUF
        assert gguf["runtime"] == "llama.cpp" and gguf["decode_tokens_per_s"] > 0
        assert gguf["speed_reference"] == "teacher (GGUF q8_0)"
    else:
        assert gguf["runtime"].startswith("none") and gguf["decode_tokens_per_s"] is None
    assert gguf["kl"] < 0.05  # q8_0 weights stay close to the recovered model
    assert by_name["export (HF)"]["perplexity"] == pytest.approx(by_name["recovered"]["perplexity"], rel=1e-4)
    assert set(report["generations"]) == {n for n, m in by_name.items() if m["decode_tokens_per_s"]}
    assert (out / "report.png").stat().st_size > 0 and "## Generations" in (out / "report.md").read_text()


def test_exported_folder_generates_like_the_recovered_model_without_compress(run):
    out, _ = run
    folder = out / "export" / "hf"
    assert {"generation_config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in folder.iterdir()
    }
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template  # carried over from the teacher's tokenizer
    model = AutoModelForCausalLM.from_pretrained(out / "stages" / "recovered" / "model")
    expected = model.generate(**tokenizer(PROMPT, return_tensors="pt"), max_new_tokens=12, do_sample=False)
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run(
        [sys.executable, "-c", GENERATE, str(folder), PROMPT],
        capture_output=True, text=True, check=True, env=env, cwd=out,
    )  # fmt: skip
    reply = json.loads(done.stdout.strip().splitlines()[-1])
    assert reply["ids"] == expected[0].tolist() and not reply["compress"]


def test_gguf_files_load_with_transformers(run):
    out, _ = run
    folder = out / "export" / "gguf"
    assert {p.name for p in folder.glob("*.gguf")} == {"model-f16.gguf", "model-q8_0.gguf"}
    reference = AutoModelForCausalLM.from_pretrained(out / "export" / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file="model-f16.gguf")
    assert loaded.config.num_hidden_layers == reference.config.num_hidden_layers == 3
    ids = torch.randint(0, reference.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        diff = (loaded(input_ids=ids).logits - reference(input_ids=ids).logits).abs().max()
    assert diff < 0.05


def test_rerun_reuses_and_a_changed_export_reruns_export_and_report(run, tmp_path):
    out, _ = run
    assert all(r["reused"] for r in run_pipeline(TINY, out))
    changed = yaml.safe_load(TINY.read_text())
    changed["stages"]["export"]["export"]["gguf_types"] = ["q8_0"]
    changed["stages"]["report"]["report"]["models"].pop("export (HF)")
    config = tmp_path / "llm_tiny.yaml"
    config.write_text(yaml.safe_dump(changed, sort_keys=False))
    rerun = {r["stage"]: r["reused"] for r in run_pipeline(config, out)}
    unchanged = {"teacher": True, "pruned": True, "recovered": True, "teacher_export": True}
    assert rerun == {**unchanged, "export": False, "report": False}
    assert (out / "teacher_export" / "gguf" / "model-q8_0.gguf").is_file()
    assert {p.name for p in (out / "export" / "gguf").glob("*.gguf")} == {"model-q8_0.gguf"}


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c["stages"]["pruned"]["prune"].update(ffn_ratoi=0.5), r"stages.pruned.prune: a mapping"),
        (
            lambda c: c["stages"]["pruned"]["prune"].update(ffn_ratio="half"),
            "ffn_ratio: 'half' must be a number",
        ),
        (lambda c: c["stages"]["pruned"]["prune"].pop("model"), "stages.pruned.prune.model: missing"),
        (lambda c: c.update(data={"source": "bbc_news"}), "stages.pruned.prune needs the shared"),
    ],
)
def test_bad_settings_fail_before_anything_runs(edit, message, tmp_path):
    config = yaml.safe_load(TINY.read_text())
    edit(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ValueError, match=message):
        run_pipeline(path, tmp_path / "run")
    assert not (tmp_path / "run" / "stages" / "teacher").exists()
