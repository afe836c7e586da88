"""Decoding: every format and colour mode a scanner or phone writes reads as the same page, and
every kind of bad file ends as a DecodeError naming its problem, quickly."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import struct
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digit_inbox.daemon import decode
from digit_inbox.daemon.decode import DecodeError

SIZE = (60, 40)  # width, height
MARK = (slice(5, 15), slice(8, 20))  # rows, columns of a dark mark near the top left


def page(mode: str = "RGB") -> Image.Image:
    """A white page with a black mark, in `mode`."""
    pixels = np.full((SIZE[1], SIZE[0], 3), 255, np.uint8)
    pixels[MARK] = 0
    image = Image.fromarray(pixels)
    if mode == "RGBA":
        return image.convert("RGBA")
    if mode == "LA":
        return image.convert("LA")
    if mode in ("I;16", "I"):
        grey = np.asarray(image.convert("L"), np.uint16) * 257
        return Image.fromarray(grey if mode == "I;16" else grey.astype(np.int32))
    if mode == "F":
        return Image.fromarray(np.asarray(image.convert("L"), np.float32) / 255)
    return image.convert(mode)


def encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_reads_as_the_page(decoded: decode.Decoded) -> None:
    grey = np.asarray(decoded.image.convert("L"), np.float32)
    assert decoded.image.mode in ("L", "RGB")
    assert (decoded.width, decoded.height) == SIZE
    assert grey[MARK].mean() < 60, "the mark is dark"
    assert np.delete(grey, np.s_[0:20], axis=1).mean() > 200, "the paper is bright"


FORMAT_MODES = [
    ("PNG", ".png", mode) for mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I;16")
] + [
    ("JPEG", ".jpg", mode) for mode in ("L", "RGB", "CMYK")
] + [
    ("TIFF", ".tif", mode) for mode in ("1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F")
] + [
    ("BMP", ".bmp", mode) for mode in ("1", "L", "P", "RGB")
] + [
    ("GIF", ".gif", mode) for mode in ("L", "P")
] + [
    ("WEBP", ".webp", mode) for mode in ("RGB", "RGBA")
]  # fmt: skip


@pytest.mark.parametrize(("fmt", "suffix", "mode"), FORMAT_MODES)
def test_every_format_and_colour_mode_reads_as_the_page(tmp_path, fmt, suffix, mode):
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    path = write(tmp_path, f"scan{suffix}", encoded(page(mode), fmt, **options))
    decoded = decode.decode(path)
    assert_reads_as_the_page(decoded)
    assert decoded.format == fmt
    assert decoded.note == ""


def test_transparent_paper_is_composited_onto_white(tmp_path):
    # A cut-out as many tools write it: a stroke, and black under the fully transparent paper.
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    rgba[5:35, 28:32] = (0, 0, 0, 255)
    path = write(tmp_path, "cutout.png", encoded(Image.fromarray(rgba), "PNG"))
    grey = np.asarray(decode.decode(path).image.convert("L"))
    assert grey.shape == (SIZE[1], SIZE[0])
    assert grey[5:35, 28:32].max() < 30 and grey[:, :20].min() == 255


@pytest.mark.parametrize("colour", [(150, 150, 150), (255, 255, 255)], ids=["grey", "white"])
def test_a_cut_out_reads_its_opacity_as_ink(tmp_path, colour):
    """Paper turned into transparency, colours kept: a 40 % pencil stroke stays 40 % dark
    (composited onto white it would fade to 16 %, and white ink would vanish)."""
    rgba = np.zeros((SIZE[1], SIZE[0], 4), np.uint8)
    rgba[5:35, 28:32] = (*colour, 102)
    path = write(tmp_path, "pencil.png", encoded(Image.fromarray(rgba), "PNG"))
    grey = np.asarray(decode.decode(path).image.convert("L"))
    assert grey[5:35, 28:32].max() == 255 - 102 and grey[:, :20].min() == 255


def test_a_transparent_margin_around_the_page_is_cropped_off(tmp_path):
    canvas = Image.new("RGBA", (SIZE[0] + 12, SIZE[1] + 8), (0, 0, 0, 0))
    canvas.paste(page(), (7, 3))
    decoded = decode.decode(write(tmp_path, "margin.png", encoded(canvas, "PNG")))
    assert decoded.image.size == SIZE
    assert (decoded.width, decoded.height) == canvas.size  # the file's own size is reported
    assert_reads_as_the_page(dataclasses.replace(decoded, width=SIZE[0], height=SIZE[1]))


def test_palette_with_transparency_is_composited_onto_white(tmp_path):
    image = page("P")
    black = image.getpixel((0, 0))  # the paper's palette index
    data = encoded(image, "PNG", transparency=black)
    assert_reads_as_the_page(decode.decode(write(tmp_path, "p.png", data)))


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_honoured(tmp_path, orientation):
    stored = {
        3: Image.Transpose.ROTATE_180,
        6: Image.Transpose.ROTATE_90,
        8: Image.Transpose.ROTATE_270,
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(page().transpose(stored), "JPEG", quality=95, exif=exif)
    decoded = decode.decode(write(tmp_path, "phone.jpg", data))
    assert_reads_as_the_page(decoded)  # upright again, width and height as seen upright


def test_corrupt_exif_does_not_stop_decoding(tmp_path):
    data = encoded(page(), "JPEG", quality=95, exif=b"Exif\x00\x00II*\x00garbage")
    assert_reads_as_the_page(decode.decode(write(tmp_path, "odd.jpg", data)))


@pytest.mark.parametrize("fmt", ["TIFF", "GIF"])
def test_first_of_several_frames_is_read_and_noted(tmp_path, fmt):
    first, grey, black = page("L"), Image.new("L", SIZE, 128), Image.new("L", SIZE, 0)
    data = encoded(first, fmt, save_all=True, append_images=[grey, black])
    decoded = decode.decode(write(tmp_path, f"multi.{fmt.lower()}", data))
    assert_reads_as_the_page(decoded)
    assert "first of 3 frames" in decoded.note


def test_content_decides_the_format_and_a_wrong_extension_is_noted(tmp_path):
    decoded = decode.decode(write(tmp_path, "scan.jpg", encoded(page(), "PNG")))
    assert_reads_as_the_page(decoded)
    assert decoded.format == "PNG"
    assert "PNG content despite the .jpg name" in decoded.note


def test_sha256_is_of_the_exact_bytes_read(tmp_path):
    data = encoded(page(), "PNG")
    assert decode.decode(write(tmp_path, "a.png", data)).sha256 == hashlib.sha256(data).hexdigest()


def test_a_big_page_is_reduced_but_reports_its_real_size(tmp_path):
    big = Image.new("L", (7000, 5000), 255)
    decoded = decode.decode(write(tmp_path, "big.png", encoded(big, "PNG")))
    assert (decoded.width, decoded.height) == (7000, 5000)
    assert decoded.image.width * decoded.image.height <= 1.5 * decode.WORK_PIXELS


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A small PNG that declares width x height: decoding it would take gigabytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(bytes(width + 1) * 16))
        + png_chunk(b"IEND", b"")
    )


def reason(tmp_path: Path, name: str, data: bytes, **kwargs: int) -> str:
    with pytest.raises(DecodeError) as caught:
        decode.decode(write(tmp_path, name, data), **kwargs)
    assert "\n" not in caught.value.reason
    return caught.value.reason


def test_a_decompression_bomb_is_refused_from_its_header_before_decoding(tmp_path):
    start = time.monotonic()
    text = reason(tmp_path, "bomb.png", png_bomb(200_000, 200_000))
    assert text == (
        "image declares 40000 MP, over the 40 MP limit (recognition.max_pixels / --max-pixels)"
    )
    assert time.monotonic() - start < 1


def test_the_pixel_limit_follows_max_pixels(tmp_path):
    data = encoded(Image.new("L", (400, 300), 255), "PNG")
    assert reason(tmp_path, "a.png", data, max_pixels=100_000).endswith(
        "over the 0.1 MP limit (recognition.max_pixels / --max-pixels)"
    )
    assert decode.decode(write(tmp_path, "b.png", data), max_pixels=120_000).width == 400


def test_a_50_megapixel_phone_photo_is_decoded_at_reduced_size(tmp_path):
    """8160x6144, a common phone mode: over the 40 MP limit as stored, 3 MP as decoded."""
    photo = Image.new("L", (8160, 6144), 230)
    photo.paste(20, (3000, 2000, 5000, 4500))
    decoded = decode.decode(write(tmp_path, "photo.jpg", encoded(photo, "JPEG", quality=80)))
    assert (decoded.width, decoded.height) == (8160, 6144)
    assert decoded.image.width * decoded.image.height <= 1.5 * decode.WORK_PIXELS
    assert decoded.pixels[1536 // 2 + 100, 2040 // 2] < 60  # the dark block, at 1/4 size


def test_the_pixel_limit_applies_to_what_a_jpeg_decodes_to(tmp_path):
    photo = encoded(Image.new("L", (800, 600), 255), "JPEG")
    assert decode.decode(write(tmp_path, "a.jpg", photo), max_pixels=100_000).width == 800
    # ...but a progressive JPEG's decoder holds the full-size image, so it counts in full.
    progressive = encoded(Image.new("L", (800, 600), 255), "JPEG", progressive=True)
    assert reason(tmp_path, "p.jpg", progressive, max_pixels=100_000).endswith(
        "over the 0.1 MP limit (recognition.max_pixels / --max-pixels)"
    )
    # More than 1/8 size can reduce is refused as before.
    assert "MP even reduced, over the" in reason(tmp_path, "b.jpg", photo, max_pixels=5_000)


def test_a_jpeg_declaring_more_than_even_an_eighth_can_hold_is_refused_from_its_header(tmp_path):
    small = encoded(Image.new("L", (16, 16), 255), "JPEG")
    sof = small.index(b"\xff\xc0")
    bomb = small[: sof + 5] + struct.pack(">HH", 65000, 65000) + small[sof + 9 :]
    start = time.monotonic()
    assert "over the 40 MP limit" in reason(tmp_path, "bomb.jpg", bomb)
    assert time.monotonic() - start < 1


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("empty.png", b"", "empty file (0 bytes)"),
        ("page.png", b"<!DOCTYPE html><html><body>Sign in</body></html>", "looks like HTML"),
        ("notes.jpg", b"remember to buy milk\n" * 20, "looks like text"),
        ("scan.tif", b"PK\x03\x04" + bytes(100), "ZIP archive"),
        ("photo.jpg", b"\x00\x00\x00\x18ftypheic" + bytes(100), "corrupt HEIC/HEIF"),
        ("noise.bmp", bytes(range(256)) * 4, "not an image"),
    ],
)
def test_what_is_not_an_image_says_what_it_looks_like(tmp_path, name, data, expected):
    assert expected in reason(tmp_path, name, data)


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("GIF", ".gif")])
def test_a_truncated_file_is_named_truncated(tmp_path, fmt, suffix):
    noisy = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200), np.uint8))
    data = encoded(noisy, fmt)
    assert f"truncated {fmt}" in reason(tmp_path, f"cut{suffix}", data[: len(data) // 2])


def test_tiny_and_elongated_images_are_refused(tmp_path):
    one = encoded(Image.new("L", (1, 1)), "PNG")
    assert "1×1 px, too small" in reason(tmp_path, "dot.png", one)
    speck = encoded(Image.new("L", (7, 7)), "PNG")
    assert "7×7 px, too small" in reason(tmp_path, "speck.png", speck)
    strip = encoded(Image.new("L", (2000, 10), 255), "PNG")
    assert "too elongated" in reason(tmp_path, "strip.png", strip)


def test_a_narrow_crop_such_as_a_one_cut_tight_is_accepted(tmp_path):
    path = tmp_path / "one.png"
    path.write_bytes(encoded(Image.new("L", (2, 20)), "PNG"))
    assert decode.decode(path).image.size == (2, 20)


def test_missing_files_folders_and_pipes_are_refused_without_blocking(tmp_path):
    with pytest.raises(DecodeError, match="file not found"):
        decode.decode(tmp_path / "gone.png")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(DecodeError, match="is a folder"):
        decode.decode(tmp_path / "folder.png")
    fifo = tmp_path / "pipe.png"
    try:
        import os

        os.mkfifo(fifo)
    except (AttributeError, OSError):
        pytest.skip("no named pipes here")
    with pytest.raises(DecodeError, match="not a regular file"):
        decode.decode(fifo)


# --- PDF (office scanners) and HEIC (phones), through the [pdf] and [heif] extras.


def pdf_of(*pages: Image.Image, dpi: float = 100) -> bytes:
    """A PDF holding each image as one page, as a scanner saves it."""
    buffer = io.BytesIO()
    first, *rest = pages
    first.save(buffer, "PDF", resolution=dpi, save_all=True, append_images=rest)
    return buffer.getvalue()


def handmade_pdf(*objects: bytes, trailer: bytes = b"") -> bytes:
    """A PDF from raw objects (1 0 obj is the catalog), with a correct cross-reference table."""
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\n" % (len(objects) + 1, trailer)
    return out + b"startxref\n%d\n%%%%EOF\n" % xref


CATALOG = b"<< /Type /Catalog /Pages 2 0 R >>"
ONE_PAGE = b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"
PAGE = b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"


def test_a_pdf_scan_is_read_from_its_first_page_as_a_grey_page(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(pdf_of(page("L").resize((600, 400), Image.NEAREST)))  # 6×4 inches
    decoded = decode.decode(path)
    assert decoded.format == "PDF" and decoded.image.mode == "L" and decoded.note == ""
    # 6×4 inches at 300 dpi (PDFium may round a pixel up)
    assert abs(decoded.width - 1800) <= 1 and abs(decoded.height - 1200) <= 1
    pixels = decoded.pixels
    assert pixels[300, 450] < 64 and pixels[-100, -100] > 200  # the mark is where it was


def test_a_big_pdf_page_is_rendered_at_about_the_working_size(tmp_path):
    a4 = Image.new("L", (827, 1169), 255)  # 8.27 × 11.69 inches at 100 dpi
    decoded = decode.decode_bytes(pdf_of(a4), ".pdf")
    assert decode.WORK_PIXELS * 0.95 <= decoded.width * decoded.height <= decode.WORK_PIXELS * 1.001


def test_a_multi_page_pdf_reads_the_first_page_and_says_so(tmp_path):
    blank = Image.new("L", (200, 200), 255)
    decoded = decode.decode_bytes(pdf_of(page("L"), blank, blank), ".pdf")
    assert decoded.note == "first of 3 pages"
    assert decoded.pixels.min() < 64  # the marked first page, not a blank one


def test_a_pdf_over_the_page_limit_is_refused_naming_the_key():
    blank = Image.new("L", (100, 100), 255)
    with pytest.raises(DecodeError, match=r"PDF of 4 pages, over the 3-page limit \(recognition"):
        decode.decode_bytes(pdf_of(*[blank] * 4), ".pdf", max_pages=3)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (
            handmade_pdf(
                CATALOG,
                ONE_PAGE,
                PAGE,
                b"<< /Filter /Standard /V 1 /R 2 /O (%s) /U (%s) /P -4 >>" % (b"o" * 32, b"u" * 32),
                trailer=b"/Encrypt 4 0 R /ID [<00112233445566778899aabbccddeeff> "
                b"<00112233445566778899aabbccddeeff>] ",
            ),
            "encrypted PDF (needs a password)",
        ),
        (handmade_pdf(CATALOG, b"<< /Type /Pages /Kids [] /Count 0 >>"), "PDF without pages"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "broken PDF (damaged or not a PDF inside)"),
        (pdf_of(page("L"))[:300], "broken PDF"),
    ],
    ids=["encrypted", "no pages", "header only", "truncated"],
)
def test_pdfs_that_cannot_be_read_are_errors_that_say_why(data, expected):
    with pytest.raises(DecodeError, match=re.escape(expected)):
        decode.decode_bytes(data, ".pdf")


def test_a_pdf_named_png_is_read_and_noted():
    decoded = decode.decode_bytes(pdf_of(page("L")), ".png")
    assert decoded.format == "PDF" and decoded.note == "PDF content despite the .png name"


def test_without_the_pdf_extra_a_pdf_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # import fails as if not installed
    with pytest.raises(DecodeError, match=re.escape("pip install 'digit-inbox[pdf]'")):
        decode.decode_bytes(pdf_of(page("L")), ".pdf")


def heic_of(image: Image.Image) -> bytes:
    pillow_heif = pytest.importorskip("pillow_heif", reason="the [heif] extra is not installed")
    buffer = io.BytesIO()
    pillow_heif.from_pillow(image).save(buffer, quality=95)
    return buffer.getvalue()


def test_an_iphone_heic_photo_is_read():
    data = heic_of(page("RGB").resize((240, 160), Image.NEAREST))
    decoded = decode.decode_bytes(data, ".heic")
    assert decoded.format == "HEIF" and (decoded.width, decoded.height) == (240, 160)
    pixels = decoded.pixels.mean(axis=-1)
    assert pixels[40, 50] < 64 and pixels[-10, -10] > 200


def test_a_corrupt_heic_is_an_error_naming_heic():
    data = heic_of(page("RGB"))
    with pytest.raises(DecodeError, match="HEIC/HEIF"):
        decode.decode_bytes(data[: len(data) // 3], ".heic")


def test_without_the_heif_extra_a_heic_error_says_what_to_install(monkeypatch):
    data = heic_of(page("RGB"))
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    with pytest.raises(DecodeError, match=re.escape("pip install 'digit-inbox[heif]'")):
        decode.decode_bytes(data, ".heic")


def test_a_heic_over_the_pixel_limit_is_refused_before_decoding():
    data = heic_of(Image.new("RGB", (300, 200), "white"))
    with pytest.raises(DecodeError, match=re.escape("over the 0.01 MP limit")):
        decode.decode_bytes(data, ".heic", max_pixels=10_000)


def test_a_files_pixel_limit_does_not_stay_on_for_other_pillow_users(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    data = encoded(Image.new("L", (400, 300), 255), "PNG")
    reason(tmp_path, "a.png", data, max_pixels=10_000)
    assert decode.decode(write(tmp_path, "b.png", data), max_pixels=200_000).width == 400
    assert before == Image.MAX_IMAGE_PIXELS
