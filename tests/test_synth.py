"""Synthetic data: exact masks in the readers' layouts, determinism per seed, videos with motion and objects
entering and leaving, and output-folder safety."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from maskml.cli import main
from maskml.errors import MaskmlError
from maskml.io.masks import read_mask
from maskml.train.data.readers import open_source
from maskml.train.data.synth import SynthConfig, generate, synth_image, synth_video

SMALL = dict(width=96, height=64, frames=12)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_images_are_sa1b_with_the_exact_masks(tmp_path):
    cfg = SynthConfig(images=3, seed=4, **SMALL)
    assert generate(tmp_path / "out", cfg, progress=False) == {"images": 3, "videos": 0}
    source = open_source(tmp_path / "out" / "images")
    assert source.layout == "sa1b" and len(source) == 3
    for i in range(3):
        image, masks = source.load(i)
        want_image, want_masks = synth_image(cfg, i, [])
        assert image.shape == (64, 96, 3)
        assert torch.equal(masks, want_masks)  # RLE round trip: exactly the drawn masks
        assert (masks.sum(0) <= 1).all()  # occlusion: each pixel belongs to at most one object
        # the JPEG is the drawn image up to compression
        assert np.abs(image.numpy().astype(int) - want_image.astype(int)).mean() < 12
        record = json.loads((tmp_path / "out" / "images" / f"sa_{i:06d}.json").read_text())
        assert [a["area"] for a in record["annotations"]] == masks.flatten(1).sum(1).tolist()


def test_deterministic_per_seed(tmp_path):
    cfg = SynthConfig(images=2, videos=1, seed=3, **SMALL)
    generate(tmp_path / "a", cfg, progress=False)
    generate(tmp_path / "b", cfg, progress=False)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a == b and len(a) == 1 + 2 * 2 + 2 * 12
    generate(tmp_path / "c", SynthConfig(images=2, videos=1, seed=5, **SMALL), progress=False)
    c = _files(tmp_path / "c")
    assert a[next(k for k in a if k.suffix == ".jpg")] != c[next(k for k in c if k.suffix == ".jpg")]


def test_videos_move_and_objects_enter_and_leave():
    cfg = SynthConfig(videos=8, seed=0, min_objects=3, max_objects=5, **SMALL)
    entered = left = moved = False
    for v in range(cfg.videos):
        frames, ids = synth_video(cfg, v, [])
        assert len(frames) == 12 and frames[0].shape == (64, 96, 3) and ids[0].dtype == np.uint8
        present = np.array([[(m == k).any() for k in range(1, 6)] for m in ids])  # (frames, objects)
        entered |= bool((~present[0] & present.any(0)).any())
        left |= bool((present[0] & ~present[-1]).any())
        for k in range(1, 6):
            if present[0, k - 1] and present[-1, k - 1]:
                first = np.argwhere(ids[0] == k).mean(0)
                last = np.argwhere(ids[-1] == k).mean(0)
                moved |= bool(np.abs(first - last).max() > 3)
    assert entered and left and moved


def test_videos_are_davis_layout(tmp_path):
    generate(tmp_path, SynthConfig(videos=2, seed=1, **SMALL), progress=False)
    frames = sorted((tmp_path / "videos" / "JPEGImages" / "v_0001").iterdir())
    masks = sorted((tmp_path / "videos" / "Annotations" / "v_0001").iterdir())
    assert [p.name for p in frames] == [f"{t:05d}.jpg" for t in range(12)]
    assert [p.name for p in masks] == [f"{t:05d}.png" for t in range(12)]
    assert read_mask(masks[0]).shape == (64, 96)
    assert open_source(tmp_path / "videos").layout == "davis"


def test_photos_give_cutouts_and_backgrounds(tmp_path):
    from maskml.io.images import write_image

    photo = np.zeros((80, 120, 3), np.uint8)
    photo[:, :, 1] = 200  # a green photo: colours no texture draws exactly
    write_image(tmp_path / "green.png", photo)
    cfg = SynthConfig(images=6, seed=0, photos=[str(tmp_path / "green.png")], **SMALL)
    from maskml.train.data.synth import _load_photos

    photos = _load_photos(cfg.photos)
    green = [((synth_image(cfg, i, photos)[0] == [0, 200, 0]).all(2)).mean() for i in range(6)]
    assert max(green) > 0.3  # a photo background
    with pytest.raises(MaskmlError, match="does not exist"):
        generate(tmp_path / "x", SynthConfig(images=1, photos=[str(tmp_path / "nope.jpg")]), progress=False)


def test_refuses_a_folder_it_did_not_make_and_completes_its_own(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "thesis.txt").write_text("keep me")
    with pytest.raises(MaskmlError, match="not empty and was not made by"):
        generate(user, SynthConfig(images=1, **SMALL), progress=False)
    assert [p.name for p in user.iterdir()] == ["thesis.txt"]

    out = tmp_path / "out"
    cfg = SynthConfig(images=3, seed=2, **SMALL)
    generate(out, cfg, progress=False)
    (out / "images" / "sa_000001.jpg").unlink()  # as if interrupted before this sample was complete
    kept = (out / "images" / "sa_000000.jpg").stat().st_mtime_ns
    assert generate(out, cfg, progress=False) == {"images": 1, "videos": 0}
    assert (out / "images" / "sa_000000.jpg").stat().st_mtime_ns == kept
    fresh = tmp_path / "fresh"
    generate(fresh, cfg, progress=False)
    assert _files(out) == _files(fresh)
    with pytest.raises(MaskmlError, match="other arguments"):
        generate(out, SynthConfig(images=3, seed=9, **SMALL), progress=False)


def test_cli(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "d"), "--images", "2", "--size", "64x48", "--seed", "1",
                 "--photos"]) == 0
    assert "wrote 2 images and 0 videos" in capsys.readouterr().out
    assert len(open_source(tmp_path / "d" / "images")) == 2
    assert main(["data", "synth", str(tmp_path / "e"), "--size", "64x48"]) == 2
    assert "nothing to generate" in capsys.readouterr().err
    assert main(["data", "synth", str(tmp_path / "e"), "--images", "1", "--size", "64by48"]) == 2
