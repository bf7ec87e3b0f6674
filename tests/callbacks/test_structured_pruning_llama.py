"""`StructuredPruning` on Llama-family causal LMs: key/value groups (or query heads within them) and FFN
channels removed in rounds while training goes on, the teacher untouched, a stock reload, exact resume and
the refusals, on a tiny random Llama (6 query heads in 3 groups of 2, 64 FFN channels, 2 layers)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from peft import LoraConfig
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from compress.callbacks.structured_pruning import StructuredPruning, load_pruned_checkpoint
from compress.distill import KDLoss
from compress.modules import DistillationModule, TaskModule
from compress.sparsity.llm.importance import llm_importance
from compress.sparsity.structured import find_prunable_model
from tests.callbacks.test_structured_pruning import student as tiny_bert_classifier
from tests.compress.modules.causal_lm_models import batches
from tests.compress.modules.test_distillation import StopAfterEpochs


def llama(seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    shape = dict(
        vocab_size=96, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
        num_key_value_heads=3, head_dim=8, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(LlamaConfig(**{**shape, **overrides}))


def distillation(seed: int = 0) -> DistillationModule:
    return DistillationModule(
        llama(seed=1), llama(seed), KDLoss(alpha=0.0, temperature=1.0), learning_rate=1e-2, warmup_ratio=0.2
    )


def fit(module, callbacks, loader=None, root=None, ckpt_path=None, **kwargs) -> Trainer:
    settings = dict(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=root,
    )
    trainer = Trainer(**{**settings, **kwargs}, callbacks=callbacks)
    trainer.fit(module, loader or batches(rows=16), ckpt_path=ckpt_path)
    return trainer


def shape_of(model: LlamaForCausalLM) -> dict:
    """Config widths, checked against every layer's projections."""
    config = model.config
    heads, kv, width, dim = (
        config.num_attention_heads, config.num_key_value_heads, config.intermediate_size, config.head_dim
    )  # fmt: skip
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        assert attention.q_proj.weight.shape == (heads * dim, 48)
        assert attention.o_proj.weight.shape == (48, heads * dim)
        assert attention.k_proj.weight.shape == attention.v_proj.weight.shape == (kv * dim, 48)
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (width, 48)
        assert mlp.down_proj.weight.shape == (48, width)
    return {"heads": heads, "kv_heads": kv, "channels": width}


