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
from digit_inbox.daemon.errors import EXIT_CODES_HELP, DigitInboxError, ExitCode

log = logging.getLogger("digit_inbox")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_LEVEL_HELP = "DEBUG, INFO, WARNING or ERROR (default: INFO, or the config's log_level)"
LOG_LEVEL = {"type": str.upper, "choices": LOG_LEVELS, "metavar": "LEVEL", "help": LOG_LEVEL_HELP}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digit-inbox",
        description="Read handwritten digits from scanned images dropped into a folder.",
        epilog=f"example:\n  digit-inbox run --config config.yaml\n\n{EXIT_CODES_HELP}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default=None, **LOG_LEVEL)  # type: ignore[arg-type]
    # The same option after the subcommand, where users type it; SUPPRESS keeps the one given
    # before the subcommand when it is not repeated.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS, **LOG_LEVEL)  # type: ignore[arg-type]
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            parents=[common],
            epilog=f"example:\n  {example}\n\n{EXIT_CODES_HELP}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            "-c",
            type=Path,
            default=Path("config.yaml"),
            help="config file (default: ./config.yaml)",
        )

    run = command(
        "run",
        "watch the inbox and file every scan dropped there",
        "digit-inbox run --config config.yaml    (stop it with Ctrl-C or SIGTERM)",
    )
    config_option(run)
    run.add_argument(
        "--check-config",
        action="store_true",
        help="validate the config and exit (0 valid, 3 invalid)",
    )

    status = command(
        "status",
        "show what the daemon is doing, or that it is not running",
        "digit-inbox status --config /etc/digit-inbox/config.yaml",
    )
    config_option(status)

    classify = command(
        "classify",
        "read the number in each image; CSV to stdout",
        "digit-inbox classify scans/ photo.jpg -o digits.csv --debug-dir strips/",
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
        help="a digit less likely than this makes the status low_confidence "
        f"(default {DEFAULT_MIN_CONFIDENCE})",
    )
    classify.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,  # decode.DEFAULT_MAX_PIXELS; --help does not import the decoder
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

    train = command(
        "train",
        "train a model on MNIST (needs the [train] extra)",
        "digit-inbox train --arch cnn --data-dir mnist/ -o model.pt",
    )
    train.add_argument(
        "--arch", choices=["cnn", "softmax"], default="cnn", help="model to train (default: cnn)"
    )
    train.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    train.add_argument(
        "--download", action="store_true", help="download missing MNIST files into --data-dir first"
    )
    train.add_argument("--output", "-o", type=Path, required=True, help="checkpoint to write")
    train.add_argument("--epochs", type=int, help="default: 30 for cnn, 2 for softmax")
    train.add_argument("--batch-size", type=int, help="images per step (default: the arch's)")
    train.add_argument("--lr", type=float, help="learning rate (default: the arch's)")
    train.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
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

    export = command(
        "export",
        "convert a checkpoint (or several, averaged) to ONNX and check parity",
        "digit-inbox export model.pt -o model.onnx --data-dir mnist/",
    )
    export.add_argument(
        "checkpoint",
        type=Path,
        nargs="+",
        help="checkpoint written by `train`; several (one --seed) are averaged into one model",
    )
    export.add_argument("--output", "-o", type=Path, required=True, help="ONNX file to write")
    export.add_argument("--data-dir", help="MNIST folder for the parity check")

    calibrate = command(
        "calibrate",
        "fit an ONNX model's softmax temperature on the validation split",
        "digit-inbox calibrate model.onnx -o calibrated.onnx --data-dir mnist/",
    )
    calibrate.add_argument("model", type=Path, help="ONNX model to calibrate")
    calibrate.add_argument("--output", "-o", type=Path, required=True, help="ONNX file to write")
    calibrate.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    calibrate.add_argument("--seed", type=int, default=1, help="the seed the model trained with")

    data = command(
        "mnist",
        "verify the MNIST files (MD5), downloading missing ones",
        "digit-inbox mnist --data-dir mnist/ --download",
    )
    data.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    data.add_argument("--download", action="store_true", help="fetch missing files first")

    correct = command(
        "correct",
        "record a person's reading of a file in review/ or the outbox, and file it there "
        "(DIGITS 'none': failed/); the day's report gets a `corrected` row",
        "digit-inbox correct --config config.yaml scan-0042.png 17",
    )
    config_option(correct)
    correct.add_argument("file", metavar="FILE", help="a path, or the file's name in the report")
    correct.add_argument("digits", metavar="DIGITS", help="the digits read, or 'none'")

    learn = command(
        "learn",
        "adapt the model to the recorded decisions (needs the [learn] extra); the candidate is "
        "written only if it passes the gate (exit 1 if not, 2 with too few decisions)",
        "digit-inbox learn --config config.yaml -o candidate.onnx --promote",
    )
    config_option(learn)
    learn.add_argument("--output", "-o", type=Path, required=True, help="candidate ONNX to write")
    learn.add_argument(
        "--promote",
        action="store_true",
        help="also install it as recognition.model (atomically, keeping the previous one)",
    )
    learn.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")

    review = command(
        "review",
        "serve the review page (needs the [review] extra)",
        "digit-inbox review --config config.yaml --listen 127.0.0.1:8765",
    )
    config_option(review)
    review.add_argument(
        "--listen",
        default=None,
        help="HOST:PORT (default 127.0.0.1:8765); other than loopback needs a token",
    )

    evaluate = command(
        "evaluate",
        "accuracy, calibration and the min_confidence table on MNIST test, scans and USPS",
        "digit-inbox evaluate --data-dir mnist/ --scans varied/ --output-dir results/",
    )
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
        level=args.log_level or "INFO",
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
