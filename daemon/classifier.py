"""The ONNX model: load it once, check it honours the contract, classify batches."""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

import numpy as np

# Importing onnxruntime writes usage telemetry under $HOME/.cache and a session file in $TMPDIR
# unless this is set first; the daemon writes only to its configured folders.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

import onnxruntime as ort

from digit_inbox.daemon import contract
from digit_inbox.daemon.errors import ModelError

log = logging.getLogger(__name__)


def embedded_model() -> Path:
    return Path(str(resources.files("digit_inbox.daemon") / "models" / "digits.onnx"))


class Classifier:
    """One onnxruntime session for the life of the process; safe to call from one thread."""

    def __init__(self, path: Path | None = None, threads: int | None = None) -> None:
        self.path = path or embedded_model()
        options = ort.SessionOptions()
        # Small convolutions on tiny batches: more than the cores we have only adds contention.
        options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(
                f"{self.path}: cannot load the model ({exc}); pass an ONNX file made by "
                "`digit-inbox export`, or omit --model to use the embedded one"
            ) from exc
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_contract()
        self.model_id = self.metadata.get(contract.META_MODEL_ID) or self.path.stem

    def _check_contract(self) -> None:
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        problems = []
        if [i.name for i in inputs] != [contract.INPUT_NAME]:
            problems.append(f"inputs are {[i.name for i in inputs]}, expected ['image']")
        elif list(inputs[0].shape[1:]) != [1, contract.IMAGE_SIZE, contract.IMAGE_SIZE]:
            problems.append(f"input shape is {inputs[0].shape}, expected [N, 1, 28, 28]")
        named = [o for o in outputs if o.name == contract.OUTPUT_NAME]
        if not named:
            problems.append(f"outputs are {[o.name for o in outputs]}, expected 'probs'")
        elif isinstance(width := named[0].shape[-1], int) and width != contract.NUM_CLASSES:
            problems.append(
                f"it gives {width} probabilities an image, expected "
                f"{contract.NUM_CLASSES} (the ten digits, then 'not one digit')"
            )
        version = self.metadata.get(contract.META_CONTRACT)
        if version is not None and version != contract.CONTRACT_VERSION:
            problems.append(
                f"model follows preprocessing contract {version}, this digit-inbox "
                f"speaks {contract.CONTRACT_VERSION}; re-export it or upgrade digit-inbox"
            )
        if problems:
            raise ModelError(f"{self.path}: not a digit-inbox model: " + "; ".join(problems))

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [N, 10] of each digit for images [N, 1, 28, 28] (or [N, 28, 28]) in
        0..1, ink = 1. A row sums to less than 1 by the probability that the image is not one
        digit (the model's last class): a reading's confidence is that of being that digit."""
        batch = np.ascontiguousarray(images, dtype=np.float32).reshape(
            -1, 1, contract.IMAGE_SIZE, contract.IMAGE_SIZE
        )
        if len(batch) == 0:
            return np.zeros((0, contract.NUM_DIGITS), dtype=np.float32)
        probs: np.ndarray = self.session.run([contract.OUTPUT_NAME], {contract.INPUT_NAME: batch})[
            0
        ]
        return probs[:, : contract.NUM_DIGITS]
