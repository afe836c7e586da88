"""Fine-tune every layer of the model on an office's decisions, with MNIST replay, in torch.

The other way `digit-inbox learn` could adapt (it adapts the last layer in numpy), measured
beside it by bench/bench_learn.py; needs the `[train]` extra. The ONNX graph itself is run as a
torch module (`Graph`): the weights of its Conv and Gemm layers are parameters and each node is
torch's own function, so the candidate is the same graph with new weights, whatever the
architecture (an ensemble's concatenated features too), with its temperature and softmax kept,
and without an export step. Training is `train.train_epoch` (the shipped model's augmentation)
on MNIST training images replayed beside the decisions, which are repeated to make
`learn.decision_share` of the batches (as of the numpy loss); the candidate is judged by
`learn`'s own gate.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import Tensor, nn

from digit_inbox.daemon import contract, learn
from digit_inbox.export import mnist, train

LEARNING_RATE = 1e-4
STEPS = 150
BATCH = 64

TRAINABLE = {"Conv": (1, 2), "Gemm": (1, 2)}  # which inputs of these ops are weights


def pads(attributes: dict[str, Any]) -> tuple[int, int]:
    top, left, bottom, right = attributes.get("pads", [0, 0, 0, 0])
    if (top, left) != (bottom, right):
        raise ValueError("asymmetric padding is not handled")
    return top, left


def gemm(a: dict[str, Any], x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    x = x.T if a.get("transA", 0) else x
    w = w.T if a.get("transB", 0) else w
    y = a.get("alpha", 1.0) * (x @ w)
    return y if b is None else y + a.get("beta", 1.0) * b


OPS: dict[str, Callable[..., Tensor]] = {
    "Conv": lambda a, x, w, b=None: F.conv2d(
        x, w, b, a.get("strides", [1, 1]), pads(a), a.get("dilations", [1, 1]), a.get("group", 1)
    ),
    "Relu": lambda a, x: F.relu(x),
    "MaxPool": lambda a, x: F.max_pool2d(
        x, a["kernel_shape"], a.get("strides", a["kernel_shape"]), pads(a)
    ),
    "Flatten": lambda a, x: torch.flatten(x, a.get("axis", 1)),
    "Gemm": gemm,
    "Concat": lambda a, *xs: torch.cat(xs, a["axis"]),
    "Add": lambda a, x, y: x + y,
    "Mul": lambda a, x, y: x * y,
    "Div": lambda a, x, y: x / y,
    "Softmax": lambda a, x: F.softmax(x, a.get("axis", -1)),
}


class Graph(nn.Module):
    """An ONNX graph run by torch up to the output `until` (the logits the softmax reads)."""

    def __init__(self, model: onnx.ModelProto, until: str) -> None:
        super().__init__()
        graph = model.graph
        self.nodes = list(graph.node)
        self.until = until
        self.input = graph.input[0].name
        trainable = {
            node.input[i]
            for node in self.nodes
            for i in TRAINABLE.get(node.op_type, ())
            if i < len(node.input)
        }
        self.names: list[str] = []
        self.weights = nn.ParameterList()
        self.constants: dict[str, Tensor] = {}
        for init in graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(init).copy())
            if init.name in trainable:
                self.names.append(init.name)
                self.weights.append(nn.Parameter(value.float()))
            else:
                self.constants[init.name] = value
        self.attributes = [
            {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            for node in self.nodes
        ]
        unknown = {n.op_type for n in self.nodes} - OPS.keys()
        if unknown:
            raise ValueError(f"cannot fine-tune a graph with {', '.join(sorted(unknown))}")

    def forward(self, image: Tensor) -> Tensor:
        values = {
            self.input: image,
            **self.constants,
            **dict(zip(self.names, self.weights, strict=True)),
        }
        for node, attributes in zip(self.nodes, self.attributes, strict=True):
            values[node.output[0]] = OPS[node.op_type](
                attributes, *(values[name] for name in node.input if name)
            )
            if node.output[0] == self.until:
                return values[self.until]
        raise ValueError(f"{self.until} is not an output of the graph")

    def state(self) -> dict[str, np.ndarray]:
        return {n: w.detach().numpy() for n, w in zip(self.names, self.weights, strict=True)}


def probabilities(model: bytes, images: np.ndarray) -> np.ndarray:
    """`model`'s probabilities for `images` (onnxruntime, as the daemon reads; the model's one
    output is its last)."""
    if not len(images):
        return np.zeros((0, contract.NUM_CLASSES), np.float32)
    return learn.features(learn.session(model), images).astype(np.float32)


@functools.cache
def mnist_sets(mnist_dir: Path) -> tuple[mnist.Split, mnist.Split]:
    """MNIST training and test images, read once: a benchmark fine-tunes many times."""
    return mnist.load_split(mnist_dir, "train"), mnist.load_split(mnist_dir, "test")


def scores(model: bytes, images: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of `model`'s probabilities on `images`."""
    if not len(labels):
        return float("nan"), float("nan")
    probs = probabilities(model, images)
    right = np.maximum(probs[np.arange(len(labels)), labels], 1e-12)
    read = probs[:, : contract.NUM_DIGITS].argmax(1)  # the digit the daemon would read
    return float((read == labels).mean()), float(-np.log(right).mean())


