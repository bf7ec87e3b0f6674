"""The parts of a Llama-family causal LM that LLM pruning reads and reshapes.

Llama, SmolLM2, Mistral, Qwen2 and Qwen3 share one layout: ``model.model.embed_tokens``, a list of decoder
layers (``self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, ``input_layernorm``,
``post_attention_layernorm``), a final ``model.model.norm`` and ``lm_head`` (often tied to the
embeddings). `decoder_of` checks that layout and names what is missing when it is not there.

Example:
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    >>> parts = decoder_of(model)
    >>> len(parts.layers), parts.heads, parts.kv_heads, parts.head_dim
    (2, 4, 2, 4)
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

LAYER_PARTS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
    "input_layernorm",
    "post_attention_layernorm",
)


@dataclass
class Decoder:
    """A Llama-family causal LM and its inner parts (the objects themselves, not copies)."""

    model: nn.Module  # the *ForCausalLM
    backbone: nn.Module  # model.model: embed_tokens, layers, norm
    layers: nn.ModuleList

    @property
    def config(self):
        return self.model.config

    @property
    def heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return self.config.num_key_value_heads or self.heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.heads

    def norms(self) -> list[nn.Module]:
        """Every RMSNorm over the hidden size: two per layer and the final one."""
        per_layer = [
            norm for layer in self.layers for norm in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        return [*per_layer, self.backbone.norm]


def decoder_of(model: nn.Module) -> Decoder:
    """The `Decoder` view of a Llama-family ``*ForCausalLM``; a clear error for any other model."""
    backbone = getattr(model, "model", None)
    layers = getattr(backbone, "layers", None)
    name = type(model).__name__
    if backbone is None or layers is None or not hasattr(backbone, "embed_tokens"):
        raise TypeError(
            f"LLM pruning needs a Llama-family causal LM (model.model.embed_tokens and model.model.layers, "
            f"as in Llama, SmolLM2, Mistral, Qwen2/3); got {name}. Load it with AutoModelForCausalLM."
        )
    for part in LAYER_PARTS:
        if not all(_has(layer, part) for layer in layers):
            raise TypeError(
                f"LLM pruning expects every decoder layer of {name} to have {part}; it is missing: this is"
                " not a Llama-family layout (Llama, SmolLM2, Mistral, Qwen2/3)."
            )
    return Decoder(model, backbone, layers)


def adapter_layers(model: nn.Module) -> list[str]:
    """Names of LoRA / adapter layers in ``model`` (peft wrappers and their ``lora_*`` parts)."""
    return [
        name for name, module in model.named_modules() if "lora_" in name or hasattr(module, "base_layer")
    ]


def _has(module: nn.Module, dotted: str) -> bool:
    for part in dotted.split("."):
        module = getattr(module, part, None)
        if module is None:
            return False
    return True
