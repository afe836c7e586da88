"""Fine-tuning in torch (the other way to learn, measured by bench/bench_learn.py): the ONNX
graph runs in torch as onnxruntime runs it, and the candidate is that graph with new weights,
judged by `learn`'s gate."""

from __future__ import annotations

import numpy as np
import onnx
import torch

from digit_inbox.daemon import learn
from digit_inbox.daemon.classifier import Classifier, embedded_model
from digit_inbox.export import finetune, mnist
from tests.helpers import ensemble_model, mnist_test_digits


def logits_in_torch(surgery: learn.Surgery, images: np.ndarray) -> np.ndarray:
    net = finetune.Graph(surgery.model, surgery.gemm.output[0])
    with torch.no_grad():
        return net(torch.from_numpy(images.astype(np.float32)).unsqueeze(1)).numpy()


def test_the_shipped_graph_in_torch_gives_its_logits():
    surgery = learn.Surgery(embedded_model())
    images = mnist_test_digits()[0][:32] / 255.0
    x = learn.features(surgery.feature_session, images)
    expected = x @ surgery.head.weight.T + surgery.head.bias
    assert np.allclose(logits_in_torch(surgery, images), expected, atol=1e-4)


def test_an_ensemble_graph_in_torch_gives_its_logits(tmp_path):
    path = tmp_path / "ensemble.onnx"
    ensemble_model(path)
    surgery = learn.Surgery(path)
    images = mnist_test_digits()[0][:8] / 255.0
    x = learn.features(surgery.feature_session, images)
    expected = x @ surgery.head.weight.T + surgery.head.bias
    assert np.allclose(logits_in_torch(surgery, images), expected, atol=1e-4)


def test_a_fine_tuned_candidate_is_the_same_graph_with_new_weights_and_is_judged(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(learn, "REPLAY", 256)
    whole = mnist.load_split

    def first_500(data_dir, split, verify=True):  # MNIST test too: the gate's figures, sooner
        images, labels = whole(data_dir, split, verify)
        return mnist.Split(images[:500], labels[:500])

    monkeypatch.setattr(mnist, "load_split", first_500)
    surgery = learn.Surgery(embedded_model())
    images, labels = mnist_test_digits()
    images, labels = images[:20] / 255.0, labels[:20].astype(np.int64)
    hold = np.arange(20) % 5 == 0
    candidate, outcome = finetune.finetune(
        surgery, images, labels, hold, mnist.resolve_data_dir(None), steps=2
    )
    model = onnx.load_from_string(candidate)
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in surgery.model.graph.node]
    changed = {
        i.name
        for i, j in zip(model.graph.initializer, surgery.model.graph.initializer, strict=True)
        if i.raw_data != j.raw_data
    }
    assert surgery.gemm.input[1] in changed and "temperature" not in changed
    assert (outcome.held, outcome.trained) == (4, 16)
    assert 0.98 < outcome.before_mnist <= 1 and 0.97 < outcome.after_mnist <= 1
    path = tmp_path / "c.onnx"
    path.write_bytes(candidate)
    assert Classifier(path).model_id.startswith("finetuned-")
