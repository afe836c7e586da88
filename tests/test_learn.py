"""`digit-inbox learn`: the last layer is found and replaced whatever follows it, the candidate
is judged on held-out decisions and MNIST, and nothing is written unless it passes."""

from __future__ import annotations

import signal

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from digit_inbox.daemon import config, learn
from digit_inbox.daemon.classifier import Classifier, embedded_model
from digit_inbox.daemon.cli import main
from digit_inbox.daemon.corrections import Corrector, Sample
from tests.helpers import (
    Folders,
    digit_png,
    drop,
    ensemble_model,
    mnist_test_digits,
    wait_until,
    write_config,
)


def tempered_model(path, temperature: float = 2.0) -> np.ndarray:
    """image -> Flatten -> Gemm (oddly named) -> Div by a temperature -> Softmax: the shape the
    retrained model keeps. Returns the Gemm's weight."""
    rng = np.random.default_rng(1)
    weight = rng.normal(size=(11, 784)).astype(np.float32)  # ten digits, "not one digit"
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], name="whatever"),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logits"], transB=1, name="x/y/z"),
        helper.make_node("Div", ["logits", "T"], ["cooled"], name="temperature"),
        helper.make_node("Softmax", ["cooled"], ["probs"], axis=1, name="s"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 11])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.zeros(11, np.float32), "B"),
            numpy_helper.from_array(np.array(temperature, np.float32), "T"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return weight


def test_the_last_gemm_is_found_by_its_place_and_what_follows_it_is_kept(tmp_path):
    path = tmp_path / "m.onnx"
    weight = tempered_model(path, temperature=2.0)
    surgery = learn.Surgery(path)
    assert np.allclose(surgery.head.weight, weight)
    new = learn.Head(surgery.head.weight * 0, np.arange(11, dtype=np.float64))
    candidate = tmp_path / "c.onnx"
    candidate.write_bytes(surgery.with_head(new, "adapted-test"))
    session = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"image": np.zeros((1, 1, 28, 28), np.float32)})[0][0]
    expected = np.exp(np.arange(11) / 2.0)  # the new bias, still divided by the temperature
    assert np.allclose(probs, expected / expected.sum(), atol=1e-6)
    assert Classifier(candidate).model_id == "adapted-test"


def test_an_ensembles_last_gemm_reads_its_concatenated_features(tmp_path):
    path = tmp_path / "ensemble.onnx"
    ensemble_model(path, width=128, temperature=0.5)
    surgery = learn.Surgery(path)
    assert surgery.head.weight.shape == (11, 256) and surgery.head.temperature == 0.5
    images, _ = mnist_test_digits()
    x = learn.features(surgery.feature_session, images[:16] / 255.0)
    assert x.shape == (16, 256)
    z = surgery.head.logits(x)
    mine = np.exp(z - z.max(1, keepdims=True))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = session.run(["probs"], {"image": (images[:16] / 255.0).astype(np.float32)[:, None]})[0]
    assert np.allclose(mine / mine.sum(1, keepdims=True), probs, atol=1e-5)


def test_the_shipped_models_features_give_its_own_probabilities():
    surgery = learn.Surgery(embedded_model())
    images, _ = mnist_test_digits()
    x = learn.features(surgery.feature_session, images[:64] / 255.0)
    probs = Classifier().predict(images[:64] / 255.0)
    z = surgery.head.logits(x)
    mine = np.exp(z - z.max(1, keepdims=True))
    # The classifier gives the ten digits' probabilities; "not one digit" is the rest.
    assert np.allclose((mine / mine.sum(1, keepdims=True))[:, :10], probs, atol=1e-4)


def test_fitting_learns_what_the_decisions_say_and_stays_near_the_start():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    y = (x[:, 0] > 0).astype(np.int64)  # class 1 iff the first feature is positive
    start = learn.Head(np.zeros((2, 8)), np.zeros(2))
    head = learn.fit(start, [(x, y, 1.0)], steps=2000)
    assert head.accuracy(x, y) > 0.95 > start.accuracy(x, y)
    pulled = learn.fit(start, [(x, y, 1.0)], l2=100.0, steps=2000)
    assert np.abs(pulled.weight).sum() < np.abs(head.weight).sum()


def test_each_decision_is_also_learnt_from_jittered_copies_that_are_still_its_digit():
    images, labels = mnist_test_digits()
    images = images[:40] / 255.0
    copies = learn.variants(images, 4)
    assert copies.shape == (160, 28, 28)
    assert np.array_equal(copies, learn.variants(images, 4))  # the same copies every run
    originals = np.repeat(images, 4, axis=0)
    assert not np.allclose(copies, originals, atol=0.1)  # each copy moved
    ink = copies.sum((1, 2)) / originals.sum((1, 2))
    assert ink.min() > 0.7 and ink.max() < 1.3  # no stroke pushed out of the frame
    read = Classifier().predict(copies).argmax(1)
    assert (read == np.repeat(labels[:40], 4)).mean() > 0.95  # a writer's digit, not another


def test_each_decision_keeps_its_weight_however_many_are_recorded_until_replay_keeps_half():
    replay = 10_000
    assert learn.decision_share(0, replay) == 0.0
    few, more = learn.decision_share(10, replay), learn.decision_share(20, replay)
    odds = [share / (1 - share) for share in (few, more)]  # decisions' weight against replay's
    assert odds[1] == pytest.approx(2 * odds[0])  # twice the decisions, twice the pull
    assert learn.decision_share(100_000, replay) == learn.MAX_DECISION_SHARE


