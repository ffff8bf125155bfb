"""The sam2_video recipe: prompts drawn in the official proportions, the memory built through a clip as
maskml's VideoSession builds it at inference (same outputs), gradients through memories and pointers to every
trainable module and none into frozen ones, and `maskml train sam2_video` runs through the engine (1 process
and 2 under torchrun alike) and exports weights that load_model and VideoSession use."""
from __future__ import annotations

import collections
from importlib import resources

import pytest
import torch
from omegaconf import OmegaConf

import maskml
from maskml.errors import MaskmlError
from maskml.predict.sam2.session import VideoSession
from maskml.train.data.synth import SynthConfig, generate
from maskml.train.recipes import get_recipe
from maskml.train.recipes.sam2_video import ClipPlan
from train_toy import read_log, run_training

SIZE = 64  # the model's input side in these tests (SAM 2 keeps its state dict shapes at any multiple of 64)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_videos")
    generate(root, SynthConfig(videos=3, seed=0, width=96, height=64, frames=6, min_objects=2, max_objects=3,
                               photos=[]), progress=False)
    return root


def _cfg(synth_root, frames=4, val_videos=1):
    configs = resources.files("maskml.configs")
    recipe_config = OmegaConf.load(configs / "recipe" / "sam2_video.yaml")
    data = OmegaConf.merge(OmegaConf.load(configs / "data" / "synth_video.yaml"), recipe_config.data,
                           {"root": str(synth_root), "val_videos": val_videos})
    recipe = OmegaConf.merge(recipe_config.recipe, {"num_frames": frames, "corrections_per_frame": 2})
    return OmegaConf.create({
        "seed": 0,
        "model": {"name": "sam2.1_hiera_t", "checkpoint": None, "image_size": SIZE},
        "data": data, "recipe": recipe,
        "optim": {"lr": 1e-4, "encoder_lr": None, "layer_decay": 1.0, "weight_decay": 0.1},
    })


def _plans(n=4000, frames=8):
    g = torch.Generator().manual_seed(0)
    return [ClipPlan.draw(frames, g, 0.5, 0.25, 2, 2) for _ in range(n)]


def test_prompts_follow_the_official_proportions():
    plans = _plans()
    first = collections.Counter("mask" if not p.use_points else "box" if p.box[0] else "click" for p in plans)
    assert first["mask"] / len(plans) == pytest.approx(0.5, abs=0.03)
    assert first["box"] / len(plans) == pytest.approx(0.25, abs=0.03)
    assert first["click"] / len(plans) == pytest.approx(0.25, abs=0.03)
    cond_counts = collections.Counter(len(p.init_cond) for p in plans)
    assert set(cond_counts) == {1, 2} and cond_counts[2] / len(plans) == pytest.approx(0.5, abs=0.03)
    for p in plans:
        assert p.init_cond[0] == 0 and len(set(p.init_cond)) == len(p.init_cond)
        assert p.order[:len(p.init_cond)] == p.init_cond and sorted(p.order) == list(range(8))
        if p.use_points:  # the conditioning frames are corrected, then maybe one more frame: 1 to 2 in all
            assert p.correct[:len(p.init_cond)] == p.init_cond and len(p.init_cond) <= len(p.correct) <= 2
        else:
            assert p.correct == []
    extra = [p for p in plans if p.use_points and len(p.init_cond) == 1]
    share = sum(len(p.correct) == 2 for p in extra) / len(extra)
    assert share == pytest.approx(0.5, abs=0.05)


def test_bad_prompt_settings_are_one_clear_error(synth_root):
    cfg = _cfg(synth_root)
    cfg.recipe.prob_box = 0.75
    with pytest.raises(MaskmlError, match="prob_mask \\+ prob_box <= 1"):
        get_recipe("sam2_video")(cfg)
    with pytest.raises(MaskmlError, match="does not train cutie_small"):
        get_recipe("sam2_video")(OmegaConf.create({"model": {"name": "cutie_small"}}))


def _clip(recipe, index=0, seed=5):
    item = recipe.train_dataset().sample(index, seed)
    return item["frames"], item["masks"]


