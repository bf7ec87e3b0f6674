"""A catalogue of bad inputs: each is refused before training starts, by the entry point a user hits.

Every case names the offending setting and says the fix (two fragments of the message are checked), and
leaves nothing behind: no run folder, no stage folder, no export, and every file that existed before
(inputs, an earlier run, an export folder, a checkpoint) is byte-identical afterwards.

- ``compress pipeline --config``: the pipeline YAML, the settings of its fit stages, the data files;
- ``Trainer.fit`` with our modules and datamodule: model pairs, data against models, ``ckpt_path``,
  ``compress.callbacks.ExportOnFitEnd``;
- ``compress export``: the export folder, the model it reads and the tokenizer it ships.
"""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from lightning.pytorch import LightningModule
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from compress.callbacks import (
    Distillation,
    ExportOnFitEnd,
    GradualUnfreezing,
    MagnitudePruning,
    StructuredPruning,
    distillation_loss,
)
from compress.commands import main
from compress.data import TextClassificationDataModule
from compress.distill.intermediate import IntermediateDistillation
from compress.modules import DistillationModule, TaskModule
from tests.compress.pipeline.test_pipeline import crash_in
from tests.conftest import quick_trainer, tiny_bert

DROP = object()  # as a changed value: delete the key


def snapshot(root: Path) -> dict | None:
    """Every file and folder under ``root`` with the file contents (None: ``root`` does not exist); a run
    folder's lock file, which names its last holder, is left out."""
    if not root.exists():
        return None
    files = [p for p in root.rglob("*") if p.name != ".compress-run.lock"]
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else "dir" for p in files}


def assert_says(message: str, field: str, fix: str) -> None:
    assert field in message, f"the error does not name {field!r}: {message}"
    assert fix in message, f"the error does not say the fix ({fix!r}): {message}"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_csv, tokenizer_dir) -> SimpleNamespace:
    """Files the cases read (and must leave as they are): data files, teachers, an export, a checkpoint."""
    root = tmp_path_factory.mktemp("inputs")
    rows = Path(tiny_csv).read_text().splitlines()
    (root / "two_classes.csv").write_text("\n".join(r for r in rows if ",neutral," not in r) + "\n")
    positive = [r for r in rows if ",positive," in r]
    (root / "one_class.csv").write_text("\n".join([rows[0], *positive, *positive]) + "\n")
    (root / "empty.csv").write_text("")
    (root / "blank_texts.csv").write_text(rows[0] + "\n" + "".join(f" ,positive,{i}\n" for i in range(60)))
    named = tiny_bert(num_labels=3)
    named.config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    named.config.label2id = {name: i for i, name in named.config.id2label.items()}
    named.save_pretrained(root / "named_teacher")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(root / "named_teacher")
    scores = "".join(
        f"{r.split(',')[0]},{(i * 37 % 100) / 100 + 0.005},{i}\n" for i, r in enumerate(rows[1:])
    )
    (root / "scores.csv").write_text(rows[0] + "\n" + scores)
    (root / "latin1.csv").write_bytes(
        (rows[0] + "\n" + "".join(f"café crème,positive,{i}\n" for i in range(60))).encode("latin-1")
    )
    named.save_pretrained(root / "damaged_model")
    weights = root / "damaged_model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    permuted_tokenizer(tokenizer_dir, root / "permuted_teacher")
    tiny_bert(num_labels=3).save_pretrained(root / "permuted_teacher")
    (root / "export").mkdir()
    (root / "export" / "config.json").write_text('{"from": "an earlier export"}')
    tiny_bert(num_labels=3, layers=1).save_pretrained(root / "bare_student")  # save_pretrained alone
    tiny_bert(num_labels=3, layers=1).save_pretrained(root / "made_up_tokenizer")
    AutoTokenizer.from_pretrained(root / "bare_student").save_pretrained(root / "made_up_tokenizer")
    small_vocabulary_bert().save_pretrained(root / "small_vocabulary")
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(root / "small_vocabulary")
    (root / "a_file").write_text("not a folder")
    data = dict(source=tiny_csv, tokenizer=tokenizer_dir, text_column="review", label_column="sentiment")
    run = tmp_path_factory.mktemp("two_layer_run")
    quick_trainer(root=str(run), steps=1).fit(
        TaskModule(tiny_bert(num_labels=3, layers=2)),
        datamodule=TextClassificationDataModule(**data, test_size=12, val_size=12, max_length=16),
    )
    shutil.copy(next(run.rglob("*.ckpt")), root / "two_layer.ckpt")
    return SimpleNamespace(root=root, named_teacher=str(root / "named_teacher"))


