"""The cutie recipe: every parameter (the training-only auxiliary head and the last object-transformer level
included) gets gradients from the official losses, steps are a function of the item seeds, both stages run,
an official checkpoint is a starting point, and a real 2-process torchrun run validates J&F over both shards
(the same number one process computes) and exports model.pt in the official layout, which `maskml track` runs."""
from __future__ import annotations

import csv
import subprocess
import sys

import pytest
import torch

import maskml
from conftest import FIXTURES, manifest_keys, write_parity_checkpoint
from maskml.configs import compose_train_config
from maskml.errors import MaskmlError
from maskml.train.data.synth import SynthConfig, generate
from maskml.train.data.video import HeldOutVideos, open_videos, split_videos
from maskml.train.recipes import get_recipe
from maskml.train.recipes.cutie import build_cutie_model, gap_schedule
from maskml.train.video_eval import evaluate_videos, hold_first_mask, tracker_fn
from train_toy import free_port, subprocess_env

MANIFEST = FIXTURES / "cutie" / "manifest_cutie_small.json"
TINY = ["recipe.size=32", "recipe.num_frames=3", "recipe.num_points=64", "recipe.max_objects=2"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(images=3, videos=5, width=48, height=32, frames=6, min_objects=2, max_objects=3),
             progress=False)
    return root


def recipe_for(synth, *overrides):
    cfg = compose_train_config("cutie", [f"data.root={synth}", *TINY, *overrides], ())
    return get_recipe("cutie")(cfg)


def step(recipe, model, items):
    model.zero_grad(set_to_none=True)
    out = recipe.training_step(model, items)
    out["loss"].backward()
    return out


