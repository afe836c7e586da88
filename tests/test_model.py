"""The shipped models honour the ONNX contract; a model that breaks it is refused clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from digit_inbox.daemon import contract
from digit_inbox.daemon.classifier import Classifier, embedded_model
from digit_inbox.daemon.errors import ModelError
from digit_inbox.export import mnist

SHIPPED = {
    "digits": embedded_model(),
    "softmax": embedded_model().with_name("softmax.onnx"),
}
# Sane floors, not the figures of a particular file: those live in the model card.
ACCURACY_FLOOR = {"digits": 0.97, "softmax": 0.85}
MAX_BYTES = 2 * 1024 * 1024


@pytest.fixture(scope="module", params=sorted(SHIPPED))
def shipped(request: pytest.FixtureRequest) -> tuple[str, Classifier]:
    return request.param, Classifier(SHIPPED[request.param])


@pytest.fixture(scope="module")
def first_thousand() -> mnist.Split:
    test = mnist.load_split(mnist.resolve_data_dir(None), "test")
    return mnist.Split(test.images[:1000], test.labels[:1000])


def test_the_classifier_loads_the_embedded_model_by_default() -> None:
    assert Classifier().path == SHIPPED["digits"]


def test_the_model_takes_image_and_returns_probs_with_a_dynamic_batch(
    shipped: tuple[str, Classifier],
) -> None:
    _, classifier = shipped
    (image,) = classifier.session.get_inputs()
    assert image.name == contract.INPUT_NAME
    assert image.type == "tensor(float)"
    assert image.shape[1:] == [1, contract.IMAGE_SIZE, contract.IMAGE_SIZE]
    assert not isinstance(image.shape[0], int), "the batch dimension must be dynamic"
    assert [o.name for o in classifier.session.get_outputs()] == [contract.OUTPUT_NAME]


@pytest.mark.parametrize("batch", [1, 7])
def test_probabilities_come_out_per_image_and_mostly_on_the_digits(
    shipped: tuple[str, Classifier], first_thousand: mnist.Split, batch: int
) -> None:
    _, classifier = shipped
    images = first_thousand.images[:batch].astype(np.float32)[:, None] / 255
    probs = classifier.predict(images)
    assert probs.shape == (batch, contract.NUM_DIGITS)  # the digits; "not one digit" dropped
    assert probs.dtype == np.float32
    assert ((probs >= 0) & (probs <= 1)).all()
    # MNIST digits are one digit each: most of their probability is on the digits.
    assert (probs.sum(1) <= 1 + 1e-5).all() and probs.sum(1).mean() > 0.9


def test_metadata_names_the_contract_version_and_the_model(
    shipped: tuple[str, Classifier],
) -> None:
    name, classifier = shipped
    assert classifier.metadata[contract.META_CONTRACT] == contract.CONTRACT_VERSION
    model_id = classifier.metadata[contract.META_MODEL_ID]
    assert classifier.model_id == model_id
    assert model_id.startswith(classifier.metadata[contract.META_ARCH] + "-")
    assert float(classifier.metadata[contract.META_VAL_ACC]) >= ACCURACY_FLOOR[name]


def test_the_shipped_cnn_divides_its_logits_by_the_fitted_temperature_before_the_softmax() -> None:
    graph = onnx.load(str(SHIPPED["digits"]))
    ops = [node.op_type for node in graph.graph.node]
    assert ops[-3:] == ["Gemm", "Div", "Softmax"]
    divisor = next(i for i in graph.graph.initializer if i.name == graph.graph.node[-2].input[1])
    metadata = {p.key: p.value for p in graph.metadata_props}
    temperature = float(metadata[contract.META_TEMPERATURE])
    assert float(numpy_helper.to_array(divisor)) == pytest.approx(temperature, rel=1e-3)
    assert 0 <= float(metadata[contract.META_VAL_ECE]) <= 0.015


def test_the_model_file_is_small(shipped: tuple[str, Classifier]) -> None:
    name, _ = shipped
    assert SHIPPED[name].stat().st_size <= MAX_BYTES


def test_accuracy_on_the_first_thousand_test_digits_is_above_a_sane_floor(
    shipped: tuple[str, Classifier], first_thousand: mnist.Split
) -> None:
    name, classifier = shipped
    probs = classifier.predict(first_thousand.images.astype(np.float32)[:, None] / 255)
    accuracy = float((probs.argmax(1) == first_thousand.labels).mean())
    assert accuracy >= ACCURACY_FLOOR[name]


# --- models that break the contract -----------------------------------------------------------


def tiny_model(
    path: Path,
    input_name: str = contract.INPUT_NAME,
    input_shape: tuple[str | int, ...] = ("N", 1, 28, 28),
    output_name: str = contract.OUTPUT_NAME,
    metadata: dict[str, str] | None = None,
    classes: int = contract.NUM_CLASSES,
) -> Path:
    """A one-layer softmax model, valid ONNX, with whatever names and shapes a test needs."""
    weights = numpy_helper.from_array(np.zeros((784, classes), np.float32), "weights")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", [input_name], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "weights"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [output_name], axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", classes])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for key, value in (metadata or {contract.META_CONTRACT: contract.CONTRACT_VERSION}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_a_well_formed_tiny_model_is_accepted(tmp_path: Path) -> None:
    classifier = Classifier(tiny_model(tmp_path / "tiny.onnx"))
    probs = classifier.predict(np.zeros((3, 1, 28, 28), np.float32))
    np.testing.assert_allclose(probs, 1 / contract.NUM_CLASSES, atol=1e-6)
    assert classifier.model_id == "tiny"  # no id in its metadata: named after the file


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"input_name": "x"}, r"inputs are \['x'\], expected \['image'\]"),
        ({"input_shape": ("N", 784)}, r"input shape is \['N', 784\], expected \[N, 1, 28, 28\]"),
        ({"output_name": "scores"}, r"outputs are \['scores'\], expected 'probs'"),
        ({"classes": 10}, r"gives 10 probabilities an image, expected 11 \(the ten digits"),
        (
            {"metadata": {contract.META_CONTRACT: "0"}},
            rf"contract 0, this digit-inbox speaks {contract.CONTRACT_VERSION}",
        ),
    ],
)
def test_a_model_breaking_the_contract_is_a_model_error(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    path = tiny_model(tmp_path / "wrong.onnx", **change)  # type: ignore[arg-type]
    with pytest.raises(ModelError, match=message) as caught:
        Classifier(path)
    assert str(path) in str(caught.value)
    assert "not a digit-inbox model" in str(caught.value)


def test_a_file_that_is_not_onnx_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for")
    with pytest.raises(ModelError, match="cannot load the model") as caught:
        Classifier(path)
    assert "digit-inbox export" in str(caught.value)