def finetune(
    surgery: learn.Surgery,
    images: np.ndarray,
    labels: np.ndarray,
    hold: np.ndarray,
    mnist_dir: Path,
    steps: int = STEPS,
    seed: int = 0,
) -> tuple[bytes, learn.Outcome]:
    """Fine-tune on the decisions not held out (with MNIST replay); the candidate and how it
    fares against the current model on the held-out decisions and MNIST test."""
    torch.manual_seed(seed)
    net = Graph(surgery.model, surgery.gemm.output[0])
    train_split, test = mnist_sets(mnist_dir)
    replay = np.random.default_rng(seed).choice(len(train_split.images), learn.REPLAY, False)
    decisions, decision_labels = images[~hold], labels[~hold]
    share = learn.decision_share(len(decisions), len(replay))
    repeat = math.ceil(share / (1 - share) * len(replay) / len(decisions))
    replayed, replayed_labels = train.with_pairs(
        train_split.images[replay], train_split.labels[replay], seed, "cpu"
    )  # the model's last class is replayed too: no decision teaches it
    x = torch.cat(
        [
            replayed,
            torch.from_numpy(np.asarray(decisions, np.float32))
            .unsqueeze(1)
            .repeat(repeat, 1, 1, 1),
        ]
    )
    y = torch.cat(
        [replayed_labels, torch.from_numpy(decision_labels.astype(np.int64)).repeat(repeat)]
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    g = torch.Generator().manual_seed(seed)
    done = 0
    while done < steps:
        batches = min(steps - done, math.ceil(len(x) / BATCH))
        train.train_epoch(net, optimizer, None, x, y, BATCH, g, augmented=True, max_batches=batches)
        done += batches
    weights = net.state()
    digest = hashlib.sha256(b"".join(w.tobytes() for w in weights.values())).hexdigest()[:12]
    candidate = surgery.with_weights(weights, f"finetuned-{digest}")
    current = surgery.model.SerializeToString()
    test_x, test_y = test.images / 255.0, test.labels.astype(np.int64)
    before_held, before_loss = scores(current, images[hold], labels[hold])
    after_held, after_loss = scores(candidate, images[hold], labels[hold])
    outcome = learn.Outcome(
        before_held,
        after_held,
        scores(current, test_x, test_y)[0],
        scores(candidate, test_x, test_y)[0],
        int(hold.sum()),
        int((~hold).sum()),
        before_loss,
        after_loss,
    )
    return candidate, outcome
