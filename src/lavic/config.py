"""Typed command configuration: a dataclass per command, YAML < command line, unknown keys rejected.

Each field's ``help`` metadata is its ``--help`` text. A command's options come from its
dataclass, so the flags, the YAML keys and the resolved config saved with an artefact are the
same names.

Example:
    >>> @dataclass
    ... class TrainArgs:
    ...     lr: float = field(default=5e-5, metadata={"help": "learning rate"})
    >>> parser = argparse.ArgumentParser()
    >>> add_dataclass_arguments(parser, TrainArgs)
    >>> args = dataclass_from_namespace(TrainArgs, parser.parse_args(["--lr", "1e-4"]))
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from lavic.errors import LavicError
from lavic.io import atomic_write_text

T = TypeVar("T")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. under ``taskset`` or a
    container's cpuset), not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0], True
    return tp, False


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--field`` option per dataclass field (defaults left to the dataclass)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        help_text = f.metadata.get("help", "")
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if help_text:
            kwargs["help"] = f"{help_text} (default: {default!r})"
        flag = f"--{f.name}"
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        if get_origin(tp) is Literal:
            kwargs["choices"] = list(get_args(tp))
            kwargs["type"] = type(get_args(tp)[0])
        elif get_origin(tp) in (list, tuple):
            inner = get_args(tp)[0] if get_args(tp) else str
            kwargs["nargs"] = "*" if optional else "+"
            kwargs["type"] = inner
        elif tp in (int, float, str):
            kwargs["type"] = tp
        elif tp is Path:
            kwargs["type"] = Path
        else:
            kwargs["type"] = str
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            kwargs["help"] = help_text + " (required)"
        parser.add_argument(flag, **kwargs)
    parser.add_argument(
        "--config",
        dest="_config",
        type=Path,
        default=None,
        help="YAML file giving any of these options; command-line flags override it",
    )


def _coerce(cls: type, name: str, value: Any, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    tp, optional = _unwrap_optional(hints[name])
    if value is None:
        if optional:
            return None
        raise LavicError(f"{source}: option {name!r} may not be null")
    try:
        if get_origin(tp) is Literal:
            if value not in get_args(tp):
                raise ValueError(f"must be one of {list(get_args(tp))}")
            return value
        if get_origin(tp) in (list, tuple):
            if not isinstance(value, list | tuple):
                raise ValueError("must be a list")
            inner = get_args(tp)[0] if get_args(tp) else str
            if any(v is None or isinstance(v, list | dict) for v in value):
                raise ValueError("must be a list of single values (no nulls, lists or mappings)")
            return [inner(v) for v in value]
        if tp is bool:
            if not isinstance(value, bool):
                raise ValueError("must be true or false")
            return value
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError("must be an integer")
        if tp in (int, float, str, Path):
            if tp in (int, float) and isinstance(value, bool):
                raise ValueError(f"must be a {tp.__name__}")
            if isinstance(value, list | dict):  # str([...]) would pass silently
                raise ValueError(f"must be a single value, got a {type(value).__name__}")
            return tp(value)
    except (TypeError, ValueError) as exc:
        raise LavicError(f"{source}: option {name!r}: {exc}") from None
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a repeated key (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges: explicit keys may override merged ones
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            except TypeError:  # unhashable: SafeLoader's own error says so
                break
        return super().construct_mapping(node, deep=deep)


def load_yaml_config(cls: type, path: Path) -> dict[str, Any]:
    """Read a YAML mapping of option names to values; reject unknown keys and wrong types."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise LavicError(f"{path}: cannot read config: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise LavicError(f"{path}: not UTF-8 text ({exc.reason})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise LavicError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LavicError(f"{path}: top level must be a mapping of option names to values")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise LavicError(f"{path}: unknown option(s) {unknown}; known: {sorted(known)}")
    return {k: _coerce(cls, k, v, str(path)) for k, v in data.items()}


def dataclass_from_namespace(cls: type[T], namespace: argparse.Namespace) -> T:
    """Build ``cls`` from defaults < YAML ``--config`` < explicit flags."""
    values: dict[str, Any] = {}
    config_path = getattr(namespace, "_config", None)
    if config_path is not None:
        values.update(load_yaml_config(cls, config_path))
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values.update({k: v for k, v in vars(namespace).items() if k in names})
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        and f.name not in values
    ]
    if missing:
        raise LavicError("missing required option(s): " + ", ".join(f"--{m}" for m in missing))
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise LavicError(str(exc)) from None


