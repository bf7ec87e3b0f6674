"""Teacher-output cache: built once, keyed by teacher + data, refused on non-deterministic inputs."""

import json

import pytest
import torch
from lightning.pytorch import seed_everything
from transformers import AutoModelForSequenceClassification

from compress.data import TextClassificationDataModule
from compress.distill import KDLoss
from compress.distill.intermediate import IntermediateDistillation
from compress.distill.teacher_cache import CachedLogits, TeacherCache, write_cache
from compress.modules import DistillationModule
from compress.peft import StudentFromTeacher
from tests.conftest import quick_trainer


def _module(teacher, cache=None, seed=0):
    seed_everything(seed)
    return DistillationModule(teacher=teacher, student=StudentFromTeacher(layers=[0, 2]), teacher_cache=cache)


def _fit(module, data_kwargs, root, epochs=2):
    trainer = quick_trainer(root, steps=-1, max_epochs=epochs, enable_checkpointing=False)
    trainer.fit(module, datamodule=TextClassificationDataModule(**data_kwargs))
    return trainer


def _count_teacher_calls(module) -> list:
    calls = []
    module.teacher.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_top_k_keeps_the_k_largest_and_the_rest_of_the_mass_or_none(tmp_path):
    logits = torch.randn(6, 5) * 3
    write_cache(
        tmp_path / "c",
        [(torch.tensor([3, 1, 0]), logits[:3]), (torch.tensor([2, 4, 5]), logits[3:])],
        6,
        5,
        2,
    )
    want = logits[[2, 1, 3, 0, 4, 5]]
    top = want.topk(2, dim=-1)
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    dropped = CachedLogits(tmp_path / "c", tail="none").lookup(ids)
    assert torch.equal(dropped.gather(-1, top.indices), top.values)
    probs = dropped.softmax(-1)
    assert torch.allclose(probs.sum(-1), torch.ones(6)) and int((probs > 0).sum()) == 12
    uniform = CachedLogits(tmp_path / "c").lookup(ids).softmax(-1)  # the teacher's own top-2 probabilities
    teacher = want.softmax(-1)
    torch.testing.assert_close(uniform.gather(-1, top.indices), teacher.gather(-1, top.indices))
    rest = teacher.sum(-1) - teacher.gather(-1, top.indices).sum(-1)
    torch.testing.assert_close(uniform.sum(-1) - uniform.gather(-1, top.indices).sum(-1), rest)
    loss = KDLoss(alpha=0.0, temperature=4.0)
    assert torch.isfinite(loss(torch.randn(6, 5), dropped, None))


def test_per_token_rows_keep_their_tokens(tmp_path):
    logits = torch.randn(3, 4, 50)  # 3 rows of 4 tokens; the second batch is 2 tokens long (padded rows)
    batches = [(torch.tensor([2, 0]), logits[[2, 0]]), (torch.tensor([1]), logits[[1], :2])]
    write_cache(tmp_path / "c", batches, rows=3, classes=50, top_k=8, positions=4)
    cache = CachedLogits(tmp_path / "c")
    got = cache.lookup(torch.tensor([0, 2]), length=4)
    assert got.shape == (2, 4, 50)
    top = logits[[0, 2]].topk(8, dim=-1)
    torch.testing.assert_close(
        got.softmax(-1).gather(-1, top.indices), logits[[0, 2]].softmax(-1).gather(-1, top.indices)
    )
    assert cache.lookup(torch.tensor([1]), length=2).shape == (1, 2, 50)


def test_a_build_that_misses_rows_leaves_no_cache(tmp_path):
    with pytest.raises(ValueError, match="gave 2 of 3 training rows"):
        write_cache(tmp_path / "c", [(torch.tensor([0, 2]), torch.zeros(2, 2))], 3, 2, None)
    assert list(tmp_path.iterdir()) == []


