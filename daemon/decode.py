"""Turn the bytes of one scan into pixels, or into a one-line reason why they can't be.

Users drop whatever their scanner or phone makes, so every way a file can be bad ends as a
`DecodeError` whose message names the problem; nothing here raises anything else for bad input.
The bytes are read once: the sha256 in the report is of exactly the bytes that were classified.

The page comes back as an 8-bit Pillow image, mode L for grey or RGB for colour (colour helps
to find blue or red ink on tinted paper), paper bright and ink dark as on the page, alpha
composited onto white. Not a float array: preprocessing first shrinks the page with Pillow's C
resizers, and a 2,000 px page would take 48 MB as float32. `Decoded.pixels` gives the array.
Huge pages are reduced early to `WORK_PIXELS`, which still leaves a small digit on a big page
enough pixels.

PDFs (what office scanners save) and HEIC/HEIF (iPhones' default) need optional libraries, the
`[pdf]` and `[heif]` extras: pypdfium2 renders the first page, pillow-heif decodes HEIC under
libheif's security limits. Without the extra such a file gets an error naming what to install.
Both run here, in the decoding workers, like every other parser of untrusted bytes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import stat
import warnings
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from digit_inbox.daemon import keys
from digit_inbox.daemon.errors import DigitInboxError, ExitCode

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 40_000_000
WORK_PIXELS = 4_000_000  # pages are reduced to about this many pixels before anything else
MIN_SIDE = 8  # smaller than this cannot hold a readable digit
MAX_ASPECT = 100  # a strip longer than 100:1 is not a scan of one digit
DEFAULT_MAX_PAGES = 20
# A PDF page is rendered like a scan: at most 300 dpi (what scanners use for forms), and never
# more than WORK_PIXELS, so an A4 page comes out at about 200 dpi and a postcard at 300.
PDF_DPI = 300
PDFIUM_ERRORS = {1: "PDFium cannot say why", 2: "unreadable", 3: "damaged or not a PDF inside"}
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1")

# Only the formats a scanner or phone produces: fewer parsers, less attack surface (and no EPS,
# which would run Ghostscript). Camera JPEGs holding several pictures open as MPO via JPEG.
FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "DIB", "GIF", "WEBP")
EXTENSIONS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".dib": "BMP",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".pdf": "PDF",
    ".heic": "HEIF",
    ".heif": "HEIF",
}
SAME_FORMAT = {"MPO": "JPEG", "DIB": "BMP"}
JPEG_SCALES = (1, 2, 4, 8)  # the sizes libjpeg can decode at: 1/1 ... 1/8

# Our own size check runs before any pixel is decoded; Pillow's warning would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class DecodeError(DigitInboxError):
    """A file that cannot be read as a scan; `reason` is the one-line text for the report."""

    exit_code = ExitCode.FILES_FAILED

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Decoded:
    image: Image.Image  # mode L or RGB, maybe reduced from the file's size
    width: int  # of the image as stored, after EXIF orientation
    height: int
    sha256: str
    format: str
    note: str = ""

    @property
    def pixels(self) -> np.ndarray:
        """uint8 (H, W) for grey, (H, W, 3) for colour."""
        return np.asarray(self.image)


def read_head(path: Path, size: int = 1024) -> bytes:
    """The first bytes of a regular file; b"" for anything else (never blocks on a pipe)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, size) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def is_pdf(head: bytes) -> bool:
    return b"%PDF-" in head[:1024]  # the header may follow a little junk, as readers allow


def is_heif(head: bytes) -> bool:
    return head[4:8] == b"ftyp" and head[8:12] in HEIF_BRANDS


