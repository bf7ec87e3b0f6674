"""Write the trained model as a stock Hugging Face folder (and optionally ONNX or GGUF) when ``fit`` ends."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from peft import PeftModel
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel
from typing_extensions import override

from compress.export import export_gguf, export_hf, export_onnx
from compress.export.folder import check_output
from compress.export.prepare import is_causal_lm
from compress.sparsity.roles import trained_model


class ExportOnFitEnd(Callback):
    """At the end of a successful ``fit``, export the trained model with `compress.export`.

    Adapters are merged (LoRA keeps the base's sparsity), masks are already in the weights, and the folder
    is checked by reloading it with plain transformers. An existing ``path`` (or ``onnx_path``) is refused
    in ``setup``, before the first training step, unless ``overwrite=True``. An interrupted run exports
    nothing.

    Args:
        path: the Hugging Face folder to write.
        onnx_path: also write ONNX there (``model.onnx``, checked against onnxruntime); classifiers.
        int8: with ``onnx_path``, also write ``model.int8.onnx``.
        gguf_path: a causal LM: also write GGUF files there for llama.cpp (``model-f16.gguf``,
            ``model-q8_0.gguf``), each checked by loading it back with transformers.
        gguf_types: the GGUF weight types (default ``["f16", "q8_0"]``).
        gguf_reference: the original model's GGUF file or alias (e.g. ``smollm2-135m``): its tokenizer
            metadata is copied when the tokenizer is unchanged.
        overwrite: replace existing folders.
        module: attribute of the LightningModule holding the model (default: the trained Hugging Face model,
            found by structure: `compress.sparsity.roles.trained_model`).
        tokenizer: folder or alias of the tokenizer to save alongside (default: the datamodule's).

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[ExportOnFitEnd("runs/my_student", onnx_path="runs/my_student_onnx")])
    """

    def __init__(
        self,
        path: str,
        onnx_path: str | None = None,
        int8: bool = False,
        overwrite: bool = False,
        module: str | None = None,
        tokenizer: str | None = None,
        gguf_path: str | None = None,
        gguf_types: list[str] | None = None,
        gguf_reference: str | None = None,
    ) -> None:
        if int8 and onnx_path is None:
            raise ValueError("ExportOnFitEnd.int8: int8 export goes through ONNX; set onnx_path as well.")
        if (gguf_types or gguf_reference) and gguf_path is None:
            raise ValueError("ExportOnFitEnd.gguf_types/gguf_reference: set gguf_path as well.")
        self.path, self.onnx_path, self.int8 = path, onnx_path, int8
        self.overwrite, self.module, self.tokenizer = overwrite, module, tokenizer
        self.gguf_path, self.gguf_types, self.gguf_reference = gguf_path, gguf_types, gguf_reference

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        for field, path in (
            ("path", self.path),
            ("onnx_path", self.onnx_path),
            ("gguf_path", self.gguf_path),
        ):
            if path is not None:
                check_output(path, self.overwrite, f"ExportOnFitEnd.{field}")
        causal = is_causal_lm(self._model(pl_module))  # a missing model or tokenizer fails now, not after
        if self.gguf_path is not None and not causal:
            raise ValueError("ExportOnFitEnd.gguf_path: GGUF holds causal language models; drop gguf_path.")
        if self.onnx_path is not None and causal:
            raise ValueError("ExportOnFitEnd.onnx_path: causal LMs export to hf/ and GGUF; use gguf_path.")
        if self.gguf_reference is not None:
            self._reference()
        if self.tokenizer is None:
            self._tokenizer(trainer)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.interrupted or not trainer.is_global_zero:
            return
        model = self._model(pl_module)
        tokenizer = self._tokenizer(trainer)
        result = export_hf(model, tokenizer, self.path, overwrite=self.overwrite)
        rank_zero_info(
            f"ExportOnFitEnd: wrote {self.path} (reloaded, max logit difference {result.max_abs_diff:.1e})"
        )
        if self.onnx_path is not None:
            export_onnx(model, tokenizer, self.onnx_path, overwrite=self.overwrite, int8=self.int8)
            rank_zero_info(f"ExportOnFitEnd: wrote {Path(self.onnx_path) / 'model.onnx'}")
        if self.gguf_path is not None:
            types = tuple(self.gguf_types or ("f16", "q8_0"))
            reference = self._reference() if self.gguf_reference else None
            export_gguf(model, tokenizer, self.gguf_path, reference, types, overwrite=self.overwrite)
            rank_zero_info(
                f"ExportOnFitEnd: wrote {', '.join(f'model-{t}.gguf' for t in types)} in {self.gguf_path}"
            )

    def _reference(self) -> Path:
        from compress.assets import gguf_file_of

        return gguf_file_of(self.gguf_reference, "ExportOnFitEnd.gguf_reference")

    def _model(self, pl_module: LightningModule) -> nn.Module:
        network = trained_model(pl_module, self.module, "ExportOnFitEnd.module")
        if not isinstance(network, (PreTrainedModel, PeftModel)):
            raise ValueError(
                f"ExportOnFitEnd.module: looked for one trained Hugging Face model in "
                f"{type(pl_module).__name__}, found {type(network).__name__}; pass "
                "module='<attribute holding the Hugging Face model>'"
            )
        return network

    def _tokenizer(self, trainer: Trainer):
        if self.tokenizer is not None:
            from compress.assets import resolve_model_source

            return AutoTokenizer.from_pretrained(resolve_model_source(self.tokenizer))
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "ExportOnFitEnd.tokenizer: the datamodule has no `tokenizer`; pass tokenizer='<folder>'."
            )
        return tokenizer
