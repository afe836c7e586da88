"""Checkpoint -> ONNX with the model contract, metadata, and a parity check in onnxruntime."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import pickle
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from digit_inbox.daemon import contract
from digit_inbox.daemon.errors import DataError, ModelError
from digit_inbox.export import mnist, train

log = logging.getLogger(__name__)

PARITY_IMAGES = 1000
PARITY_TOLERANCE = 1e-4
OPSET = 18


def load_checkpoint(path: Path) -> dict[str, Any]:
    hint = "pass a checkpoint written by `digit-inbox train`"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the checkpoint ({exc}); {hint}") from exc
    except (pickle.UnpicklingError, RuntimeError, ValueError, EOFError) as exc:
        # torch's own message advises weights_only=False, i.e. running untrusted code: not shown.
        raise ModelError(f"{path}: not a checkpoint, or a corrupt one; {hint}") from exc
    if not isinstance(checkpoint, dict):
        raise ModelError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint; {hint}")
    if checkpoint.get("arch") not in train.ARCHITECTURES:
        raise ModelError(f"{path}: unknown architecture {checkpoint.get('arch')!r}")
    return checkpoint


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5, check=True,
        )  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def export(checkpoint_path: Path, output: Path, data_dir: Path) -> dict[str, str]:
    """Write the ONNX file, verify it against torch on 1,000 test images, return its metadata."""
    checkpoint = load_checkpoint(checkpoint_path)
    model = nn.Sequential(train.build(checkpoint["arch"], checkpoint["state_dict"]), nn.Softmax(1))
    model.eval()
    test = mnist.load_split(data_dir, "test")
    images = train.to_tensor(test.images[:PARITY_IMAGES], "cpu")

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.onnx.export(
        model,
        (images[:2],),
        str(tmp),
        input_names=[contract.INPUT_NAME],
        output_names=[contract.OUTPUT_NAME],
        dynamic_axes={contract.INPUT_NAME: {0: "batch"}, contract.OUTPUT_NAME: {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
    )
    graph = onnx.load(str(tmp))
    weights_hash = hashlib.sha256(graph.graph.SerializeToString()).hexdigest()[:12]
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    metadata = {
        contract.META_CONTRACT: contract.CONTRACT_VERSION,
        contract.META_MODEL_ID: f"{checkpoint['arch']}-{weights_hash}",
        contract.META_ARCH: checkpoint["arch"],
        contract.META_VAL_ACC: f"{checkpoint['val_accuracy']:.4f}",
        contract.META_TEST_ACC: f"{checkpoint['test_accuracy']:.4f}",
        contract.META_TRAIN_MD5: checkpoint["train_data_md5"],
        contract.META_CREATED: created,
        contract.META_GIT: git_commit(),
    }
    del graph.metadata_props[:]
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    graph.producer_name = "digit-inbox"
    onnx.checker.check_model(graph)
    onnx.save(graph, str(tmp))

    with torch.no_grad():
        expected = model(images).numpy()
    session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    actual = session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: images.numpy()})[0]
    diff = float(np.abs(actual - expected).max())
    if not diff <= PARITY_TOLERANCE:
        tmp.unlink()
        raise ModelError(
            f"onnxruntime disagrees with torch by {diff:.2e} (> {PARITY_TOLERANCE:g}) on "
            f"{PARITY_IMAGES} test images; the export is broken, nothing was written"
        )
    tmp.replace(output)
    log.info(
        "wrote %s (%d KiB, model %s), parity max |diff| %.2e on %d test images",
        output, output.stat().st_size >> 10, metadata[contract.META_MODEL_ID], diff, PARITY_IMAGES,
    )  # fmt: skip
    return metadata


__all__ = ["DataError", "export"]