def config_to_dict(config: Any) -> dict[str, Any]:
    """A YAML/JSON-safe dict of a config dataclass (paths as strings)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically), loadable again with ``--config``."""
    atomic_write_text(path, yaml.safe_dump(config_to_dict(config), sort_keys=False))


# --------------------------------------------------------------------------------------------
# Shared option groups, composed into the commands' Args by inheritance
# --------------------------------------------------------------------------------------------


_SAME: Any = object()  # override(): keep the group's default


def override(group: type, name: str, default: Any = _SAME, *, help: str | None = None) -> Any:
    """A field of ``group`` with another default and/or another ``--help`` text, for a command
    whose reference-given default differs (``num_epochs`` is 5 in stage 1, 1 in stage 2) or whose
    help says what the option means for it. The name, type and place stay the group's."""
    base = {f.name: f for f in dataclasses.fields(group)}[name]
    metadata = dict(base.metadata) if help is None else {**base.metadata, "help": help}
    if default is not _SAME:
        return dataclasses.field(default=default, metadata=metadata)
    if base.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return dataclasses.field(default_factory=base.default_factory, metadata=metadata)  # type: ignore[misc]
    if base.default is not dataclasses.MISSING:
        return dataclasses.field(default=base.default, metadata=metadata)
    return dataclasses.field(metadata=metadata)  # required, as in the group


def _at_least(config: Any, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"--{name} must be at least {minimum}, got {value}")


class _Checked:
    """End of the cooperative ``__post_init__`` chain of the option groups."""

    def __post_init__(self) -> None:
        pass


