import csv
import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForSequenceClassification

from compress.commands.multitask import adapt_to_tasks
from compress.peft.multitask import MultiTaskAdapters
from tests.conftest import tiny_bert

LORA = LoraConfig(r=4, target_modules=["query", "value"])


def randomize_adapters(model) -> None:
    """Fresh LoRA B matrices are zero; give every adapter and head a distinct, non-trivial value."""
    for name, parameter in model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            parameter.data.normal_()


def test_tasks_switch_adapters_and_heads_and_round_trip(tmp_path):
    base = tiny_bert(num_labels=2, layers=2)
    base.save_pretrained(tmp_path / "base")
    tasks = MultiTaskAdapters(base, LORA)
    tasks.add_task("sentiment", ["neg", "pos"])
    model = tasks.add_task("topics", list("abcde"))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".topics." in n for n in trainable)  # only the active task trains
    randomize_adapters(model)
    model.eval()
    ids = torch.randint(0, 1000, (3, 7))
    logits = {name: tasks.use(name)(input_ids=ids).logits for name in ("sentiment", "topics")}
    assert logits["sentiment"].shape == (3, 2) and logits["topics"].shape == (3, 5)
    assert tasks.use("sentiment").config.id2label == {0: "neg", 1: "pos"}
    for name in logits:
        tasks.save_task(name, tmp_path / "adapters" / name)
    assert sorted(p.name for p in (tmp_path / "adapters").iterdir()) == [
        "sentiment",
        "topics",
    ]  # no leftovers

    reloaded = MultiTaskAdapters.from_folders(
        tmp_path / "base", {n: tmp_path / "adapters" / n for n in logits}
    )
    reloaded.model.eval()
    for name, expected in logits.items():
        assert torch.allclose(reloaded.use(name)(input_ids=ids).logits, expected, atol=1e-6)

    plain_base = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "base", num_labels=5, ignore_mismatched_sizes=True
    )
    plain = PeftModel.from_pretrained(plain_base, tmp_path / "adapters" / "topics").eval()
    assert torch.allclose(plain(input_ids=ids).logits, logits["topics"], atol=1e-6)


def test_task_errors(tmp_path):
    tasks = MultiTaskAdapters(tiny_bert(), LORA)
    tasks.add_task("a", ["x", "y"])
    with pytest.raises(ValueError, match="task 'a' exists already"):
        tasks.add_task("a", ["x", "y"])
    with pytest.raises(ValueError, match="unknown task 'b'"):
        tasks.use("b")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match="exists"):
        tasks.save_task("a", tmp_path / "taken")


def test_adapt_to_tasks_trains_saves_and_refuses_to_overwrite(tiny_csv, tokenizer_dir, tmp_path):
    base_dir = tmp_path / "student"
    tiny_bert(num_labels=2, layers=2).save_pretrained(base_dir)
    binary = tmp_path / "binary.csv"
    with open(binary, "w", newline="") as f:
        csv.writer(f).writerows(
            [["review", "sentiment"]]
            + [[f"great film {i}" if i % 2 else f"dull {i}", i % 2] for i in range(40)]
        )
    shared = dict(
        tokenizer=tokenizer_dir,
        text_column="review",
        label_column="sentiment",
        test_size=8,
        val_size=8,
        batch_size=8,
        max_length=16,
    )
    tasks = {"three_way": {"source": tiny_csv, **shared}, "binary": {"source": str(binary), **shared}}
    kwargs = dict(
        base=str(base_dir),
        tasks=tasks,
        adapter=LORA,
        output=str(tmp_path / "out"),
        max_steps=2,
        trainer={"logger": False, "enable_progress_bar": False, "limit_val_batches": 1},
    )
    results = adapt_to_tasks(**kwargs)
    assert [(r["task"], r["labels"]) for r in results] == [("three_way", 3), ("binary", 2)]
    assert all(0 <= r["test_acc"] <= 1 and r["trainable"] < 0.05 * 1e6 for r in results)
    out = tmp_path / "out"
    assert (out / "base" / "config.json").is_file() and (out / "base" / "tokenizer.json").is_file()
    assert json.loads((out / "adapters" / "three_way" / "labels.json").read_text()) == [
        "negative",
        "neutral",
        "positive",
    ]
    with pytest.raises(ValueError, match="overwrite=True"):
        adapt_to_tasks(**kwargs)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = {
        **kwargs,
        "overwrite": True,
        "tasks": {"broken": {"source": str(binary), **shared, "text_column": "x"}},
    }
    with pytest.raises(ValueError, match="data.text_column"):
        adapt_to_tasks(**bad)
    typo = {
        **kwargs,
        "overwrite": True,
        "tasks": {**kwargs["tasks"], "binary": {**tasks["binary"], "max_lenght": 8}},
    }
    with pytest.raises(ValueError, match=r"tasks.binary: .*max_lenght"):
        adapt_to_tasks(**typo)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before, "refused: output kept"


def test_multitask_config_parses(capsys):
    from compress.commands import main

    with pytest.raises(SystemExit) as exit_info:
        main(["multitask", "--config", "configs/multitask/three_tasks.yaml", "--print_config"])
    assert exit_info.value.code == 0
    assert "bbc_news" in capsys.readouterr().out
