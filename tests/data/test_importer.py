"""`lavic import-catalogue`: a user's product table and pictures -> the reference's layout.

Checked on a small CSV with bad rows, a missing image, a 16-bit PNG, a palette PNG, WebP and a
URL served by a local 127.0.0.1 server: what is written (and only inside the output folder),
how bad rows are reported (strict) or skipped and counted (lenient), that the three table
formats give the same catalogue, and that chunked reading changes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from PIL import Image

from lavic.cli import main
from lavic.data.importer import IMAGES_DIR, META_FILE, REPORT_FILE, Args, import_catalogue
from lavic.data.loaders import load_item_meta
from lavic.errors import DataError, LavicError

from .catalogue_table import BAD_ROWS, GOOD_ROWS, SHOP_ROWS, write_shop_export, write_table
from .http_server import ok

COLUMNS = ["--id_column", "sku", "--title_column", "name", "--image_column", "picture"]


@pytest.fixture
def table(tmp_path, server):
    t = write_table(tmp_path / "user", server.url("/scarf.jpg"))
    server.add(t.url_path, ok(t.url_image))
    return t


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def _argv(table, out, *extra):
    return [
        "import-catalogue",
        "--table_path",
        str(table.csv_path),
        "--output_dir",
        str(out),
        "--images_root",
        str(table.pictures),
        *COLUMNS,
        "--allow_private_hosts",  # the table's URL is on the local 127.0.0.1 server
        *extra,
    ]


def test_lenient_import_writes_the_reference_layout_and_counts_what_it_skipped(
    table, server, tmp_path, capsys
):
    out = tmp_path / "catalogue"
    before = _tree(tmp_path)
    assert main(_argv(table, out, "--lenient")) == 0
    printed = capsys.readouterr().out
    # Nothing changed outside the output folder.
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("catalogue/")} == before

    meta = load_item_meta(out / META_FILE)
    assert list(meta) == table.good_ids  # table order, bad rows dropped
    assert meta["MUG-RED"].title == "Red stoneware coffee mug"
    assert meta["MUG-RED"].image_names == ("MUG-RED_0.jpg",)
    assert meta["NOPIC-1"].image_names == ()
    assert meta["SCARF-URL"].image_urls == {"SCARF-URL_0.jpg": server.url(table.url_path)}
    raw = json.loads((out / META_FILE).read_text())
    assert raw["MUG-BLUE"]["images"] == [{"path": "mugs/blue.png"}]

    images = out / IMAGES_DIR
    expected = {f"{sku}_0.jpg" for sku, _, pic, _ in GOOD_ROWS if pic and "missing" not in pic}
    assert {p.name for p in images.iterdir() if p.suffix == ".jpg"} == expected
    assert not [p for p in images.iterdir() if p.name.startswith(".")]  # no temporaries
    for sku, _, pic, colour in GOOD_ROWS:
        if pic is None or "missing" in pic:
            continue
        with Image.open(images / f"{sku}_0.jpg") as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            pixel = im.getpixel((10, 10))
        # Every picture keeps its colour: the 16-bit scan is not clipped to white, the palette
        # PNG and the WebP are converted, the URL is fetched.
        assert max(abs(a - b) for a, b in zip(pixel, colour, strict=True)) <= 12, (sku, pixel)
    # The RGB JPEG is copied byte for byte.
    assert (images / "MUG-RED_0.jpg").read_bytes() == (table.pictures / "mugs/red.jpg").read_bytes()

    report = json.loads((out / REPORT_FILE).read_text())
    assert report["rows"] == len(GOOD_ROWS) + len(BAD_ROWS)
    assert report["items"] == len(GOOD_ROWS) and report["bad_rows"] == len(BAD_ROWS)
    assert report["images"] == {"wanted": 8, "copied": 6, "crawled": 1, "failed": 1}
    assert report["failures_by_reason"] == {"missing": 1}
    # The gift card has no picture, and the teal bottle's only picture is missing.
    assert report["items_without_image"] == 2
    assert "items without any image: 2 (shown with the placeholder)" in printed
    for number, (_, problem), message in zip(
        table.bad_rows, BAD_ROWS, report["bad_row_messages"], strict=True
    ):
        assert message.startswith(f"{table.csv_path}: row {number}: ") and problem in message
    assert report["image_failures"][0].startswith(f"{table.csv_path}: row ")
    assert "nothere.jpg" in report["image_failures"][0]
    assert "items written:  9" in printed and "bad rows:       4 skipped" in printed


def test_strict_import_stops_at_the_first_bad_row_with_one_line_and_writes_no_metadata(
    table, tmp_path, capsys
):
    out = tmp_path / "catalogue"
    assert main(_argv(table, out)) == 2
    err = capsys.readouterr().err
    first = table.bad_rows[0]
    line = f"lavic import-catalogue: error: {table.csv_path}: row {first}: {BAD_ROWS[0][1]}"
    assert line in err and "Traceback" not in err
    assert not (out / META_FILE).exists()
    assert not [p for p in out.rglob("*") if p.is_file()]  # not even a temporary


def test_missing_image_is_not_a_bad_row_but_strict_exits_1(table, tmp_path):
    # Only the good rows: every row imports, one image is missing.
    lines = table.csv_path.read_text().splitlines()
    keep = [ln for i, ln in enumerate(lines) if i not in table.bad_rows]
    table.csv_path.write_text("\n".join(keep) + "\n")
    out = tmp_path / "catalogue"
    assert main(_argv(table, out)) == 0
    assert len(load_item_meta(out / META_FILE)) == len(GOOD_ROWS)
    assert main(_argv(table, out, "--strict")) == 1


def _write_other_formats(table, tmp_path):
    import pandas as pd

    frame = pd.read_csv(table.csv_path, dtype=str, keep_default_na=False)
    frame = frame[~frame.index.isin([n - 1 for n in table.bad_rows])]
    jsonl = tmp_path / "products.jsonl"
    with open(jsonl, "w", encoding="utf-8") as handle:
        for record in frame.to_dict(orient="records"):
            handle.write(json.dumps(record) + "\n")
    parquet = tmp_path / "products.parquet"
    frame.to_parquet(parquet, index=False)
    tsv = tmp_path / "products.tsv"
    frame.to_csv(tsv, sep="\t", index=False)
    csv = tmp_path / "good.csv"
    frame.to_csv(csv, index=False)
    return {"csv": csv, "jsonl": jsonl, "parquet": parquet, "tsv": tsv}


def _import(path, table, out, **kw):
    args = Args(
        table_path=path,
        output_dir=out,
        images_root=table.pictures,
        id_column="sku",
        title_column="name",
        image_column="picture",
        allow_private_hosts=True,  # the table's URL is on the local 127.0.0.1 server
        **kw,
    )
    return import_catalogue(args)


def test_csv_tsv_jsonl_and_parquet_give_the_same_catalogue_and_chunks_change_nothing(
    table, tmp_path, monkeypatch
):
    from lavic.data import importer

    paths = _write_other_formats(table, tmp_path)
    outputs = {}
    for name, path in paths.items():
        out = tmp_path / f"out_{name}"
        _import(path, table, out, workers=1)
        outputs[name] = (out / META_FILE).read_text()
    assert len(set(outputs.values())) == 1, outputs
    out = tmp_path / "out_chunked"
    # Chunks of 2 rows, images converted by 2 worker processes (started even for a few).
    monkeypatch.setattr(importer._LazyPool, "MIN_JOBS", 1)
    report = _import(paths["parquet"], table, out, chunk_size=2, workers=2)
    assert (out / META_FILE).read_text() == outputs["csv"]
    assert report.images == {"wanted": 8, "copied": 6, "crawled": 1, "failed": 1}
    jpegs = sorted((out / IMAGES_DIR).glob("*.jpg"))
    ref = tmp_path / "out_csv" / IMAGES_DIR
    assert [p.read_bytes() for p in jpegs] == [(ref / p.name).read_bytes() for p in jpegs]


def test_several_images_per_item_become_item_k(tmp_path):
    pictures = tmp_path / "pics"
    pictures.mkdir()
    for name, colour in (("a.jpg", (255, 0, 0)), ("b.jpg", (0, 255, 0)), ("c.jpg", (0, 0, 255))):
        Image.new("RGB", (16, 16), colour).save(pictures / name)
    table = tmp_path / "t.jsonl"
    rows = [
        {"item_id": "X1", "title": "three views", "image": ["a.jpg", "b.jpg", "c.jpg"]},
        {"item_id": "X2", "title": "two in a string", "image": "c.jpg | a.jpg"},
    ]
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    import_catalogue(Args(table, out, images_root=pictures, image_separator="|"))
    meta = load_item_meta(out / META_FILE)
    assert meta["X1"].image_names == ("X1_0.jpg", "X1_1.jpg", "X1_2.jpg")
    assert meta["X2"].image_names == ("X2_0.jpg", "X2_1.jpg")
    assert (out / IMAGES_DIR / "X2_0.jpg").read_bytes() == (pictures / "c.jpg").read_bytes()
    assert (out / IMAGES_DIR / "X1_1.jpg").read_bytes() == (pictures / "b.jpg").read_bytes()


def test_paths_and_links_out_of_the_images_root_are_never_read(tmp_path):
    pictures = tmp_path / "pics"
    pictures.mkdir()
    Image.new("RGB", (8, 8), (9, 9, 9)).save(tmp_path / "outside.jpg")
    (pictures / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    table = tmp_path / "t.csv"
    table.write_text(
        "item_id,title,image\n"
        f"A,abs,{tmp_path / 'outside.jpg'}\n"
        "B,dots,../outside.jpg\n"
        "C,link,link.jpg\n"
        "D,file url,file:///etc/passwd\n"
        "E,web path climbing,/m/../../outside.jpg\n"
    )
    out = tmp_path / "out"
    report = import_catalogue(Args(table, out, images_root=pictures, lenient=True))
    # With --images_root, a leading '/' is a web path under it: A is looked for (and missing)
    # at pics/<tmp_path>/outside.jpg, never read where it lies.
    assert report.items == 1 and report.bad_rows == 4
    assert report.image_failures == [
        f"{table}: row 1: no such file {pictures}{tmp_path / 'outside.jpg'}"
    ]
    assert "only http(s) URLs" in report.bad_row_messages[2]
    assert all("outside --images_root" in report.bad_row_messages[i] for i in (0, 1, 3))
    assert not list((out / IMAGES_DIR).iterdir())

    # Without --images_root (the table's folder is the root) an absolute path is just that,
    # and one outside the table's folder is refused.
    shop = tmp_path / "shop"
    shop.mkdir()
    table.rename(shop / "t.csv")
    report = import_catalogue(Args(shop / "t.csv", tmp_path / "out2", lenient=True))
    assert report.bad_row_messages[0].startswith(f"{shop / 't.csv'}: row 1: ")
    assert "image path " + repr(str(tmp_path / "outside.jpg")) in report.bad_row_messages[0]
    assert "is outside --images_root" in report.bad_row_messages[0]


def test_missing_column_names_the_flag_and_the_columns_present(table, tmp_path):
    with pytest.raises(DataError) as info:
        _import(table.csv_path, table, tmp_path / "o", description_column="blurb")
    assert str(info.value) == (
        f"{table.csv_path}: no column 'blurb' (--description_column); "
        "the table has: 'sku', 'name', 'picture'"
    )
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_malformed_csv_line_is_one_line_error_or_skipped_when_lenient(tmp_path):
    pictures = tmp_path / "pics"
    pictures.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(pictures / "a.jpg")
    table = tmp_path / "t.csv"
    table.write_text('item_id,title,image\nA,ok,a.jpg\nB,"one, two",a.jpg,extra\nC,ok,a.jpg\n')
    with pytest.raises(
        DataError, match=r"t\.csv: malformed CSV: Expected 3 fields in line 3, saw 4"
    ):
        import_catalogue(Args(table, tmp_path / "o"))
    report = import_catalogue(Args(table, tmp_path / "o2", lenient=True))
    assert report.items == 2 and report.bad_rows == 1
    assert "line 3" in report.bad_row_messages[0]
    assert list(load_item_meta(tmp_path / "o2" / META_FILE)) == ["A", "C"]


def test_description_column_seeds_the_teacher_descriptions(tmp_path):
    from lavic.data.loaders import described_images

    pictures = tmp_path / "pics"
    pictures.mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(pictures / "a.jpg")
    table = tmp_path / "t.csv"
    table.write_text("id,title,image,text\nA,Mug,a.jpg,A red mug.\nB,Cup,a.jpg,\n")
    out = tmp_path / "o"
    import_catalogue(Args(table, out, id_column="id", description_column="text"))
    samples = described_images(load_item_meta(out / META_FILE))
    assert [(s.item_id, s.image_name, s.description) for s in samples] == [
        ("A", "A_0.jpg", "A red mug.")
    ]


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="different columns"):
        Args(Path("t.csv"), Path("o"), id_column="x", title_column="x")
    sheet = tmp_path / "t.xlsx"
    sheet.write_bytes(b"PK")
    with pytest.raises(LavicError, match="cannot tell the table format from '.xlsx'"):
        import_catalogue(Args(sheet, tmp_path / "o"))
    with pytest.raises(DataError, match="no such file"):
        import_catalogue(Args(tmp_path / "absent.csv", tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_quick_check_catches_cut_short_jpegs_and_full_check_also_corrupt_ones(tmp_path):
    import io

    pictures = tmp_path / "pics"
    pictures.mkdir()
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(buf, format="JPEG", quality=90)
    whole = buf.getvalue()
    (pictures / "whole.jpg").write_bytes(whole)
    (pictures / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    corrupt = bytearray(whole)
    corrupt[len(whole) // 2 : len(whole) // 2 + 64] = b"\xff" * 64  # end marker intact
    (pictures / "corrupt.jpg").write_bytes(bytes(corrupt))
    (pictures / "text.jpg").write_bytes(b"<html>not found</html>")
    table = tmp_path / "t.csv"
    table.write_text(
        "item_id,title,image\nW,w,whole.jpg\nC,c,cut.jpg\nX,x,corrupt.jpg\nH,h,text.jpg\n"
    )
    quick = import_catalogue(Args(table, tmp_path / "quick", images_root=pictures))
    assert quick.failures_by_reason == {"truncated": 1, "not_image": 1}
    full = import_catalogue(Args(table, tmp_path / "full", images_root=pictures, full_check=True))
    assert full.images["failed"] == 3 and full.images["copied"] == 1
    assert (tmp_path / "full" / IMAGES_DIR / "W_0.jpg").read_bytes() == whole


def test_link_images_hard_links_kept_jpegs_and_still_converts_the_rest(table, tmp_path):
    out = tmp_path / "linked"
    report = _import(table.csv_path, table, out, lenient=True, link_images=True, workers=1)
    assert report.images == {"wanted": 8, "copied": 6, "crawled": 1, "failed": 1}
    images = out / IMAGES_DIR
    kept = os.stat(table.pictures / "mugs/red.jpg")
    assert os.stat(images / "MUG-RED_0.jpg").st_ino == kept.st_ino  # linked, not copied
    converted = os.stat(images / "MUG-BLUE_0.jpg")  # palette PNG -> a new JPEG
    assert converted.st_ino != os.stat(table.pictures / "mugs/blue.png").st_ino
    # A second import over the first replaces each file whole (no temporaries left).
    _import(table.csv_path, table, out, lenient=True, link_images=True, workers=1)
    assert not [p for p in images.iterdir() if p.name.startswith(".")]


def test_the_walk_through_example_imports_as_docs_own_catalogue_says(tmp_path, capsys):
    """docs/own-catalogue.md shows these outputs; this keeps the example and the page true."""
    example = Path(__file__).resolve().parents[2] / "examples" / "own-catalogue"
    argv = [
        "import-catalogue", "--table_path", str(example / "products.csv"),
        "--output_dir", str(tmp_path / "catalogue"), "--id_column", "sku",
        "--title_column", "name", "--image_column", "picture",
        "--images_root", str(example / "pictures"),
    ]  # fmt: skip
    assert main(argv) == 2
    assert "products.csv: row 14: empty item id (column 'sku')" in capsys.readouterr().err
    assert main([*argv, "--lenient"]) == 0
    printed = capsys.readouterr().out
    for line in ("rows read:      21", "items written:  20", "copied:       19", "missing: 1"):
        assert line in printed
    report = json.loads((tmp_path / "catalogue" / REPORT_FILE).read_text())
    assert report["image_failures"][0].endswith(
        "products.csv: row 21: no such file " + str(example / "pictures" / "bottle-yellow.jpg")
    )


def test_a_url_on_a_private_host_is_refused_without_the_flag(table, server, tmp_path):
    """The table's URL is on 127.0.0.1: without --allow_private_hosts it is refused (counted
    and named in the report, never requested); the local pictures still import."""
    argv = _argv(table, tmp_path / "catalogue", "--lenient")
    argv.remove("--allow_private_hosts")
    assert main(argv) == 0
    report = json.loads((tmp_path / "catalogue" / REPORT_FILE).read_text())
    assert report["images"] == {"wanted": 8, "copied": 6, "crawled": 0, "failed": 2}
    assert report["failures_by_reason"] == {"missing": 1, "refused": 1}
    refused = [m for m in report["image_failures"] if "refused" in m]
    assert len(refused) == 1 and "127.0.0.1 is a loopback address" in refused[0]
    assert refused[0].endswith("(use --allow_private_hosts to allow)")
    assert server.count(table.url_path) == 0
    assert not (tmp_path / "catalogue" / IMAGES_DIR / "SCARF-URL_0.jpg").exists()


# ------------------------------------------------------------------ a shop's export, as it is


def _shop_argv(table, media, out, *extra):
    return [
        "import-catalogue", "--table_path", str(table), "--output_dir", str(out),
        "--id_column", "sku", "--title_column", "name", "--images_root", str(media), *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "latin-1"])
def test_a_shop_export_imports_as_it_is(encoding, tmp_path, capsys):
    table, media = write_shop_export(
        tmp_path / "shop", "utf-8-sig" if encoding == "utf-8-sig" else encoding
    )
    out = tmp_path / "catalogue"
    extra = ["--encoding", encoding] if encoding == "latin-1" else []
    assert main(_shop_argv(table, media, out, *extra)) == 0
    printed = capsys.readouterr().out
    meta = load_item_meta(out / META_FILE)
    # Web paths (`/m/b/...`) are read under --images_root; names lose their HTML.
    assert {i: m.title for i, m in meta.items()} == {sku: title for sku, _, _, title in SHOP_ROWS}
    raw = json.loads((out / META_FILE).read_text())
    assert raw["MB01"]["images"] == [{"path": "/m/b/mb01-blue-0.jpg"}]  # as written
    for sku, _, path, _ in SHOP_ROWS[:4]:
        assert (out / IMAGES_DIR / f"{sku}_0.jpg").read_bytes() == (media / path[1:]).read_bytes()
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["cleaned_text"] == {"entities": 3, "markup": 2}
    assert report["images"] == {"wanted": 5, "copied": 4, "crawled": 0, "failed": 1}
    assert report["image_failures"] == [f"{table}: row 5: no such file {media}/m/b/mb05-gone-0.jpg"]
    assert report["items_without_image"] == 1
    assert "HTML in text:   3 cell(s) with entities decoded, 2 with tags removed" in printed
    assert "items without any image: 1 (shown with the placeholder)" in printed


def test_a_latin1_export_read_as_utf8_names_its_first_bad_line(tmp_path, capsys):
    table, media = write_shop_export(tmp_path / "shop", "latin-1")
    out = tmp_path / "catalogue"
    assert main(_shop_argv(table, media, out)) == 2
    err = capsys.readouterr().err.strip()
    # Row 4 (MB04,Café: é is its 9th byte) is the table's fifth line: the header is line 1.
    assert err == (
        f"lavic import-catalogue: error: {table}:5: not valid UTF-8 text (byte 9: invalid "
        "continuation byte); if it was saved as Latin-1 or Windows-1252, pass --encoding "
        "latin-1 or cp1252"
    )
    assert not (out / META_FILE).exists()
    # The same with small chunks: the bad byte is met in a later chunk, after the header.
    assert main(_shop_argv(table, media, out, "--chunk_size", "1")) == 2
    assert f"{table}:5: not valid UTF-8 text" in capsys.readouterr().err
    # An encoding that does not exist, or one given for JSON lines, is refused up front.
    assert main(_shop_argv(table, media, out, "--encoding", "klingon")) == 2
    assert "--encoding 'klingon': unknown encoding" in capsys.readouterr().err
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"sku": "A", "name": "a", "image": "/m/b/mb01-blue-0.jpg"}\n')
    assert main(_shop_argv(jsonl, media, out, "--encoding", "latin-1")) == 2
    assert "only CSV and TSV tables take an encoding" in capsys.readouterr().err


def test_temporaries_are_exclusive_never_followed_and_a_killed_runs_are_removed(tmp_path):
    from lavic.data import importer

    table, media = write_shop_export(tmp_path / "shop")
    out = tmp_path / "catalogue"
    images = out / IMAGES_DIR
    images.mkdir(parents=True)
    # A killed run's leftovers: the metadata's temporary (lavic.io.atomic_open names it so),
    # an image's, and a link planted under the very name this process will use.
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (out / f".{META_FILE}.x1y2z3.tmp").write_text('{"half": ')
    (images / ".MB01_0.jpg.999999.tmp").write_bytes(b"\xff\xd8 half")
    (images / f".MB02_0.jpg.{os.getpid()}.tmp").symlink_to(victim)
    importer._write_renamed(images / "MB02_0.jpg", b"new bytes")  # the name is taken: no follow
    assert victim.read_text() == "keep me"
    assert (images / "MB02_0.jpg").read_bytes() == b"new bytes"
    (images / f".MB03_0.jpg.{os.getpid()}.tmp").symlink_to(victim)

    report = import_catalogue(
        Args(table, out, id_column="sku", title_column="name", images_root=media)
    )
    assert report.items == len(SHOP_ROWS)
    assert victim.read_text() == "keep me"
    leftovers = [p.name for d in (out, images) for p in d.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []


def test_an_interrupted_import_leaves_no_temporary_behind(tmp_path, monkeypatch):
    from lavic.data import importer

    table, media = write_shop_export(tmp_path / "shop")
    out = tmp_path / "catalogue"
    real = importer.import_local_image
    calls = []

    def interrupted(source, dest, *args, **kwargs):
        calls.append(dest)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the images
        return real(source, dest, *args, **kwargs)

    monkeypatch.setattr(importer, "import_local_image", interrupted)
    with pytest.raises(KeyboardInterrupt):
        import_catalogue(Args(table, out, id_column="sku", title_column="name", images_root=media))
    assert not (out / META_FILE).exists()  # only a whole table's metadata is ever written
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
