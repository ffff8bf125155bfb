"""The sam_finetune recipe: gradients reach every module the image task uses (SAM and SAM 2), steps are
deterministic per item seed, exported weights load unchanged through maskml.load_model, and a run through
`maskml train` validates and exports."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

import maskml
from maskml.errors import MaskmlError
from maskml.train.data.synth import SynthConfig, generate
from maskml.train.recipes import get_recipe
from maskml.train.recipes.sam_finetune import build_sam_model


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(images=3, seed=0, width=96, height=64, min_objects=3, max_objects=4),
             progress=False)
    return root / "images"


def _cfg(synth_root, name="mobile_sam", image_size=64, rounds=2, seed=0):
    return OmegaConf.create({
        "seed": seed,
        "model": {"name": name, "checkpoint": None, "image_size": image_size},
        "data": {"root": str(synth_root), "layout": "auto", "on_error": "skip", "val_root": None,
                 "augment": {"flip": 0.5, "scale": [0.8, 1.25], "colour": 0.1}},
        "recipe": {"max_objects": 8, "prob_mask": 0.5, "prob_box": 0.25, "correction_rounds": rounds,
                   "prob_click_from_gt": 0.1, "val_max_clicks": 3,
                   "loss": {"focal": 20.0, "dice": 1.0, "iou": 1.0, "object_score": 1.0, "focal_alpha": 0.25,
                            "focal_gamma": 2.0, "supervise_all_iou": True}},
    })


def _step(recipe, model, dataset, seeds):
    items = [dataset.sample(i % len(dataset), seed) for i, seed in enumerate(seeds)]
    model.zero_grad(set_to_none=True)
    out = recipe.training_step(model, items)
    out["loss"].backward()
    return out


def _grads(model, prefixes):
    return {name: p.grad for name, p in model.named_parameters() if name.startswith(prefixes)}


def _outside_graph(grads: dict) -> list[str]:
    """Parameters that got no gradient at all, except the key biases of the token-to-image attentions, which
    maskml's attention leaves out (a softmax ignores a shift of its inputs)."""
    return [n for n, g in grads.items() if g is None and not n.endswith("token_to_image.k_proj.bias")]


MOBILE_SAM_PARTS = ("image_encoder.patch_embed", "image_encoder.layers", "image_encoder.neck",
                    "prompt_encoder.point_embeddings", "prompt_encoder.not_a_point_embed",
                    "prompt_encoder.mask_downscaling", "prompt_encoder.no_mask_embed", "mask_decoder.transformer",
                    "mask_decoder.iou_token", "mask_decoder.mask_tokens", "mask_decoder.output_upscaling",
                    "mask_decoder.output_hypernetworks_mlps", "mask_decoder.iou_prediction_head")


def test_mobile_sam_gradients_reach_every_module(synth_root):
    cfg = _cfg(synth_root)
    recipe = get_recipe("sam_finetune")(cfg)
    model = recipe.build_model().train()
    dataset = recipe.train_dataset()
    out = _step(recipe, model, dataset, [1, 2, 3])  # these items hold mask, box and click prompts
    assert torch.isfinite(out["loss"])
    assert set(out) >= {"loss", "focal", "dice", "iou", "iou_first", "iou_last"}
    grads = _grads(model, ("",))
    # every parameter is in the graph (no no_grad, detach or in-place break); some get exactly zero, e.g. the
    # mask tokens that were not the best candidate this step
    assert _outside_graph(grads) == []
    for part in MOBILE_SAM_PARTS:
        assert any(g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part


def test_sam2_image_mode_trains_its_encoder_prompt_encoder_and_decoder(synth_root):
    cfg = _cfg(synth_root, name="sam2.1_hiera_t", image_size=128, rounds=1)
    recipe = get_recipe("sam_finetune")(cfg)
    model = recipe.build_model().train()
    assert recipe.weights.iou_l1 and recipe.weights.object_score == 1.0  # SAM 2: L1 IoU loss, object score
    out = _step(recipe, model, recipe.train_dataset(), [7, 8])
    assert torch.isfinite(out["loss"]) and "object_score" in out
    grads = _grads(model, ("image_encoder.", "sam_prompt_encoder.mask_downscaling", "sam_mask_decoder."))
    assert grads and _outside_graph(grads) == []
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    assert model.image_encoder.trunk.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.no_mem_embed.grad.abs().sum() > 0  # the "no memory" embedding of single images


def test_steps_are_deterministic_per_item_seed(synth_root):
    recipe = get_recipe("sam_finetune")(_cfg(synth_root))
    model = recipe.build_model().train()
    dataset = recipe.train_dataset()
    a = _step(recipe, model, dataset, [11, 12])["loss"].item()
    grad_a = model.mask_decoder.iou_token.weight.grad.clone()
    b = _step(recipe, model, dataset, [11, 12])["loss"].item()
    assert a == b and torch.equal(grad_a, model.mask_decoder.iou_token.weight.grad)
    assert _step(recipe, model, dataset, [13, 12])["loss"].item() != a


def test_random_weights_are_seeded_and_sizes_checked():
    a = build_sam_model("mobile_sam", 64, seed=3).state_dict()
    b = build_sam_model("mobile_sam", 64, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(MaskmlError, match="trains at image_size 1024 only"):
        build_sam_model("sam_vit_b", 512)
    with pytest.raises(MaskmlError, match="multiple of 64"):
        build_sam_model("mobile_sam", 100)
    with pytest.raises(MaskmlError, match="does not train cutie_small"):
        get_recipe("sam_finetune")(OmegaConf.create({"model": {"name": "cutie_small"}}))


@pytest.mark.parametrize("name, image_size", [("mobile_sam", 64), ("sam2.1_hiera_t", 128)])
def test_export_loads_unchanged_through_load_model(synth_root, tmp_path, name, image_size):
    recipe = get_recipe("sam_finetune")(_cfg(synth_root, name=name, image_size=image_size))
    model = recipe.build_model()
    with torch.no_grad():  # weights unlike any fresh model's
        for p in model.parameters():
            p.add_(0.01)
    path = tmp_path / "model.pt"
    recipe.export(model, path)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert ("model" in raw) == name.startswith("sam2")  # SAM 2's release layout wraps the state dict
    loaded = maskml.load_model(name, checkpoint=path)  # at the released 1024 px: same shapes
    assert loaded.image_size == 1024
    want = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_validate_reports_click_metrics(synth_root):
    recipe = get_recipe("sam_finetune")(_cfg(synth_root))
    model = recipe.build_model().eval()
    from maskml.train.data.dataset import EvalDataset
    from maskml.train.data.readers import open_source

    with torch.no_grad():
        metrics = recipe.validate(model, EvalDataset(open_source(synth_root)), torch.device("cpu"))
    assert set(metrics) == {"miou_1", "miou_3", "noc85", "noc90", "objects", "images"}
    assert metrics["images"] == 3 and 0 <= metrics["miou_1"] <= 1 and 1 <= metrics["noc90"] <= 3


def test_maskml_train_runs_validates_and_exports(synth_root, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-m", "maskml", "train", "sam_finetune", f"data.root={synth_root}",
               f"data.val_root={synth_root}", "model.image_size=64", "recipe.max_objects=2",
               "recipe.correction_rounds=1", "recipe.val_max_clicks=2", "trainer.max_steps=2",
               "trainer.num_workers=0", "trainer.progress=false", f"trainer.out_dir={out}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "miou_1" in (out / "val.csv").read_text()
    model = maskml.load_model("mobile_sam", checkpoint=out / "model.pt")
    assert model.image_size == 1024