def permuted_tokenizer(source: str, folder: Path) -> None:
    """The tokenizer of ``source`` with the ids of "great" and "awful" swapped: same size, other ids."""
    AutoTokenizer.from_pretrained(source).save_pretrained(folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["great"], vocab["awful"] = vocab["awful"], vocab["great"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))


# --- compress pipeline --config ----------------------------------------------------------------------


def base_pipeline(teacher: str, data: dict) -> dict:
    """One fit stage that would fine-tune the tiny teacher for a step on the tiny 3-class csv."""
    trainer = {"max_steps": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False}
    trainer.update(limit_val_batches=1, num_sanity_val_steps=0)
    model = {
        "class_path": "compress.modules.TaskModule",
        "init_args": {"model": teacher, "learning_rate": 1e-3},
    }
    return {"data": dict(data), "stages": {"teacher": {"fit": {"model": model, "trainer": trainer}}}}


def changed(config: dict, changes: dict, inputs: SimpleNamespace) -> dict:
    """``config`` with dotted keys set (``DROP`` deletes); ``inputs/...`` strings point into ``inputs``."""
    for dotted, value in changes.items():
        *parents, key = dotted.split(".")
        node = config
        for parent in parents:
            node = node.setdefault(parent, {})
        if value is DROP:
            del node[key]
        else:
            node[key] = json.loads(json.dumps(value).replace("inputs/", f"{inputs.root}/"))
    return config


def student(**init_args) -> dict:
    return {"fit": {"model": {"class_path": "compress.modules.DistillationModule", "init_args": init_args}}}


def adapt(task: dict | None = None, **settings) -> dict:
    """A multitask stage on the teacher with one task (``news``) of these data settings."""
    lora = {"class_path": "peft.LoraConfig", "init_args": {"r": 4, "target_modules": ["query", "value"]}}
    tasks = {"news": {"source": "bbc_news", **(task or {})}}
    return {"multitask": {"base": "{teacher}", "adapter": lora, "tasks": tasks, **settings}}


def export_on_fit_end(path: str) -> list:
    return [{"class_path": "compress.callbacks.ExportOnFitEnd", "init_args": {"path": path}}]


