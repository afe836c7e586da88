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
        "read the digit in each image; CSV to stdout",
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
        default=0.6,
        help="below this the status is low_confidence (default 0.6)",
    )
    classify.add_argument(
        "--max-pixels",
        type=int,
        default=40_000_000,
        help="refuse larger images as decompression bombs (default 40e6)",
    )
    classify.add_argument(
        "--debug-dir", type=Path, help="write a PNG strip of the preprocessing steps per file here"
    )
    classify.add_argument(
        "--workers", type=int, default=None, help="decoding processes (default: one per CPU core)"
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
        "--dry-run",
        action="store_true",
        help="one epoch on 512 images: checks the pipeline in seconds",
    )

    export = command(
        "export",
        "convert a checkpoint to ONNX and check parity",
        "digit-inbox export model.pt -o model.onnx --data-dir mnist/",
    )
    export.add_argument("checkpoint", type=Path, help="checkpoint written by `train`")
    export.add_argument("--output", "-o", type=Path, required=True, help="ONNX file to write")
    export.add_argument("--data-dir", help="MNIST folder for the parity check")

    data = command(
        "mnist",
        "verify the MNIST files (MD5), downloading missing ones",
        "digit-inbox mnist --data-dir mnist/ --download",
    )
    data.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    data.add_argument("--download", action="store_true", help="fetch missing files first")

    evaluate = command(
        "evaluate",
        "MNIST test accuracy, confusion matrix, gallery",
        "digit-inbox evaluate --data-dir mnist/ --output-dir results/",
    )
    evaluate.add_argument("model", type=Path, nargs="?", help="default: the embedded model")
    evaluate.add_argument("--data-dir", help="MNIST folder (default: $DIGIT_INBOX_MNIST_DIR)")
    evaluate.add_argument("--output-dir", type=Path, help="write confusion.png, errors.png here")
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
        )
        return ExitCode.OK
    if args.command == "export":
        from digit_inbox.export import mnist, onnx_export

        onnx_export.export(args.checkpoint, args.output, mnist.resolve_data_dir(args.data_dir))
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
    if args.command == "evaluate":
        from digit_inbox.export import evaluate, mnist

        return evaluate.main(args.model, mnist.resolve_data_dir(args.data_dir), args.output_dir)
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
        if exc.name in ("torch", "onnx"):
            log.error("%s needs the training extra: pip install 'digit-inbox[train]'", exc.name)
            return int(ExitCode.USAGE)
        raise
