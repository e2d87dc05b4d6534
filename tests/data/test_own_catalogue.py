"""A user's own catalogue, end to end on `tiny`, offline: import -> describe -> distill -> index
-> serve, and a request through the real HTTP server answers with an imported item.

The table (tests/data/catalogue_table.py) has bad rows, a missing image, a 16-bit PNG, a
palette PNG, a WebP and a URL served by a local 127.0.0.1 server. Every stage runs through the
CLI with the fewest steps that exercise it (2 distillation steps, 8-token descriptions).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from lavic.cli import main
from lavic.data.importer import IMAGES_DIR, META_FILE
from lavic.data.loaders import described_images, load_item_meta

from .catalogue_table import BAD_ROWS, GOOD_ROWS, write_table
from .http_server import LocalServer, ok

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow  # `tiny` (SmolLM2-135M) is loaded by four commands and the server
def test_import_describe_distill_index_serve_on_tiny(tmp_path, monkeypatch, capsys, caplog):
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    with LocalServer() as server:
        table = write_table(tmp_path / "user", server.url("/scarf.jpg"))
        server.add(table.url_path, ok(table.url_image))
        cat = tmp_path / "catalogue"
        argv = [
            "import-catalogue", "--table_path", table.csv_path, "--output_dir", cat,
            "--images_root", table.pictures, "--id_column", "sku", "--title_column", "name",
            "--image_column", "picture", "--lenient", "--workers", "1", "--allow_private_hosts",
        ]  # fmt: skip
        assert main([str(a) for a in argv]) == 0
        assert server.count(table.url_path) == 1
    report = json.loads((cat / "import_report.json").read_text())
    assert report["items"] == len(GOOD_ROWS) and report["bad_rows"] == len(BAD_ROWS)
    assert report["images"]["failed"] == 1  # the missing file
    images = cat / IMAGES_DIR

    described = cat / "item2meta_train.described.json"
    capsys.readouterr()
    argv = [
        "describe", "--model_name", "tiny", "--item_meta_path", cat / META_FILE,
        "--image_dir", images, "--output_path", described, "--max_new_tokens", "8",
        "--device", "cpu",
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    summary = json.loads(capsys.readouterr().out)
    # Photos, not drawn shapes: tiny says what it cannot do, once.
    assert sum("`tiny` was trained on drawn synthetic shapes" in m for m in caplog.messages) == 1
    # 8 images listed (the gift card has none); the missing one is skipped, never described.
    assert summary["images"] == 8 and summary["described"] == 7
    assert summary["image_stats"]["missing"] == 1
    samples = described_images(load_item_meta(described))
    assert len(samples) == 7 and all(s.description.strip() for s in samples)

    run = tmp_path / "distilled"
    argv = [
        "distill", "--model_name", "tiny", "--train_data", described, "--val_data", described,
        "--train_images_dir", images, "--val_images_dir", images, "--output_dir", run,
        "--max_steps", "2", "--batch_size", "2", "--num_workers", "0", "--limit_val_items", "2",
        "--no-teacher_eval", "--no-mismatched_eval", "--lr", "1e-3", "--threads", "1",
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    artefact = run / "vision_lora_adapter_best"
    assert (artefact / "adapter_model.safetensors").is_file()

    index = tmp_path / "index"
    argv = [
        "index", "--model_dir", artefact, "--item_meta_path", described, "--image_dir", images,
        "--index_dir", index,
    ]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    catalogue = json.loads((index / "catalogue.json").read_text())
    assert len(catalogue["items"]) == len(GOOD_ROWS)

    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as handle:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lavic.cli", "serve", "--model_dir", str(artefact),
             "--index_dir", str(index), "--port", str(port), "--device", "cpu"],
            env=_env(), stdout=handle, stderr=subprocess.STDOUT,
        )  # fmt: skip
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120, trust_env=False)
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"serve exited:\n{log.read_text()[-3000:]}"
            try:
                if client.get("/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "serve never answered /health"
            time.sleep(0.25)
        # No candidates: the retriever proposes them from the imported catalogue.
        response = client.post(
            "/recommend", json={"conversation": "I want a red coffee mug", "top_k": 4}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["retrieved"] is True
        assert body["item_id"] in table.good_ids
        assert {c["item_id"] for c in body["candidates"]} <= set(table.good_ids)
        assert len(body["candidates"]) == 4
        # With the user's own candidates, one of them is the answer.
        response = client.post(
            "/recommend",
            json={"conversation": "a bag for my laptop", "candidates": ["0060188782", "LAMP-01"]},
        )
        assert response.status_code == 200, response.text
        assert response.json()["item_id"] in {"0060188782", "LAMP-01"}
        item = client.get("/items/BOTTLE-16").json()
        assert item["title"] == "Grey steel bottle (16-bit scan)" and item["image_url"]
        picture = client.get(item["image_url"])
        assert picture.status_code == 200
        assert picture.content == (images / "BOTTLE-16_0.jpg").read_bytes()
    finally:
        client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# ------------------------------------------------------------- what `tiny` says about photos


def _stop_before_the_model(monkeypatch):
    """``load_backbone`` raises: the command has done its checks, nothing heavy runs."""
    from lavic.errors import LavicError
    from lavic.model import backbone

    def stop(*args, **kwargs):
        raise LavicError("stopped before loading the model")

    monkeypatch.setattr(backbone, "load_backbone", stop)


def _imported(tmp_path):
    meta = {
        "MUG-1": {
            "title": "Red mug",
            "images": [{"path": "/m/r/red.jpg"}],
            "image_descriptions_llava_cleaned": {"MUG-1_0.jpg": "A red mug."},
        }
    }
    path = tmp_path / "item2meta_train.json"
    path.write_text(json.dumps(meta))
    images = tmp_path / "train_images"
    images.mkdir()
    return path, images


def test_tiny_knows_a_synthetic_catalogue_from_a_shop_one(tmp_path, caplog):
    from lavic.constants import SYNTHETIC_IMAGE_URL
    from lavic.data.records import ItemMeta
    from lavic.data.synthetic.catalogue import IMAGE_URL
    from lavic.model.backbone import check_catalogue

    assert IMAGE_URL.startswith(SYNTHETIC_IMAGE_URL)  # what `lavic synthesize` writes
    drawn = {
        "B01": ItemMeta(
            "B01", "t", ("B01_0.jpg",), {"B01_0.jpg": IMAGE_URL.format(name="B01_0.jpg")}
        )
    }
    shop = {"MUG-1": ItemMeta("MUG-1", "Red mug", ("MUG-1_0.jpg",))}
    fetched = {
        "MUG-1": ItemMeta(
            "MUG-1", "Red mug", ("MUG-1_0.jpg",), {"MUG-1_0.jpg": "https://shop.example/m.jpg"}
        )
    }
    assert not check_catalogue("tiny", drawn, "synthetic.json")
    assert not check_catalogue("llava-hf/llava-v1.6-mistral-7b-hf", shop, "shop.json")
    assert not check_catalogue("tiny-random", shop, "shop.json")  # test weights, no claim
    assert check_catalogue("tiny", shop, "shop.json")
    assert check_catalogue("tiny", fetched, "fetched.json")
    assert len(caplog.messages) == 2
    message = caplog.messages[0]
    assert message.startswith("shop.json: `tiny` was trained on drawn synthetic shapes")
    assert "llava-hf/llava-v1.6-mistral-7b-hf" in message and "docs/reproduce.md" in message


def test_describe_and_distill_warn_before_tiny_loads_and_threads_apply(
    tmp_path, monkeypatch, caplog, capsys
):
    import torch

    path, images = _imported(tmp_path)
    _stop_before_the_model(monkeypatch)
    before = torch.get_num_threads()
    try:
        argv = [
            "describe", "--model_name", "tiny", "--item_meta_path", path, "--image_dir", images,
            "--output_path", tmp_path / "described.json", "--threads", "1",
        ]  # fmt: skip
        assert main([str(a) for a in argv]) == 2
        assert "stopped before loading the model" in capsys.readouterr().err
        assert torch.get_num_threads() == 1
        argv = [
            "distill", "--model_name", "tiny", "--train_data", path, "--val_data", path,
            "--train_images_dir", images, "--val_images_dir", images,
            "--output_dir", tmp_path / "run", "--threads", "2",
        ]  # fmt: skip
        assert main([str(a) for a in argv]) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    warned = [m for m in caplog.messages if "`tiny` was trained on drawn synthetic shapes" in m]
    assert [m.split(":")[0] for m in warned] == [str(path), str(path)]
    with pytest.raises(SystemExit):  # argparse refuses it, as any bad flag
        main(["describe", "--threads", "0"])
    assert "--threads: must be at least 1, got 0" in capsys.readouterr().err
