"""LanguageModelingDataModule: packed blocks, chat rows with prompt masking, document splits, refusals."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import datasets
import pytest
import torch

from compress.data import EXAMPLE_ID, LanguageModelingDataModule
from compress.data.blocks import encode_chat, render_chats
from compress.data.document_splits import split_documents
from compress.data.tokenizer import load_tokenizer

SMALL = dict(source="bbc_news", block_size=64, max_train_documents=12, max_eval_documents=4)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("smollm2-135m", "data.tokenizer")


def make(tokenizer, **settings) -> LanguageModelingDataModule:
    """A data module that reuses the module's tokenizer instead of loading it again."""
    dm = LanguageModelingDataModule(**settings)
    dm.tokenizer = tokenizer
    return dm


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def chat(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


@pytest.fixture
def chats_file(tmp_path):
    rows = [
        {"messages": chat(f"What is {i} plus {i}?", f"It is {2 * i}." + " Yes." * (i % 3))} for i in range(20)
    ]
    return write_jsonl(tmp_path / "chats.jsonl", rows)


def test_blocks_are_the_split_tokens_with_eos_cut_into_whole_blocks(tokenizer):
    dm = make(tokenizer, **SMALL)
    dm.setup()
    documents = split_documents(dm.documents, dm.hparams)
    for name in ("train", "validation", "test"):
        tokens = [
            t
            for text in documents[name]["text"]
            for t in tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ]
        rows = dm.splits[name][:]
        blocks = rows["input_ids"]
        assert blocks.shape == (len(tokens) // 64, 64)
        assert blocks.flatten().tolist() == tokens[: blocks.numel()]
        assert torch.equal(rows["labels"], blocks)  # not shifted: the model shifts
        assert rows["attention_mask"].eq(1).all()
    assert dm.splits["train"][:][EXAMPLE_ID].tolist() == list(range(len(dm.splits["train"])))
    assert EXAMPLE_ID not in dm.splits["validation"].column_names


def test_module_attributes_and_batches(tokenizer):
    dm = make(tokenizer, **SMALL)
    assert (dm.task, dm.num_labels, dm.vocab_size, dm.deterministic_inputs) == (
        "causal_lm",
        None,
        49152,
        True,
    )
    assert dm.hparams.block_size == 64 and dm.teacher_tokenizer is None
    dm.setup()
    train = dm.splits["train"]
    dm.setup("validate")
    assert dm.splits["train"] is train  # setup is idempotent
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch) == ["attention_mask", "example_id", "input_ids", "labels"]
    assert batch["input_ids"].shape == (8, 64) and batch["input_ids"].dtype == torch.long
    assert sorted(next(iter(dm.val_dataloader()))) == ["attention_mask", "input_ids", "labels"]
    cached = [i for b in dm.cache_dataloader() for i in b[EXAMPLE_ID].tolist()]
    assert cached == list(range(len(train)))  # every training row once, in order


def test_splits_by_document_are_deterministic_and_disjoint(tokenizer):
    dm = make(tokenizer, **SMALL)
    docs = dm.documents.add_column("row", list(range(len(dm.documents))))
    h = SimpleNamespace(
        test_size=0.05, val_size=0.05, max_train_documents=None, max_eval_documents=None, seed=0
    )
    rows = {name: ds["row"] for name, ds in split_documents(docs, h).items()}
    assert [len(rows[s]) for s in ("train", "validation", "test")] == [2003, 111, 111]
    assert set().union(*map(set, rows.values())) == set(range(2225))  # a partition: no document twice
    again = {name: ds["row"] for name, ds in split_documents(docs, h).items()}
    other = {
        name: ds["row"]
        for name, ds in split_documents(docs, SimpleNamespace(**{**vars(h), "seed": 1})).items()
    }
    assert again == rows and other["test"] != rows["test"]
    same, reseeded = make(tokenizer, **SMALL), make(tokenizer, **SMALL, seed=1)
    assert same.train_fingerprint() == dm.train_fingerprint() != reseeded.train_fingerprint()


def test_split_sizes_are_fractions_of_all_documents_or_counts(tmp_path, tokenizer):
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document {i}"} for i in range(100)])
    h = SimpleNamespace(test_size=0.1, val_size=7, max_train_documents=None, max_eval_documents=3, seed=0)
    docs = make(tokenizer, source=source).documents
    assert {k: len(v) for k, v in split_documents(docs, h).items()} == {
        "train": 83,
        "validation": 3,
        "test": 3,
    }


def test_chat_rows_learn_only_the_assistant_answer(tokenizer, chats_file):
    dm = make(tokenizer, source=chats_file, messages_column="messages", test_size=2, val_size=2)
    dm.setup()
    documents = split_documents(dm.documents, dm.hparams)["train"]
    for row, messages in zip(dm.splits["train"], documents["messages"], strict=True):
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        assert tokenizer.decode(row["input_ids"]) == text
        learned = row["labels"][row["labels"] != -100]
        assert tokenizer.decode(learned) == messages[-1]["content"] + "<|im_end|>\n"
        assert torch.equal(learned, row["input_ids"][-len(learned) :])  # the answer ends the row


def test_prompt_response_columns_make_the_same_rows_as_messages(tmp_path, tokenizer, chats_file):
    pairs = [
        {"question": m[0]["content"], "answer": m[1]["content"]}
        for m in make(tokenizer, source=chats_file, messages_column="messages").documents["messages"]
    ]
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    from_pairs = make(
        tokenizer, source=source, prompt_column="question", response_column="answer", test_size=2, val_size=2
    )
    from_messages = make(tokenizer, source=chats_file, messages_column="messages", test_size=2, val_size=2)
    assert from_pairs.train_fingerprint() == from_messages.train_fingerprint()


def test_whole_conversations_are_learned_without_completion_only(tokenizer, chats_file):
    dm = make(
        tokenizer,
        source=chats_file,
        messages_column="messages",
        completion_only=False,
        test_size=2,
        val_size=2,
    )
    dm.setup()
    assert all(torch.equal(row["labels"], row["input_ids"]) for row in dm.splits["train"])


def test_padding_is_masked_and_never_learned(tokenizer, chats_file):
    dm = make(
        tokenizer, source=chats_file, messages_column="messages", test_size=4, val_size=4, eval_batch_size=4
    )
    batch = next(iter(dm.val_dataloader()))
    padded = batch["attention_mask"] == 0
    assert padded.any() and batch["labels"][padded].eq(-100).all()
    assert batch["input_ids"][padded].eq(tokenizer.pad_token_id).all()
    lengths = [len(dm.splits["validation"][i]["input_ids"]) for i in range(4)]
    assert batch["attention_mask"].sum(1).tolist() == lengths and batch["input_ids"].shape[1] == max(lengths)


def test_only_the_last_turn_of_a_long_conversation_is_learned(tokenizer):
    messages = chat("Name a colour.", "Blue.") + chat("Another one?", "Green, then.")
    row = encode_chat(messages, tokenizer, block_size=128, completion_only=True)
    learned = [t for t in row["labels"] if t != -100]
    assert tokenizer.decode(learned) == "Green, then.<|im_end|>\n"
    assert tokenizer.decode(row["input_ids"]) == tokenizer.apply_chat_template(messages, tokenize=False)


def test_conversations_are_cut_to_block_size_and_dropped_without_an_answer_token(tokenizer):
    chats = datasets.Dataset.from_dict(
        {"messages": [chat("short?", "yes " * 40)] * 3 + [chat("long " * 80, "no")]}
    )
    with pytest.warns(UserWarning, match="data.block_size: dropped 1 of 4 train conversations"):
        rows = render_chats(chats, tokenizer, block_size=48, completion_only=True, split="train")
    assert len(rows) == 3 and all(len(ids) == 48 for ids in rows["input_ids"])


def test_local_text_file_is_one_document_per_paragraph(tmp_path, tokenizer):
    path = tmp_path / "book.txt"
    path.write_text(
        "\n\n".join(f"Paragraph {i} starts here.\nIt goes on for a line." for i in range(10)) + "\n"
    )
    dm = make(tokenizer, source=str(path), block_size=8, test_size=2, val_size=2)
    assert dm.documents["text"][3] == "Paragraph 3 starts here.\nIt goes on for a line."
    dm.setup()
    assert len(dm.documents) == 10 and dm.splits["train"][:]["input_ids"].shape[1] == 8


def test_jsonl_text_column_and_empty_texts(tmp_path, tokenizer):
    rows = [{"body": f"text number {i}", "id": i} for i in range(10)] + [
        {"body": "  ", "id": 10},
        {"body": None, "id": 11},
    ]
    dm = make(
        tokenizer,
        source=write_jsonl(tmp_path / "docs.jsonl", rows),
        text_column="body",
        block_size=4,
        test_size=2,
        val_size=2,
    )
    assert len(dm.documents) == 10 and dm.documents.column_names == ["text"]
    with pytest.raises(ValueError, match=r"data.text_column: column 'text' not found .*\['body', 'id'\]"):
        _ = make(tokenizer, source=str(tmp_path / "docs.jsonl")).documents


def test_ddp_ranks_read_disjoint_slices(tokenizer, chats_file):
    dm = make(tokenizer, source=chats_file, messages_column="messages", test_size=2, val_size=2, batch_size=4)
    seen = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.train_dataloader()
        seen.append(list(loader.sampler))
    assert len(dm.splits["train"]) == 16
    assert set(seen[0]).isdisjoint(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(16))


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"block_size": 1}, "data.block_size"),
        ({"batch_size": 0}, "data.batch_size"),
        ({"eval_batch_size": 0}, "data.eval_batch_size"),
        ({"test_size": 0.0}, "data.test_size"),
        ({"val_size": 1.5}, "data.val_size"),
        ({"test_size": 0.6, "val_size": 0.5}, "data.test_size/val_size"),
        ({"max_train_documents": 0}, "data.max_train_documents"),
        ({"prompt_column": "q"}, "data.prompt_column/response_column"),
        ({"messages_column": "m", "prompt_column": "q", "response_column": "a"}, "data.messages_column"),
    ],
)
def test_bad_settings_are_refused_before_loading(settings, match):
    with pytest.raises(ValueError, match=match):
        LanguageModelingDataModule(**settings)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"test_size": 0.001}, "data.test_size: 0.001 of 20 documents is an empty split"),
        ({"test_size": 15, "val_size": 5}, "data.test_size/val_size"),
        ({"block_size": 10_000}, r"data.block_size: the \w+ split has \d+ tokens"),
    ],
)
def test_impossible_splits_are_refused(tmp_path, tokenizer, settings, match):
    source = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"document number {i}"} for i in range(20)])
    with pytest.raises(ValueError, match=match):
        make(tokenizer, source=source, **settings).setup()