def test_gradients_reach_every_parameter_and_steps_follow_the_seeds(synth):
    recipe = recipe_for(synth)
    model = recipe.build_model().train()
    data = recipe.train_dataset()
    items = [data.sample(0, 5), data.sample(3, 6)]
    out = step(recipe, model, items)
    assert {"mask_ce", "mask_dice", "sensory_ce", "sensory_dice", "iou"} <= set(out)
    assert {f"query_l{level}_ce" for level in range(4)} <= set(out)  # the transformer's 3 blocks + its input
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert [n for n, g in grads.items() if g is None] == []
    # as in Cutie's training, the encoders' BatchNorm keeps its statistics (inference uses the same ones)
    # while its scale and shift learn
    assert model.training and not model.pixel_encoder.training and not model.mask_encoder.training
    norms = {n: b for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var"))}
    assert norms and all(n.startswith(("pixel_encoder.", "mask_encoder.")) for n in norms)
    assert all((b == (0 if n.endswith("mean") else 1)).all() for n, b in norms.items())  # fresh weights' statistics
    assert grads["pixel_encoder.bn1.weight"].abs().sum() > 0 and grads["mask_encoder.layer3.1.bn2.bias"].abs().sum() > 0
    for part in ("pixel_encoder", "key_proj", "mask_encoder", "mask_decoder", "pixel_fuser", "object_transformer",
                 "object_summarizer", "aux_computer", "object_transformer.mask_pred.3"):
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part
    # the recipe's groups: backbone at 0.1 x lr, the embeddings without weight decay
    groups = recipe.param_groups(model)
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == [(1e-5, 0.001), (1e-4, 0.0), (1e-4, 0.001)]
    with torch.no_grad():  # the same items and seeds: the same clip forward, points and loss
        again = recipe.training_step(model, items)
    assert again["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-5)


def test_stage_pre_trains_on_pseudo_videos_from_images(synth):
    recipe = recipe_for(synth, "recipe.stage=pre", "data=pseudo_video", f"data.root={synth / 'images'}")
    model = recipe.build_model().train()
    data = recipe.train_dataset()
    out = step(recipe, model, [data.sample(1, 3)])
    assert torch.isfinite(out["loss"]) and data.sample(1, 3)["frames"].shape == (3, 3, 32, 32)
    with pytest.raises(MaskmlError, match="recipe.stage=later"):
        recipe_for(synth, "recipe.stage=later")


def test_data_sampling_follows_the_official_schedule_and_bad_settings_are_one_clear_error(synth):
    clips = recipe_for(synth, "trainer.max_steps=1000").train_dataset()
    assert clips.gap_schedule == [(0, 5), (100, 10), (300, 15), (800, 5)] and clips.merge_probability == 0.5
    fixed = recipe_for(synth, "recipe.max_gap_schedule=null", "data.max_gap=3", "recipe.merge_probability=0")
    assert fixed.train_dataset().gap_schedule == [(0, 3)] and fixed.train_dataset().merge_probability == 0
    # the schedule counts full-rate frames: divided per dataset as the official code (DAVIS 2, YouTube-VOS 5)
    for data, gaps in (("davis", [2, 5, 7, 2]), ("ytvos", [1, 2, 3, 1]), ("mose", [1, 2, 3, 1])):
        cfg = recipe_for(synth, "trainer.max_steps=1000", f"data={data}").cfg
        assert [gap for _, gap in gap_schedule(cfg)] == gaps
    bad = [(["recipe.max_gap_schedule=[5,10]"], "max_gap_schedule has 2 gaps but .*fraction 4 fractions"),
           (["recipe.max_gap_schedule_fraction=[0.1,0.2,0.3,0.8]"], "max_gap_schedule_fraction=.*begin at 0.0"),
           (["recipe.max_gap_schedule_fraction=[0.0,0.3,0.1,0.8]"], "max_gap_schedule_fraction=.*increase"),
           (["recipe.max_gap_schedule=[5,0,15,5]"], "max_gap_schedule=.*at least 1"),
           (["recipe.max_gap_schedule=[5,a,15,5]"], "max_gap_schedule=.*list of numbers"),
           (["data.frame_interval=0"], "data.frame_interval=0: .*at least 1"),
           (["recipe.merge_probability=1.5"], "merge_probability=1.5"),
           (["recipe.stage=pre", "recipe.merge_probability=0.5"], "stage pre pastes the objects of several")]
    for overrides, message in bad:
        with pytest.raises(MaskmlError, match=message):
            recipe_for(synth, *overrides)


def test_starts_from_an_official_checkpoint(tmp_path):
    checkpoint = write_parity_checkpoint(MANIFEST, tmp_path / "cutie-small-mega.pth")
    model = build_cutie_model("cutie_small", str(checkpoint), seed=0)
    official = torch.load(checkpoint)
    state = model.state_dict()
    assert set(state) == set(official)
    assert all(torch.equal(state[k], official[k]) for k in official)


def test_torchrun_two_processes_validate_and_export_for_maskml_track(synth, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "maskml", "train", "cutie", f"data.root={synth}", *TINY,
               "data.val_videos=2", "data.val_max_frames=5", "trainer.max_steps=1", "trainer.batch_size=1",
               "trainer.num_workers=0", "trainer.progress=false", "trainer.device=cpu", f"trainer.out_dir={out}"]
    result = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(out / "val.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["videos"]) == 2  # both held-out videos, one per process
    # the official layout: the keys and shapes of cutie-small-mega.pth, the training-only head included
    exported = torch.load(out / "model.pt")
    assert {k: list(v.shape) for k, v in exported.items()} == manifest_keys(MANIFEST)
    # one process scores the exported weights as the two processes did
    model = maskml.load_model("cutie_small", checkpoint=out / "model.pt")
    videos, _ = open_videos(synth, min_frames=3)
    held_out = HeldOutVideos(split_videos(videos, 2)[1], max_frames=5)
    assert evaluate_videos(tracker_fn(model), held_out)["J&F"] == pytest.approx(float(row["J&F"]), abs=1e-4)
    assert 0 <= evaluate_videos(hold_first_mask, held_out)["J&F"] <= 1
    video = synth / "videos" / "JPEGImages" / "v_0000"
    masks = synth / "videos" / "Annotations" / "v_0000"
    track = subprocess.run([sys.executable, "-m", "maskml", "track", str(video), "--model", "cutie_small",
                            "--checkpoint", str(out / "model.pt"), "--mask-dir", str(masks), "--out",
                            str(tmp_path / "tracked")], env=subprocess_env(), capture_output=True, text=True,
                           timeout=300)
    assert track.returncode == 0, track.stderr[-2000:]
    assert len(list((tmp_path / "tracked").glob("*.png"))) == 6
