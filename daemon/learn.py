"""`digit-inbox learn`: adapt the model's last layer to an office's recorded decisions.

Torch-free, so it runs on the server itself: the model's penultimate features (the input of its
last Gemm, made a graph output) are computed once for the decisions (each with a few jittered
copies) and for MNIST; a softmax regression on them starts from the model's own last layer and
is pulled back toward it (L2), while MNIST replay keeps it from forgetting. The candidate is the
same ONNX graph with only that Gemm's weights replaced, so whatever follows it (a temperature,
the softmax) is kept.

A share of the decisions (chosen by content hash, so it is stable from run to run) is held out.
The candidate is written only if it reads more held-out decisions right than the current model
(or as many, with a lower cross-entropy) and loses at most `MAX_MNIST_DROP` on the MNIST test
set. Needs the `onnx` package (`pip install 'digit-inbox[learn]'`).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from digit_inbox.daemon import config, contract
from digit_inbox.daemon.corrections import Sample, samples
from digit_inbox.daemon.errors import ConfigError, ExitCode, ModelError, UsageError
from digit_inbox.daemon.health import atomic_write
from digit_inbox.daemon.report import fsync_dir
from digit_inbox.daemon.service import model_path

log = logging.getLogger(__name__)

HOLD_OUT = 0.2  # share of the decisions kept aside to judge the candidate
MIN_DECISIONS = 10
MAX_MNIST_DROP = 0.001  # 0.1 points of MNIST test accuracy
REPLAY = 10_000  # MNIST training images replayed beside the decisions
STEPS = 300
L2 = 1e-3  # pull toward the current weights
DECISION_WORTH = 100  # replay images one decision weighs as much as (see `decision_share`)
MAX_DECISION_SHARE = 0.5  # MNIST replay keeps at least half the loss, so nothing is forgotten
VARIANTS = 8  # jittered copies of each decision learnt from, beside the decision itself


@dataclass
class Head:
    """The last Gemm as y = x @ weight.T + bias, whatever its transB."""

    weight: np.ndarray  # [classes, features]
    bias: np.ndarray  # [classes]
    temperature: float = 1.0  # the graph divides the Gemm's output by it before the softmax

    def logits(self, features: np.ndarray) -> np.ndarray:
        """What the softmax sees: the Gemm's output over the temperature, so the probabilities
        fitted here are the calibrated ones the model will give."""
        return (features @ self.weight.T + self.bias) / self.temperature

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """The ten digits' probabilities, as the daemon reads them (`Classifier.predict`)."""
        z = self.logits(features)
        e = np.exp(z - z.max(1, keepdims=True))
        return np.asarray(e / e.sum(1, keepdims=True))[:, : contract.NUM_DIGITS]

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        """The share of digits whose likeliest digit is theirs (the daemon's reading)."""
        if len(labels) == 0:
            return float("nan")
        return float((self.probabilities(features).argmax(1) == labels).mean())

    def loss(self, features: np.ndarray, labels: np.ndarray) -> float:
        """Mean cross-entropy of the model's probabilities (what `fit` lowers)."""
        if len(labels) == 0:
            return float("nan")
        z = self.logits(features)
        z = z - z.max(1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
        return float(-log_p[np.arange(len(labels)), labels].mean())


class Surgery:
    """The model's last Gemm: its input as an extra output, its weights replaceable."""

    def __init__(self, path: Path) -> None:
        import onnx
        from onnx import numpy_helper

        self.model = onnx.load(str(path))
        graph = self.model.graph
        gemms = [n for n in graph.node if n.op_type == "Gemm"]  # nodes are in topological order
        if not gemms:
            raise ModelError(f"{path}: no Gemm (fully connected) layer to adapt")
        self.gemm = gemms[-1]
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in self.gemm.attribute}
        if attributes.get("alpha", 1.0) != 1.0 or attributes.get("beta", 1.0) != 1.0:
            raise ModelError(f"{path}: the last Gemm scales its terms; cannot adapt it")
        if attributes.get("transA", 0):
            raise ModelError(f"{path}: the last Gemm transposes its input; cannot adapt it")
        self.trans_b = bool(attributes.get("transB", 0))
        self.initializers = {i.name: i for i in graph.initializer}
        names = list(self.gemm.input)
        if len(names) < 3 or names[1] not in self.initializers or names[2] not in self.initializers:
            raise ModelError(f"{path}: the last Gemm's weights are not constants")
        self.features_name = names[0]
        weight = numpy_helper.to_array(self.initializers[names[1]]).astype(np.float64)
        bias = numpy_helper.to_array(self.initializers[names[2]]).astype(np.float64)
        self.head = Head(
            weight if self.trans_b else weight.T, bias.reshape(-1), self.temperature(path)
        )
        self.cache: dict[tuple[Path, int], tuple[np.ndarray, ...]] = {}

    def temperature(self, path: Path) -> float:
        """The constant the Gemm's output is divided by before the softmax (1 if none)."""
        from onnx import numpy_helper

        for node in self.model.graph.node:
            if node.op_type == "Div" and node.input[0] == self.gemm.output[0]:
                if node.input[1] not in self.initializers:
                    raise ModelError(f"{path}: the temperature after the Gemm is not a constant")
                return float(numpy_helper.to_array(self.initializers[node.input[1]]))
        return 1.0

    @functools.cached_property
    def feature_session(self) -> Any:
        """An onnxruntime session whose outputs are the features and the probabilities (built
        once per model: a benchmark adapts one model many times)."""
        import onnx

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        model.graph.output.append(onnx.ValueInfoProto(name=self.features_name))
        return session(model.SerializeToString())

    def mnist_features(self, mnist_dir: Path, replay: int) -> tuple[np.ndarray, ...]:
        """Features and labels of `replay` MNIST training images, followed by marks of them
        touching (the model's last class, as it was trained: no decision teaches that class,
        and replay keeps it), and of MNIST test (computed once per model: a benchmark adapts
        one model many times)."""
        from digit_inbox.export import mnist, pairs

        key = (mnist_dir, replay)
        if key not in self.cache:
            session = self.feature_session
            train = mnist.load_split(mnist_dir, "train")
            test = mnist.load_split(mnist_dir, "test")
            count = min(replay, len(train.images))
            chosen = np.random.default_rng(0).choice(len(train.images), count, replace=False)
            replayed, labels = pairs.with_marks(train.images[chosen], train.labels[chosen], 0)
            self.cache[key] = (
                features(session, replayed),
                labels,
                features(session, test.images / 255.0),
                test.labels.astype(np.int64),
            )
        return self.cache[key]

    def with_head(self, head: Head, model_id: str) -> bytes:
        weight = head.weight if self.trans_b else head.weight.T
        return self.with_weights(
            {self.gemm.input[1]: weight, self.gemm.input[2]: head.bias}, model_id
        )

    def with_weights(self, replace: dict[str, np.ndarray], model_id: str) -> bytes:
        """The same graph with the initializers named in `replace` replaced (each kept in its
        own dtype) and the model id set; the id it was adapted from is kept in the metadata."""
        import onnx
        from onnx import numpy_helper

        model = onnx.ModelProto()
        model.CopyFrom(self.model)
        for init in model.graph.initializer:
            if init.name in replace:
                dtype = numpy_helper.to_array(init).dtype
                init.CopyFrom(numpy_helper.from_array(replace[init.name].astype(dtype), init.name))
        metadata = {p.key: p for p in model.metadata_props}
        parent = metadata.get(contract.META_MODEL_ID)
        props = {
            "digit_inbox.adapted_from": parent.value if parent else "",
            contract.META_MODEL_ID: model_id,
        }
        for key, value in props.items():
            if key in metadata:
                metadata[key].value = value
            else:
                model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        return bytes(model.SerializeToString())