def read_bytes(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> bytes:
    """The file's bytes, refusing what is not a regular file or is too big to be a scan.

    Checked on the opened file, not on its name first: a name swapped for a pipe in between
    could otherwise block the read forever (O_NONBLOCK opens a pipe without waiting).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise DecodeError("file not found (was it moved or deleted?)") from None
    except OSError as exc:
        raise DecodeError(f"cannot read the file ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise DecodeError("is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise DecodeError("not a regular file (a pipe or device?)")  # reading could block
        max_bytes = max(64 << 20, 8 * max_pixels)  # uncompressed 16-bit RGBA at the pixel limit
        if info.st_size > max_bytes:
            raise DecodeError(
                f"file is {info.st_size / 1e6:.0f} MB, more than any scan within the pixel "
                f"limit ({max_bytes / 1e6:.0f} MB)"
            )
        with open(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise DecodeError(f"cannot read the file ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise DecodeError("file grew past the size limit while being read (still being written?)")
    return data


def decode(
    path: Path, max_pixels: int = DEFAULT_MAX_PIXELS, max_pages: int = DEFAULT_MAX_PAGES
) -> Decoded:
    """Read and decode one file: see the module docstring. Raises only DecodeError."""
    data = read_bytes(path, max_pixels)
    return decode_bytes(data, path.suffix, max_pixels, max_pages)


def decode_bytes(
    data: bytes,
    suffix: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_pages: int = DEFAULT_MAX_PAGES,
) -> Decoded:
    """Decode bytes already read; Pillow's global pixel limit is set for this file only, so a
    caller's own Pillow use (and the next file) is not held to this file's limit."""
    previous = Image.MAX_IMAGE_PIXELS
    try:
        return decode_file_bytes(data, suffix, max_pixels, max_pages)
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode_file_bytes(
    data: bytes,
    suffix: str = "",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_pages: int = DEFAULT_MAX_PAGES,
) -> Decoded:
    if not data:
        raise DecodeError("empty file (0 bytes)")
    sha256 = hashlib.sha256(data).hexdigest()
    if is_pdf(data):
        page, notes = render_pdf(data, max_pixels, max_pages)
        notes[:0] = name_mismatch("PDF", suffix)
        return Decoded(page, page.width, page.height, sha256, "PDF", "; ".join(notes))
    formats: tuple[str, ...] = FORMATS
    if is_heif(data):
        enable_heif()
        formats = ("HEIF",)
    # Pillow's limit follows ours, so a larger --max-pixels is honoured. It must stay on while
    # opening: GIF and WebP set up their first frame then (a 13 kB GIF whose frames declare
    # 65000x50000 px took 3 GB); our own check below covers what Pillow only warns about.
    try:
        im = open_image(data, max_pixels, formats)
    except UnidentifiedImageError:
        raise DecodeError(sniff(data)) from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(bomb_reason(exc, max_pixels)) from None
    except Exception as exc:  # plugins raise SyntaxError, struct.error, ... on broken headers
        raise DecodeError(f"corrupt image header ({one_line(exc)})") from None
    fmt = SAME_FORMAT.get(im.format or "", im.format or "image")
    notes = name_mismatch(fmt, suffix)
    width, height = im.size
    check_shape(width, height)
    shrink_while_decoding(im, max_pixels)
    check_pixels(width, height, im.width * im.height, max_pixels)
    frames = frame_count(im)
    if frames > 1:
        notes.append(f"first of {frames} frames")
    try:
        orientation = int(im.getexif().get(0x0112, 1))
    except Exception:
        orientation = 1
    try:
        page, turned = load_page(im, orientation, notes)
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("not enough memory to decode this image") from None
    except Exception as exc:
        raise DecodeError(broken_reason(fmt, exc)) from None
    if turned:
        width, height = height, width
    return Decoded(page, width, height, sha256, fmt, "; ".join(notes))


def name_mismatch(fmt: str, suffix: str) -> list[str]:
    expected = EXTENSIONS.get(suffix.lower())
    return [f"{fmt} content despite the {suffix} name"] if expected and expected != fmt else []


def render_pdf(data: bytes, max_pixels: int, max_pages: int) -> tuple[Image.Image, list[str]]:
    """The first page of a PDF as a grey scan, and its notes ("first of N pages")."""
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise DecodeError(
            "a PDF: reading PDFs needs the pdf extra: pip install 'digit-inbox[pdf]' "
            "(or export the page as PNG or JPEG)"
        ) from None
    # The raw loader, as PdfDocument(data) turns "no pages" into a load failure with a stale code.
    handle = pdfium.raw.FPDF_LoadMemDocument64(data, len(data), None)
    if not handle:
        code = pdfium.raw.FPDF_GetLastError()
        if code in (pdfium.raw.FPDF_ERR_PASSWORD, pdfium.raw.FPDF_ERR_SECURITY):
            raise DecodeError("encrypted PDF (needs a password); save it without one")
        why = PDFIUM_ERRORS.get(code, f"PDFium error {code}")
        raise DecodeError(f"broken PDF ({why}); save or scan it again")
    pdf = pdfium.PdfDocument(handle)  # closes the handle; `data` outlives it
    try:
        pages = len(pdf)
        if pages == 0:
            raise DecodeError("PDF without pages")
        if pages > max_pages:
            raise DecodeError(
                f"PDF of {pages} pages, over the {max_pages}-page limit ({keys.MAX_PAGES}); "
                "save each scan as its own file"
            )
        page = pdf[0]
        width_pt, height_pt = page.get_size()
        inches = max(width_pt * height_pt, 1e-6) / 72**2
        dpi = min(PDF_DPI, 0.999 * math.sqrt(min(WORK_PIXELS, max_pixels) / inches))
        check_shape(round(width_pt * dpi / 72), round(height_pt * dpi / 72))
        image = page.render(scale=dpi / 72, grayscale=True).to_pil().convert("L")
    except DecodeError:
        raise
    except MemoryError:
        raise DecodeError("not enough memory to render this PDF page") from None
    except Exception as exc:  # pypdfium2 raises PdfiumError, ValueError... on broken pages
        raise DecodeError(f"broken PDF ({one_line(exc)}); save or scan it again") from None
    finally:
        pdf.close()
    check_shape(image.width, image.height)
    return image, [f"first of {pages} pages"] if pages > 1 else []


def enable_heif() -> None:
    """Teach Pillow HEIC/HEIF through pillow-heif, whose libheif enforces its own size and
    memory limits; Pillow's bomb check at our pixel limit still runs first."""
    try:
        import pillow_heif
    except ImportError:
        raise DecodeError(
            "a HEIC/HEIF photo: reading them needs the heif extra: pip install "
            "'digit-inbox[heif]' (or set the phone to save JPEG: Settings > Camera > Formats > "
            "Most Compatible)"
        ) from None
    if "HEIF" not in Image.OPEN:
        pillow_heif.register_heif_opener()


def open_image(data: bytes, max_pixels: int, formats: tuple[str, ...] = FORMATS) -> Image.Image:
    """Image.open with Pillow's bomb check at our limit; a JPEG may declare up to 64 times more,
    as its decoder can decode it at 1/8 size (see shrink_while_decoding)."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        return Image.open(BytesIO(data), formats=formats)
    except Image.DecompressionBombError:
        if not data.startswith(b"\xff\xd8"):
            raise
    Image.MAX_IMAGE_PIXELS = max_pixels * JPEG_SCALES[-1] ** 2
    try:
        return Image.open(BytesIO(data), formats=("JPEG",))
    finally:
        Image.MAX_IMAGE_PIXELS = max_pixels


def shrink_while_decoding(im: Image.Image, max_pixels: int) -> None:
    """Let libjpeg decode a large JPEG at 1/2, 1/4 or 1/8 size (draft mode): far faster than
    decoding it all, and a 50 MP phone photo then needs a 3 MP decode. Small enough for
    WORK_PIXELS and, where it can be, for the pixel limit. Not for a progressive JPEG, whose
    decoder keeps every coefficient of the full-size image in memory whatever the output size."""
    if im.format not in ("JPEG", "MPO") or im.info.get("progressive"):
        return
    width, height = im.size
    work = round(math.sqrt(width * height / WORK_PIXELS))
    fits = [s for s in JPEG_SCALES if -(-width // s) * -(-height // s) <= max_pixels]
    scale = max([s for s in JPEG_SCALES if s <= max(work, 1)] + (fits[:1] or [JPEG_SCALES[-1]]))
    if scale > 1:
        im.draft(im.mode, (width // scale, height // scale))


def check_shape(width: int, height: int) -> None:
    if max(width, height) < MIN_SIDE:  # a 1 cut tight may be 2 px wide: only one side counts
        raise DecodeError(
            f"image is {width}×{height} px, too small to hold a digit "
            f"(at least {MIN_SIDE} px tall or wide needed)"
        )
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise DecodeError(
            f"image is {width}×{height} px, a strip too elongated to be the scan of a digit "
            f"(more than {MAX_ASPECT}:1)"
        )


def check_pixels(width: int, height: int, decoded: int, max_pixels: int) -> None:
    """The pixel limit applies to what is decoded: a JPEG's reduced size, else the stored one."""
    if decoded <= max_pixels:
        return
    smaller = "" if decoded == width * height else f", {megapixels(decoded)} MP even reduced"
    raise DecodeError(
        f"image is {width}×{height} = {megapixels(width * height)} MP{smaller}, over the "
        f"{megapixels(max_pixels)} MP limit ({keys.MAX_PIXELS} / --max-pixels)"
    )


def bomb_reason(exc: Image.DecompressionBombError, max_pixels: int) -> str:
    """Pillow refused a header declaring over twice the limit; say how big, as check_pixels does."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = megapixels(int(found[1])) if found else f"more than {megapixels(2 * max_pixels)}"
    return (
        f"image declares {size} MP, over the {megapixels(max_pixels)} MP limit "
        f"({keys.MAX_PIXELS} / --max-pixels)"
    )


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:.0f}" if pixels >= 10_000_000 else f"{pixels / 1e6:.2g}"


def frame_count(im: Image.Image) -> int:
    try:
        return int(getattr(im, "n_frames", 1))
    except Exception:  # counting walks the file; a broken later frame must not stop the first
        return 1


def load_page(im: Image.Image, orientation: int, notes: list[str]) -> tuple[Image.Image, bool]:
    """Decode the first frame (reduced when huge), orient it, flatten alpha -> (L/RGB, turned).

    `turned` says EXIF orientation swapped width and height.
    """
    im.load()  # a large JPEG at the reduced size shrink_while_decoding chose
    turned = False
    if orientation != 1:
        try:
            im = ImageOps.exif_transpose(im)
            turned = orientation in (5, 6, 7, 8)
        except Exception:
            notes.append("EXIF orientation unreadable, used as stored")
    reduce = max(1, round(math.sqrt(im.width * im.height / WORK_PIXELS)))
    im = flatten(im)
    if reduce > 1:
        im = im.reduce(reduce)
    if im.mode in ("I", "F"):
        im = Image.fromarray(to_uint8(np.asarray(im)))
    return im, turned


def flatten(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> L or RGB (alpha onto white; a cut-out's opacity as its ink), or I / F
    for high-bit-depth images."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode.startswith("I;16"):  # 16-bit grey: the top byte is plenty for finding ink
        im = Image.fromarray((np.asarray(im) >> 8).astype(np.uint8))  # any byte order
    mode = im.mode
    if mode in ("LA", "La", "RGBA", "RGBa"):
        base = "L" if mode.startswith("L") else "RGB"
        alpha = im.getchannel("A")
        opaque = alpha.getbbox()
        if opaque and opaque != (0, 0, *im.size):
            inside = alpha.crop(opaque)
            area = inside.width * inside.height
            if inside.histogram()[0] < 0.05 * area and area > 0.5 * im.width * im.height:
                # A page exported inside a transparent margin (not a cut-out, where the paper
                # itself is transparent): the margin is not paper, and a white one next to a
                # shaded page would look like a dark frame around it.
                im, alpha = im.crop(opaque), inside
        if is_cut_out(np.asarray(alpha)):
            return ImageChops.invert(alpha)
        page = Image.new(base, im.size, "white")
        # Pillow blends RGBA straight into RGB (the colour bytes, as a converted copy would).
        page.paste(im if mode == "RGBA" else im.convert(base), mask=alpha)
        return page
    if mode in ("L", "RGB", "I", "F"):
        return im
    return im.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBX


def is_cut_out(alpha: np.ndarray) -> bool:
    """Whether an 8-bit alpha channel is a cut-out's: mostly more transparent than opaque (a
    scanned page is opaque, also inside a transparent margin). In a cut-out the paper itself is
    transparent and only the drawing opaque; many tools make one by turning the paper's
    brightness into transparency and keep the colours, so composited onto white a stroke of
    darkness d shows only d^2 (a 30 % pencil line fades to 9 %). Its opacity is its ink,
    whatever colour the ink was."""
    return bool(np.count_nonzero(alpha < 128) > 0.5 * alpha.size)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float greyscale -> uint8, guessing the range from the values."""
    x = values.astype(np.float64)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return np.full(x.shape, 255, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0 and hi <= 1 and values.dtype.kind == "f":
        top = 1.0
    elif lo >= 0 and hi <= 255:
        top = 255.0
    elif lo >= 0 and hi <= 65535:
        top = 65535.0
    else:  # no known range: stretch what is there
        x = x - lo
        top = max(hi - lo, 1e-12)
    x = np.nan_to_num(x, nan=top, posinf=top, neginf=0.0)
    return np.clip(np.rint(x * (255.0 / top)), 0, 255).astype(np.uint8)


def broken_reason(fmt: str, exc: BaseException) -> str:
    text = one_line(exc)
    if isinstance(exc, EOFError) or "truncated" in text.lower() or "broken" in text.lower():
        return f"truncated {fmt} (the file ends before the image does; copy it again)"
    return f"corrupt {fmt} ({text})"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def sniff(data: bytes) -> str:
    """Why bytes Pillow doesn't recognise aren't an image, as specifically as we can tell."""
    head = data[:1024]
    lower = head.lstrip().lower()
    if lower.startswith((b"<!doctype html", b"<html")) or b"<html" in lower:
        return "not an image (looks like HTML, maybe a saved web page or login form)"
    if lower.startswith(b"<?xml") or b"<svg" in lower:
        return "not an image (XML or SVG; export it as PNG)"
    if head.startswith(b"PK\x03\x04"):
        return "not an image (a ZIP archive or Office document)"
    if is_heif(head):
        return "corrupt HEIC/HEIF image (libheif cannot read it)"
    if head[4:12] in (b"ftypavif", b"ftypavis"):
        return "AVIF image, not supported; save it as JPEG or PNG"
    if head[:2] in (b"\xff\xd8", b"\x89P") or head[:4] in (b"II*\x00", b"MM\x00*", b"GIF8"):
        return "corrupt image header"
    printable = sum(32 <= b < 127 or b in b"\t\r\n" for b in head)
    if printable >= 0.95 * len(head):
        return "not an image (looks like text)"
    return f"not an image (unrecognised content, {len(data)} bytes)"
