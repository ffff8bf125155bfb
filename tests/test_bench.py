"""`maskml bench`: one table from one process, on the stand-in weights with tiny repeat counts (the shape of
the table and its IoU column are checked here; the speed figures belong to the docs, not to a test)."""
from __future__ import annotations

import json

import pytest

from conftest import FIXTURES
from maskml.bench import COLUMNS
from maskml.cli import main


def table_rows(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_bench_table_of_an_image_and_a_video_model(sam_checkpoints, cutie_small_checkpoint, tmp_path, capsys):
    figures = tmp_path / "bench.json"
    assert main(["bench", "--models", "mobile_sam,cutie_small", "--checkpoint",
                 f"mobile_sam={sam_checkpoints['mobile_sam']}", "--checkpoint", f"cutie_small={cutie_small_checkpoint}",
                 "--images", str(FIXTURES / "sam" / "truck_1200x800.png"), "--runs", "1", "--video-frames", "1",
                 "--json", str(figures)]) == 0
    out = capsys.readouterr().out
    assert "weights of mobile_sam: not the official weights (mobile_sam.pt)" in out
    header, *rows = table_rows(out)
    assert header == list(COLUMNS) and all(len(row) == len(COLUMNS) for row in rows)
    cells = {(row[0], row[1]): dict(zip(COLUMNS, row)) for row in rows}
    assert list(cells) == [("mobile_sam", "PyTorch fp32"), ("mobile_sam", "ORT fp32"), ("mobile_sam", "ORT int8"),
                           ("cutie_small", "PyTorch fp32"), ("cutie_small", "ORT fp32"), ("cutie_small", "ORT int8")]
    for backend in ("PyTorch fp32", "ORT fp32", "ORT int8"):
        row = cells["mobile_sam", backend]
        assert float(row["encoder ms"].split()[0]) > 0 and float(row["decoder ms / prompt"]) > 0
        assert row["video frame ms, 1 object"] == "-"  # an image model
    assert cells["mobile_sam", "ORT int8"]["encoder ms"].endswith("x)")  # the speed-up against PyTorch
    mean, low = map(float, cells["mobile_sam", "ORT fp32"]["mask IoU vs PyTorch fp32 (mean / min)"].split(" / "))
    assert mean >= low >= 0.998
    assert float(cells["cutie_small", "PyTorch fp32"]["video frame ms, 3 objects"]) > 0
    assert float(cells["cutie_small", "ORT fp32"]["video frame ms, 1 object"].split()[0]) > 0  # Cutie's graphs
    assert cells["cutie_small", "ORT fp32"]["encoder ms"] == "-"  # a tracker has no prompt encoder
    saved = json.loads(figures.read_text())
    assert [(r["model"], r["backend"]) for r in saved["rows"]] == list(cells)
    assert saved["rows"][0]["peak_mb"] is not None


@pytest.mark.parametrize("args, message", [
    (["--models", "mobile_sam,cutie_small", "--checkpoint", "x.pt"], "give NAME=PATH with NAME one of --models"),
    (["--models", "no_such_model"], "no_such_model"),
    (["--runs", "0"], "--runs and --video-frames take a positive number"),
])
def test_bench_bad_arguments_are_one_line(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
