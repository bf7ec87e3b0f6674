"""Causal LMs in TaskModule and DistillationModule: the task follows from the model, the chunked loss equals
the whole-logits loss, padded vocabularies are aligned, and bad pairs are refused before the first step."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig
from torch.utils.data import DataLoader
from transformers import BertConfig, BertForSequenceClassification, LlamaForCausalLM, Qwen2Config

from compress.distill import KDLoss, TeacherCache
from compress.distill.causal_lm import NextTokens
from compress.modules import DistillationModule, TaskModule
from compress.peft import StudentFromTeacher
from tests.compress.modules.causal_lm_models import batches, first_step, tiny_llama
from tests.conftest import quick_trainer


def test_next_tokens_shift_and_masks():
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]),
        "labels": torch.tensor([[-100, -100, 7, 8], [9, 10, -100, -100]]),
    }
    tokens = NextTokens.of(batch)
    # row 0: positions 0..2 predict 6 (prompt: soft only), 7, 8; row 1: position 0 predicts 10
    assert tokens.valid.tolist() == [[True, True, True], [True, False, False]]
    assert tokens.labels.tolist() == [-100, 7, 8, 10]
    assert tokens.count == 4 and int(tokens.labelled) == 3


def test_the_chunked_loss_trains_as_the_whole_logits_loss():
    teacher = tiny_llama(seed=1)
    runs = [
        first_step(DistillationModule(teacher, StudentFromTeacher(layers=[0, 3]), logit_chunk_size=chunk))
        for chunk in (3, None)
    ]
    torch.testing.assert_close(runs[0].loss, runs[1].loss)
    assert runs[0].grads.keys() == runs[1].grads.keys() and runs[0].grads
    for name, grad in runs[0].grads.items():
        torch.testing.assert_close(grad, runs[1].grads[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("adapter", [None, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])])
def test_distillation_fits_and_validates(adapter):
    module = DistillationModule(tiny_llama(seed=1), StudentFromTeacher(num_hidden_layers=2), adapter=adapter)
    trainer = quick_trainer(steps=2, limit_val_batches=2)
    trainer.fit(module, batches(), batches())
    metrics = trainer.validate(module, batches(), verbose=False)[0]
    assert set(metrics) == {
        "val/loss",
        "val/perplexity",
        "val/teacher_perplexity",
        "val/kl",
        "val/top1_agreement",
    }
    assert metrics["val/perplexity"] == pytest.approx(
        torch.tensor(metrics["val/loss"]).exp().item(), rel=1e-4
    )
    assert metrics["val/kl"] >= 0 and 0 <= metrics["val/top1_agreement"] <= 1
    if adapter is not None:
        trainable = [n for n, p in module.student.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)


def test_task_module_trains_a_causal_lm_on_next_tokens():
    model = tiny_llama()
    batch = next(iter(batches()))  # rows without padding: transformers' own shifted loss applies
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
    module = TaskModule(model)
    torch.testing.assert_close(first_step(module, DataLoader([batch], batch_size=None)).loss, expected)
    metrics = quick_trainer().validate(module, batches(), verbose=False)[0]
    assert module.task == "causal_lm" and set(metrics) == {"val/loss", "val/perplexity"}


def test_padded_embeddings_are_compared_on_the_shared_vocabulary():
    teacher, student = tiny_llama(vocab=104, seed=1), tiny_llama(vocab=96, seed=2)
    module = DistillationModule(teacher, student, loss=KDLoss(alpha=0.0, temperature=1.0))
    assert module.vocab_size == 96
    batch = next(iter(batches()))
    tokens = NextTokens.of(batch)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        s, t = student(**inputs).logits, teacher(**inputs).logits[..., :96]
        expected = KDLoss(alpha=0.0, temperature=1.0)(tokens.select(s), tokens.select(t))
    torch.testing.assert_close(first_step(module, DataLoader([batch], batch_size=None)).loss, expected)


def test_student_from_a_llama_teacher_copies_its_layers():
    teacher = tiny_llama(seed=3).eval()
    whole = StudentFromTeacher(layers=[0, 1, 2, 3]).build(teacher).eval()
    ids = torch.randint(0, 96, (2, 8))
    torch.testing.assert_close(whole(input_ids=ids).logits, teacher(input_ids=ids).logits)
    student = StudentFromTeacher(layers=[0, 3]).build(teacher)
    assert isinstance(student, LlamaForCausalLM) and student.config.num_hidden_layers == 2
    torch.testing.assert_close(
        student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight
    )
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied


def test_student_keeps_the_per_layer_settings_of_its_layers():
    from transformers import Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, layer_types=["sliding_attention", "full_attention"] * 2,
        use_sliding_window=True,
    )  # fmt: skip
    student = StudentFromTeacher(layers=[1, 2]).build(Qwen2ForCausalLM(config))
    assert student.config.layer_types == ["full_attention", "sliding_attention"]


def test_a_classifier_student_for_a_causal_lm_teacher_is_refused():
    bert = BertForSequenceClassification(BertConfig(vocab_size=96, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32))  # fmt: skip
    with pytest.raises(ValueError, match="model.student: BertForSequenceClassification"):
        DistillationModule(tiny_llama(), bert)


def test_a_bad_chunk_size_is_refused():
    with pytest.raises(ValueError, match="model.logit_chunk_size"):
        DistillationModule(tiny_llama(), StudentFromTeacher(num_hidden_layers=1), logit_chunk_size=0)


def test_the_chunked_path_falls_back_when_the_head_has_an_adapter():
    lora = LoraConfig(r=2, target_modules=["lm_head", "q_proj"], init_lora_weights=False)
    module = DistillationModule(tiny_llama(seed=1), StudentFromTeacher(num_hidden_layers=2), adapter=lora)
    grads = first_step(module).grads  # the whole-logits path: the head's LoRA weights get gradients
    assert any("lm_head" in name and "lora_" in name for name in grads)


def test_loader_rows_of_unequal_length():
    rows = [{"input_ids": torch.arange(1, 7), "attention_mask": torch.ones(6, dtype=torch.long)}] * 4
    loader = DataLoader(rows, batch_size=2)
    module = DistillationModule(tiny_llama(seed=1), StudentFromTeacher(num_hidden_layers=1))
    quick_trainer(steps=1).fit(module, loader)  # no labels: the inputs are the next-token labels
    assert module.trainer.global_step == 1


@pytest.fixture(scope="module")
def lm_data():
    from compress.data import LanguageModelingDataModule

    return LanguageModelingDataModule(
        "bbc_news", "tiny-llama", block_size=32, max_train_documents=12, max_eval_documents=4, batch_size=4
    )


def test_a_causal_lm_student_learns_from_the_tiny_teacher_on_packed_text(lm_data):
    module = DistillationModule("tiny-llama", StudentFromTeacher(num_hidden_layers=2), learning_rate=1e-3)
    trainer = quick_trainer(steps=6, val_check_interval=6, limit_val_batches=2)
    before = quick_trainer().validate(module, datamodule=lm_data, verbose=False)[0]["val/kl"]
    trainer.fit(module, datamodule=lm_data)
    assert module.vocab_size == len(lm_data.tokenizer) == 1024
    assert trainer.callback_metrics["val/kl"] < before  # six steps bring the student closer


def test_a_classifier_on_language_modelling_data_is_refused(lm_data):
    bert = BertForSequenceClassification(BertConfig(vocab_size=1024, hidden_size=16, num_hidden_layers=1,
        num_attention_heads=2, intermediate_size=32))  # fmt: skip
    with pytest.raises(
        ValueError, match="model: BertForSequenceClassification is not a causal language model"
    ):
        quick_trainer().fit(TaskModule(bert, num_labels=2), datamodule=lm_data)


def test_a_causal_lm_on_classification_data_is_refused(tiny_csv):
    from compress.data import TextClassificationDataModule

    data = TextClassificationDataModule(
        tiny_csv, "tiny-llama", text_column="review", label_column="sentiment", test_size=6, val_size=6
    )
    with pytest.raises(ValueError, match="model: LlamaForCausalLM is a causal language model"):
        quick_trainer().fit(TaskModule("tiny-llama"), datamodule=data)


def test_a_block_size_beyond_the_model_context_is_refused():
    from compress.data import LanguageModelingDataModule

    data = LanguageModelingDataModule("bbc_news", "tiny-llama", block_size=600, max_train_documents=20)
    with pytest.raises(ValueError, match="data.block_size: 600 exceeds the 512 positions of model.student"):
        quick_trainer().fit(
            DistillationModule("tiny-llama", StudentFromTeacher(num_hidden_layers=1)), datamodule=data
        )


def test_a_student_with_another_tokenizer_is_refused(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    tiny_llama(vocab=30522).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp_path)  # MiniLM's WordPiece
    with pytest.raises(ValueError, match="model.student: its tokenizer .* differs from the teacher's"):
        DistillationModule("tiny-llama", str(tmp_path))


@pytest.mark.parametrize("top_k", [None, 32])
def test_the_teacher_cache_holds_per_token_logits(lm_data, tmp_path, top_k):
    losses = []
    for cache in (None, TeacherCache(directory=str(tmp_path), top_k=top_k)):
        module = DistillationModule(
            "tiny-llama", StudentFromTeacher(num_hidden_layers=2), teacher_cache=cache
        )
        losses.append(first_step(module, lm_data).loss)
    if top_k is None:
        torch.testing.assert_close(losses[0], losses[1])  # the cache gives the teacher's logits exactly
    else:  # the top 32 of 1,024 tokens with the rest of the mass spread evenly: close, not equal
        assert losses[0] != losses[1] and abs(losses[0] - losses[1]) < 0.05 * losses[0]
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["positions"] == 32 and meta["classes"] == 1024


def test_hidden_state_matching_trains_a_causal_lm_student():
    from compress.distill.intermediate import IntermediateDistillation

    module = DistillationModule(
        tiny_llama(seed=1), StudentFromTeacher(layers=[1, 3]), intermediate=IntermediateDistillation()
    )
    seen = first_step(module)  # the whole-logits path, with the matched layers' term added
    assert torch.isfinite(seen.loss) and seen.grads
    assert set(module.trainer.callback_metrics) >= {"train/hidden", "train/soft", "train/hard"}


def test_a_run_resumed_mid_epoch_ends_like_an_uninterrupted_one(tmp_path):
    from lightning.pytorch import Callback, seed_everything
    from lightning.pytorch.callbacks import ModelCheckpoint

    from compress.data import LanguageModelingDataModule

    class StopAt(Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = trainer.global_step >= 3

    def run(root, ckpt_path=None, callbacks=()):
        seed_everything(3)
        data = LanguageModelingDataModule(
            "bbc_news", "tiny-llama", block_size=32, max_train_documents=4, max_eval_documents=2, batch_size=4
        )
        module = DistillationModule("tiny-llama", StudentFromTeacher(num_hidden_layers=2), warmup_ratio=0.3)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0, every_n_train_steps=1)
        trainer = quick_trainer(root, steps=6, callbacks=[checkpoint, *callbacks], limit_val_batches=0)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module

    straight = run(tmp_path / "a")
    assert run(tmp_path / "b", callbacks=[StopAt()]).trainer.global_step == 3  # mid-epoch, checkpointed
    seed_everything(99)  # the resumed run must not depend on the process's RNG at resume time
    resumed = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert resumed.trainer.global_step == 6
    for name, weight in straight.student.state_dict().items():
        assert torch.equal(weight, resumed.student.state_dict()[name]), name
