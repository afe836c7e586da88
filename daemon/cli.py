"""The `digit-inbox` command: parse arguments, run one subcommand, map errors to exit codes.

Subcommands import their modules lazily so `digit-inbox run` never loads torch and
`--help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from digit_inbox.daemon import __version__
from digit_inbox.daemon.contract import DEFAULT_MIN_CONFIDENCE
from digit_inbox.daemon.errors import DigitInboxError, ExitCode

log = logging.getLogger("digit_inbox")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digit-inbox",
        description="Read handwritten digits from scanned images dropped into a folder.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="watch the inbox and file every scan dropped there")
    run.add_argument(
        "--config",
        "-c",
        type=Path,
        default=Path("config.yaml"),
        help="config file (default: ./config.yaml)",
    )
    run.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config and exit (0 valid, 3 invalid)",
    )

    status = sub.add_parser("status", help="show what the running daemon is doing")
    status.add_argument("--config", "-c", type=Path, default=Path("config.yaml"))

    classify = sub.add_parser(
        "classify",
        help="read the digit in each image; CSV to stdout",
        epilog="Exit status: 0 when every file was read (status ok, low_confidence or blank), "
        "1 when any file could not be read (status error; its row says why), "
        "2 for a bad command line or a missing PATH, 5 when the model cannot be loaded.",
    )
    classify.add_argument(
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="image files or folders (searched recursively)",
    )
    classify.add_argument("--output", "-o", type=Path, help="write the CSV here, not stdout")
    classify.add_argument("--model", type=Path, help="ONNX model (default: the embedded one)")
    classify.add_argument(
        "--min-confidence",
        type=float,
        default=DEFAULT_MIN_CONFIDENCE,
        help=f"below this the status is low_confidence (default {DEFAULT_MIN_CONFIDENCE})",
    )
    classify.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="refuse larger images as decompression bombs (default 40e6)",
    )
    classify.add_argument(
        "--digits",
        default="auto",
        help="how many digits each scan holds: auto (default), N, or a range such as 4-6; "
        "a reading outside it is low_confidence with a note",
    )
    classify.add_argument(
        "--debug-dir", type=Path, help="write a PNG strip of the preprocessing steps per file here"
    )
    classify.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: one per CPU core)"
    )
    classify.add_argument(
        "--resume",
        action="store_true",
        help="append to --output FILE as rows finish, skipping files it already has a row for",
    )
    classify.add_argument(
        "--scheduler",
        metavar="tcp://HOST:8786",
        help="read on this Dask cluster (the [dask] extra); every worker must see PATH",
    )

    train = sub.add_parser("train", help="train a model on MNIST (needs the [train] extra)")
    train.add_argument("--arch", choices=["cnn", "softmax"], default="cnn")
    train.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    train.add_argument(
        "--download", action="store_true", help="download missing MNIST files into --data-dir first"
    )
    train.add_argument("--output", "-o", type=Path, required=True, help="checkpoint to write")
    train.add_argument("--epochs", type=int, help="default: 30 for cnn, 2 for softmax")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--lr", type=float)
    train.add_argument("--seed", type=int, default=1)
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument(
        "--augment",
        choices=["scans", "writers"],
        default="scans",
        help="scans: the shipped model's recipe; writers: also other writers' styles "
        "(European 1 and 7, stretched, marker to hairline, 16x16/8x8, binarised)",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="one epoch on 512 images: checks the pipeline in seconds",
    )

    export = sub.add_parser("export", help="convert a checkpoint to ONNX and check parity")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--output", "-o", type=Path, required=True)
    export.add_argument("--data-dir", help="MNIST folder for the parity check")

    calibrate = sub.add_parser(
        "calibrate", help="fit an ONNX model's softmax temperature on the validation split"
    )
    calibrate.add_argument("model", type=Path)
    calibrate.add_argument("--output", "-o", type=Path, required=True)
    calibrate.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    calibrate.add_argument("--seed", type=int, default=1, help="the seed the model trained with")

    data = sub.add_parser("mnist", help="verify the MNIST files (MD5), downloading missing ones")
    data.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    data.add_argument("--download", action="store_true", help="fetch missing files first")

    correct = sub.add_parser(
        "correct",
        help="record a person's reading of a file in review/ or the outbox, and file it",
        epilog="The file moves where the daemon would have put it for that reading (DIGITS "
        "'none': failed/), and the day's report gets a `corrected` row.",
    )
    correct.add_argument("--config", "-c", type=Path, default=Path("config.yaml"))
    correct.add_argument("file", metavar="FILE", help="a path, or the file's name in the report")
    correct.add_argument("digits", metavar="DIGITS", help="the digits read, or 'none'")

    learn = sub.add_parser(
        "learn",
        help="adapt the model to the recorded decisions (needs the [learn] extra)",
        epilog="Exit status: 0 when the candidate passed the gate and was written, 1 when it "
        "did not (nothing written), 2 with too few decisions, 3 for a bad config.",
    )
    learn.add_argument("--config", "-c", type=Path, default=Path("config.yaml"))
    learn.add_argument("--output", "-o", type=Path, required=True, help="candidate ONNX to write")
    learn.add_argument(
        "--promote",
        action="store_true",
        help="also install it as recognition.model (atomically, keeping the previous one)",
    )
    learn.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")

    review = sub.add_parser("review", help="serve the review page (needs the [review] extra)")
    review.add_argument("--config", "-c", type=Path, default=Path("config.yaml"))
    review.add_argument(
        "--listen",
        default=None,
        help="HOST:PORT (default 127.0.0.1:8765); other than loopback needs a token",
    )

    evaluate = sub.add_parser("evaluate", help="MNIST test accuracy, confusion matrix, gallery")
    evaluate.add_argument("model", type=Path, nargs="?", help="default: the embedded model")
    evaluate.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    evaluate.add_argument(
        "--output-dir",
        type=Path,
        help="write confusion.png, errors.png, reliability.png, risk-coverage.png here",
    )
    evaluate.add_argument(
        "--scans",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also read a folder of labelled scans (labels.csv: file,label) as the daemon does",
    )
    evaluate.add_argument(
        "--usps", help="also read the USPS zip file's digits (default: $DIGIT_INBOX_USPS)"
    )
    return parser


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from digit_inbox.daemon import service

        return service.main(args.config, check_only=args.check_config, log_level=args.log_level)
    if args.command == "status":
        from digit_inbox.daemon import health

        return health.print_status(args.config)
    if args.command == "classify":
        from digit_inbox.daemon import classify

        return classify.main(
            args.paths,
            output=args.output,
            model=args.model,
            min_confidence=args.min_confidence,
            max_pixels=args.max_pixels,
            debug_dir=args.debug_dir,
            workers=args.workers,
            resume=args.resume,
            scheduler=args.scheduler,
            digits=args.digits,
        )
    if args.command == "train":
        from digit_inbox.export import mnist, train

        data_dir = mnist.resolve_data_dir(args.data_dir)
        if args.download:
            mnist.download(data_dir)
        train.train(
            data_dir,
            args.output,
            arch=args.arch,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            dry_run=args.dry_run,
            writers=args.augment == "writers",
        )
        return ExitCode.OK
    if args.command == "export":
        from digit_inbox.export import mnist, onnx_export

        onnx_export.export(args.checkpoint, args.output, mnist.resolve_data_dir(args.data_dir))
        return ExitCode.OK
    if args.command == "calibrate":
        from digit_inbox.export import mnist, onnx_export

        data_dir = mnist.resolve_data_dir(args.data_dir)
        onnx_export.calibrate(args.model, args.output, data_dir, seed=args.seed)
        return ExitCode.OK
    if args.command == "mnist":
        from digit_inbox.export import mnist

        data_dir = mnist.resolve_data_dir(args.data_dir)
        if args.download:
            mnist.download(data_dir)
        for split in mnist.SPLITS:
            images = mnist.load_split(data_dir, split).images
            print(f"{split}: {len(images)} images, MD5 verified ({data_dir})")
        return ExitCode.OK
    if args.command == "correct":
        from digit_inbox.daemon import corrections

        return corrections.main(args.config, args.file, args.digits)
    if args.command == "learn":
        from digit_inbox.daemon import learn

        return learn.main(args.config, args.output, args.promote, args.data_dir)
    if args.command == "review":
        from digit_inbox.daemon import review

        return review.main(args.config, args.listen)
    if args.command == "evaluate":
        from digit_inbox.export import evaluate, mnist, usps

        return evaluate.main(
            args.model,
            mnist.resolve_data_dir(args.data_dir),
            args.output_dir,
            scans=args.scans,
            usps_path=usps.resolve_path(args.usps),
        )
    raise AssertionError(args.command)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=(args.log_level or "INFO").upper(),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(dispatch(args))
    except DigitInboxError as exc:
        log.error("%s", exc)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted")
        return int(ExitCode.INTERRUPTED)
    except ImportError as exc:
        if exc.name == "onnx" and args.command == "learn":
            log.error("learn needs the onnx package: pip install 'digit-inbox[learn]'")
            return int(ExitCode.USAGE)
        if exc.name in ("torch", "onnx"):
            log.error("%s needs the training extra: pip install 'digit-inbox[train]'", exc.name)
            return int(ExitCode.USAGE)
        raise
