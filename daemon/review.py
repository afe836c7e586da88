"""`digit-inbox review`: a small web page to decide the files in review/, keyboard first.

Its own process (the daemon's unit keeps PrivateNetwork=yes), Starlette on uvicorn (the
`[review]` extra). Every decision goes through `corrections.Corrector`, so it is filed and
reported exactly once, like `digit-inbox correct`.

Security: loopback by default; any other address needs a token (the config's, or a random one
printed at start), presented once as `?token=` and then kept in a SameSite=Strict cookie. Every
state change is a POST carrying the page's CSRF token in a header (a cross-site form cannot set
one) from the same origin. Files are named by their bare name in review/ (no folders, no dot
names), then checked again by `Corrector.contained` (regular file, no symbolic link, inside
review/); images are decoded and sent as PNG, never as the stored bytes; the page builds its DOM
with textContent only, under a Content-Security-Policy without inline scripts.
"""

from __future__ import annotations

import hmac
import io
import ipaddress
import logging
import os
import secrets
import stat
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from digit_inbox.daemon import config, filing, report
from digit_inbox.daemon.corrections import (
    UNDO_NOTE,
    Corrector,
    contained,
    parse_digits,
    report_rows,
)
from digit_inbox.daemon.errors import DigitInboxError, UsageError
from digit_inbox.daemon.rows import Row, Status

log = logging.getLogger(__name__)

COOKIE = "digit_inbox_review"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; object-src 'none'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
HERE = Path(__file__).parent / "review_page"


def parse_listen(text: str) -> tuple[str, int]:
    parsed = config.split_listen(text)
    if parsed is None:
        raise UsageError(
            f"--listen: expected HOST:PORT such as {config.DEFAULT_LISTEN}, got {text!r}"
        )
    host, port = parsed
    return host or "127.0.0.1", port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Review:
    """What the page does, without HTTP: the queue, one file's reading, decisions, history."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg

    def path(self, name: str) -> Path:
        """The file called `name` directly in review/; UsageError for anything else."""
        if not name or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
            raise UsageError("not a file name in review/")
        path = contained(self.cfg.paths, self.cfg.paths.review / name)
        if path.parent != Path(os.path.realpath(self.cfg.paths.review)):
            raise UsageError("not a file name in review/")
        return path

    def queue(self) -> list[dict[str, Any]]:
        """The files in review/, oldest arrival first, each with the model's reading."""
        found = []
        with os.scandir(self.cfg.paths.review) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if entry.name.startswith(".") or entry.name.endswith(filing.NOTE_SUFFIXES):
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((st.st_ctime, entry.name))
        readings = self.readings()
        return [{"name": name, **readings.get(name, {})} for _, name in sorted(found)]

    def readings(self) -> dict[str, dict[str, Any]]:
        """The latest row of each file now in review/, by its name there."""
        out: dict[str, dict[str, Any]] = {}
        prefix = os.path.relpath(self.cfg.paths.review, self.cfg.paths.data_root) + os.sep
        for row in report_rows(self.cfg.paths.reports):
            # The model's reading: a person's decision (or its undo) is not a reading.
            if row.moved_to.startswith(prefix) and row.status is not Status.CORRECTED:
                out[row.moved_to[len(prefix) :]] = {
                    "file": row.file,
                    "status": str(row.status),
                    "digits": row.digits,
                    "confidence": row.confidence,
                    "runner_up": row.runner_up,
                    "runner_up_confidence": row.runner_up_confidence,
                    "note": row.note,
                }
        return out

    def decide(self, name: str, digits: str) -> Row:
        with Corrector(self.cfg) as corrector:  # per request: SQLite stays in one thread
            return corrector.correct(str(self.path(name)), parse_digits(digits))

    def history(self) -> list[Row]:
        """Today's decisions, newest first."""
        today = datetime.now().astimezone().date()
        reports = self.cfg.paths.reports
        # A decision's row is in the report of its own day: today's file alone.
        rows = [
            r
            for r in report_rows(reports, report.path_for(reports, today).name)
            if r.status is Status.CORRECTED and r.time.startswith(today.isoformat())
        ]
        return rows[::-1]

    def undo(self) -> Row:
        """Take back today's last decision that was not itself an undo."""
        decisions = self.history()
        if not decisions:
            raise UsageError("no decision today to undo")
        if decisions[0].note.startswith(UNDO_NOTE):
            raise UsageError("the last decision was an undo; decide the file again instead")
        with Corrector(self.cfg) as corrector:
            return corrector.undo(str(self.cfg.paths.data_root / decisions[0].moved_to))

    def image(self, name: str) -> bytes:
        """The file as PNG (any format the daemon reads), never its stored bytes."""
        from PIL import Image

        from digit_inbox.daemon import decode

        recognition = self.cfg.recognition
        decoded = decode.decode(self.path(name), recognition.max_pixels, recognition.max_pages)
        image = decoded.image if isinstance(decoded.image, Image.Image) else None
        if image is None:
            image = Image.fromarray(decoded.image)
        image.thumbnail((1200, 1200))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    def strip(self, name: str) -> bytes:
        """The debug strip: each preprocessing step, why it was read so."""
        from digit_inbox.daemon.recognize import Reader
        from digit_inbox.daemon.service import model_path

        path = self.path(name)
        recognition = self.cfg.recognition
        with tempfile.TemporaryDirectory(prefix="digit-inbox-review-") as folder, Reader(
            model_path(recognition),
            min_confidence=recognition.min_confidence,
            max_pixels=recognition.max_pixels,
            workers=0,
            debug_dir=Path(folder),
        ) as reader:  # fmt: skip
            reader.read([(path, name)])  # the strip is drawn once the model has read it
            strips = list(Path(folder).glob("*.png"))
            return strips[0].read_bytes() if strips else b""


