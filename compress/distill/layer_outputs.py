"""The hidden state each transformer layer returns, recorded by forward hooks on the model's layers.

For intermediate matching around a forward pass that someone else's code runs (the `Distillation`
callback around a user's ``training_step``): nothing has to ask for ``output_hidden_states``. The tuple
has the shape of Hugging Face's ``hidden_states`` minus the embeddings (index 0 repeats layer 1's output,
a placeholder `IntermediateLoss` never reads); the last entry is the last layer's output before any final
norm.

Example:
    >>> import torch
    >>> from transformers import BertConfig, BertModel
    >>> model = BertModel(BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=2,
    ...     num_attention_heads=2, intermediate_size=16))
    >>> outputs = LayerOutputs(model)
    >>> last = model(input_ids=torch.ones(1, 3, dtype=torch.long)).last_hidden_state
    >>> len(outputs.hidden()), bool(torch.equal(outputs.hidden()[-1], last))
    (3, True)
"""

from __future__ import annotations

from torch import Tensor, nn

from compress.peft.student import layer_container


class LayerOutputs:
    """Forward hooks on the layers of ``model`` (a Hugging Face model, or a peft model around one)."""

    def __init__(self, model: nn.Module) -> None:
        layers = model.get_submodule(layer_container(model))
        self._outputs: list[Tensor | None] = [None] * len(layers)
        self._handles = [layer.register_forward_hook(self._recorder(i)) for i, layer in enumerate(layers)]

    def _recorder(self, index: int):
        def record(module: nn.Module, args: tuple, output) -> None:
            self._outputs[index] = output[0] if isinstance(output, (tuple, list)) else output

        return record

    def hidden(self) -> tuple[Tensor, ...]:
        """The latest output of every layer, after a placeholder for the embeddings."""
        if any(o is None for o in self._outputs):
            raise RuntimeError("LayerOutputs: the model has run no forward pass since the hooks were added")
        return (self._outputs[0], *self._outputs)

    def remove(self) -> None:
        """Take the hooks out of the model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