def test_cached_training_matches_uncached_and_skips_the_teacher(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    plain = _module(tiny_teacher_dir)
    _fit(plain, tiny_data_kwargs, tmp_path / "plain")
    cached = _module(tiny_teacher_dir, TeacherCache(directory=str(tmp_path / "cache"), verify=False))
    calls = _count_teacher_calls(cached)
    _fit(cached, tiny_data_kwargs, tmp_path / "cached")
    (folder,) = (tmp_path / "cache").iterdir()
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["rows"] == 36 and meta["classes"] == 3
    # the build runs the teacher on 36 rows in batches of 12; training (2 epochs) never, validation once
    assert len(calls) == 3 + 1
    for name, weight in plain.student.state_dict().items():
        assert torch.allclose(weight, cached.student.state_dict()[name], atol=1e-5), name


def test_a_second_run_reuses_the_cache_and_checks_it_once_per_epoch(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    settings = TeacherCache(directory=str(tmp_path / "cache"))
    _fit(_module(tiny_teacher_dir, settings), tiny_data_kwargs, tmp_path / "a")
    again = _module(tiny_teacher_dir, settings)
    calls = _count_teacher_calls(again)
    _fit(again, tiny_data_kwargs, tmp_path / "b", epochs=3)
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert len(calls) == 3 + 1  # one check per epoch, one validation pass


def test_a_changed_teacher_or_data_gets_its_own_cache(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    settings = TeacherCache(directory=str(tmp_path / "cache"))
    _fit(_module(tiny_teacher_dir, settings), tiny_data_kwargs, tmp_path / "a", epochs=1)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    with torch.no_grad():
        teacher.classifier.bias[0] += 0.5
    _fit(_module(teacher, settings), tiny_data_kwargs, tmp_path / "b", epochs=1)
    _fit(_module(tiny_teacher_dir, settings), {**tiny_data_kwargs, "max_length": 8}, tmp_path / "c", epochs=1)
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_top_k_training_runs(tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    module = _module(tiny_teacher_dir, TeacherCache(directory=str(tmp_path / "cache"), top_k=2))
    trainer = _fit(module, tiny_data_kwargs, tmp_path / "a", epochs=1)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


class Augmenting(TextClassificationDataModule):
    """Swaps a random token of every row: the teacher's outputs change from pass to pass."""

    def train_dataloader(self):
        loader = super().train_dataloader()
        collate = loader.collate_fn

        def noisy(rows):
            batch = collate(rows)
            position = torch.randint(1, batch["input_ids"].shape[1], (1,))
            batch["input_ids"][:, position] = torch.randint(1000, 2000, (len(rows), 1))
            return batch

        loader.collate_fn = noisy
        return loader


def test_inputs_that_change_between_passes_are_caught_at_the_first_step(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    module = _module(tiny_teacher_dir, TeacherCache(directory=str(tmp_path / "cache")))
    trainer = quick_trainer(tmp_path, steps=3, enable_checkpointing=False)
    with pytest.raises(ValueError, match="model.teacher_cache: the cached teacher logits differ"):
        trainer.fit(module, datamodule=Augmenting(**tiny_data_kwargs))
    assert trainer.global_step == 0


def test_declared_non_deterministic_inputs_and_layer_matching_are_refused(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    data = TextClassificationDataModule(**tiny_data_kwargs)
    data.deterministic_inputs = False
    trainer = quick_trainer(tmp_path, steps=3, enable_checkpointing=False)
    with pytest.raises(ValueError, match="deterministic_inputs=False"):
        trainer.fit(
            _module(tiny_teacher_dir, TeacherCache(directory=str(tmp_path / "cache"))), datamodule=data
        )
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="model.teacher_cache: intermediate distillation"):
        DistillationModule(
            teacher=tiny_teacher_dir, intermediate=IntermediateDistillation(), teacher_cache=TeacherCache()
        )
    with pytest.raises(ValueError, match="teacher_cache.top_k"):
        TeacherCache(top_k=0)
