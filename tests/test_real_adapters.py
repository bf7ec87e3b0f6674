"""Adapters on the real MiniLM student and real data (slow: ~30 s)."""

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from peft import LoraConfig, PeftModel
from transformers import AutoModelForSequenceClassification

from compress.assets import resolve_model_source
from compress.data import TextClassificationDataModule
from compress.modules import TaskModule
from compress.peft import StudentFromTeacher

pytestmark = pytest.mark.slow


def test_lora_on_a_real_student_round_trips_through_plain_peft(tmp_path):
    seed_everything(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_source("minilm-l6"), num_labels=2
    )
    student = StudentFromTeacher(layers=[0, 2, 4]).build(teacher)
    student.save_pretrained(tmp_path / "base")
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"])
    module = TaskModule(student, adapter=lora, learning_rate=5e-4)
    trainable = sum(p.numel() for p in module.model.parameters() if p.requires_grad)
    assert trainable < 0.02 * sum(p.numel() for p in module.model.parameters())
    data = TextClassificationDataModule(
        "rotten_tomatoes", test_size=64, val_size=32, max_train_examples=96, max_length=32, batch_size=16
    )
    Trainer(
        max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=1
    ).fit(module, datamodule=data)
    module.model.save_pretrained(tmp_path / "lora")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "base")
    reloaded = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    batch = next(iter(data.test_dataloader()))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    module.model.eval()
    with torch.no_grad():
        assert torch.allclose(module.model(**inputs).logits, reloaded(**inputs).logits, atol=1e-5)
        merged = reloaded.merge_and_unload()
        assert torch.allclose(merged(**inputs).logits, module.model(**inputs).logits, atol=1e-4)