def test_the_clip_is_tracked_as_video_session_tracks_it(synth_root):
    """A mask on frame 0, then tracking: training's forward (model in eval mode) gives the outputs of maskml's
    VideoSession, so the memory bank and object pointers are built as at inference; and frame t depends on the
    earlier frames only through that memory."""
    recipe = get_recipe("sam2_video")(_cfg(synth_root, frames=4))
    model = recipe.build_model().eval()
    with torch.no_grad():  # random weights judge every object absent (all logits -1024): make them present
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 20.0
    frames, masks = _clip(recipe)
    plan = ClipPlan(len(frames), [0])
    with torch.no_grad():
        steps = recipe.track_clip(model, frames, masks, plan, torch.Generator().manual_seed(0))
    session = VideoSession(model, frames.permute(0, 2, 3, 1).numpy())
    for n in range(masks.shape[1]):
        session.add_mask(0, n + 1, masks[0, n])
    expected = {s.frame_idx: s.logits for s in session.propagate()}
    for t in range(1, len(frames)):
        out = steps[t][-1]
        got = torch.nn.functional.interpolate(out.logits, (SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
        assert got.abs().max() < 1000 and (got > 0).any() and (got < 0).any()  # a real mask, not "absent"
        # the session keeps memories in bfloat16 and encodes the prompted frame from the binarised mask
        assert (got - expected[t]).abs().max() < 0.02 * expected[t].abs().max()
        assert ((got > 0) == (expected[t] > 0)).float().mean() > 0.99
        for n in range(masks.shape[1]):
            tracked = session.objects[n + 1].non_cond[t]
            assert torch.allclose(out.obj_ptr[n], tracked.obj_ptr[0], atol=0.02)

    with torch.no_grad():  # frame 1 changed: frame 3 changes; frame 3 changed: frame 2 does not
        changed = frames.clone()
        changed[1] = torch.flip(changed[1], dims=[-1])
        other = recipe.track_clip(model, changed, masks, plan, torch.Generator().manual_seed(0))
        assert not torch.allclose(other[3][-1].logits, steps[3][-1].logits)
        changed = frames.clone()
        changed[3] = torch.flip(changed[3], dims=[-1])
        other = recipe.track_clip(model, changed, masks, plan, torch.Generator().manual_seed(0))
        assert torch.equal(other[2][-1].logits, steps[2][-1].logits)


def test_losses_are_finite_and_gradients_reach_every_module_through_the_clip(synth_root):
    recipe = get_recipe("sam2_video")(_cfg(synth_root, frames=3))
    model = recipe.build_model().train()
    with torch.no_grad():  # objects judged present, so that object pointers (not the "no object" one) are used
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 20.0
    frames, masks = _clip(recipe, seed=3)
    # a click clip with two conditioning frames, corrections on both: every kind of step in one clip
    plan = ClipPlan(3, [0, 2], use_points=True, box={0: False, 2: True}, correct=[0, 2])
    out = recipe.clip_losses(model, frames, masks, torch.Generator().manual_seed(0), plan)
    assert {"loss", "focal", "dice", "iou", "object_score", "tracked_iou"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    parts = ("image_encoder.trunk", "image_encoder.neck", "memory_attention", "memory_encoder", "maskmem_tpos_enc",
             "obj_ptr_proj", "obj_ptr_tpos_proj", "sam_mask_decoder", "sam_prompt_encoder.point_embeddings")
    grads = dict(model.named_parameters())
    for part in parts:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in grads.items() if n.startswith(part)), part
    with torch.no_grad():
        steps = recipe.track_clip(model, frames, masks, plan, torch.Generator().manual_seed(0))
    assert [len(steps[t]) for t in range(3)] == [3, 1, 3]  # click + 2 corrections, tracking, box + 2 corrections


def test_a_run_trains_only_what_is_not_frozen_and_exports_a_tracker(synth_root, tmp_path):
    common = [f"data.root={synth_root}", "data.val_videos=1", f"model.image_size={SIZE}", "recipe.num_frames=3",
              "recipe.corrections_per_frame=1", "trainer.grad_accum=2", "trainer.max_steps=2",
              "trainer.val_every=1", "trainer.freeze=[image_encoder]", "trainer.num_workers=0",
              "trainer.log_every=1", "trainer.progress=false", "trainer.precision=fp32", "optim.lr=1e-3"]
    run_training(tmp_path / "one", common, recipe="sam2_video")
    run_training(tmp_path / "two", [*common, "trainer.grad_accum=1"], processes=2, recipe="sam2_video")
    out = tmp_path / "one"
    assert {"loss", "focal", "dice", "iou", "object_score"} <= set(read_log(out / "log.csv")[0])
    assert "J&F" in read_log(out / "val.csv")[0]
    raw = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert set(raw) == {"model"}  # the official release layout
    initial = get_recipe("sam2_video")(_cfg(synth_root)).build_model().state_dict()
    trained = raw["model"]
    assert trained.keys() == initial.keys()
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert not any(k.startswith("image_encoder.") for k in changed)
    assert any(k.startswith("memory_attention.") for k in changed) and any(k.startswith("sam_mask_decoder.")
                                                                           for k in changed)
    # 2 processes x 1 clip = 1 process x 2 accumulated clips
    two = torch.load(tmp_path / "two" / "model.pt", map_location="cpu", weights_only=True)["model"]
    assert max((two[k] - trained[k]).abs().max().item() for k in trained) < 2e-5

    model = maskml.load_model("sam2.1_hiera_t", checkpoint=out / "model.pt")
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)
    frames = torch.zeros(2, 48, 64, 3, dtype=torch.uint8).numpy()
    session = VideoSession(model, frames)
    mask = torch.zeros(48, 64, dtype=torch.bool)
    mask[10:30, 20:40] = True
    session.add_mask(0, 1, mask)
    assert [s.frame_idx for s in session.propagate()] == [0, 1]


def test_an_untrained_model_starts_from_the_official_initialisation(synth_root):
    """Training from scratch starts as the official SAM2Base: the learnt embeddings (memory slots, "no memory",
    "no object") drawn from N(0, 0.02), not zeros (which would make every memory slot and "no object" alike)."""
    model = get_recipe("sam2_video")(_cfg(synth_root)).build_model()
    for name in ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr", "no_obj_embed_spatial"):
        values = getattr(model, name).detach().flatten()
        assert values.ne(0).all() and 0.01 < float(values.std()) < 0.03, name
    assert not torch.equal(model.maskmem_tpos_enc[0], model.maskmem_tpos_enc[1])