def session(model: bytes) -> Any:
    """A quiet onnxruntime session on the CPU for a serialised model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def features(session: Any, images: np.ndarray, batch: int = 512) -> np.ndarray:
    """The session's last output for `images`, in batches (float64 [N, width])."""
    x = np.asarray(images, np.float32).reshape(-1, 1, contract.IMAGE_SIZE, contract.IMAGE_SIZE)
    out = [
        session.run([session.get_outputs()[-1].name], {contract.INPUT_NAME: x[i : i + batch]})[0]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(out).reshape(len(x), -1).astype(np.float64)


def variants(images: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` copies of each 28x28 input, each turned (up to 10 degrees), scaled (up to 10 %),
    squeezed (up to 10 %) and shifted (up to 1.5 px) about its centre, in order: image 0's
    copies first. A reviewer's decision teaches the hand, not those exact pixels; its copies
    are what the same writer's next digit looks like."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    centre = (contract.IMAGE_SIZE - 1) / 2
    out = np.empty((len(images) * count, contract.IMAGE_SIZE, contract.IMAGE_SIZE), np.float32)
    for i in range(len(out)):
        turn = np.deg2rad(rng.uniform(-10, 10))
        scale = rng.uniform(0.9, 1.1) * np.array([rng.uniform(0.9, 1.0), 1.0])[rng.permutation(2)]
        shift = rng.uniform(-1.5, 1.5, 2)
        # PIL maps each output pixel back to the input: the inverse of turn-then-scale
        c, s = np.cos(turn), np.sin(turn)
        inverse = np.array([[c, s], [-s, c]]) / scale[None, :]
        offset = centre - inverse @ (centre + shift)
        data = (*inverse[0], offset[0], *inverse[1], offset[1])
        picture = Image.fromarray(np.asarray(images[i // count], np.float32), "F")
        out[i] = np.asarray(
            picture.transform(picture.size, Image.Transform.AFFINE, data, Image.Resampling.BILINEAR)
        )
    return out


def fit(
    start: Head,
    sets: list[tuple[np.ndarray, np.ndarray, float]],
    l2: float = L2,
    steps: int = STEPS,
) -> Head:
    """Weighted softmax regression from `start` (Adam, full batch): each (features, labels,
    weight) set contributes its weight times its mean cross-entropy."""
    w, b, t = start.weight.copy(), start.bias.copy(), start.temperature
    w0, b0 = start.weight, start.bias
    moments = [np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)]
    rate, beta1, beta2 = 1e-3, 0.9, 0.999
    for step in range(1, steps + 1):
        gw, gb = l2 * (w - w0), l2 * (b - b0)
        for x, y, weight in sets:
            if len(y) == 0:
                continue
            z = (x @ w.T + b) / t
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(y)), y] -= 1
            gw += weight * p.T @ x / (len(y) * t)
            gb += weight * p.mean(0) / t
        for i, (param, grad) in enumerate(((w, gw), (b, gb))):
            m, v = moments[2 * i], moments[2 * i + 1]
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad**2
            param -= rate * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + 1e-8)
    return Head(w, b, t)


def usable(found: list[Sample]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images, labels and content hashes of each digit of the decisions whose digits were
    found (the latest decision per file); a number's digits share its file's hash, so they are
    held out together."""
    latest: dict[str, Sample] = {}
    for s in found:
        key = s.sha256 or f"{s.time}"
        latest[key] = s
    images: list[np.ndarray] = []
    labels: list[int] = []
    hashes: list[str] = []
    for s in latest.values():
        if s.images is not None and s.label and len(s.images) == len(s.label):
            images.extend(s.images)
            labels.extend(int(d) for d in s.label)
            hashes.extend([s.sha256] * len(s.label))
    if not images:
        return np.zeros((0, 28, 28), np.float32), np.zeros(0, np.int64), []
    return np.stack(images), np.array(labels, np.int64), hashes


def held_out(sha256: str) -> bool:
    return int(hashlib.sha256(sha256.encode()).hexdigest()[:8], 16) / 2**32 < HOLD_OUT


def hold_mask(keys: list[str]) -> np.ndarray:
    """Which decisions are held out (by `held_out`), or every fifth when that holds out none
    or all of a few."""
    hold = np.array([held_out(k) for k in keys], dtype=bool)
    if not hold.any() or hold.all():
        hold = np.arange(len(keys)) % 5 == 0
    return hold


@dataclass
class Outcome:
    before_held: float
    after_held: float
    before_mnist: float
    after_mnist: float
    held: int
    trained: int
    before_loss: float = float("nan")
    after_loss: float = float("nan")

    @property
    def better_held(self) -> bool:
        """More held-out decisions read right; or as many, each more surely (lower loss): when
        the held-out ones are mostly confirmations, accuracy alone cannot rise."""
        if self.after_held != self.before_held:
            return self.after_held > self.before_held
        return self.after_loss < self.before_loss

    @property
    def passes(self) -> bool:
        return self.better_held and self.after_mnist >= self.before_mnist - MAX_MNIST_DROP


def decision_share(decisions: int, replay: int) -> float:
    """The decisions' share of the loss (MNIST replay has the rest). It grows with their number:
    each weighs as much as `DECISION_WORTH` replay images (the office's own handwriting, judged by
    its own reviewer), so a reviewer's correction is not diluted by the confirmations recorded
    beside it (a fixed share of a mean would be), up to `MAX_DECISION_SHARE`."""
    worth = DECISION_WORTH * decisions
    return min(MAX_DECISION_SHARE, worth / (worth + replay)) if decisions else 0.0


def adapt(
    surgery: Surgery,
    images: np.ndarray,
    labels: np.ndarray,
    hold: np.ndarray,
    mnist_dir: Path,
    replay: int | None = None,
) -> tuple[Head, Outcome]:
    """Fit a new head on the decisions not held out (with MNIST replay); judge it."""

    session = surgery.feature_session
    x = features(session, images)
    learnt_x = np.concatenate([x[~hold], features(session, variants(images[~hold], VARIANTS))])
    learnt_y = np.concatenate([labels[~hold], np.repeat(labels[~hold], VARIANTS)])
    replay_x, replay_y, test_x, test_y = surgery.mnist_features(mnist_dir, replay or REPLAY)
    start = surgery.head
    share = decision_share(int((~hold).sum()), len(replay_y))
    head = fit(start, [(learnt_x, learnt_y, share), (replay_x, replay_y, 1 - share)])
    outcome = Outcome(
        start.accuracy(x[hold], labels[hold]),
        head.accuracy(x[hold], labels[hold]),
        start.accuracy(test_x, test_y),
        head.accuracy(test_x, test_y),
        int(hold.sum()),
        int((~hold).sum()),
        start.loss(x[hold], labels[hold]),
        head.loss(x[hold], labels[hold]),
    )
    return head, outcome


def install(candidate: bytes, target: Path) -> Path | None:
    """Put `candidate` at `target` atomically; the previous model is kept beside it."""
    previous = None
    if target.exists():
        previous = target.with_name(f"{target.stem}.{time.strftime('%Y%m%dT%H%M%S')}.onnx")
        os.link(target, previous)
    atomic_write(target, candidate, 0o644)
    fsync_dir(target.parent)
    return previous


def percent(value: float) -> str:
    return "n/a" if value != value else f"{100 * value:.2f} %"


def main(config_path: Path, output: Path, promote: bool, data_dir: str | None) -> int:
    """`digit-inbox learn`: print before/after figures; write the candidate if it is better."""
    from digit_inbox.export import mnist

    cfg = config.load(config_path)
    if promote and cfg.recognition.model is None:
        raise ConfigError(
            [
                "recognition.model: null (the embedded model) cannot be replaced; copy it to a "
                "path of your own, set recognition.model to it, then promote"
            ]
        )
    images, labels, hashes = usable(samples(cfg))
    if len(labels) < MIN_DECISIONS:
        raise UsageError(
            f"{len(labels)} digit(s) recorded in decisions; learning needs at least "
            f"{MIN_DECISIONS} (record them with `digit-inbox correct` or the review page)"
        )
    hold = hold_mask(hashes)
    current = model_path(cfg.recognition)
    surgery = Surgery(current)
    head, outcome = adapt(surgery, images, labels, hold, mnist.resolve_data_dir(data_dir))
    print(f"decisions: {outcome.trained} learnt from, {outcome.held} held out")
    print(
        f"held-out decisions: {percent(outcome.before_held)} -> {percent(outcome.after_held)} "
        f"(loss {outcome.before_loss:.4f} -> {outcome.after_loss:.4f})"
    )
    print(f"MNIST test: {percent(outcome.before_mnist)} -> {percent(outcome.after_mnist)}")
    if not outcome.passes:
        print(
            "candidate not written: it must read more held-out decisions right (or as many, with "
            "a lower loss) and lose at most "
            f"{100 * MAX_MNIST_DROP:.1f} points on MNIST test"
        )
        return int(ExitCode.FILES_FAILED)
    digest = hashlib.sha256(head.weight.tobytes() + head.bias.tobytes()).hexdigest()[:12]
    candidate = surgery.with_head(head, f"adapted-{digest}")
    output.write_bytes(candidate)
    print(f"candidate written: {output} (model id adapted-{digest})")
    if promote:
        assert cfg.recognition.model is not None
        previous = install(candidate, cfg.recognition.model)
        kept = f"; the previous one is kept as {previous}" if previous else ""
        print(f"promoted to {cfg.recognition.model}{kept}")
        if cfg.recognition.model_sha256 is not None:
            print(
                "recognition.model_sha256 pins the old model: set it to "
                f"{hashlib.sha256(candidate).hexdigest()} before reloading the daemon"
            )
        print("reload the daemon to use it: systemctl reload digit-inbox (or kill -HUP)")
    return int(ExitCode.OK)
