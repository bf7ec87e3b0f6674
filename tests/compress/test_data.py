import collections

import pytest
import torch

from compress.data import UNLABELLED, EpochShuffle, TextClassificationDataModule, fingerprint_rows, split_rows
from compress.data.sources import load_source


def labels_of(ds) -> list[int]:
    return [int(x) for x in ds["labels"]]


def ids_of(ds) -> list[list[int]]:
    return [x.tolist() for x in ds["input_ids"]]


@pytest.mark.parametrize(
    ("source", "rows", "names"),
    [
        ("rotten_tomatoes", 12808, ["rotten", "fresh"]),
        ("bbc_news", 2225, ["business", "entertainment", "politics", "sports", "tech"]),
        ("tweets", 38158, ["negative", "neutral", "positive"]),
    ],
)
def test_builtin_sources_load_offline(source, rows, names):
    ds = load_source(source)
    assert len(ds) == rows
    assert ds.features["label"].names == names
    assert all(isinstance(t, str) and t.strip() for t in ds.select(range(50))["text"])


def test_rotten_tomatoes_class_balance():
    counts = collections.Counter(load_source("rotten_tomatoes")["label"])
    assert counts == {1: 7403, 0: 5405}  # fresh / rotten


def test_splits_are_deterministic_stratified_and_disjoint(tiny_data_kwargs):
    a = TextClassificationDataModule(**tiny_data_kwargs)
    b = TextClassificationDataModule(**tiny_data_kwargs)
    a.setup(), b.setup()
    assert [len(a.splits[s]) for s in ("train", "validation", "test")] == [36, 12, 12]
    for split in ("train", "validation", "test"):
        assert ids_of(a.splits[split]) == ids_of(b.splits[split])
    assert collections.Counter(labels_of(a.splits["test"])) == {0: 4, 1: 4, 2: 4}
    c = TextClassificationDataModule(**{**tiny_data_kwargs, "seed": 1})
    c.setup()
    assert ids_of(c.splits["test"]) != ids_of(a.splits["test"])


def test_splits_partition_the_rows(tiny_data_kwargs):
    dm = TextClassificationDataModule(**tiny_data_kwargs, transfer_fraction=0.25)
    raw = dm.raw.add_column("row", list(range(len(dm.raw))))
    splits = split_rows(raw, dm.hparams)
    ids = [set(splits[name]["row"]) for name in ("train", "validation", "test")]
    assert sum(map(len, ids)) == 60 and set.union(*ids) == set(range(60))


def test_transfer_set_hides_labels_and_keeps_labelled_rows(tiny_data_kwargs):
    with_transfer = TextClassificationDataModule(**tiny_data_kwargs, transfer_fraction=0.5)
    labelled_only = TextClassificationDataModule(
        **tiny_data_kwargs, transfer_fraction=0.5, include_transfer=False
    )
    with_transfer.setup(), labelled_only.setup()
    labels = labels_of(with_transfer.splits["train"])
    assert labels.count(UNLABELLED) == 18 and len(labels) == 36
    kept = labels_of(labelled_only.splits["train"])
    assert UNLABELLED not in kept and len(kept) == 18
    assert collections.Counter(kept) == {0: 6, 1: 6, 2: 6}  # stratified
    assert labels_of(with_transfer.splits["train"])[:18] == kept  # the same labelled rows


def test_limits_cap_each_split(tiny_data_kwargs):
    dm = TextClassificationDataModule(**{**tiny_data_kwargs, "max_train_examples": 9, "max_eval_examples": 6})
    dm.setup()
    assert [len(dm.splits[s]) for s in ("train", "validation", "test")] == [9, 6, 6]


def test_dynamic_padding_pads_to_longest_row_of_each_batch(tiny_data_kwargs):
    dm = TextClassificationDataModule(**tiny_data_kwargs)
    for batch in dm.train_dataloader():
        lengths = batch["attention_mask"].sum(1)
        assert batch["input_ids"].shape[1] == int(lengths.max()) <= 16
        assert batch["labels"].dtype == torch.long


def test_epoch_order_depends_only_on_seed_and_epoch(tiny_data_kwargs):
    sampler = TextClassificationDataModule(**tiny_data_kwargs).train_dataloader().sampler
    sampler.set_epoch(1)
    first = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) != first
    sampler.set_epoch(1)
    assert list(sampler) == first and sorted(first) == list(range(36))


def test_order_seed_changes_the_training_order_but_not_the_splits(tiny_data_kwargs):
    plain = TextClassificationDataModule(**tiny_data_kwargs)
    reordered = TextClassificationDataModule(**tiny_data_kwargs, order_seed=7)
    assert list(plain.train_dataloader().sampler) != list(reordered.train_dataloader().sampler)
    for split in ("train", "validation", "test"):
        rows = [dm.splits[split].with_format(None)["input_ids"] for dm in (plain, reordered)]
        assert rows[0] == rows[1]


