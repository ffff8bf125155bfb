"""`maskml models`: every model of the zoo with its size, its role and whether its checkpoint is cached."""
from __future__ import annotations

import json

import maskml
from maskml.cli import main
from maskml.zoo import OFFICIAL_FILE_BYTES, get_entry, list_models


def test_models_lists_the_zoo_and_what_the_cache_holds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MASKML_HOME", str(tmp_path))
    (tmp_path / "mobile_sam.pt").write_bytes(b"only its presence is checked")

    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "does", "parameters", "checkpoint", "in", "cache"]
    rows = {line.split()[0]: line for line in lines[1:len(list_models()) + 1]}
    assert list(rows) == list_models()
    assert rows["mobile_sam"].split()[-5:] == ["9.8", "M", "41", "MB", "yes"]
    assert rows["sam_vit_h"].split()[-5:] == ["641.1", "M", "2565", "MB", "no"]
    assert "image prompter" in rows["sam_vit_b"] and "video tracker" not in rows["sam_vit_b"]
    assert "video tracker" in rows["cutie_small"] and "image prompter" not in rows["cutie_small"]
    assert "image prompter + video tracker" in rows["sam2.1_hiera_t"]
    assert sum(row.endswith(" yes") for row in rows.values()) == 1
    assert any(str(tmp_path) in line for line in lines)

    assert main(["models", "--json"]) == 0
    records = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert [name for name, r in records.items() if r["cached"]] == ["mobile_sam"]
    mobile_sam = records["mobile_sam"]
    assert mobile_sam["path"] == str(tmp_path / "mobile_sam.pt") and mobile_sam["checkpoint_bytes"] == 40728226
    assert mobile_sam["parameters"] == sum(p.numel() for p in maskml.build_model("mobile_sam").parameters())
    assert records["cutie_base"]["checkpoint_bytes"] is None  # not on record: shown as "?"


def test_recorded_file_sizes_are_of_registered_files():
    assert set(OFFICIAL_FILE_BYTES) <= {get_entry(name).filename for name in list_models()}


def test_maskml_alone_or_a_bare_command_shows_what_to_give(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: maskml") and all(f"    {name} " in err for name in ("segment", "track", "train"))
    assert main(["data"]) == 2  # its actions, not "the following arguments are required: ACTION"
    err = capsys.readouterr().err
    assert err.startswith("usage: maskml data") and "synth" in err and "required" not in err
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: maskml train") and "sam_finetune" in err
