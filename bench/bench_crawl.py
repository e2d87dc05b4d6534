"""Crawler speed: N images from a local server that waits D seconds per image.

The work is all waiting: N x D seconds one at a time, about ceil(N / C) x D with C requests in
flight. Measured side by side in one run (this machine is shared and noisy):

  * ``sequential``: ``lavic crawl``'s own code with ``--concurrency 1``;
  * ``concurrent``: the same with ``--concurrency C`` (median of ``--repeats`` runs);
  * ``seed-style``: the reference's loop (one GET, PIL open/convert/save, next), for reference.

The server runs in its own process so its threads do not compete with the crawler for the GIL.
Every run starts from an empty folder and must save all N images, byte-identical across runs.

    python bench/bench_crawl.py                       # 500 images, 50 ms each, C = 32
    python bench/bench_crawl.py --n 100 --output runs/bench/crawl.json
"""

from __future__ import annotations

import argparse
import io
import math
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "data"))  # the tests' scriptable HTTP server

from http_server import LocalServer, image_bytes, ok  # noqa: E402

from lavic.data.crawl import CrawlOptions, ImageTarget, crawl_images  # noqa: E402
from lavic.io import atomic_write_json  # noqa: E402


def _serve(n: int, delay: float, port_queue, stop_event) -> None:
    server = LocalServer()
    for i in range(n):
        server.add(f"/img{i}.jpg", ok(image_bytes(size=(64, 64), seed=i), delay=delay))
    server.start()
    port_queue.put(server.port)
    stop_event.wait()
    port_queue.put(server.total())
    server.stop()


def reference_loop(targets: list[ImageTarget], folder: Path) -> None:
    """The reference's crawl_images.py loop: one request at a time, no retry, no check."""
    import httpx
    from PIL import Image

    with httpx.Client() as client:
        for t in targets:
            response = client.get(t.url, timeout=30)
            Image.open(io.BytesIO(response.content)).convert("RGB").save(folder / t.name)


def timed_crawl(targets, folder: Path, concurrency: int) -> float:
    options = CrawlOptions(
        concurrency=concurrency,
        per_host=concurrency,
        timeout=30,
        retries=0,
        progress=False,
        allow_private_hosts=True,  # the bench's server is on 127.0.0.1
    )
    start = time.perf_counter()
    report = crawl_images(targets, folder, options)
    seconds = time.perf_counter() - start
    counts = report.counts()
    if counts["saved"] != len(targets):
        raise SystemExit(f"crawl with concurrency {concurrency} saved {counts} of {len(targets)}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="images")
    parser.add_argument("--delay", type=float, default=0.05, help="server wait per image (s)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="concurrent runs (median)")
    parser.add_argument("--no-seed-style", action="store_true", help="skip the seed-style loop")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    ctx = mp.get_context("fork")
    port_queue, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(args.n, args.delay, port_queue, stop), daemon=True)
    proc.start()
    port = port_queue.get(timeout=60)
    targets = [
        ImageTarget(f"http://127.0.0.1:{port}/img{i}.jpg", f"I{i}_0.jpg") for i in range(args.n)
    ]
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_crawl_") as tmp:
        root = Path(tmp)
        # Interleaved (concurrent, sequential, concurrent...) so drift in load hits both.
        concurrent = [timed_crawl(targets, root / "c0", args.concurrency)]
        results["sequential_s"] = timed_crawl(targets, root / "seq", 1)
        for r in range(1, args.repeats):
            concurrent.append(timed_crawl(targets, root / f"c{r}", args.concurrency))
        results["concurrent_s"] = statistics.median(concurrent)
        results["concurrent_runs_s"] = concurrent
        if not args.no_seed_style:
            (root / "seed").mkdir()
            start = time.perf_counter()
            reference_loop(targets, root / "seed")
            results["seed_style_s"] = time.perf_counter() - start
        # Same bytes whatever the concurrency.
        for t in targets[:: max(1, args.n // 50)]:
            if (root / "seq" / t.name).read_bytes() != (root / "c0" / t.name).read_bytes():
                raise SystemExit(f"{t.name} differs between runs")
    stop.set()
    requests = port_queue.get(timeout=30)
    proc.join(timeout=10)

    floor_seq = args.n * args.delay
    floor_conc = math.ceil(args.n / args.concurrency) * args.delay
    ratio = results["concurrent_s"] / results["sequential_s"]
    summary = {
        "n": args.n,
        "delay_s": args.delay,
        "concurrency": args.concurrency,
        **results,
        "ratio_concurrent_over_sequential": ratio,
        "speedup": 1 / ratio,
        "floor_sequential_s": floor_seq,
        "floor_concurrent_s": floor_conc,
        "server_requests": requests,
        "expected_requests": args.n * (args.repeats + 1 + (not args.no_seed_style)),
    }
    print(f"{args.n} images, server waits {args.delay * 1000:.0f} ms per image")
    print(
        f"  sequential (--concurrency 1):  {results['sequential_s']:7.2f} s  (floor {floor_seq:.2f} s)"
    )
    runs = ", ".join(f"{s:.2f}" for s in concurrent)
    print(
        f"  concurrent (--concurrency {args.concurrency}): {results['concurrent_s']:7.2f} s  "
        f"(floor {floor_conc:.2f} s; runs {runs})"
    )
    if "seed_style_s" in results:
        print(f"  seed-style loop:               {results['seed_style_s']:7.2f} s")
    print(f"  ratio concurrent / sequential: {ratio:.3f}  (speed-up x{1 / ratio:.1f})")
    if args.output is not None:
        atomic_write_json(args.output, summary)


if __name__ == "__main__":
    main()