@pytest.mark.parametrize(
    ("held", "mnist", "passes"),
    [
        ((0.5, 0.6), (0.99, 0.99), True),
        ((0.5, 0.5), (0.99, 0.995), False),
        ((0.5, 0.9), (0.99, 0.9885), False),
        ((0.5, 0.9), (0.99, 0.9891), True),
    ],
)
def test_the_gate_wants_more_held_out_right_and_at_most_a_tenth_of_a_point_less_mnist(
    held, mnist, passes
):
    assert learn.Outcome(*held, *mnist, held=5, trained=20).passes is passes


def test_as_many_held_out_right_passes_only_with_a_lower_loss():
    same = (0.9, 0.9, 0.99, 0.99)
    assert learn.Outcome(*same, 5, 20, before_loss=0.3, after_loss=0.2).passes
    assert not learn.Outcome(*same, 5, 20, before_loss=0.3, after_loss=0.3).passes


@pytest.fixture
def office_with_decisions(tmp_path):
    """Twelve scans in review/, each decided by a person, with labels that contradict the ink."""
    cfg_path = write_config(tmp_path)
    cfg = config.load(cfg_path)
    config.make_folders(cfg)
    folders = Folders.under(tmp_path)
    with Corrector(cfg) as corrector:
        for i in range(12):
            data, label = digit_png(100 + i)
            drop(folders.review, f"s{i}.png", data)
            corrector.correct(str(folders.review / f"s{i}.png"), str((label + 1 + i % 9) % 10))
    return cfg_path, folders


def test_a_candidate_that_fails_the_gate_is_not_written(
    office_with_decisions, tmp_path, capsys, monkeypatch
):
    cfg_path, _ = office_with_decisions
    monkeypatch.setattr(learn, "REPLAY", 500)  # the gate still uses all of MNIST test
    out = tmp_path / "candidate.onnx"
    assert main(["learn", "-c", str(cfg_path), "-o", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "held-out decisions:" in printed and "MNIST test:" in printed
    assert "candidate not written" in printed
    assert not out.exists()


def test_each_digit_of_a_number_is_learnt_and_held_out_with_its_file():
    def sample(sha: str, label: str, images: np.ndarray | None, t: float) -> Sample:
        return Sample(t, sha, label, "corrected", "", None, images)

    digits = np.arange(3 * 28 * 28, dtype=np.float32).reshape(3, 28, 28)
    images, labels, hashes = learn.usable(
        [
            sample("n", "42", digits[:2], 1.0),
            sample("one", "7", digits[2:], 2.0),
            sample("unfound", "11", None, 3.0),  # its marks were not its digits
            sample("none", "", None, 4.0),  # not a number
        ]
    )
    assert labels.tolist() == [4, 2, 7]
    assert np.array_equal(images, digits)
    assert hashes == ["n", "n", "one"]
    assert learn.hold_mask(["n", "n", *[f"x{i}" for i in range(20)]])[:2].tolist() in (
        [True, True],
        [False, False],
    )


def test_learning_needs_enough_decisions(tmp_path):
    cfg_path = write_config(tmp_path)
    assert main(["learn", "-c", str(cfg_path), "-o", str(tmp_path / "c.onnx")]) == 2


def test_promoting_needs_a_model_path_of_its_own(tmp_path):
    cfg_path = write_config(tmp_path)
    out = tmp_path / "c.onnx"
    assert main(["learn", "-c", str(cfg_path), "-o", str(out), "--promote"]) == 3


def test_install_replaces_the_model_atomically_and_keeps_the_previous_one(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"old")
    previous = learn.install(b"new", target)
    assert target.read_bytes() == b"new"
    assert previous is not None and previous.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, previous.name])


@pytest.mark.slow
def test_sighup_switches_the_running_daemon_to_the_promoted_model(tmp_path, start_daemon):
    """After the batch in hand the daemon reads with the new file; rows name their model."""
    model = tmp_path / "model.onnx"
    model.write_bytes(embedded_model().read_bytes())
    daemon = start_daemon(write_config(tmp_path, recognition={"model": str(model)}))
    drop(daemon.folders.inbox, "before.png", digit_png(5)[0])
    (first,) = daemon.wait_rows(1)
    surgery = learn.Surgery(model)
    learn.install(surgery.with_head(surgery.head, "adapted-test"), model)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "reading with model adapted-test" in daemon.log, what="the reload")
    drop(daemon.folders.inbox, "after.png", digit_png(6)[0])
    rows = daemon.wait_rows(2)
    assert [r["model"] for r in rows] == [first["model"], "adapted-test"]
    assert first["model"] != "adapted-test"
    assert daemon.stop() == 0


def test_a_passing_candidate_is_written_and_promoted_keeping_the_previous_model(
    office_with_decisions, tmp_path, capsys, monkeypatch
):
    """The wiring after the gate (the gate itself is tested above): written, installed, named."""
    cfg_path, folders = office_with_decisions
    model = tmp_path / "model.onnx"
    model.write_bytes(embedded_model().read_bytes())
    promoted = write_config(folders.root, recognition={"model": str(model)})
    assert promoted == cfg_path

    def passing(surgery, *args, **kwargs):
        return surgery.head, learn.Outcome(0.5, 0.6, 0.99, 0.99, held=2, trained=10)

    monkeypatch.setattr(learn, "adapt", passing)
    out = tmp_path / "candidate.onnx"
    assert main(["learn", "-c", str(cfg_path), "-o", str(out), "--promote"]) == 0
    assert "promoted to" in capsys.readouterr().out
    assert Classifier(out).model_id.startswith("adapted-")
    assert model.read_bytes() == out.read_bytes()
    kept = [p for p in tmp_path.glob("model.*.onnx")]
    assert len(kept) == 1 and kept[0].read_bytes() == embedded_model().read_bytes()
