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
from digit_inbox.export import calibration, mnist, train

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


class Temperature(nn.Module):
    """logits / T: one Div node between the classifier's last Gemm and the Softmax."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = nn.Buffer(torch.tensor(temperature, dtype=torch.float32))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


class Ensemble(nn.Module):
    """Several members' logits averaged, each over its own temperature, written as ONE last linear
    layer over their concatenated penultimate features: the graph keeps the model contract's
    `Gemm -> Div(T) -> Softmax` ending, so `learn` adapts an ensemble like a single model."""

    def __init__(self, members: list[tuple[nn.Module, float]]) -> None:
        super().__init__()
        heads: list[tuple[nn.Linear, float]] = []
        for model, temperature in members:
            if not (isinstance(model, nn.Sequential) and isinstance(model[-1], nn.Linear)):
                raise ModelError("only models ending in a linear layer can be averaged")
            heads.append((model[-1], temperature))
        self.trunks = nn.ModuleList(model[:-1] for model, _ in members)  # type: ignore[index]
        k = len(members)
        self.head = nn.Linear(sum(h.in_features for h, _ in heads), heads[0][0].out_features)
        with torch.no_grad():
            self.head.weight.copy_(torch.cat([h.weight / (k * t) for h, t in heads], 1))
            self.head.bias.copy_(torch.stack([h.bias / (k * t) for h, t in heads]).sum(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([trunk(x) for trunk in self.trunks], 1))


def average(
    checkpoints: list[dict[str, Any]], data_dir: Path, test: mnist.Split
) -> tuple[nn.Module, dict[str, Any]]:
    """The members as one `Ensemble`, with its temperature fitted and its accuracy measured on
    the validation split they all held out (so they must share the seed that drew it)."""
    seeds = {c["seed"] for c in checkpoints}
    fingerprints = {c["train_data_md5"] for c in checkpoints}
    if len(seeds) > 1 or len(fingerprints) > 1:
        raise ModelError(
            "the checkpoints were trained with different seeds or data, so one member's "
            "validation images are another's training images; train them all with one --seed"
        )
    model = Ensemble(
        [(train.build(c["arch"], c["state_dict"]), float(c.get("temperature", 1.0)))
         for c in checkpoints]
    )  # fmt: skip
    model.eval()
    split = mnist.load_split(data_dir, "train")
    val_idx, _ = train.split_indices(len(split.labels), seeds.pop())
    logits = train.logits_of(model, train.to_tensor(split.images[val_idx], "cpu")).numpy()
    labels = split.labels[val_idx].astype(np.int64)
    temperature, val_ece = calibration.fit(logits, labels)
    test_logits = train.logits_of(model, train.to_tensor(test.images, "cpu")).numpy()
    return model, {
        "arch": "+".join(c["arch"] for c in checkpoints),
        "temperature": temperature,
        "val_ece": val_ece,
        "val_accuracy": float((logits.argmax(1) == labels).mean()),
        "test_accuracy": float((test_logits.argmax(1) == test.labels).mean()),
        "train_data_md5": fingerprints.pop(),
    }


def export(checkpoint_paths: list[Path], output: Path, data_dir: Path) -> dict[str, str]:
    """Write the ONNX file, verify it against torch on 1,000 test images, return its metadata.

    Several checkpoints are averaged into one model (`Ensemble`)."""
    checkpoints = [load_checkpoint(path) for path in checkpoint_paths]
    test = mnist.load_split(data_dir, "test")
    if len(checkpoints) == 1:
        checkpoint = checkpoints[0]
        logits = train.build(checkpoint["arch"], checkpoint["state_dict"])
    else:
        logits, checkpoint = average(checkpoints, data_dir, test)
    temperature = float(checkpoint.get("temperature", 1.0))
    model = nn.Sequential(logits, Temperature(temperature), nn.Softmax(1))
    model.eval()
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
        contract.META_TEMPERATURE: f"{temperature:.4f}",
        contract.META_VAL_ECE: f"{checkpoint.get('val_ece', float('nan')):.4f}",
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


def calibrate(model_path: Path, output: Path, data_dir: Path, seed: int = 1) -> float:
    """Fit a temperature for an existing ONNX model on the validation split of `seed`, and write
    the model with it inside the graph (Gemm -> Div(T) -> Softmax) and in its metadata.

    For models exported before calibration existed; a model already holding a temperature gets
    it refitted in place. Returns the temperature now in the graph.
    """
    from digit_inbox.daemon.classifier import Classifier
    from digit_inbox.export import evaluate

    classifier = Classifier(model_path)
    split = mnist.load_split(data_dir, "train")
    val_idx, _ = train.split_indices(len(split.labels), seed)
    probs = evaluate.run(classifier, split.images[val_idx], split.labels[val_idx]).probs
    labels = split.labels[val_idx].astype(np.int64)
    extra, ece = calibration.fit(calibration.logits_from_probs(probs), labels)

    graph = onnx.load(str(model_path))
    softmax = next((n for n in graph.graph.node if n.op_type == "Softmax"), None)
    if softmax is None:
        raise ModelError(f"{model_path}: no Softmax node to put a temperature in front of")
    inits = {i.name: i for i in graph.graph.initializer}
    producer = next((n for n in graph.graph.node if softmax.input[0] in n.output), None)
    old = 1.0
    if producer is not None and producer.op_type == "Div" and producer.input[1] in inits:
        constant = inits[producer.input[1]]
        old = float(onnx.numpy_helper.to_array(constant))
        constant.CopyFrom(
            onnx.numpy_helper.from_array(np.array(old * extra, np.float32), constant.name)
        )
    else:
        name = softmax.input[0]
        constant = onnx.numpy_helper.from_array(np.array(extra, np.float32), "temperature")
        graph.graph.initializer.append(constant)
        div = onnx.helper.make_node(
            "Div", [name, "temperature"], [name + "_scaled"], name="Temperature"
        )
        softmax.input[0] = name + "_scaled"
        graph.graph.node.insert(list(graph.graph.node).index(softmax), div)
    temperature = old * extra
    meta = {p.key: p.value for p in graph.metadata_props}
    digest = hashlib.sha256(graph.graph.SerializeToString()).hexdigest()[:12]
    meta[contract.META_MODEL_ID] = f"{meta.get(contract.META_ARCH, 'model')}-{digest}"
    meta[contract.META_TEMPERATURE] = f"{temperature:.4f}"
    meta[contract.META_VAL_ECE] = f"{ece:.4f}"
    del graph.metadata_props[:]
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(graph)
    tmp = output.with_name(output.name + ".tmp")
    onnx.save(graph, str(tmp))
    tmp.replace(output)
    log.info(
        "wrote %s: temperature %.4f, validation ECE %s (was %.4f)", output, temperature,
        meta[contract.META_VAL_ECE], calibration.expected_calibration_error(probs, labels),
    )  # fmt: skip
    return temperature
