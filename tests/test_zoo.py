"""Model zoo: names, checkpoint files, the cache folder, downloads and readable load errors."""
from __future__ import annotations

import functools
import hashlib
import http.server
import pickle
import threading

import pytest
import torch

import maskml
from maskml import MaskmlError
from maskml.hub import download
from maskml.zoo import ModelEntry, get_entry, load_model

OFFICIAL = {
    "sam_vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "sam_vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "sam_vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "mobile_sam": "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
}


def test_registry_has_official_files():
    for name, url in OFFICIAL.items():
        entry = get_entry(name)
        assert entry.url == url
        assert len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0


def test_cutie_entries():
    base = "https://github.com/hkchengrex/Cutie/releases/download/v1.0/"
    assert get_entry("cutie_small").url == base + "cutie-small-mega.pth"
    assert get_entry("cutie_base").url == base + "cutie-base-mega.pth"
    # the release publishes no SHA-256; the official download script checks this MD5
    assert get_entry("cutie_base").md5 == "a6071de6136982e396851903ab4c083a"


def test_unknown_model_suggests_close_names():
    with pytest.raises(MaskmlError, match=r"unknown model 'mobilesam'.*mobile_sam"):
        load_model("mobilesam")


def test_missing_and_corrupt_checkpoint_files(tmp_path, capsys):
    with pytest.raises(MaskmlError, match="does not exist"):
        load_model("sam_vit_b", checkpoint=tmp_path / "nope.pth")
    with pytest.raises(MaskmlError, match=r"is a folder, not a file: give the checkpoint file itself"):
        load_model("sam_vit_b", checkpoint=tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(MaskmlError, match=r"junk.pth is not a checkpoint: a PyTorch checkpoint is a zip archive"):
        load_model("sam_vit_b", checkpoint=junk)
    (tmp_path / "notes.txt").write_bytes(b"\x80\x02 starts like a pickle")  # torch advised weights_only=False
    (tmp_path / "objects.pt").write_bytes(pickle.dumps({"model": object}, protocol=2))
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 and then nothing of a zip archive")
    for name, match in [("notes.txt", "cannot read checkpoint"), ("objects.pt", "as tensors only"),
                        ("broken.pt", "failed reading zip archive.*damaged")]:
        with pytest.raises(MaskmlError, match=match) as info:
            load_model("sam_vit_b", checkpoint=tmp_path / name)
        message = str(info.value)
        assert "\n" not in message and "weights_only" not in message and "sam_vit_b_01ec64.pth" in message, message
    assert capsys.readouterr().err.count("loading sam_vit_b from") == 3  # only files that may be checkpoints


def test_loading_says_what_it_loads_unless_silenced(sam_checkpoints, capsys):
    load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"])
    assert capsys.readouterr().err == f"loading mobile_sam from {sam_checkpoints['mobile_sam']} ...\n"
    load_model("mobile_sam", checkpoint=sam_checkpoints["mobile_sam"], progress=False)
    assert capsys.readouterr().err == ""


def test_wrong_checkpoint_gives_one_readable_message(sam_checkpoints):
    with pytest.raises(MaskmlError) as info:
        load_model("mobile_sam", checkpoint=sam_checkpoints["sam_vit_b"])
    message = str(info.value)
    assert "does not fit mobile_sam" in message
    assert "missing keys" in message and "unexpected keys" in message
    assert "looks like a checkpoint for sam_vit_b" in message
    assert "\n" not in message


def test_checkpoint_of_another_layout_names_its_model(sam_checkpoints, sam2_checkpoint):
    with pytest.raises(MaskmlError, match=r"does not hold a state dict of tensors .*looks like a checkpoint for "
                                          r"sam2.1_hiera_t\.$"):
        load_model("mobile_sam", checkpoint=sam2_checkpoint)
    with pytest.raises(MaskmlError, match=r"has no 'model' entry holding tensors.*looks like a checkpoint for "
                                          r"mobile_sam\.$"):
        load_model("sam2.1_hiera_s", checkpoint=sam_checkpoints["mobile_sam"])
    with pytest.raises(MaskmlError, match=r"does not fit sam2.1_hiera_s: .*looks like a checkpoint for sam2.1_hiera_t"):
        load_model("sam2.1_hiera_s", checkpoint=sam2_checkpoint)


def test_cache_folder_is_used_without_checkpoint(tmp_path, monkeypatch, sam_checkpoints):
    monkeypatch.setenv("MASKML_HOME", str(tmp_path))
    (tmp_path / "mobile_sam.pt").write_bytes(sam_checkpoints["mobile_sam"].read_bytes())
    model = load_model("mobile_sam", progress=False)
    assert model.model_name == "mobile_sam"
    assert not model.training


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MASKML_HOME", str(tmp_path))
    entry = get_entry("sam_vit_b")
    # port 9 (discard) on loopback refuses the connection, like an offline machine
    offline = ModelEntry(entry.name, entry.builder, entry.config, "http://127.0.0.1:9/sam_vit_b_01ec64.pth",
                         entry.sha256)
    monkeypatch.setitem(maskml.zoo._REGISTRY, "sam_vit_b", offline)
    with pytest.raises(MaskmlError) as info:
        load_model("sam_vit_b", progress=False)
    message = str(info.value)
    assert "could not download sam_vit_b_01ec64.pth" in message
    assert str(tmp_path / "sam_vit_b_01ec64.pth") in message
    assert "--checkpoint PATH" in message and "checkpoint=PATH" in message and "CHECKPOINT=PATH" in message
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def file_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/'served'."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_checks_sha256_and_leaves_no_partial_file(file_server, tmp_path):
    served, base = file_server
    payload = torch.randn(1000).numpy().tobytes()
    (served / "weights.pth").write_bytes(payload)
    good = hashlib.sha256(payload).hexdigest()

    dest = tmp_path / "cache" / "weights.pth"
    assert download(f"{base}/weights.pth", dest, good, progress=False) == dest
    assert dest.read_bytes() == payload

    bad_dest = tmp_path / "cache2" / "weights.pth"
    with pytest.raises(MaskmlError, match="SHA-256"):
        download(f"{base}/weights.pth", bad_dest, "0" * 64, progress=False)
    assert not bad_dest.exists() and list(bad_dest.parent.iterdir()) == []

    # releases that publish only an MD5 (Cutie) are checked against it
    md5_dest = tmp_path / "cache4" / "weights.pth"
    assert download(f"{base}/weights.pth", md5_dest, "", progress=False, md5=hashlib.md5(payload).hexdigest()) == md5_dest
    with pytest.raises(MaskmlError, match="MD5"):
        download(f"{base}/weights.pth", tmp_path / "cache5" / "weights.pth", "", progress=False, md5="0" * 32)

    with pytest.raises(MaskmlError, match="could not download"):
        download(f"{base}/missing.pth", tmp_path / "cache3" / "missing.pth", good, progress=False)


@pytest.mark.parametrize("name", ["cutie_small", "mobile_sam", "sam_vit_b", "sam2_hiera_t", "sam2.1_hiera_t"])
def test_models_built_without_a_checkpoint_are_initialised(name):
    """A model built for training from scratch has every parameter set by its initialisation, none left
    as whatever memory it got (the larger sizes share these modules)."""
    def build():
        torch.manual_seed(0)
        return maskml.build_model(name).state_dict()

    garbage = torch.full((1 << 24,), float("nan"))  # freed memory that the next allocations may reuse
    del garbage
    first, second = build(), build()
    for key, value in first.items():
        assert torch.isfinite(value).all(), f"{name}: {key} holds non-finite values"
        assert torch.equal(value, second[key]), f"{name}: {key} differs between two builds with the same seed"


def test_list_models_by_family():
    assert maskml.list_models("cutie") == ["cutie_small", "cutie_base"]
    assert set(maskml.list_models()) >= {"mobile_sam", "sam_vit_b", "sam2.1_hiera_t", "cutie_small"}
    with pytest.raises(MaskmlError, match="there is no model family 'sam3': give one of cutie, sam, sam2"):
        maskml.list_models("sam3")
