"""``lavic recommend``: the tuned model's pick for one conversation, printed as JSON.

The command-line front end of :class:`lavic.serving.recommender.Recommender` (the in-process
recommender: the model loaded once, conversations ranked in batches); ``app.py`` is its HTTP
front end, ``lavic serve``.

Without ``--candidates`` the retriever proposes the ``--top_k`` catalogue items closest to the
conversation. The output is the JSON ``POST /recommend`` answers: ``item_id``, ``title``,
``score`` and ``candidates`` (each ``item_id``, ``title``, ``score``, ...), best first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from lavic.config import InferenceArgs
from lavic.errors import LavicError
from lavic.serving.recommender import DEFAULT_TOP_K, MAX_CANDIDATES, Recommender

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class Args(InferenceArgs):
    """Options of ``lavic recommend``."""

    model_dir: Path = field(metadata={"help": "tuned LaViC artefact (lavic tune's output)"})
    index_dir: Path = field(metadata={"help": "index directory built by `lavic index`"})
    conversation: str | None = field(
        default=None,
        metadata={
            "help": "the conversation: plain text (the submission) or "
            "<submission>..</submission><comment>..</comment>"
        },
    )
    conversation_file: Path | None = field(
        default=None, metadata={"help": "read the conversation from this UTF-8 file instead"}
    )
    candidates: list[str] | None = field(
        default=None,
        metadata={"help": "candidate item ids (default: retrieve --top_k from the catalogue)"},
    )
    top_k: int = field(
        default=DEFAULT_TOP_K, metadata={"help": "items to retrieve when no --candidates are given"}
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "token budget of prompt + answer (default 2048, as lavic evaluate)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.conversation is None) == (self.conversation_file is None):
            raise ValueError("give exactly one of --conversation and --conversation_file")
        if not 1 <= self.top_k <= MAX_CANDIDATES:
            raise ValueError(f"--top_k must be between 1 and {MAX_CANDIDATES}")


def read_conversation(args: Args) -> str:
    if args.conversation is not None:
        return args.conversation
    path = Path(args.conversation_file)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LavicError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise LavicError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise LavicError(f"{path}: cannot read: {exc.strerror}") from None


def run(args: Args) -> int:
    conversation = read_conversation(args)
    recommender = Recommender.load(
        args.model_dir,
        args.index_dir,
        max_length=args.max_length,
        device=args.device,
        dtype=args.dtype,
    )
    result = recommender.recommend(conversation, args.candidates, args.top_k)
    print(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    return 0
