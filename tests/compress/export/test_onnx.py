"""ONNX export: dynamic axes checked with onnxruntime, head-pruned BERT, int8 copy."""

import pytest
import torch
from transformers import AutoTokenizer

from compress.export import export_onnx
from compress.export.onnx import INT8_FILE, ONNX_FILE, onnx_session, run_onnx
from compress.export.prepare import logits_of
from tests.conftest import tiny_bert


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_dir):
    """One tiny BERT exported once (with its int8 copy): exports cost a few seconds each."""
    model = tiny_bert(layers=2)
    folder = tmp_path_factory.mktemp("onnx") / "onnx"
    result = export_onnx(model, AutoTokenizer.from_pretrained(tokenizer_dir), folder, int8=True)
    return model, result


def random_batch(batch: int, length: int, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 30522, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, length // 2 :] = 0  # padding in the first row
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_round_trip_with_other_batch_and_sequence_sizes(exported):
    model, result = exported
    assert result.max_abs_diff <= 1e-4
    session = onnx_session(result.path / ONNX_FILE)
    assert [tuple(i.shape) for i in session.get_inputs()] == [("batch", "sequence")] * 3
    for batch, length in [(1, 5), (7, 40)]:  # export example was 2 x 16, its check 3 x 24
        inputs = random_batch(batch, length)
        diff = (logits_of(model, inputs) - torch.from_numpy(run_onnx(session, inputs))).abs().max()
        assert diff <= 1e-4
    assert (result.path / "tokenizer.json").is_file()


def test_int8_copy_is_smaller_and_close(exported):
    _, result = exported
    extras = result.extras
    assert (result.path / INT8_FILE).stat().st_size == extras["onnx_int8_bytes"]
    assert extras["onnx_int8_size_ratio"] < 0.3  # embeddings and Linear weights at one byte each
    assert 0 < extras["onnx_int8_max_abs_diff"] < 0.05


def keep_heads(attention, heads: list[int]) -> None:
    """Removes attention heads by hand, as structured pruning does: q/k/v rows and output columns."""
    self_attention, size = attention.self, attention.self.attention_head_size
    kept = torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads])
    for name in ("query", "key", "value"):
        old = getattr(self_attention, name)
        new = torch.nn.Linear(old.in_features, len(kept))
        new.weight.data, new.bias.data = old.weight.data[kept].clone(), old.bias.data[kept].clone()
        setattr(self_attention, name, new)
    old = attention.output.dense
    new = torch.nn.Linear(len(kept), old.out_features)
    new.weight.data, new.bias.data = old.weight.data[:, kept].clone(), old.bias.data.clone()
    attention.output.dense = new
    self_attention.num_attention_heads = len(heads)
    self_attention.all_head_size = len(kept)


def test_head_pruned_bert_exports_without_a_matching_config(tmp_path):
    model = tiny_bert(layers=2, dropout=0.0)
    keep_heads(model.bert.encoder.layer[0].attention, [1])  # layer 0: 1 head, layer 1: 2 heads
    assert model.config.num_attention_heads == 2  # the config no longer describes the model
    example = {name: t for name, t in random_batch(2, 12).items() if name != "token_type_ids"}
    result = export_onnx(model, example, tmp_path / "onnx")
    assert result.max_abs_diff <= 1e-4
    inputs = {name: t for name, t in random_batch(5, 33).items() if name != "token_type_ids"}
    assert torch.allclose(
        torch.from_numpy(run_onnx(result.path / ONNX_FILE, inputs)), logits_of(model, inputs), atol=1e-4
    )
    assert [i.name for i in onnx_session(result.path / ONNX_FILE).get_inputs()] == [
        "input_ids",
        "attention_mask",
    ]


def test_bad_examples_and_existing_folders_are_refused(tmp_path):
    model = tiny_bert(layers=1)
    with pytest.raises(ValueError, match="both >= 2"):
        export_onnx(model, {"input_ids": torch.ones(1, 8, dtype=torch.long)}, tmp_path / "onnx")
    with pytest.raises(ValueError, match="unexpected"):
        export_onnx(model, {"input_ids": torch.ones(2, 8, dtype=torch.long), "pixels": None}, tmp_path / "o")
    (tmp_path / "onnx").mkdir()
    with pytest.raises(ValueError, match="overwrite=True"):
        export_onnx(model, random_batch(2, 8), tmp_path / "onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["onnx"]