@dataclasses.dataclass(kw_only=True)
class TrainerArgs(_Checked):
    """Options of the shared training core (:mod:`lavic.training`), used by distill and tune."""

    lr: float = dataclasses.field(default=5e-5, metadata={"help": "AdamW learning rate"})
    weight_decay: float = dataclasses.field(default=1e-5, metadata={"help": "AdamW weight decay"})
    num_epochs: int = dataclasses.field(default=5, metadata={"help": "training epochs"})
    batch_size: int = dataclasses.field(
        default=4, metadata={"help": "samples per batch (per device)"}
    )
    seed: int = dataclasses.field(
        default=42, metadata={"help": "random seed (LoRA init, shuffling)"}
    )
    num_workers: int = dataclasses.field(
        default=2, metadata={"help": "DataLoader worker processes (the collator runs there)"}
    )
    precision: Literal[
        "auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true"
    ] = dataclasses.field(
        default="auto",
        metadata={
            "help": "Lightning precision; auto: bf16-mixed on a CUDA GPU with bf16 or on a CPU "
            "with native bf16 (AVX512-BF16/AMX) that matches fp32 on a few batches, else 32-true"
        },
    )
    accumulate_grad_batches: int = dataclasses.field(
        default=1, metadata={"help": "batches whose gradients are summed per optimizer step"}
    )
    accelerator: str = dataclasses.field(
        default="auto", metadata={"help": "Lightning accelerator: auto, cpu, gpu, cuda, mps"}
    )
    devices: str = dataclasses.field(
        default="auto", metadata={"help": "Lightning devices: auto, a count (2) or ids (0,1)"}
    )
    strategy: str = dataclasses.field(
        default="auto",
        metadata={"help": "Lightning strategy: auto, ddp, fsdp, deepspeed_stage_2"},
    )
    resume: bool = dataclasses.field(
        default=False,
        metadata={"help": "continue from <output dir>/checkpoints/last.ckpt if it exists"},
    )
    checkpoint_every_n_steps: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "also write checkpoints/last.ckpt every N optimizer steps (0 or none: "
            "after each epoch only)"
        },
    )
    max_steps: int | None = dataclasses.field(
        default=None,
        metadata={"help": "stop after this many optimizer steps (-1 or none: run num_epochs)"},
    )
    log_every_n_steps: int = dataclasses.field(
        default=10, metadata={"help": "logging interval in optimizer steps"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(
            self, 1, "num_epochs", "batch_size", "accumulate_grad_batches", "log_every_n_steps"
        )
        _at_least(self, 0, "num_workers", "checkpoint_every_n_steps")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("--lr must be > 0 and --weight_decay >= 0")
        if self.max_steps is not None and (self.max_steps == 0 or self.max_steps < -1):
            raise ValueError(f"--max_steps must be -1 or positive, got {self.max_steps}")

    @property
    def step_limit(self) -> int:
        """``max_steps`` as Lightning takes it (-1: no limit)."""
        return -1 if self.max_steps is None else self.max_steps


@dataclasses.dataclass(kw_only=True)
class LoRAArgs(_Checked):
    """The LoRA adapter's options (:func:`lavic.model.lora.add_lora`)."""

    lora_r: int = dataclasses.field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = dataclasses.field(
        default=32, metadata={"help": "LoRA alpha (scale = alpha / r)"}
    )
    lora_dropout: float = dataclasses.field(default=0.1, metadata={"help": "LoRA dropout"})

    def __post_init__(self) -> None:
        super().__post_init__()
        _at_least(self, 1, "lora_r", "lora_alpha")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclasses.dataclass(kw_only=True)
class InferenceArgs(_Checked):
    """Where and in what precision a model answers (evaluate, recommend, serve)."""

    device: str = dataclasses.field(
        default="auto", metadata={"help": "auto (cuda if available), cpu, cuda"}
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = dataclasses.field(
        default="auto",
        metadata={
            "help": "weights dtype; auto: bfloat16 on CUDA; on a CPU with native bf16, float32 "
            "weights under bf16 autocast if that matches float32 on a probe batch; else float32"
        },
    )


@dataclasses.dataclass(kw_only=True)
class RecommendDataArgs(_Checked):
    """The recommendation data and how its prompt is read: the options stage 2 (``lavic tune``)
    and the evaluation (``lavic evaluate``) share, by name and meaning. A tune run hands exactly
    these on to the evaluation of its artefact (``lavic.evaluation.evaluate.Args.following``).
    """

    data_dir: Path = dataclasses.field(
        metadata={"help": "dataset root holding <category>/<split>.jsonl"}
    )
    category: str = dataclasses.field(metadata={"help": "domain subdirectory, e.g. all_beauty"})
    item_meta_path: Path = dataclasses.field(
        metadata={"help": "item metadata (titles): item2meta_*.json[l]"}
    )
    candidate_type: str = dataclasses.field(
        default="candidates_st", metadata={"help": "candidate list key, e.g. candidates_st"}
    )
    image_dir: Path | None = dataclasses.field(
        default=None, metadata={"help": "item images <item>_0.jpg (missing: placeholder, counted)"}
    )
    decoding: Literal["score", "constrained", "generate"] = dataclasses.field(
        default="score",
        metadata={
            "help": "score: rank candidates by likelihood; constrained: "
            "greedy over candidate IDs; generate: the reference's free "
            "greedy text + ID parsing"
        },
    )
    no_images: bool = dataclasses.field(
        default=False, metadata={"help": "text-only prompt (no item tokens) for the model"}
    )
    max_length: int = dataclasses.field(
        default=2048, metadata={"help": "token budget of prompt + answer"}
    )
    lenient: bool = dataclasses.field(
        default=False, metadata={"help": "skip bad records (counted)"}
    )

    @classmethod
    def values_of(cls, config: RecommendDataArgs) -> dict[str, Any]:
        """This group's options of ``config`` (any command's Args that composes it)."""
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(cls) if f.init}