FIT = "stages.teacher.fit"
PIPELINE_CASES = [  # changes to the one-stage pipeline, a fragment naming the field, one saying the fix
    # the pipeline YAML
    pytest.param(
        {"stages.teacher": {"train": {}}}, "stages.teacher", "give exactly one of", id="unknown_stage_kind"
    ),
    pytest.param({"stages": DROP}, "`stages`", "must map stage names", id="no_stages"),
    pytest.param({"data": "rotten_tomatoes"}, "data:", "give data settings", id="data_not_a_mapping"),
    pytest.param(
        {"stages.student": student(teacher="{techer}")},
        "stages.student: '{techer}'",
        "earlier stages: ['teacher']",
        id="placeholder_of_no_stage",
    ),
    pytest.param(
        {"stages.student": student(teacher="{teacher")},
        "stages.student.fit.model.init_args.teacher",
        "write '{name}' with the name of an earlier stage",
        id="placeholder_malformed",
    ),
    pytest.param(
        {"stages.export": {"export": {"onnx": False}}},
        "stages.export.export.model",
        "which model to export",
        id="export_stage_without_model",
    ),
    pytest.param(
        {"stages.report": {"report": {"rounds": 1}}},
        "stages.report.report.models",
        "map display names to model folders",
        id="report_stage_without_models",
    ),
    pytest.param(
        {"stages.export": {"export": {"model": "{teacher}", "int8": "no"}}},
        "stages.export.export.int8",
        "must be true or false",
        id="export_flag_not_a_bool",
    ),
    # the fit stages' settings: parsed for every stage before the first one trains
    pytest.param({f"{FIT}.model": DROP}, FIT, "arguments are required: model", id="fit_stage_without_model"),
    pytest.param(
        {"stages.student": student(learning_rate=1e-3)},
        "stages.student.fit",
        "arguments are required: teacher",
        id="late_stage_without_teacher",
    ),
    pytest.param(
        {f"{FIT}.trainer.max_step": 1}, FIT, "'trainer' does not accept option 'max_step'", id="trainer_typo"
    ),
    pytest.param(
        {f"{FIT}.model.init_args.learning_rat": 1e-3},
        FIT,
        "Option 'learning_rat' is not accepted",
        id="model_setting_typo",
    ),
    pytest.param(
        {"data.batch_size": "sixteen"}, "data.batch_size", "Expected a <class 'int'>", id="batch_size_type"
    ),
    pytest.param(
        {"data.batch_size": -4}, "data.batch_size", "must be a positive number", id="batch_size_negative"
    ),
    pytest.param(
        {f"{FIT}.model.init_args.learning_rate": -1e-3},
        "model.learning_rate",
        "must be > 0",
        id="learning_rate_negative",
    ),
    pytest.param({"data.test_size": 1.5}, "data.test_size", "a fraction in (0, 1)", id="test_size_above_one"),
    pytest.param(
        {"data.test_size": 1000}, "data.test_size", "choose a smaller value", id="test_size_above_rows"
    ),
    # the data files
    pytest.param(
        {"data.source": "inputs/missing.csv"},
        "data.source",
        "pass an existing data file",
        id="data_file_missing",
    ),
    pytest.param(
        {"data.source": "inputs/empty.csv"}, "data.source", "is empty; pass a file", id="empty_file"
    ),
    pytest.param(
        {"data.source": "inputs/blank_texts.csv"},
        "data.text_column: none of the 60 rows has text",
        "pass data with labelled rows of text",
        id="no_row_has_text",
    ),
    pytest.param(
        {"data.text_column": "body"}, "data.text_column", "available: ['review'", id="text_column_missing"
    ),
    pytest.param(
        {"data.label_column": "stars"}, "data.label_column", "available: ['review'", id="label_column_missing"
    ),
    pytest.param(
        {"data.source": "inputs/scores.csv"},
        "data.label_column: ",
        "holds continuous scores",
        id="continuous_scores_as_labels",
    ),
    pytest.param({"data.source": "inputs/latin1.csv"}, "data.source: ", "save it as UTF-8", id="latin1_file"),
    pytest.param(
        {"data.source": "inputs/one_class.csv"},
        "model.num_labels",
        "data holds every class",
        id="single_class_data",
    ),
    pytest.param(
        {"data.label_names": ["negative", "positive"]},
        "data.label_column",
        "set data.label_names to the full class list",
        id="labels_outside_label_names",
    ),
    # a multitask stage after the fit stage: its task settings and trainer keys are checked before it trains
    pytest.param(
        {"stages.adapt": adapt({"max_lenght": 32})},
        "stages.adapt.multitask.tasks.news: Option 'max_lenght'",
        "did you mean max_length?",
        id="multitask_task_setting_typo",
    ),
    pytest.param(
        {"stages.adapt": adapt({"max_steps": 3})},
        "stages.adapt.multitask.tasks.news: Option 'max_steps'",
        "accepted: batch_size",
        id="multitask_trainer_setting_under_a_task",
    ),
    pytest.param(
        {"stages.adapt": adapt(trainer={"max_step": 3})},
        "stages.adapt.multitask.trainer.max_step",
        "did you mean max_steps?",
        id="multitask_trainer_key_typo",
    ),
    pytest.param(
        {"stages.adapt": adapt({"batch_size": "big"})},
        "stages.adapt.multitask.tasks.news",
        "Parser key \"batch_size\": Expected a <class 'int'>",
        id="multitask_task_setting_type",
    ),
    pytest.param(
        {"stages.adapt": {"multitask": {**adapt()["multitask"], "tasks": {}}}},
        "stages.adapt.multitask.tasks",
        "map task names to data settings",
        id="multitask_without_tasks",
    ),
    # models named by path in non-fit stages: checked before the first stage trains
    pytest.param(
        {"stages.export": {"export": {"model": "inputs/missing_model"}}},
        "stages.export.export.model: ",
        "pass an existing folder",
        id="export_stage_model_missing",
    ),
    pytest.param(
        {"stages.base": {"load": {"model": "inputs/damaged_model"}}},
        "stages.base.load.model: ",
        "is damaged",
        id="load_stage_model_damaged",
    ),
    pytest.param(
        {"stages.adapt": {"multitask": {**adapt()["multitask"], "base": "inputs/missing_model"}}},
        "stages.adapt.multitask.base: ",
        "pass an existing folder",
        id="multitask_base_missing",
    ),
    pytest.param(
        {"stages.report": {"report": {"models": {"teacher": "{teacher}", "old": "inputs/old.onnx"}}}},
        "stages.report.report.models.old: ",
        "does not exist; give a model folder or .onnx file",
        id="report_model_file_missing",
    ),
    pytest.param(
        {"stages.pruned": {"prune": {"model": "{teacher}", "ffn_ratio": 0.5}}},
        "stages.pruned.prune",
        "needs the shared `data: {class_path: compress.data.LanguageModelingDataModule",
        id="prune_stage_in_a_classification_pipeline",
    ),
    pytest.param(
        {"data.source": "inputs/export"},
        "data.source",
        "Use a built-in source",
        id="data_source_is_a_folder",
    ),
    # an export at the end of a fit stage, to a folder that exists: refused in setup
    pytest.param(
        {f"{FIT}.trainer.callbacks": export_on_fit_end("inputs/export")},
        "ExportOnFitEnd.path",
        "pass overwrite=True",
        id="stage_export_on_fit_end_exists",
    ),
]


