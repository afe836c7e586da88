"""train -> export -> evaluate through the `digit-inbox` command line, on dry runs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from digit_inbox.daemon import cli, contract
from digit_inbox.daemon.classifier import Classifier
from digit_inbox.daemon.errors import ExitCode
from digit_inbox.export import mnist


def dry_run(arch: str, output: Path) -> Path:
    assert cli.main(["train", "--dry-run", "--arch", arch, "--output", str(output)]) == ExitCode.OK
    return output


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dry_run("cnn", tmp_path_factory.mktemp("cnn") / "cnn.pt")


@pytest.mark.slow
def test_a_cnn_dry_run_exports_and_evaluates_like_torch(
    cnn_checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    checkpoint = torch.load(cnn_checkpoint, weights_only=True)
    assert (checkpoint["arch"], checkpoint["epochs"], checkpoint["dry_run"]) == ("cnn", 1, True)

    model = tmp_path / "cnn.onnx"
    assert cli.main(["export", str(cnn_checkpoint), "--output", str(model)]) == ExitCode.OK
    assert "parity max |diff|" in caplog.text
    assert not model.with_name("cnn.onnx.tmp").exists()
    classifier = Classifier(model)
    assert classifier.model_id.startswith("cnn-")
    assert classifier.metadata[contract.META_CONTRACT] == contract.CONTRACT_VERSION
    assert classifier.metadata[contract.META_TRAIN_MD5] == mnist.data_fingerprint()
    temperature = float(classifier.metadata[contract.META_TEMPERATURE])
    assert temperature == pytest.approx(checkpoint["temperature"], rel=1e-3)

    capsys.readouterr()
    assert cli.main(["evaluate", str(model), "--output-dir", str(tmp_path)]) == ExitCode.OK
    out = capsys.readouterr().out
    assert classifier.model_id in out
    printed = re.search(r"accuracy\s+([\d.]+)%", out)
    assert printed is not None, out
    accuracy = float(printed.group(1)) / 100
    # onnxruntime and torch see the same 10,000 test images: the same accuracy, give or take a tie.
    assert accuracy == pytest.approx(checkpoint["test_accuracy"], abs=0.002)
    assert (tmp_path / "confusion.png").stat().st_size > 0
    assert (tmp_path / "errors.png").stat().st_size > 0


@pytest.mark.slow
def test_checkpoints_of_one_seed_export_as_one_averaged_model_that_learn_can_adapt(
    cnn_checkpoint: Path, tmp_path: Path
) -> None:
    import numpy as np
    import onnx

    from digit_inbox.daemon import learn

    writers = tmp_path / "writers.pt"
    args = ["train", "--dry-run", "--augment", "writers", "-o", str(writers)]
    assert cli.main(args) == ExitCode.OK
    members = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    for checkpoint, model in zip((cnn_checkpoint, writers), members, strict=True):
        assert cli.main(["export", str(checkpoint), "-o", str(model)]) == ExitCode.OK
    ensemble = tmp_path / "ensemble.onnx"
    args = ["export", str(cnn_checkpoint), str(writers), "-o", str(ensemble)]
    assert cli.main(args) == ExitCode.OK

    classifier = Classifier(ensemble)
    assert classifier.model_id.startswith("cnn+cnn-")
    assert [n.op_type for n in onnx.load(str(ensemble)).graph.node][-4:] == [
        "Concat", "Gemm", "Div", "Softmax"
    ]  # fmt: skip
    # Its probabilities rank like the members' temperature-scaled logits averaged.
    images = mnist.load_split(mnist.resolve_data_dir(None), "test").images[:200]
    x = images.astype(np.float32)[:, None] / 255
    # (log-probabilities differ from logits / T by one constant per image: same argmax)
    averaged = sum(np.log(Classifier(m).predict(x)) for m in members)
    assert (classifier.predict(x).argmax(1) == averaged.argmax(1)).mean() >= 0.995
    assert learn.Surgery(ensemble).head.weight.shape == (11, 256)


def test_checkpoints_of_different_seeds_are_not_averaged(
    cnn_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = torch.load(cnn_checkpoint, weights_only=True)
    other["seed"] = 2
    torch.save(other, tmp_path / "seed2.pt")
    output = tmp_path / "m.onnx"
    args = ["export", str(cnn_checkpoint), str(tmp_path / "seed2.pt"), "-o", str(output)]
    assert cli.main(args) == ExitCode.MODEL
    assert "one --seed" in caplog.text
    assert not output.exists()


def test_a_softmax_dry_run_exports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    checkpoint = dry_run("softmax", tmp_path / "softmax.pt")
    model = tmp_path / "softmax.onnx"
    assert cli.main(["export", str(checkpoint), "-o", str(model)]) == ExitCode.OK
    assert "parity max |diff|" in caplog.text
    assert Classifier(model).metadata[contract.META_ARCH] == "softmax"


def test_exporting_a_corrupt_checkpoint_is_a_model_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 this was never a checkpoint")
    output = tmp_path / "model.onnx"
    assert cli.main(["export", str(corrupt), "-o", str(output)]) == ExitCode.MODEL
    assert "not a checkpoint" in caplog.text
    assert "digit-inbox train" in caplog.text
    assert not output.exists()


def test_exporting_a_checkpoint_of_an_unknown_architecture_is_a_model_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    foreign = tmp_path / "foreign.pt"
    torch.save({"arch": "resnet", "state_dict": {}}, foreign)
    assert cli.main(["export", str(foreign), "-o", str(tmp_path / "m.onnx")]) == ExitCode.MODEL
    assert "unknown architecture 'resnet'" in caplog.text


def test_training_without_a_data_folder_is_a_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(mnist.ENV_DATA_DIR, raising=False)
    assert cli.main(["train", "--dry-run", "-o", str(tmp_path / "x.pt")]) == ExitCode.DATA
    assert "--data-dir" in caplog.text
    assert not (tmp_path / "x.pt").exists()


def test_evaluating_a_missing_model_is_a_model_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert cli.main(["evaluate", str(tmp_path / "missing.onnx")]) == ExitCode.MODEL
    assert "missing.onnx" in caplog.text


def test_other_writers_styles_draw_flags_on_ones_and_bars_on_sevens_only() -> None:
    from digit_inbox.export import train

    x = torch.zeros(3, 1, 28, 28)
    x[:, 0, 6:22, 13:15] = 1.0  # a vertical stroke, as in a 1 or a 7's stem
    y = torch.tensor([1, 7, 4])
    g = torch.Generator().manual_seed(0)
    drawn = [train.strokes(x, y, g) for _ in range(20)]
    added = torch.stack([(d - x).clamp(min=0).sum((1, 2, 3)) for d in drawn])  # [20, 3]
    assert (added[:, 0] > 0).any() and (added[:, 1] > 0).any()
    assert (added[:, 2] == 0).all()
    assert all(((d >= 0) & (d <= 1)).all() for d in drawn)


def test_the_writers_augmentation_keeps_the_contract_shape_and_range() -> None:
    from digit_inbox.export import train

    x = torch.rand(16, 1, 28, 28)
    y = torch.arange(16) % 10
    g = torch.Generator().manual_seed(1)
    out = train.stored(train.augment(train.other_writers(x, y, g), g), g)
    assert out.shape == x.shape
    assert float(out.min()) >= 0 and float(out.max()) <= 1