def row_json(row: Row) -> dict[str, Any]:
    return {
        "time": row.time,
        "file": row.file,
        "digits": row.digits,
        "note": row.note,
        "moved_to": row.moved_to,
    }


def create_app(cfg: config.Config, token: str | None) -> Any:
    """The Starlette application; `token` None only for loopback listeners."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    review = Review(cfg)
    csrf = secrets.token_urlsafe(32)

    def allowed(request: Request) -> bool:
        if token is None:
            return True
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        return hmac.compare_digest(given.encode(), token.encode())

    def respond(response: Response) -> Response:
        response.headers.update(HEADERS)
        return response

    def refused(status: int, message: str) -> Response:
        return respond(JSONResponse({"error": message}, status_code=status))

    async def guarded(request: Request, handler: Any, post: bool = False) -> Response:
        if not allowed(request):
            return refused(403, "a token is needed: open the address printed at start")
        if post:
            origin = request.headers.get("origin")
            if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
                return refused(403, "cross-origin request refused")
            if not hmac.compare_digest(request.headers.get("x-csrf-token", ""), csrf):
                return refused(403, "missing or wrong CSRF token; reload the page")
        try:
            return respond(await handler(request))
        except DigitInboxError as exc:
            return refused(400, str(exc))

    async def page(request: Request) -> Response:
        html = (HERE / "index.html").read_text().replace("{{csrf}}", csrf)
        from starlette.responses import HTMLResponse

        response = HTMLResponse(html)
        if token is not None and request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    async def script(request: Request) -> Response:
        return FileResponse(HERE / "app.js", media_type="text/javascript")

    async def queue(request: Request) -> Response:
        items = review.queue()
        return JSONResponse({"count": len(items), "items": items})

    async def history(request: Request) -> Response:
        return JSONResponse([row_json(r) for r in review.history()])

    async def image(request: Request) -> Response:
        return Response(review.image(request.query_params.get("name", "")), media_type="image/png")

    async def strip(request: Request) -> Response:
        data = review.strip(request.query_params.get("name", ""))
        return Response(data, media_type="image/png", status_code=200 if data else 404)

    async def decide(request: Request) -> Response:
        body = await request.json()
        if not isinstance(body, dict):
            raise UsageError("expected a JSON object")
        row = review.decide(str(body.get("name", "")), str(body.get("digits", "")))
        return JSONResponse(row_json(row))

    async def undo(request: Request) -> Response:
        return JSONResponse(row_json(review.undo()))

    def get(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, handler)

        return endpoint

    def post(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, handler, post=True)

        return endpoint

    app = Starlette(
        routes=[
            Route("/", get(page)),
            Route("/app.js", get(script)),
            Route("/api/queue", get(queue)),
            Route("/api/history", get(history)),
            Route("/api/image", get(image)),
            Route("/api/strip", get(strip)),
            Route("/api/decide", post(decide), methods=["POST"]),
            Route("/api/undo", post(undo), methods=["POST"]),
        ],
    )
    return app


def main(config_path: Path, listen: str | None) -> int:
    """`digit-inbox review`: serve the page until stopped."""
    import uvicorn

    cfg = config.load(config_path)
    host, port = parse_listen(listen or cfg.review.listen)
    token = os.environ.get("DIGIT_INBOX_REVIEW_TOKEN") or cfg.review.token
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    app = create_app(cfg, token)
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"review page: {address}", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
    return 0
