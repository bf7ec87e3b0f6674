"""Shared fixtures: tiny random BERT models with the real (offline) MiniLM tokenizer, tiny data files."""

from __future__ import annotations

import csv
import os
import warnings

import pytest
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from compress.assets import resolve_model_source

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", ".*does not have many workers.*")

VOCAB = 30522  # the MiniLM / bert-base-uncased WordPiece vocabulary


def tiny_bert(num_labels: int = 2, layers: int = 4, seed: int = 0, dropout: float = 0.1):
    """A random 32-wide BERT classifier that accepts the MiniLM tokenizer's ids."""
    import torch

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config)


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    """Tiny models gain nothing from intra-op threads, and on a busy machine their spinning costs 10-100x.

    Slow tests on the real model keep torch's default.
    """
    import torch

    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quick_trainer(root=None, steps: int = 2, **overrides):
    """A short, quiet Trainer with one validation batch; it checkpoints into ``root`` when given."""
    from lightning.pytorch import Trainer

    settings = dict(
        max_steps=steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        enable_checkpointing=root is not None,
        default_root_dir=root,
    )
    return Trainer(**{**settings, **overrides})


@pytest.fixture(scope="session")
def tokenizer_dir() -> str:
    return resolve_model_source("minilm-l6")


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory, tokenizer_dir) -> str:
    """A saved tiny 4-layer 3-label classifier (as a fine-tuned teacher) with the real tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_teacher")
    tiny_bert(num_labels=3).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return str(folder)


DEMO_TEACHER = "runs/default/stages/teacher/model"  # where the docs' examples find the demo's teacher
PRUNED_RUN = "runs/pruned"  # and a StructuredPruning run: last.ckpt, and student/ (the model before pruning)


@pytest.fixture(scope="session")
def demo_folders(tmp_path_factory, tokenizer_dir, tiny_csv):
    """Folders the docs' examples name, on tiny random models so that they run in seconds: the demo's
    teacher (6 layers, 2 labels, the real tokenizer) and a run whose FFN channels StructuredPruning halved."""
    from compress.callbacks import StructuredPruning
    from compress.data import TextClassificationDataModule
    from compress.modules import TaskModule

    root = tmp_path_factory.mktemp("demo")
    tiny_bert(num_labels=2, layers=6).save_pretrained(root / DEMO_TEACHER)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(root / DEMO_TEACHER)
    student = root / PRUNED_RUN / "student"
    tiny_bert(num_labels=3, layers=2).save_pretrained(student)
    data = TextClassificationDataModule(
        tiny_csv, tokenizer_dir, text_column="review", label_column="sentiment", test_size=12, val_size=12
    )
    pruning = StructuredPruning(ffn_ratio=0.5, at_step=0)
    trainer = quick_trainer(root / PRUNED_RUN, steps=1, callbacks=[pruning], limit_val_batches=0)
    trainer.fit(TaskModule(str(student), num_labels=3), datamodule=data)
    trainer.save_checkpoint(root / PRUNED_RUN / "last.ckpt")
    return root


WORDS = {
    "positive": "great wonderful superb delightful brilliant moving",
    "negative": "awful boring dull terrible clumsy tedious",
    "neutral": "film movie scene actor plot story",
}


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> str:
    """60 rows, 3 classes (20 each), columns ``review`` and ``sentiment``."""
    path = tmp_path_factory.mktemp("data") / "reviews.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["review", "sentiment", "id"])
        for i in range(60):
            label = list(WORDS)[i % 3]
            words = WORDS[label].split()
            writer.writerow([" ".join(words[(i + k) % 6] for k in range(3 + i % 5)), label, i])
    return str(path)


@pytest.fixture
def tiny_data_kwargs(tiny_csv, tokenizer_dir) -> dict:
    """Settings of a small 3-class datamodule over ``tiny_csv``."""
    return dict(
        source=tiny_csv,
        tokenizer=tokenizer_dir,
        text_column="review",
        label_column="sentiment",
        test_size=12,
        val_size=12,
        batch_size=8,
        eval_batch_size=12,
        max_length=16,
        seed=0,
    )