class Recorder(Callback):
    """Per training batch, after any pruning: the student's shape, whether the optimizer holds exactly its
    trainable parameters, its training flag and weights; after the step, whether the loss was finite."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        model = find_prunable_model(pl_module)
        held = [id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]]
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        self.rows.append(
            {
                **shape_of(model),
                "optimizer_holds_model": len(held) == len(set(held)) and set(held) == trainable,
                "training": model.training,
                "weights": {k: v.clone() for k, v in model.state_dict().items()},
            }
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


class BeforePruning(Callback):
    """Placed before StructuredPruning: keeps a copy of the student and the batch at ``step``."""

    def __init__(self, step: int) -> None:
        self.step, self.model, self.batch = step, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.model, self.batch = copy.deepcopy(find_prunable_model(pl_module)), batch


def test_one_round_removes_a_group_and_half_the_channels_and_training_goes_on():
    module = distillation()
    teacher = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    recorder = Recorder()
    pruning = StructuredPruning(head_ratio=1 / 3, ffn_ratio=0.5, at_step=2)
    fit(module, [pruning, recorder], max_steps=4)
    dense, pruned = {"heads": 6, "kv_heads": 3, "channels": 64}, {"heads": 4, "kv_heads": 2, "channels": 32}
    assert [{k: r[k] for k in dense} for r in recorder.rows] == [dense] * 2 + [pruned] * 2
    assert all(r["optimizer_holds_model"] and r["training"] for r in recorder.rows)
    assert all(torch.isfinite(torch.tensor(recorder.losses))) and len(recorder.losses) == 4
    after_round, final = recorder.rows[2]["weights"], module.student.state_dict()
    assert not torch.equal(
        after_round["model.layers.0.self_attn.k_proj.weight"], final["model.layers.0.self_attn.k_proj.weight"]
    )
    (entry,) = pruning.history
    assert entry["head_unit"] == "groups"
    assert all(h[0] % 2 == 0 and h == [h[0], h[0] + 1] for h in entry["heads"])  # a group's two queries
    assert module.teacher.config.num_key_value_heads == 3 and module.teacher.config.intermediate_size == 64
    assert all(torch.equal(v, module.teacher.state_dict()[k]) for k, v in teacher.items())


@pytest.mark.parametrize("head_unit", ["groups", "heads"])
def test_the_least_active_units_go(head_unit):
    module, before = distillation(), BeforePruning(step=1)
    pruning = StructuredPruning(head_ratio=0.5, ffn_ratio=0.25, at_step=1, head_unit=head_unit)
    fit(module, [before, pruning], max_steps=2)
    inputs = {k: before.batch[k] for k in ("input_ids", "attention_mask")}
    scores = llm_importance(before.model, [inputs])
    (entry,) = pruning.history
    for layer in range(2):
        if head_unit == "groups":  # one of three groups: the one whose query heads sum lowest
            group = int(scores.groups(layer, 3).argmin())
            assert entry["heads"][layer] == [2 * group, 2 * group + 1]
        else:  # one query head in every group of two: the lower-scoring one
            assert entry["heads"][layer] == [
                2 * g + int(scores.heads[layer][2 * g : 2 * g + 2].argmin()) for g in range(3)
            ]
        assert entry["channels"][layer] == sorted(scores.ffn[layer].argsort()[:16].tolist())


@pytest.mark.parametrize(
    "head_unit, head_ratio, heads, kv_heads",
    [
        ("groups", 2 / 3, [6, 6, 4, 2, 2], [3, 3, 2, 1, 1]),  # cumulative floor(2k/3) groups of 3
        ("heads", 0.5, [6, 6, 6, 3, 3], [3] * 5),  # floor(k/3) of the 2 query heads of every group
    ],
)
def test_rounds_reach_the_targets_at_the_last_step(head_unit, head_ratio, heads, kv_heads, tmp_path):
    module, recorder = TaskModule(llama(), learning_rate=1e-3), Recorder()
    pruning = StructuredPruning(
        head_ratio=head_ratio, ffn_ratio=0.75, start_step=1, end_step=3, num_steps=3, head_unit=head_unit
    )
    fit(module, [pruning, recorder], max_steps=5)
    assert pruning.steps == [1, 2, 3] and pruning.rounds_done == 3
    assert [r["heads"] for r in recorder.rows] == heads and [r["kv_heads"] for r in recorder.rows] == kv_heads
    assert [r["channels"] for r in recorder.rows] == [64, 48, 32, 16, 16]
    assert all(r["optimizer_holds_model"] for r in recorder.rows)
    assert all(torch.isfinite(torch.tensor(recorder.losses)))
    state = pruning.state_dict()
    assert json.loads(json.dumps(state)) == state and len(state["history"]) == 3
    torch.save(state, tmp_path / "state.pt")
    assert torch.load(tmp_path / "state.pt", weights_only=True) == state
    assert find_prunable_model(module).structured_pruning_history == pruning.history  # the model's own record


@pytest.mark.parametrize("head_unit", ["groups", "heads"])
def test_the_pruned_student_reloads_as_a_stock_model(head_unit, tmp_path):
    module = TaskModule(llama(), learning_rate=1e-3)
    fit(
        module,
        [StructuredPruning(head_ratio=0.5, ffn_ratio=0.5, at_step=1, head_unit=head_unit)],
        max_steps=2,
    )
    module.model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is LlamaForCausalLM and reloaded.config.intermediate_size == 32
    ids = torch.randint(0, 96, (3, 10), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits, rtol=0, atol=1e-6
        )


@pytest.mark.parametrize("head_unit", ["groups", "heads"])
def test_resume_between_rounds_matches_an_uninterrupted_run(head_unit, tmp_path):
    def run(root, ckpt_path=None, callbacks=()):
        seed_everything(7)
        module = distillation()
        pruning = StructuredPruning(head_ratio=0.5, ffn_ratio=0.5, steps=[1, 4, 7], head_unit=head_unit)
        checkpoint = ModelCheckpoint(dirpath=root, save_last=True, save_top_k=0)
        trainer = fit(
            module,
            [pruning, checkpoint, *callbacks],
            batches(rows=12),  # 3 steps per epoch
            root,
            ckpt_path,
            max_epochs=4,
            enable_checkpointing=True,
        )
        return module, pruning, trainer

    straight, straight_pruning, _ = run(tmp_path / "a")
    _, stopped, stopped_trainer = run(tmp_path / "b", callbacks=[StopAfterEpochs(2)])
    assert stopped_trainer.global_step == 6 and stopped.rounds_done == 2  # the third round comes after resume
    seed_everything(123)  # the resumed run must not depend on the process's RNG at resume time
    resumed, resumed_pruning, trainer = run(tmp_path / "b", ckpt_path=str(tmp_path / "b" / "last.ckpt"))
    assert trainer.global_step == 12 and resumed_pruning.history == straight_pruning.history
    assert resumed.student.config.num_attention_heads == straight.student.config.num_attention_heads < 6
    expected = straight.student.state_dict()
    assert resumed.student.state_dict().keys() == expected.keys()
    for key, value in resumed.student.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_a_checkpoint_loads_into_a_fresh_llama(tmp_path):
    module = TaskModule(llama(), learning_rate=1e-3)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True, save_top_k=0)
    pruning = StructuredPruning(head_ratio=0.5, ffn_ratio=0.25, at_step=1)
    fit(module, [pruning, checkpoint], max_steps=2, enable_checkpointing=True)
    loaded = load_pruned_checkpoint(TaskModule, str(tmp_path / "last.ckpt"), model=llama(seed=3))
    assert loaded.model.config.num_key_value_heads == 2 and loaded.model.config.intermediate_size == 48
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


LORA = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])


@pytest.mark.parametrize(
    "module, pruning, message",
    [
        (
            lambda: TaskModule(llama()),
            StructuredPruning(head_ratio=0.5, uniform_per_layer=False),
            r"StructuredPruning.uniform_per_layer: False gives layers different widths, which a stock "
            r"Llama-family config",
        ),
        (
            lambda: TaskModule(llama()),
            StructuredPruning(head_ratio=0.5, importance="magnitude"),
            r"StructuredPruning.importance: 'magnitude' ranks BERT-style encoders .* "
            r"use importance='activation'",
        ),
        (
            lambda: TaskModule(llama(), adapter=LORA),
            StructuredPruning(ffn_ratio=0.5),
            r"StructuredPruning.adapter: .* found the adapter layer .*q_proj.* prune first "
            r"\(compress.sparsity.prune_llm",
        ),
        (
            lambda: TaskModule(llama()),
            StructuredPruning(head_ratio=0.4, head_unit="heads"),
            r"head_ratio=0.4 and ffn_ratio=0.0 remove nothing from 3 key/value groups of 2 query heads and "
            r"64 FFN channels per layer",
        ),
        (
            lambda: TaskModule(llama(num_key_value_heads=6)),
            StructuredPruning(head_ratio=0.2, steps=[1, 2]),
            r"StructuredPruning.head_ratio/ffn_ratio: round 2/2 with head_unit='groups' would leave a "
            r"shape .* not a valid LlamaConfig",  # 5 heads of 6 and a hidden size of 48
        ),
        (
            lambda: TaskModule(tiny_bert_classifier()),
            StructuredPruning(head_ratio=0.5, head_unit="heads"),
            r"StructuredPruning.head_unit: 'heads' \(query heads within key/value groups\) is for "
            r"Llama-family",
        ),
        (
            lambda: TaskModule(tiny_bert_classifier()),
            StructuredPruning(head_ratio=0.5, importance="activation"),
            r"StructuredPruning.importance: 'activation' ranks Llama-family decoders only",
        ),
    ],
    ids=["uniform", "importance", "lora", "nothing", "config", "bert-head-unit", "bert-importance"],
)
def test_settings_that_do_not_apply_are_refused_before_training(module, pruning, message):
    recorder = Recorder()
    with pytest.raises(ValueError, match=message):
        fit(module(), [pruning, recorder], max_steps=2)
    assert recorder.rows == []


def test_a_bad_head_unit_is_refused_at_construction():
    with pytest.raises(
        ValueError, match=r"StructuredPruning.head_unit: 'kv' must be one of \('groups', 'heads'\)"
    ):
        StructuredPruning(head_ratio=0.5, head_unit="kv")


def test_a_model_pruned_before_is_not_counted_twice():
    module = TaskModule(llama(), learning_rate=1e-3)
    fit(module, [StructuredPruning(ffn_ratio=0.5, at_step=0)], max_steps=1)
    again = StructuredPruning(ffn_ratio=0.75, at_step=0)  # of the original 64 channels, not of the 32 left
    fit(module, [again], max_steps=1)
    assert module.model.config.intermediate_size == 16 and len(again.history) == 2
