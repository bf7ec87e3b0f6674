import pytest
import torch
from lightning.pytorch import Callback
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from compress.callbacks import ExportOnFitEnd, MagnitudePruning
from compress.data import TextClassificationDataModule
from compress.modules import TaskModule
from tests.conftest import quick_trainer, tiny_bert


def fit(module, callbacks, data_kwargs, steps=3):
    trainer = quick_trainer(steps=steps, callbacks=callbacks)
    trainer.fit(module, datamodule=TextClassificationDataModule(**data_kwargs))
    return trainer


def test_exports_a_stock_folder_and_onnx_at_fit_end(tiny_data_kwargs, tmp_path):
    module = TaskModule(tiny_bert(num_labels=3, layers=2), learning_rate=1e-3)
    pruning = MagnitudePruning(target_sparsity=0.5, end_step=2, frequency=1)
    export = ExportOnFitEnd(str(tmp_path / "hf"), onnx_path=str(tmp_path / "onnx"), int8=True)
    fit(module, [pruning, export], tiny_data_kwargs)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    inputs = AutoTokenizer.from_pretrained(tmp_path / "hf")(["great film"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, module.model.eval()(**inputs).logits)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    zeros = (model.bert.encoder.layer[0].intermediate.dense.weight == 0).float().mean()
    assert zeros > 0.2  # the pruned weights went out as they are
    assert (tmp_path / "onnx" / "model.onnx").is_file() and (tmp_path / "onnx" / "model.int8.onnx").is_file()


def test_existing_folder_is_refused_before_training(tiny_data_kwargs, tmp_path):
    (tmp_path / "hf").mkdir()
    module = TaskModule(tiny_bert(num_labels=3, layers=2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    with pytest.raises(ValueError, match="exists already"):
        fit(module, [ExportOnFitEnd(str(tmp_path / "hf"))], tiny_data_kwargs)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


class Interrupt(Callback):
    def on_train_batch_end(self, trainer, *args) -> None:
        raise KeyboardInterrupt  # Ctrl-C: Lightning shuts down gracefully, then exits


def test_an_interrupted_run_exports_nothing(tiny_data_kwargs, tmp_path):
    module = TaskModule(tiny_bert(num_labels=3, layers=2))
    with pytest.raises(SystemExit):
        fit(module, [Interrupt(), ExportOnFitEnd(str(tmp_path / "hf"))], tiny_data_kwargs)
    assert not (tmp_path / "hf").exists()


def test_bad_settings():
    with pytest.raises(ValueError, match="onnx_path"):
        ExportOnFitEnd("out", int8=True)


def test_a_causal_lm_exports_at_fit_end_and_classifier_formats_are_refused(tmp_path):
    from transformers import AutoModelForCausalLM

    from compress.assets import resolve_model_source
    from compress.data import LanguageModelingDataModule

    folder = resolve_model_source("tiny-llama")
    data = dict(source="bbc_news", tokenizer="tiny-llama", block_size=32, max_train_documents=8,
                max_eval_documents=4, batch_size=2)  # fmt: skip
    module = TaskModule(AutoModelForCausalLM.from_pretrained(folder), learning_rate=1e-3)
    export = ExportOnFitEnd(str(tmp_path / "hf"), gguf_path=str(tmp_path / "gguf"), gguf_types=["f16"])
    trainer = quick_trainer(steps=2, callbacks=[export])
    trainer.fit(module, datamodule=LanguageModelingDataModule(**data))
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.arange(1, 17).unsqueeze(0)
    with torch.no_grad():
        torch.testing.assert_close(exported(input_ids=ids).logits, module.model.eval()(input_ids=ids).logits)
    gguf = AutoModelForCausalLM.from_pretrained(tmp_path / "gguf", gguf_file="model-f16.gguf")
    assert gguf.config.num_hidden_layers == exported.config.num_hidden_layers
    refused = quick_trainer(
        steps=1, callbacks=[ExportOnFitEnd(str(tmp_path / "b"), onnx_path=str(tmp_path / "o"))]
    )
    with pytest.raises(ValueError, match="onnx_path: causal LMs export to hf/ and GGUF"):
        refused.fit(module, datamodule=LanguageModelingDataModule(**data))


def test_gguf_settings_are_checked(tiny_data_kwargs, tmp_path):
    with pytest.raises(ValueError, match="gguf_types/gguf_reference: set gguf_path"):
        ExportOnFitEnd("out", gguf_reference="smollm2-135m")
    module = TaskModule(tiny_bert(num_labels=3, layers=2))
    with pytest.raises(ValueError, match="gguf_path: GGUF holds causal language models"):
        fit(
            module, [ExportOnFitEnd(str(tmp_path / "hf"), gguf_path=str(tmp_path / "gguf"))], tiny_data_kwargs
        )
    assert not (tmp_path / "hf").exists()