def run_pipeline_config(config: dict, tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    main(["pipeline", "--config", str(path), "--output", str(tmp_path / "run")])
    return tmp_path / "run"


@pytest.mark.parametrize(("changes", "field", "fix"), PIPELINE_CASES)
def test_pipeline_refuses(changes, field, fix, inputs, tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    config = changed(base_pipeline(tiny_teacher_dir, tiny_data_kwargs), changes, inputs)
    before = snapshot(inputs.root)
    with pytest.raises((ValueError, FileNotFoundError)) as refused:
        run_pipeline_config(config, tmp_path)
    assert_says(str(refused.value), field, fix)
    assert not (tmp_path / "run").exists(), "a refused run left a partial run folder"
    assert snapshot(inputs.root) == before


@pytest.mark.parametrize(
    ("extra", "field", "fix"),
    [
        pytest.param(
            ["--set", "trainer.max_stepz=1"], "stages.teacher.fit", "max_stepz", id="set_override_typo"
        ),
        pytest.param(["--output", "inputs/a_file"], "--output: ", "is a file", id="output_is_a_file"),
    ],
)
def test_pipeline_command_refuses(extra, field, fix, inputs, tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    config = tmp_path / "one.yaml"
    config.write_text(yaml.safe_dump(base_pipeline(tiny_teacher_dir, tiny_data_kwargs), sort_keys=False))
    extra = [a.replace("inputs/", f"{inputs.root}/") for a in extra]
    output = [] if "--output" in extra else ["--output", str(tmp_path / "run")]
    before = snapshot(inputs.root)
    with pytest.raises(ValueError) as refused:
        main(["pipeline", "--config", str(config), *output, *extra])
    assert_says(str(refused.value), field, fix)
    assert not (tmp_path / "run").exists() and snapshot(inputs.root) == before


def test_pipeline_refusal_keeps_the_previous_run(inputs, tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    """A changed stage is refused in setup: the stage folder of the earlier run is put back as it was."""
    stage = tmp_path / "run" / "stages" / "teacher"
    (stage / "model").mkdir(parents=True)
    (stage / "model" / "model.safetensors").write_bytes(b"the weights of an earlier run")
    (stage / "manifest.json").write_text(json.dumps({"fingerprint": "earlier", "result": {}}))
    (tmp_path / "run" / ".compress-run").write_text("a compress pipeline run folder\n")
    before = snapshot(tmp_path / "run")
    config = changed(base_pipeline(tiny_teacher_dir, tiny_data_kwargs), {"data.test_size": 1000}, inputs)
    with pytest.raises(ValueError) as refused:
        run_pipeline_config(config, tmp_path)
    assert_says(str(refused.value), "data.test_size", "choose a smaller value")
    assert snapshot(tmp_path / "run") == before


def test_pipeline_refuses_a_damaged_resume_checkpoint(
    tiny_teacher_dir, tiny_data_kwargs, tmp_path, monkeypatch
):
    """Killed while writing last.ckpt: the rerun refuses the truncated file and changes nothing."""
    config = base_pipeline(tiny_teacher_dir, tiny_data_kwargs)
    config["stages"]["teacher"]["fit"]["trainer"]["max_steps"] = 4
    with monkeypatch.context() as patch:
        crash_in("teacher", at_step=3, monkeypatch=patch)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_pipeline_config(config, tmp_path)
    last = tmp_path / "run" / "stages" / "teacher" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = snapshot(tmp_path / "run")
    with pytest.raises(ValueError) as refused:
        run_pipeline_config(config, tmp_path)
    assert_says(str(refused.value), "stages.teacher: ", "delete it to run the stage again")
    assert "last.ckpt is damaged" in str(refused.value)
    assert snapshot(tmp_path / "run") == before


# --- Trainer.fit with our modules -------------------------------------------------------------------


def small_vocabulary_bert():
    config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.intermediate_size, config.num_labels = 64, 3
    return BertForSequenceClassification(config)


FIT_CASES = [  # (inputs, teacher, fit) -> builds a module and fits it; the field; the fix
    pytest.param(
        lambda i, teacher, fit: fit(DistillationModule(f"{i.root}/permuted_teacher")),
        "model.teacher: its tokenizer",
        "set data.teacher_tokenizer to",
        id="teacher_tokenizer_same_size_other_ids",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(DistillationModule(teacher, student=tiny_bert(num_labels=2, layers=1))),
        "model.student",
        "they must agree",
        id="teacher_student_label_counts",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(DistillationModule(teacher), source=f"{i.root}/two_classes.csv"),
        "model.student: the model head has 3 labels but the data",
        "use a model fine-tuned on this label set",
        id="data_labels_differ_from_teacher",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(
            DistillationModule(i.named_teacher), label_names=["positive", "neutral", "negative"]
        ),
        "model.teacher: the teacher's labels are ['negative', 'neutral', 'positive']",
        "set data.label_names to ['negative', 'neutral', 'positive']",
        id="teacher_label_names_in_another_order",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(DistillationModule(teacher), source=f"{i.root}/one_class.csv"),
        "data.label_column",
        "at least 2 classes",
        id="single_class_for_distillation",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(TaskModule(small_vocabulary_bert())),
        "model: the tokenizer has 30522 tokens but the model's embeddings only 1000",
        "use the model's own tokenizer (data.tokenizer",
        id="tokenizer_larger_than_vocabulary",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(TaskModule(tiny_bert(num_labels=3)), max_length=512),
        "data.max_length",
        "set data.max_length <= 128",
        id="max_length_beyond_positions",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(
            DistillationModule([teacher, teacher], intermediate=IntermediateDistillation())
        ),
        "model.intermediate",
        "give one teacher",
        id="intermediate_with_two_teachers",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(DistillationModule("minilm-l6")),
        "model.teacher",
        "fine-tune it first",
        id="teacher_not_fine_tuned",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(DistillationModule(f"{i.root}/no_teacher")),
        "model.teacher",
        "pass an existing folder",
        id="teacher_folder_missing",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(
            TaskModule(tiny_bert(num_labels=3, layers=1)), ckpt_path=f"{i.root}/two_layer.ckpt"
        ),
        "ckpt_path: the checkpoint holds another model's weights",
        "pass a checkpoint written with this model's settings",
        id="checkpoint_of_another_model",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(DistillationModule(teacher), ckpt_path=f"{i.root}/two_layer.ckpt"),
        "ckpt_path: the checkpoint holds another model's weights",
        "pass a checkpoint written with this model's settings",
        id="task_checkpoint_for_distillation",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(DistillationModule(teacher, num_labels=1)),
        "model.num_labels: 1",
        "the data holds every class",
        id="one_label_for_distillation",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(
            TaskModule(tiny_bert(num_labels=3, layers=1)), callbacks=[ExportOnFitEnd(f"{i.root}/export")]
        ),
        "ExportOnFitEnd.path",
        "choose another path or pass overwrite=True",
        id="export_on_fit_end_path_exists",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(
            TaskModule(tiny_bert(num_labels=3, layers=1)),
            callbacks=[ExportOnFitEnd(f"{fit.root}/hf", onnx_path=f"{i.root}/export")],
        ),
        "ExportOnFitEnd.onnx_path",
        "choose another path or pass overwrite=True",
        id="export_on_fit_end_onnx_path_exists",
    ),
]


class UserModule(LightningModule):
    """A user's own module (issue 12): a classifier as ``net``, maybe a frozen teacher as ``big_model``."""

    def __init__(self, with_teacher: bool = False) -> None:
        super().__init__()
        self.net = tiny_bert(num_labels=3, layers=2)
        if with_teacher:
            self.big_model = tiny_bert(num_labels=3, layers=2, seed=4).requires_grad_(False)

    def training_step(self, batch, batch_idx):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
        return distillation_loss(self, self.net(**inputs).logits, batch["labels"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


PLUGIN_CASES = [  # callbacks around a user's own module (issue 12): (inputs, teacher, fit), field, fix
    pytest.param(
        lambda i, teacher, fit: fit(UserModule(), [Distillation(teacher="net")]),
        "Distillation.teacher: 'net' holds every trainable parameter",
        "pass the teacher's own attribute or module",
        id="plugin_distillation_teacher_is_the_student",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(UserModule(), [Distillation(teacher="minilm-l6")]),
        "Distillation.teacher: 'minilm-l6' is neither a fine-tuned classifier",
        "fine-tune it first",
        id="plugin_distillation_base_model_teacher",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(UserModule(), [Distillation(teacher=tiny_bert(num_labels=5, layers=1))]),
        "Distillation.teacher: its logits have shape (8, 5)",
        "must predict the same classes",
        id="plugin_distillation_teacher_of_other_classes",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(
            UserModule(with_teacher=True), [MagnitudePruning(targets=["intermediate"])]
        ),
        "MagnitudePruning.targets: ['intermediate'] selects 'big_model.bert.encoder.layer.0.",
        "anchor the pattern on the trained model",
        id="plugin_pruning_targets_inside_the_teacher",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(UserModule(), [MagnitudePruning(targets=["no_such_layer"])]),
        "MagnitudePruning.targets: ['no_such_layer'] matches no Linear/Conv layer",
        "output layers: ['net.classifier']",
        id="plugin_pruning_targets_match_nothing",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(UserModule(), [StructuredPruning(channel_ratio=0.5)]),
        "StructuredPruning.channel_ratio",
        "head_ratio",
        id="plugin_structured_channel_ratio_on_bert",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(UserModule(), [StructuredPruning(ffn_ratio=0.5, module="encoder")]),
        "StructuredPruning.module: UserModule has no submodule 'encoder'",
        "its children are ['net']",
        id="plugin_structured_module_missing",
    ),
    pytest.param(
        lambda i, teacher, fit: fit(UserModule(), [GradualUnfreezing(module="encoder")]),
        "GradualUnfreezing.module: UserModule has no submodule 'encoder'",
        "its children are ['net']",
        id="plugin_unfreezing_module_missing",
    ),
]


class Fit:
    """``fit(module, callbacks=..., ckpt_path=..., **data changes)``: a short run rooted at ``root``."""

    def __init__(self, root: Path, data: dict) -> None:
        self.root, self.data, self.trainers = root, data, []

    def __call__(self, module, callbacks=(), ckpt_path=None, **data_changes) -> None:
        trainer = quick_trainer(root=str(self.root), steps=2, callbacks=list(callbacks))
        self.trainers.append(trainer)
        datamodule = TextClassificationDataModule(**{**self.data, **data_changes})
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)


@pytest.mark.parametrize(("case", "field", "fix"), FIT_CASES + PLUGIN_CASES)
def test_fit_refuses(case, field, fix, inputs, tiny_teacher_dir, tiny_data_kwargs, tmp_path):
    fit = Fit(tmp_path / "run", tiny_data_kwargs)
    before = snapshot(inputs.root)
    with pytest.raises((ValueError, FileNotFoundError)) as refused:
        case(inputs, tiny_teacher_dir, fit)
    assert_says(str(refused.value), field, fix)
    assert all(trainer.global_step == 0 for trainer in fit.trainers), "training started"
    assert not fit.root.exists(), "a refused run left a partial run folder"
    assert snapshot(inputs.root) == before


# --- compress fit --ckpt_path ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("checkpoint", "fix"),
    [
        pytest.param(
            "missing.ckpt", "does not exist; pass the .ckpt of an earlier run", id="ckpt_path_missing"
        ),
        pytest.param("truncated.ckpt", "is damaged", id="ckpt_path_truncated"),
    ],
)
def test_cli_refuses_a_checkpoint_it_cannot_read(
    checkpoint, fix, inputs, tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((inputs.root / "two_layer.ckpt").read_bytes()[:5000])
    config = {
        "model": {"class_path": "compress.modules.TaskModule", "init_args": {"model": tiny_teacher_dir}},
        "data": tiny_data_kwargs,
        "trainer": {"max_steps": 1, "logger": False, "default_root_dir": str(tmp_path / "run")},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    args = ["fit", "--config", str(tmp_path / "fit.yaml"), "--ckpt_path", str(tmp_path / checkpoint)]
    with pytest.raises(ValueError) as refused:
        main(args)
    assert_says(str(refused.value), "ckpt_path: ", fix)
    assert not (tmp_path / "run").exists()


def distill_config(teacher: str, layers: list[int], data: dict, root: Path) -> dict:
    student = {"class_path": "compress.peft.StudentFromTeacher", "init_args": {"layers": layers}}
    trainer = {"max_steps": 1, "logger": False, "enable_progress_bar": False, "limit_val_batches": 1}
    return {
        "model": {"class_path": "compress.modules.DistillationModule",
                  "init_args": {"teacher": teacher, "student": student}},
        "data": data,
        "trainer": {**trainer, "num_sanity_val_steps": 0, "default_root_dir": str(root)},
    }  # fmt: skip


def _two_layers(tmp_path: Path) -> str:
    folder = tmp_path / "two_layers"
    tiny_bert(num_labels=3, layers=2).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("kind", ["student_settings", "written_in_python", "classifier_folder"])
def test_cli_refuses_a_checkpoint_of_another_model(
    kind, inputs, tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    """LightningCLI would train the checkpoint's model instead of the configured one, without a word."""
    if kind == "student_settings":  # a 1-layer student's checkpoint, a config for a 2-layer one
        (tmp_path / "a.yaml").write_text(
            yaml.safe_dump(distill_config(tiny_teacher_dir, [0], tiny_data_kwargs, tmp_path / "a"))
        )
        main(["fit", "--config", str(tmp_path / "a.yaml")])
        (checkpoint,) = (tmp_path / "a").rglob("*.ckpt")
        config = distill_config(tiny_teacher_dir, [0, 2], tiny_data_kwargs, tmp_path / "run")
        field, fix = "model.init_args.student: ", "Resume with the config it was written with"
    elif kind == "written_in_python":  # Trainer.fit in Python stores no model class for LightningCLI
        checkpoint = inputs.root / "two_layer.ckpt"
        config = distill_config(tiny_teacher_dir, [0], tiny_data_kwargs, tmp_path / "run")
        field, fix = "ckpt_path: ", "resume it in Python with Trainer.fit(module, ckpt_path=...)"
    else:  # a classifier fine-tuned from a 2-layer folder, a config that names the 4-layer one
        classifier = {
            "class_path": "compress.modules.TaskModule",
            "init_args": {"model": _two_layers(tmp_path)},
        }
        (tmp_path / "a.yaml").write_text(
            yaml.safe_dump({**distill_config("", [0], tiny_data_kwargs, tmp_path / "a"), "model": classifier})
        )
        main(["fit", "--config", str(tmp_path / "a.yaml")])
        (checkpoint,) = (tmp_path / "a").rglob("*.ckpt")
        classifier["init_args"]["model"] = tiny_teacher_dir
        config = {**distill_config("", [0], tiny_data_kwargs, tmp_path / "run"), "model": classifier}
        field, fix = "model.init_args.model: ", "two_layers' in the checkpoint"
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    before = snapshot(inputs.root)
    with pytest.raises(ValueError) as refused:
        main(["fit", "--config", str(tmp_path / "fit.yaml"), "--ckpt_path", str(checkpoint)])
    assert_says(str(refused.value), field, fix)
    assert not list((tmp_path / "run").rglob("*.ckpt")), "the refused run trained and saved"
    assert snapshot(inputs.root) == before


# --- compress export --------------------------------------------------------------------------------

EXPORT_CASES = [  # compress export arguments (teacher: a good model, out: a new folder), field, fix
    pytest.param(
        ["--model", "{teacher}", "--output", "inputs/export"],
        "output: export path",
        "choose another path or pass overwrite=True",
        id="export_folder_exists",
    ),
    pytest.param(
        ["--model", "{teacher}", "--output", "inputs/a_file"],
        "output: export path",
        "choose another path or pass overwrite=True",
        id="export_path_is_an_existing_file",
    ),
    pytest.param(
        ["--model", "{teacher}", "--output", "inputs/export", "--overwrite", "true"],
        "output: ",
        "holds files compress did not write",
        id="export_overwrite_of_a_folder_not_written_by_compress",
    ),
    pytest.param(
        ["--model", "inputs/named_teacher", "--output", "inputs/", "--overwrite", "true"],
        "output: ",
        "holds model",
        id="export_output_holds_the_model",
    ),
    pytest.param(
        ["--model", "inputs/no_model", "--output", "{out}"],
        "model: model source",
        "pass an existing folder",
        id="export_model_missing",
    ),
    pytest.param(
        ["--model", "minilm-l6", "--output", "{out}"], "model:", "fine-tune it first", id="export_base_model"
    ),
    pytest.param(
        ["--model", "{teacher}", "--output", "{out}", "--trim_vocabulary", "true"],
        "trim_vocabulary",
        "needs `data`",
        id="export_trim_without_data",
    ),
    pytest.param(  # the reported case: transformers would make up a 5-token tokenizer
        ["--model", "inputs/bare_student", "--output", "{out}"],
        "model: ",
        "holds no tokenizer files (none of tokenizer.json, ",
        id="export_model_saved_without_its_tokenizer",
    ),
    pytest.param(
        ["--model", "inputs/bare_student", "--output", "{out}"],
        "model: ",
        "pass --tokenizer <folder or alias of the tokenizer the model was trained with>",
        id="export_model_without_tokenizer_names_the_option",
    ),
    pytest.param(
        ["--model", "inputs/made_up_tokenizer", "--output", "{out}"],
        "model: its tokenizer",
        "fewer than half of the model's 30,522 embedding rows",
        id="export_model_with_a_made_up_tokenizer",
    ),
    pytest.param(
        ["--model", "inputs/small_vocabulary", "--output", "{out}"],
        "model: its tokenizer",
        "pass --tokenizer",
        id="export_tokenizer_bigger_than_the_embeddings",
    ),
    pytest.param(
        ["--model", "inputs/small_vocabulary", "--tokenizer", "minilm-l6", "--output", "{out}"],
        "tokenizer: its tokenizer",
        "pass --tokenizer",
        id="export_tokenizer_option_bigger_than_the_embeddings",
    ),
    pytest.param(
        ["--model", "{teacher}", "--tokenizer", "inputs/bare_student", "--output", "{out}"],
        "tokenizer: ",
        "or save it with tokenizer.save_pretrained(dir)",
        id="export_tokenizer_option_without_tokenizer_files",
    ),
    pytest.param(
        ["--model", "{teacher}", "--tokenizer", "inputs/no_tokenizer", "--output", "{out}"],
        "tokenizer: model source",
        "pass an existing folder",
        id="export_tokenizer_option_missing",
    ),
]


@pytest.mark.parametrize(("args", "field", "fix"), EXPORT_CASES)
def test_export_refuses(args, field, fix, inputs, tiny_teacher_dir, tmp_path):
    out = tmp_path / "export"
    values = {"{teacher}": tiny_teacher_dir, "{out}": str(out)}
    args = [values.get(a, a.replace("inputs/", f"{inputs.root}/")) for a in args]
    before = snapshot(inputs.root)
    with pytest.raises((ValueError, FileNotFoundError)) as refused:
        main(["export", *args, "--onnx", "false"])
    assert_says(str(refused.value), field, fix)
    assert not out.exists(), "a refused export left a partial folder"
    assert snapshot(inputs.root) == before


# --- damaged or foreign files where a model or checkpoint is expected ---------------------------------


def damaged_model_folder(good: str, root: Path, damage: str) -> Path:
    folder = root / damage
    shutil.copytree(good, folder)
    weights = folder / "model.safetensors"
    if damage == "truncated_weights":
        weights.write_bytes(weights.read_bytes()[:-64])
    elif damage == "random_weights":
        weights.write_bytes(bytes(range(256)) * 40)
    elif damage == "no_config":
        (folder / "config.json").unlink()
    return folder


@pytest.mark.parametrize(
    ("damage", "fix"),
    [
        pytest.param("truncated_weights", "is damaged", id="model_weights_truncated"),
        pytest.param("random_weights", "is damaged", id="model_weights_not_safetensors"),
        pytest.param("no_config", "has no config.json", id="model_folder_without_config"),
    ],
)
@pytest.mark.parametrize("entry", ["export", "distill"])
def test_a_damaged_model_folder_is_refused_by_name(
    damage, fix, entry, tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    folder = damaged_model_folder(tiny_teacher_dir, tmp_path, damage)
    before = snapshot(folder)
    with pytest.raises(ValueError) as refused:
        if entry == "export":
            main(["export", "--model", str(folder), "--output", str(tmp_path / "out"), "--onnx", "false"])
        else:
            DistillationModule(str(folder))
    assert_says(str(refused.value), "model: " if entry == "export" else "model.teacher: ", fix)
    assert snapshot(folder) == before and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("content", "fix"),
    [
        pytest.param("pickle", "is not a torch checkpoint", id="ckpt_path_a_pickle"),
        pytest.param("tensors", "is not a Lightning checkpoint", id="ckpt_path_torch_save_of_tensors"),
    ],
)
def test_cli_refuses_a_file_that_is_not_a_lightning_checkpoint(
    content, fix, tiny_teacher_dir, tiny_data_kwargs, tmp_path
):
    import pickle

    import torch

    path = tmp_path / "model.ckpt"
    if content == "pickle":
        path.write_bytes(pickle.dumps({"state_dict": {}, "note": "x" * 2000}))
    else:
        torch.save({"weight": torch.zeros(3)}, path)
    config = {
        "model": {"class_path": "compress.modules.TaskModule", "init_args": {"model": tiny_teacher_dir}},
        "data": tiny_data_kwargs,
        "trainer": {"max_steps": 1, "logger": False, "default_root_dir": str(tmp_path / "run")},
    }
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError) as refused:
        main(["fit", "--config", str(tmp_path / "fit.yaml"), "--ckpt_path", str(path)])
    assert_says(str(refused.value), "ckpt_path: ", fix)
    assert not (tmp_path / "run").exists()
