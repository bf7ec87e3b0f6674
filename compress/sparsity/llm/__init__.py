"""Pruning for Llama-family causal LMs (Llama, SmolLM2, Mistral, Qwen2/3) from calibration data.

- `prune_llm`: Minitron-style depth and width pruning (blocks, FFN channels, GQA query groups or query
  heads, hidden channels) into a stock, smaller Hugging Face model;
- `prune_oneshot`: Wanda, SparseGPT or magnitude sparsity of the decoder Linears, in place, with masks;
- `llm_importance`: the scores `prune_llm` ranks by; `calibration_batches`: the calibration inputs.

Modules: `decoder` (the layout), `calibration`, `capture` (layer-by-layer runs), `importance`, `slicing`,
`prune`, `wanda`, `sparsegpt`, `oneshot`.
"""

from compress.sparsity.llm.calibration import calibration_batches
from compress.sparsity.llm.decoder import decoder_of
from compress.sparsity.llm.importance import Importance, llm_importance
from compress.sparsity.llm.oneshot import prune_oneshot
from compress.sparsity.llm.prune import prune_llm

__all__ = ["Importance", "calibration_batches", "decoder_of", "llm_importance", "prune_llm", "prune_oneshot"]
