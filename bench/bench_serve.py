"""Load test of ``lavic serve`` on loopback: 200 requests, 16 at a time, httpx.AsyncClient.

Builds a synthetic catalogue and a tiny tuned artefact (tiny-random with random LoRA weights:
the speed of a model does not depend on its weights), indexes it, then starts the real server
(``python -m lavic.cli serve``, a separate process) once with micro-batching and once without
(``--max_batch 1``), and sends the same requests to each, side by side. Requests give the
conversation and its 10 candidates (the evaluation setting); ``--retrieve`` leaves the
candidates out so the server retrieves the top 10 itself.

Every request loop is bounded (count and per-request timeout) and talks to 127.0.0.1 only.

Usage:
    python bench/bench_serve.py [--requests 200] [--concurrency 16] [--output results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CATEGORY = "synthetic_home"


@dataclass
class _Config:
    model_name: str = "tiny-random"


def build_fixture(root: Path) -> tuple[Path, Path, list[dict]]:
    """(tuned artefact, index dir, request bodies) under ``root``."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lavic.artifacts import write_artifact
    from lavic.data.loaders import load_split
    from lavic.data.synthetic import write_catalogue
    from lavic.model.backbone import load_backbone
    from lavic.model.lora import language_lora_targets, vision_lora_targets
    from lavic.model.tiny_random import build_tiny_random
    from lavic.serving.index import Args, build_index

    def lora(backbone, targets, seed):
        torch.manual_seed(seed)
        return get_peft_model(
            backbone.model,
            LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False),
        )

    base = build_tiny_random()
    distill = write_artifact(
        root / "distilled",
        kind="distill",
        model=lora(base, vision_lora_targets(base.model), 1),
        backbone=base,
        config=_Config(),
        metrics={},
        base_model="tiny-random",
    )
    merged = load_backbone(distill)
    tuned = write_artifact(
        root / "tuned",
        kind="tune",
        model=lora(merged, language_lora_targets(merged.model), 2),
        backbone=merged,
        config=_Config(),
        metrics={},
        base_model="tiny-random",
        parent=distill,
    )
    data = root / "data"
    write_catalogue(
        data,
        seed=0,
        categories=[CATEGORY],
        num_train=40,
        num_valid=8,
        num_test=50,
        num_candidates=10,
        min_items_per_kind=12,
        max_image_side=400,
    )
    index_dir = root / "index"
    build_index(
        Args(
            model_dir=tuned,
            item_meta_path=data / "item2meta_train.json",
            image_dir=data / "train_images",
            index_dir=index_dir,
        )
    )
    bodies = [
        {"conversation": c.context, "candidates": list(c.candidates["candidates_st"])}
        for c in load_split(data, CATEGORY, "test")
    ]
    return tuned, index_dir, bodies


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``lavic serve`` in a child process on a loopback port (``extra``: more flags)."""

    def __init__(
        self, tuned: Path, index_dir: Path, max_batch: int, log_path: Path, extra: tuple = ()
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lavic.cli",
                "serve",
                "--model_dir",
                str(tuned),
                "--index_dir",
                str(index_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--max_batch",
                str(max_batch),
                *map(str, extra),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}; see {self.log.name}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def load(
    url: str, bodies: list[dict], requests: int, concurrency: int, timeout: float
) -> dict:
    """Send ``requests`` bodies (cycled), at most ``concurrency`` in flight; time each one."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    queue = list(range(requests))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            start = time.perf_counter()
            try:
                r = await client.post("/recommend", json=bodies[i % len(bodies)])
                if r.status_code != 200:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
                    continue
                r.json()["item_id"]  # noqa: B018 - a complete, parsable answer
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ms = np.array(latencies) * 1000
    return {
        "requests": requests,
        "concurrency": concurrency,
        "ok": len(latencies),
        "errors": len(errors),
        "first_errors": errors[:3],
        "p50_ms": float(np.percentile(ms, 50)) if len(ms) else None,
        "p95_ms": float(np.percentile(ms, 95)) if len(ms) else None,
        "max_ms": float(ms.max()) if len(ms) else None,
        "throughput_rps": len(latencies) / wall,
        "wall_s": wall,
    }


def batching(url: str) -> dict:
    """The server's batching counters (requests, batches) from ``GET /health``."""
    import httpx

    return httpx.get(url + "/health", timeout=10).json()["batching"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument(
        "--retrieve",
        action="store_true",
        help="send no candidates: the server retrieves the top 10",
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the fixture here (default: a temporary folder)",
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    with tempfile.TemporaryDirectory(prefix="lavic-bench-serve-") as tmp:
        root = args.workdir or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        tuned, index_dir, bodies = build_fixture(root)
        if args.retrieve:
            bodies = [{"conversation": b["conversation"]} for b in bodies]
        print(
            f"fixture: {len(bodies)} conversations, built in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        results = {}
        for name, max_batch in (
            ("micro-batched (max_batch 16)", 16),
            ("one request per model call (max_batch 1)", 1),
        ):
            server = Server(tuned, index_dir, max_batch, root / f"server-{max_batch}.log")
            try:
                server.wait_ready()
                asyncio.run(
                    load(server.url, bodies, args.concurrency, args.concurrency, args.timeout)
                )  # warm-up, not counted
                before = batching(server.url)
                results[name] = asyncio.run(
                    load(server.url, bodies, args.requests, args.concurrency, args.timeout)
                )
                after = batching(server.url)
                calls = after["batches"] - before["batches"]
                results[name]["model_calls"] = calls
                results[name]["mean_batch"] = (after["requests"] - before["requests"]) / calls
            finally:
                server.stop()

    print(
        f"\n{args.requests} requests, {args.concurrency} at a time, "
        f"{'retrieval + ' if args.retrieve else ''}10 candidates each, tiny model, CPU"
    )
    print(
        f"{'server':44s} {'errors':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'req/s':>7s} "
        f"{'mean batch':>10s}"
    )
    for name, r in results.items():
        print(
            f"{name:44s} {r['errors']:6d} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} "
            f"{r['throughput_rps']:7.1f} {r['mean_batch']:10.2f}"
        )
    (batched, single) = results.values()
    print(
        f"micro-batching: throughput x{batched['throughput_rps'] / single['throughput_rps']:.2f}"
        f", p50 latency x{batched['p50_ms'] / single['p50_ms']:.2f}"
    )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2))
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
