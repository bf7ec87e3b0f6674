"""compress: turn a big fine-tuned model into a small, fast one (distillation, adapters, sparsity)."""

__version__ = "0.1.0"
