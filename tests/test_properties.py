"""Properties over inputs nobody would write by hand: any array or image the decoder can yield
becomes the model's 28x28 or a blank with its reason; any bytes become a page or a clean
DecodeError; any config document becomes a valid config or a ConfigError listing its problems.
Never a traceback, never a hang: each property has a bounded number of examples and a deadline.
"""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from digit_inbox.daemon import config, decode, preprocess
from digit_inbox.daemon.errors import ConfigError
from digit_inbox.daemon.filing import NAME_MAX

BOUNDED = settings(
    max_examples=150,
    deadline=timedelta(seconds=10),  # generous: two shared cores; a hang still fails
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MAX_PIXELS = 1_000_000


def assert_model_input_or_blank(prepared: preprocess.Prepared) -> None:
    if prepared.image is None:
        assert prepared.blank_reason
        return
    image = prepared.image
    assert image.shape == (28, 28) and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0 and image.max() <= 1


# --- Preprocessing: arrays.

DTYPES = [np.uint8, np.uint16, np.int16, np.int32, np.int64, np.float32, np.float64, np.bool_]


@st.composite
def pixel_arrays(draw: st.DrawFn) -> np.ndarray:
    h, w = draw(st.integers(1, 60)), draw(st.integers(1, 60))
    channels = draw(st.sampled_from([None, 1, 2, 3, 4]))
    shape = (h, w) if channels is None else (h, w, channels)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind == "f":
        elements = st.floats(allow_nan=True, allow_infinity=True, width=8 * dtype.itemsize)
    else:
        elements = None
    kind = draw(st.sampled_from(["random", "flat", "digit-like"]))
    if kind == "random":
        return draw(hnp.arrays(dtype, shape, elements=elements))
    value = draw(hnp.from_dtype(dtype) if elements is None else elements)
    array = np.full(shape, value, dtype)
    if kind == "digit-like" and h > 4 and w > 4:  # a dark bar on the flat page
        ink = draw(hnp.from_dtype(dtype) if elements is None else elements)
        array[h // 4 : 3 * h // 4, w // 2 - 1 : w // 2 + 1] = ink
    return array


@BOUNDED
@given(pixels=pixel_arrays())
@example(pixels=np.full((28, 28), np.nan, np.float32))
@example(pixels=np.zeros((1, 1), np.uint8))
@example(pixels=np.array([[np.inf, -np.inf], [0.0, 1e308]]))
def test_any_array_becomes_the_models_input_a_blank_or_a_clean_error(pixels):
    try:
        prepared = preprocess.prepare(pixels)
    except decode.DecodeError as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    assert_model_input_or_blank(prepared)


@BOUNDED
@given(
    shape=st.one_of(
        st.tuples(st.integers(0, 3)),
        st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(5, 8)),
        st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
    ),
    dtype=st.sampled_from(["U3", "O", "complex64", "uint8"]),
)
def test_arrays_that_are_not_pictures_are_a_decode_error(shape, dtype):
    pixels = np.zeros(shape, dtype=dtype)
    with pytest.raises(decode.DecodeError):
        preprocess.prepare(pixels)


# --- Preprocessing: pages as the decoder yields them (and any other Pillow mode).

# The modes Pillow's decoders open files in (premultiplied La and RGBa are converted on load).
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I"]
MODES += ["I;16", "I;16B", "F"]


@st.composite
def pages(draw: st.DrawFn) -> Image.Image:
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 80)), draw(st.integers(1, 80)))
    probe = Image.new(mode, (1, 1))
    data = draw(st.binary(min_size=0, max_size=64))
    raw = (data * (len(probe.tobytes()) * size[0] * size[1] // max(len(data), 1) + 1))[
        : len(probe.tobytes()) * size[0] * size[1]
    ]
    if len(raw) < len(probe.tobytes()) * size[0] * size[1]:
        raw = bytes(len(probe.tobytes()) * size[0] * size[1])
    image = Image.frombytes(mode, size, raw)
    if mode in ("P", "PA") and draw(st.booleans()):
        image.info["transparency"] = draw(st.integers(0, 255))
    return image


@BOUNDED
@given(page=pages())
def test_any_pillow_page_becomes_the_models_input_or_a_blank(page):
    assert_model_input_or_blank(preprocess.prepare(page))


# --- Decoding: bytes.


def seeds() -> list[bytes]:
    """One small digit-like picture in each format and encoding the decoder reads."""
    page = Image.new("L", (40, 56), 255)
    page.paste(0, (16, 8, 24, 48))
    found = []
    for fmt, mode, options in (
        ("PNG", "L", {}),
        ("PNG", "I;16", {}),
        ("PNG", "P", {"transparency": 0}),
        ("JPEG", "L", {"quality": 80}),
        ("JPEG", "CMYK", {}),
        ("TIFF", "RGB", {"compression": "tiff_deflate"}),
        ("TIFF", "1", {"compression": "group4"}),
        ("BMP", "RGB", {}),
        ("GIF", "P", {}),
        ("WEBP", "RGBA", {"quality": 50}),
    ):
        buffer = io.BytesIO()
        page.convert(mode).save(buffer, format=fmt, **options)
        found.append(buffer.getvalue())
    return found


SEEDS = seeds()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """A valid file with some bytes flipped, inserted, removed or cut off."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        what = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if what == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif what == "set" and data:
            data[at] = draw(st.sampled_from([0, 0xFF, 0x7F, 0x80]))
        elif what == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif what == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif what == "truncate":
            del data[at:]
    return bytes(data)


def decode_and_prepare(data: bytes) -> None:
    """The daemon's path for one file's bytes: only DecodeError may come out."""
    start = time.perf_counter()
    try:
        decoded = decode.decode_bytes(data, ".png", MAX_PIXELS)
        assert decoded.image.mode in ("L", "RGB")
        assert decoded.width * decoded.height <= MAX_PIXELS
        prepared = preprocess.prepare(decoded.image)
    except decode.DecodeError as exc:
        assert exc.reason and "\n" not in exc.reason
        return
    finally:
        assert time.perf_counter() - start < 10
    assert_model_input_or_blank(prepared)


@BOUNDED
@given(data=mutated_images())
def test_a_damaged_image_decodes_or_is_refused_with_a_reason(data):
    decode_and_prepare(data)


@BOUNDED
@given(data=st.binary(max_size=2048))
@example(data=b"")
@example(data=b"\x89PNG\r\n\x1a\n")
@example(data=b"GIF89a\xff\xff\xff\xff")
@example(data=b"II*\x00" + b"\xff" * 64)
def test_arbitrary_bytes_decode_or_are_refused_with_a_reason(data):
    decode_and_prepare(data)


# --- The config loader.

SCHEMA = config.schema(Path("/"))
SPECIAL_TEXT = ["{digit}", "{date}/{digit}", "{digit:>300}", "{digit!r}", "{digit:x}"]
SPECIAL_TEXT += ["{digit:>{x}}", "{digit}/{year}" + "/x" * 100, "a" * 300 + "/{digit}"]
SPECIAL_TEXT += ["../x", "/abs", "~", "", " ", "\0", "\0{digit}", "{}", "0" * 64, "f" * 64]
SPECIAL_TEXT += ["auto", "polling"]
SPECIAL_TEXT += ["DEBUG", "info", ".png", "*.tmp", "{digit", "{0}", "flag", "review", "x.prom"]

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(SPECIAL_TEXT)
    | st.binary(max_size=8)
    | st.dates(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


def section(keys: list[str]) -> st.SearchStrategy[object]:
    mapping = st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), values, max_size=6)
    return mapping | values


documents = st.fixed_dictionaries(
    {},
    optional={
        **{name: section(list(keys)) for name, keys in SCHEMA.items()},
        "log_level": values,
        "unknown": values,
    },
)


def load(tmp_path: Path, document: object) -> config.Config:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True))
    return config.load(path)


def assert_usable(cfg: config.Config) -> None:
    """What the daemon relies on from a config that loaded."""
    for field in ("inbox", "outbox", "review", "failed", "reports", "state"):
        assert getattr(cfg.paths, field).is_absolute()
    day = {"date": "2024-12-31", "year": "2024", "month": "12", "day": "31"}
    folder = cfg.filing.layout.format(digits="7", digit="7", **day)
    parts = Path(folder).parts
    assert parts and not Path(folder).is_absolute() and ".." not in parts
    assert all(len(os.fsencode(p)) <= NAME_MAX for p in parts)
    assert "7" in folder


@BOUNDED
@given(document=documents)
@example(document={"filing": {"layout": "{digit:>{x}}"}})
@example(document={"filing": {"layout": "{digit:>300}"}})
@example(document={"filing": {"layout": "a" * 300 + "/{digit}"}})
def test_any_config_document_is_a_usable_config_or_a_list_of_problems(tmp_path, document):
    try:
        cfg = load(tmp_path, document)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) and p.strip() for p in exc.problems)
        return
    assert_usable(cfg)


def test_a_yaml_alias_bomb_is_reported_at_once(tmp_path):
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):  # nine levels of nine: 387 million strings if expanded
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    lines.append("paths: {inbox: *a9}\nwatch: {ignore: *a9}")
    path = tmp_path / "config.yaml"
    path.write_text("\n".join(lines))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        config.load(path)
    assert time.perf_counter() - start < 5
    assert any(p.startswith("paths.inbox: must be a string path") for p in caught.value.problems)
    assert max(len(p) for p in caught.value.problems) < 300
