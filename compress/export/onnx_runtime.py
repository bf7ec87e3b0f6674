"""Running an exported ONNX file with onnxruntime on the CPU: the check of every ONNX export and int8 copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compress.export.prepare import Batch


def onnx_session(file: str | Path):
    """An onnxruntime CPU session using as many threads as torch is set to."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def run_onnx(file_or_session, batch: Batch) -> np.ndarray:
    """Logits from onnxruntime for a batch of torch tensors (only the graph's inputs are fed)."""
    session = onnx_session(file_or_session) if isinstance(file_or_session, (str, Path)) else file_or_session
    wanted = {i.name for i in session.get_inputs()}
    feeds = {name: t.cpu().numpy() for name, t in batch.items() if name in wanted}
    return session.run(["logits"], feeds)[0]
