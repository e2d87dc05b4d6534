"""``lavic import-catalogue`` speed and memory on a large table with local image paths.

Writes a CSV of N rows (id, title, image path) and N distinct image files: a fraction
``--png_fraction`` as palette PNGs (converted to JPEG), the rest RGB JPEGs of ``--size`` px
(copied byte for byte after the quick check). Then runs the real command in its own process
(``python -m lavic.cli import-catalogue``), and reads that child's wall time and peak RSS
(``os.wait4``'s ``ru_maxrss``). Side by side in one run, so the ratios hold on a noisy machine:

  * ``small``: the first N/10 rows only (same chunk size): if memory were proportional to the
    table, the large run's peak would be ~10x the small one's; streamed, it is about the same;
  * ``large``: all N rows, the defaults (quick check, images copied);
  * ``large_link``: all N rows, ``--link_images`` (RGB JPEGs hard-linked, not copied);
  * ``full_check`` (optional, ``--full_check_too``): all N rows, every JPEG decoded in full.

    python bench/bench_import.py                                   # 100k rows, 256 px
    python bench/bench_import.py --rows 20000 --output runs/bench/import.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TEMPLATES = 64  # distinct pictures; each file is one of them under its own name


def _templates(size: int, rng: np.random.Generator) -> tuple[list[bytes], list[bytes]]:
    """Product-photo-like JPEGs (a shaded object on white, sensor noise) and palette PNGs."""
    jpegs, pngs = [], []
    y, x = np.mgrid[0:size, 0:size]
    for _ in range(TEMPLATES):
        colour = rng.integers(0, 256, 3)
        inside = (x - size / 2) ** 2 / (size * 0.3) ** 2 + (y - size / 2) ** 2 / (
            size * 0.4
        ) ** 2 < 1
        shade = (0.6 + 0.4 * x / size)[..., None]
        arr = np.where(inside[..., None], colour * shade, 255.0)
        arr = np.clip(arr + rng.normal(0, 4, arr.shape), 0, 255).astype(np.uint8)
        image = Image.fromarray(arr)
        buf = io.BytesIO()
        image.save(buf, format="JPEG", quality=90)
        jpegs.append(buf.getvalue())
        buf = io.BytesIO()
        image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    return jpegs, pngs


def write_table(root: Path, rows: int, size: int, png_fraction: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    jpegs, pngs = _templates(size, rng)
    pictures = root / "pictures"
    started = time.perf_counter()
    n_png = 0
    with open(root / "products.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "picture"])
        for i in range(rows):
            folder = pictures / f"{i // 1000:03d}"
            if i % 1000 == 0:
                folder.mkdir(parents=True, exist_ok=True)
            is_png = rng.random() < png_fraction
            name = f"p{i}.png" if is_png else f"p{i}.jpg"
            data = pngs[i % TEMPLATES] if is_png else jpegs[i % TEMPLATES]
            (folder / name).write_bytes(data)
            n_png += is_png
            writer.writerow(
                [f"SKU{i:07d}", f"Product number {i}, colour {i % 17}", f"{i // 1000:03d}/{name}"]
            )
    return {
        "rows": rows,
        "pngs": n_png,
        "jpeg_bytes_mean": int(np.mean([len(b) for b in jpegs])),
        "png_bytes_mean": int(np.mean([len(b) for b in pngs])),
        "write_s": round(time.perf_counter() - started, 1),
    }


def run_import(table: Path, pictures: Path, out: Path, *extra: str) -> dict:
    """The real command in a child process: wall time, peak RSS, its printed summary."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    argv = [
        sys.executable, "-m", "lavic.cli", "import-catalogue",
        "--table_path", str(table), "--output_dir", str(out), "--images_root", str(pictures),
        "--id_column", "sku", "--title_column", "name", "--image_column", "picture",
        *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"import failed ({proc.returncode}):\n{stderr[-3000:]}")
    report = json.loads((out / "import_report.json").read_text())
    return {
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "rows_per_s": round(report["rows"] / seconds),
        "items": report["items"],
        "images": report["images"],
        "summary": stdout.strip().splitlines(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels")
    parser.add_argument("--png_fraction", type=float, default=0.05)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunk_size", type=int, default=10_000)
    parser.add_argument("--full_check_too", action="store_true", help="also time --full_check")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_import_", dir=args.workdir))
    try:
        table = write_table(root, args.rows, args.size, args.png_fraction)
        print(f"table: {table}", flush=True)
        csv_path, pictures = root / "products.csv", root / "pictures"
        small_rows = max(1, args.rows // 10)
        small_csv = root / "small.csv"
        with open(csv_path, encoding="utf-8") as src, open(small_csv, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i > small_rows:
                    break
                dst.write(line)
        common = ["--workers", str(args.workers), "--chunk_size", str(args.chunk_size)]
        results = {"small": run_import(small_csv, pictures, root / "out_small", *common)}
        print("small:", {k: v for k, v in results["small"].items() if k != "summary"}, flush=True)
        results["large"] = run_import(csv_path, pictures, root / "out_large", *common)
        print("large:", {k: v for k, v in results["large"].items() if k != "summary"}, flush=True)
        shutil.rmtree(root / "out_large" / "train_images")  # free the disk before the next
        results["large_link"] = run_import(
            csv_path, pictures, root / "out_link", *common, "--link_images"
        )
        print("large_link:", {k: v for k, v in results["large_link"].items() if k != "summary"})
        if args.full_check_too:
            results["full_check"] = run_import(
                csv_path, pictures, root / "out_full", *common, "--full_check"
            )
            print("full_check:", {k: v for k, v in results["full_check"].items() if k != "summary"})
        large, small = results["large"], results["small"]
        ratios = {
            "rss_large_over_small": round(large["peak_rss_mib"] / small["peak_rss_mib"], 2),
            "time_large_over_small": round(large["seconds"] / small["seconds"], 2),
            "time_link_over_copy": round(results["large_link"]["seconds"] / large["seconds"], 2),
        }
        if "full_check" in results:
            ratios["time_full_over_quick"] = round(
                results["full_check"]["seconds"] / large["seconds"], 2
            )
        out = {
            "table": table,
            "options": vars(args) | {"workdir": str(args.workdir), "output": str(args.output)},
            "results": results,
            "ratios": ratios,
            "machine": {
                "cpus": os.cpu_count(),
                "load_avg": os.getloadavg(),
                "python": platform.python_version(),
            },
        }
        print("ratios:", ratios)
        print("\n".join(large["summary"]))
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(out, indent=2) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
