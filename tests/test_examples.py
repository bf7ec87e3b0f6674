"""The examples/ scripts, run on tiny models and data: what they print is what they claim."""

from __future__ import annotations

import pytest

from examples import distill_your_classifier


def test_your_classifier_distilled_and_pruned_in_one_run(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path, capsys
):
    result = distill_your_classifier.run(
        tmp_path / "run", base=tiny_teacher_dir, data_settings=tiny_data_kwargs, teacher_steps=3,
        student_steps=6, student_layers=(0, 3), quiet=True,
    )  # fmt: skip
    assert result["teacher_tensors_in_checkpoint"] == 0 and result["student_tensors_in_checkpoint"] > 0
    assert result["student_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert result["pruned_layers"] == 2 * 6 + 1  # q, k, v, attention out, intermediate, output; pooler
    assert 0.0 <= result["student_accuracy"] <= 1.0 and "student_sparsity=0.5" in capsys.readouterr().out
    with pytest.raises(ValueError, match="output: .* exists and is not empty"):
        distill_your_classifier.run(tmp_path / "run", base=tiny_teacher_dir, data_settings=tiny_data_kwargs)


def test_your_cnn_pruned_three_ways_on_real_digits():
    from examples import prune_your_cnn

    results = prune_your_cnn.run(steps=12, quiet=True)
    dense, magnitude = results["dense"], results["magnitude 80%"]
    assert magnitude["zeros"] > 0.75 and dense["zeros"] == 0.0  # out (640 of 16,064 weights) stays dense
    assert results["L1 proximal"]["zeros"] > 0.0
    assert results["structured 50%"]["parameters"] < 0.4 * dense["parameters"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in results.values())