def test_length_buckets_cut_padding_and_keep_every_row_once():
    lengths = [(7 * i) % 61 + 3 for i in range(403)]
    plain, bucketed = EpochShuffle(403, 0), EpochShuffle(403, 0, lengths, batch_size=8)

    def padded(order):
        return sum(
            max(lengths[i] for i in order[k : k + 8]) * len(order[k : k + 8]) for k in range(0, 403, 8)
        )

    order = list(bucketed)
    assert sorted(order) == list(range(403)) and order == list(bucketed)
    assert padded(order) < 0.7 * padded(list(plain))
    bucketed.set_epoch(1)
    epoch_1 = list(bucketed)
    assert epoch_1 != order
    bucketed.resume(1, 24)  # a run resumed after 3 batches of epoch 1 continues with its 4th, once
    assert list(bucketed) == epoch_1[24:]
    assert list(bucketed) == epoch_1


@pytest.mark.parametrize("bucketed", [False, True])
def test_ddp_ranks_share_each_global_batch_of_the_single_process_order(bucketed):
    lengths = [(7 * i) % 61 + 3 for i in range(203)] if bucketed else None
    single = list(EpochShuffle(203, 0, lengths, batch_size=8))
    ranks = [EpochShuffle(203, 0, lengths, batch_size=4, num_replicas=2, rank=r) for r in (0, 1)]
    halves = [list(r) for r in ranks]
    assert len(halves[0]) == len(halves[1]) == len(ranks[0]) == 104  # 26 steps; the last one padded
    together = [i for k in range(0, 104, 4) for half in halves for i in half[k : k + 4]]
    assert together[:203] == single and together[203:] == single[:5]
    ranks[1].resume(0, 8)  # rank 1 resumed after 2 of its batches continues with its 3rd
    assert list(ranks[1]) == halves[1][8:]


def test_training_rows_carry_their_position_and_a_content_fingerprint(tiny_data_kwargs):
    dm = TextClassificationDataModule(**tiny_data_kwargs)
    ids = torch.cat([b["example_id"] for b in dm.train_dataloader()])
    assert sorted(ids.tolist()) == list(range(36))
    same = TextClassificationDataModule(**tiny_data_kwargs).train_fingerprint()
    assert dm.train_fingerprint() == same == fingerprint_rows(dm.splits["train"])
    assert TextClassificationDataModule(**{**tiny_data_kwargs, "max_length": 8}).train_fingerprint() != same


def test_separate_teacher_tokenizer_adds_teacher_inputs(tiny_data_kwargs, tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "film", "great", "awful"]))
    BertTokenizerFast(vocab_file=str(vocab)).save_pretrained(tmp_path / "teacher_tok")
    dm = TextClassificationDataModule(**tiny_data_kwargs, teacher_tokenizer=str(tmp_path / "teacher_tok"))
    batch = next(iter(dm.train_dataloader()))
    assert {"teacher_input_ids", "teacher_attention_mask"} <= set(batch)
    assert int(batch["teacher_input_ids"].max()) < 8 < int(batch["input_ids"].max())


def test_same_teacher_tokenizer_is_shared(tiny_data_kwargs, tokenizer_dir):
    dm = TextClassificationDataModule(**tiny_data_kwargs, teacher_tokenizer=tokenizer_dir)
    assert dm.teacher_tokenizer is None
    assert "teacher_input_ids" not in next(iter(dm.train_dataloader()))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"source": "no_such_source_xyz"}, "data.source"),
        ({"source": "missing/file.csv"}, "data.source"),
        ({"text_column": "body"}, "data.text_column"),
        ({"label_column": "stars"}, "data.label_column"),
        ({"label_names": ["positive", "negative"]}, "data.label_column"),
        ({"test_size": 60}, "data.test_size"),
        ({"val_size": 1.5}, "data.val_size"),
        ({"transfer_fraction": 1.0}, "data.transfer_fraction"),
        ({"max_train_examples": 0}, "data.max_train_examples"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"tokenizer": "/no/such/tokenizer"}, "data.tokenizer"),
    ],
)
def test_bad_settings_name_the_field(tiny_data_kwargs, overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        dm = TextClassificationDataModule(**{**tiny_data_kwargs, **overrides})
        dm.setup()
        dm.tokenizer  # noqa: B018  (loading it is the check)


def test_integer_labels_with_names(tmp_path, tokenizer_dir):
    path = tmp_path / "ints.jsonl"
    path.write_text("\n".join(f'{{"text": "row {i}", "label": {i % 2}}}' for i in range(20)))
    ds = load_source(str(path), label_names=["neg", "pos"])
    assert ds.features["label"].names == ["neg", "pos"] and sorted(set(ds["label"])) == [0, 1]
    with pytest.raises(ValueError, match="outside the class set"):
        load_source(str(path), label_names=["only"])
