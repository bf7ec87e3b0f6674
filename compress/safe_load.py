"""Loading without unpickling: model folders as safetensors, checkpoints with ``weights_only=True``.

Unpickling a file can run any code it names, so nothing here unpickles unless the user asks for it:

- model folders load with `load_pretrained` (``from_pretrained(..., use_safetensors=True)``); a folder whose
  weights are only pickled (``pytorch_model.bin``) is refused with the fix in the message;
- Lightning checkpoints load with ``weights_only=True`` (tensors and plain data only), which is what every
  checkpoint of this project holds: `compress fit/validate/test --ckpt_path`, the pipeline's resume and
  `callbacks.structured_pruning.load_pruned_checkpoint` pass it explicitly (``weights_only=False``, or
  ``--weights_only false`` on the command line, is the opt-in for a trusted file).

Example:
    >>> from transformers import AutoModelForSequenceClassification
    >>> from compress.assets import resolve_model_source
    >>> model = load_pretrained(AutoModelForSequenceClassification, resolve_model_source("minilm-l6"),
    ...     "model.model", num_labels=2)
    >>> model.config.num_labels
    2
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

SAFE_SUFFIXES = (".safetensors", ".safetensors.index.json")


def load_pretrained(cls: Any, source: str | Path, field: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained(source, use_safetensors=True, **kwargs)``; ``field`` names the setting in errors.

    Raises:
        ValueError: ``source`` is a folder whose weights transformers would unpickle.
    """
    pickled = pickled_weights(Path(source))
    if pickled is not None:
        raise ValueError(
            f"{field}: {source} holds pickled weights ({pickled}), which are not loaded because unpickling "
            "can run code. If you trust the folder, re-save it once as safetensors: "
            "`AutoModelForSequenceClassification.from_pretrained(folder).save_pretrained(folder)`, "
            "or load the model yourself and pass the module instead of the path"
        )
    return cls.from_pretrained(source, use_safetensors=True, **kwargs)


def check_model_folder(folder: str | Path, field: str) -> None:
    """A model folder without ``config.json``, or whose safetensors weights are truncated or not safetensors
    at all, is refused naming ``field`` (only the file headers are read)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    if not folder.is_dir():
        return
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{field}: {folder} has no config.json; a Hugging Face model folder holds config.json beside its "
            "weights: write it with model.save_pretrained(folder), or give the folder that has them"
        )
    for weights in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(weights, "pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ValueError(
                f"{field}: {weights} is damaged ({err}); write the folder again with "
                "model.save_pretrained(folder), or copy it whole from where it was made"
            ) from err


def pickled_weights(folder: Path) -> str | None:
    """The pickled weights file transformers would read from ``folder`` (not a folder, or safe: None)."""
    if not folder.is_dir():
        return None
    config = folder / "config.json"
    named = json.loads(config.read_text()).get("transformers_weights") if config.is_file() else None
    if named and not named.endswith(SAFE_SUFFIXES):  # read even with use_safetensors=True
        return named
    if (folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file():
        return None
    return next((p.name for p in sorted(folder.glob("pytorch_model*.bin*"))), None)


def check_checkpoint_file(path: str | Path, field: str, fix: str) -> dict:
    """A checkpoint that is missing, truncated or corrupted (e.g. a run killed while writing it) fails here,
    with ``field`` and ``fix`` in the message, before anything is built from it; returns the checkpoint
    (memory-mapped tensors and plain data)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{field}: {path} does not exist; {fix}")
    with path.open("rb") as head:
        is_zip = head.read(4) == b"PK\x03\x04"  # torch.save and Lightning write zip archives
    if not is_zip:
        raise ValueError(
            f"{field}: {path} is not a torch checkpoint (a pickle or another file: not the zip format "
            f"torch.save and Lightning write; it was not unpickled); {fix}"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{field}: {path} holds pickled objects besides tensors and plain data, which are not loaded "
            f"(unpickling can run code; {str(err).splitlines()[0]}); if you trust the file, load it with "
            f"weights_only=False (`--weights_only false`); else {fix}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:  # OSError: mmap of a truncated file
        raise ValueError(f"{field}: {path} is damaged ({str(err).split('.')[0]}); {fix}") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{field}: {path} is not a Lightning checkpoint (it holds no state_dict); {fix}")
    return checkpoint
