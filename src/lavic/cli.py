"""The ``lavic`` console script: one subcommand per pipeline stage.

Each subcommand lives in its own module, which defines ``Args`` (a config dataclass whose fields
are the flags) and ``run(args: Args) -> int``. Modules are imported only when their command
runs, so ``lavic --help`` is instant and a command never pays for another's imports.

The commands that run a model on the CPU (:data:`THREADED_COMMANDS`) also take ``--threads``,
declared and applied here, once, before the command runs.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys

from lavic.config import add_dataclass_arguments, dataclass_from_namespace, usable_cores
from lavic.errors import LavicError

# command -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "check-data": ("lavic.data.check", "Validate a dataset and report the Recall@1 ceiling"),
    "synthesize": ("lavic.data.synthetic", "Write a synthetic, visually grounded catalogue"),
    "synthesize-unseen": (
        "lavic.data.unseen",
        "Write a second held-out catalogue from a generator sharing no code with synthesize",
    ),
    "download-data": ("lavic.data.download", "Fetch the published Reddit-Amazon data files"),
    "crawl": ("lavic.data.crawl", "Download item images concurrently into a checked snapshot"),
    "import-catalogue": (
        "lavic.data.importer",
        "Import a product table (CSV/JSONL/Parquet) and its images as a catalogue",
    ),
    "build-tiny": ("lavic.pretrain.build", "Build and pretrain the offline `tiny` backbone"),
    "describe": ("lavic.distill.describe", "Write teacher descriptions with the base model"),
    "distill": ("lavic.distill.train", "Stage 1: visual knowledge self-distillation"),
    "encode": ("lavic.cache.encode", "Compute the item visual-token cache"),
    "tune": ("lavic.tune.train", "Stage 2: recommendation prompt tuning"),
    "evaluate": ("lavic.evaluation.evaluate", "Evaluate a tuned model on a split"),
    "index": ("lavic.serving.index", "Build the retrieval index and token cache of a catalogue"),
    "recommend": ("lavic.serving.recommend_cli", "Recommend an item for a conversation"),
    "serve": ("lavic.serving.app", "Serve the recommend API and web page"),
    "demo": ("lavic.demo", "Run the whole pipeline on a synthetic catalogue"),
}


# "No space left on device" and "Disk quota exceeded": a one-line error, not a traceback.
_FULL = {errno.ENOSPC, errno.EDQUOT}

# Commands whose model runs torch ops on the CPU: they take --threads.
THREADED_COMMANDS = ("describe", "distill", "tune", "evaluate", "index", "serve")
THREADS_HELP = (
    "torch CPU threads (torch.set_num_threads); on a CPU shared with other jobs, 1 is often "
    "much faster (default: the usable cores, or OMP_NUM_THREADS if set)"
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads; returns the number set.

    ``None`` means the default: ``OMP_NUM_THREADS`` when the user set it (torch reads it
    too), otherwise the cores this process may run on, which under a container's or
    ``taskset``'s CPU limit is fewer than the machine's.
    """
    import torch

    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        threads = int(env) if env.isdigit() and int(env) > 0 else usable_cores()
    torch.set_num_threads(threads)
    return threads


def _load(module_name: str):
    return importlib.import_module(module_name)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lavic", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        p = sub.add_parser(name, help=summary, description=summary)
        if name == only:
            add_dataclass_arguments(p, _load(module_name).Args)
            if name in THREADED_COMMANDS:
                # Not a field of the command's Args: it is how the process runs, not what the
                # command computes, so it is neither saved with an artefact nor a --config key.
                p.add_argument(
                    "--threads", dest="_threads", metavar="N", type=_positive_int, default=None,
                    help=THREADS_HELP,
                )  # fmt: skip
    return parser


class _StderrHandler(logging.StreamHandler):
    """Logs to ``sys.stderr`` as it is when a record is written, not as it was when logging was
    set up: a caller that swaps stderr (a test capturing it, a notebook) and later closes its
    stream never leaves a handler writing into a closed file."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property wins
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in COMMANDS:
        command = None
    parser = build_parser(only=command)
    namespace = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if namespace.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[_StderrHandler()],
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if namespace.command is None:
        parser.print_help()
        return 2
    module = _load(COMMANDS[namespace.command][0])
    try:
        args = dataclass_from_namespace(module.Args, namespace)
        if namespace.command in THREADED_COMMANDS:
            threads = set_threads(getattr(namespace, "_threads", None))
            logging.getLogger(__name__).debug("torch CPU threads: %d", threads)
        return int(module.run(args) or 0)
    except LavicError as exc:
        print(f"lavic {namespace.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lavic {namespace.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        if exc.errno not in _FULL:
            raise
        # Our writes are atomic (a temporary beside the target, renamed when whole): the file
        # being written is not left half-written under its name.
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"lavic {namespace.command}: error: {os.strerror(exc.errno)}{where}; "
            "free some space and run the command again",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