@pytest.fixture
def chats(chats_file):
    return dict(source=chats_file, messages_column="messages", test_size=2, val_size=2)


def test_chats_without_any_answer_token_are_refused(tokenizer, chats):
    with pytest.raises(ValueError, match="data.block_size: no train conversation"):
        make(tokenizer, **chats, block_size=8).setup()


def test_chats_need_a_tokenizer_with_a_chat_template(chats):
    with pytest.raises(ValueError, match="data.tokenizer: the tokenizer has no chat template"):
        LanguageModelingDataModule(**chats, tokenizer="minilm-l6").setup()


def test_a_prompt_that_is_not_a_prefix_of_the_conversation_is_refused(tokenizer, chats):
    odd = copy.deepcopy(tokenizer)
    odd.chat_template = (  # renders turns as "[assistant] ..." but the generation prompt as "ASSISTANT>"
        "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
        "{% if add_generation_prompt %}ASSISTANT>{% endif %}"
    )
    with pytest.raises(ValueError, match="data.tokenizer: its chat template does not render the prompt"):
        make(odd, **chats).setup()


def test_completion_only_needs_an_assistant_turn_last(tmp_path, tokenizer, chats):
    questions = write_jsonl(tmp_path / "questions.jsonl", [{"messages": chat("q", "a")[:1]}] * 10)
    with pytest.raises(ValueError, match="data.completion_only: a conversation ends with a 'user' message"):
        make(tokenizer, **{**chats, "source": questions}).setup()


def test_bad_chat_columns_are_refused(tmp_path, tokenizer, chats):
    strings = write_jsonl(tmp_path / "strings.jsonl", [{"messages": "hello"}] * 10)
    with pytest.raises(ValueError, match="data.messages_column: column 'messages' .* holds 'hello'"):
        _ = make(tokenizer, **{**chats, "source": strings}).documents
    with pytest.raises(ValueError, match=r"data.prompt_column: column 'q' not found .*\['messages'\]"):
        _ = make(tokenizer, source=chats["source"], prompt_column="q", response_column="a").documents


def test_teacher_tokenizer_must_be_the_students(tokenizer):
    assert make(tokenizer, **SMALL, teacher_tokenizer="smollm2-135m").teacher_tokenizer is None
    dm = make(tokenizer, **SMALL, teacher_tokenizer="minilm-l6")
    with pytest.raises(
        ValueError, match="data.teacher_tokenizer: 'minilm-l6' differs from data.tokenizer 'smollm2-135m'"
    ):
        dm.setup()
