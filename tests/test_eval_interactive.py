"""Interactive evaluation (the SAM paper's click protocol): metrics on a hand-made IoU table, the clicks and
masks of the protocol against maskml's ImagePredictor, sharding under torchrun, and `maskml eval interactive`."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from train_toy import free_port, subprocess_env

from maskml.cli import main
from maskml.eval.interactive import InteractiveResult, click_ious, evaluate_interactive
from maskml.predict.image import ImagePredictor
from maskml.train.data.dataset import EvalDataset
from maskml.train.data.readers import open_source
from maskml.train.data.synth import SynthConfig, generate
from maskml.train.prompts import center_clicks
from maskml.train.recipes.sam_finetune import build_sam_model


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate(root, SynthConfig(images=3, seed=1, width=96, height=64, min_objects=2, max_objects=3), progress=False)
    return root / "images"


def test_metrics_of_a_hand_made_table():
    ious = torch.tensor([[0.5, 0.86, 0.95],
                         [0.9, 0.92, 0.93],
                         [0.1, 0.2, 0.3]])
    result = InteractiveResult(ious, images=2, objects=[("a", 0), ("a", 1), ("b", 0)])
    assert result.miou(1) == pytest.approx(0.5)
    assert result.miou(3) == pytest.approx((0.95 + 0.93 + 0.3) / 3)
    assert result.noc(0.85) == pytest.approx((2 + 1 + 3) / 3)  # never reached: max_clicks
    assert result.noc(0.90) == pytest.approx((3 + 1 + 3) / 3)
    metrics = result.metrics()
    assert set(metrics) == {"miou_1", "miou_3", "noc85", "noc90", "objects", "images"}
    assert metrics["objects"] == 3 and metrics["images"] == 2


def test_clicks_follow_the_protocol_of_the_image_predictor():
    """click_ious equals driving ImagePredictor by hand: the first click at the object's centre with three
    masks (the best-scored kept), the second at the centre of the widest error with the first mask's logits."""
    torch.manual_seed(0)
    model = build_sam_model("mobile_sam", 1024, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (48, 80, 3), dtype=torch.uint8, generator=g)
    gt = torch.zeros(1, 48, 80, dtype=torch.bool)
    gt[0, 10:30, 20:50] = True
    got = click_ious(model, image, gt, max_clicks=2)

    predictor = ImagePredictor(model)
    predictor.set_image(image.numpy())
    first, label = center_clicks(gt, None)
    out = predictor.predict(points=first[0].numpy(), labels=label[0].numpy(), multimask=True)
    best = out.best()
    mask1 = out.masks[best]
    iou1 = (mask1 & gt[0]).sum() / (mask1 | gt[0]).sum().clamp(min=1)
    second, label2 = center_clicks(gt, mask1[None])
    points = torch.cat([first, second], dim=1)[0].numpy()
    labels = torch.cat([label, label2], dim=1)[0].numpy()
    out2 = predictor.predict(points=points, labels=labels, mask_input=out.low_res_logits[best][None], multimask=False)
    mask2 = out2.masks[0]
    iou2 = (mask2 & gt[0]).sum() / (mask2 | gt[0]).sum().clamp(min=1)
    assert got.shape == (1, 2)
    assert got[0, 0].item() == pytest.approx(iou1.item(), abs=1e-6)
    assert got[0, 1].item() == pytest.approx(iou2.item(), abs=1e-6)


def test_evaluate_a_dataset_and_image_at_the_input_size(synth_root, tmp_path):
    model = build_sam_model("mobile_sam", 64, seed=0).eval()
    dataset = EvalDataset(open_source(synth_root))
    result = evaluate_interactive(model, dataset, max_clicks=3)
    assert result.images == 3 and result.ious.shape == (sum(len(dataset[i]["masks"]) for i in range(3)), 3)
    assert ((result.ious >= 0) & (result.ious <= 1)).all()
    assert [name for name, _ in result.objects][0].endswith("sa_000000.json")
    # an image whose longest side is the model's input size: the padding is cropped from the masks too
    square = torch.zeros(48, 64, 3, dtype=torch.uint8)
    gt = torch.zeros(1, 48, 64, dtype=torch.bool)
    gt[0, 5:20, 5:40] = True
    assert click_ious(model, square, gt, 1).shape == (1, 1)


SHARD_SCRIPT = """
import sys, torch
from maskml.train import distributed
from maskml.eval.interactive import evaluate_interactive
from maskml.train.data.dataset import EvalDataset
from maskml.train.data.readers import open_source
from maskml.train.recipes.sam_finetune import build_sam_model
distributed.init_distributed("gloo")
model = build_sam_model("mobile_sam", 64, seed=0).eval()
result = evaluate_interactive(model, EvalDataset(open_source(sys.argv[1])), max_clicks=2)
if distributed.rank() == 0:
    torch.save({"ious": result.ious, "objects": result.objects, "images": result.images}, sys.argv[2])
distributed.cleanup()
"""


def test_torchrun_shards_images_and_gathers_the_same_result(synth_root, tmp_path):
    script = tmp_path / "shard.py"
    script.write_text(SHARD_SCRIPT)
    env = subprocess_env()
    one = subprocess.run([sys.executable, str(script), str(synth_root), str(tmp_path / "one.pt")], env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(free_port()), str(script), str(synth_root), str(tmp_path / "two.pt")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    a, b = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert a["images"] == b["images"] == 3 and a["objects"] == b["objects"]
    assert torch.allclose(a["ious"], b["ious"], atol=1e-6)


def test_cli(synth_root, tmp_path, capsys):
    model = build_sam_model("mobile_sam", 64, seed=0)
    checkpoint = tmp_path / "model.pt"
    torch.save(model.state_dict(), checkpoint)
    out = tmp_path / "ious.csv"
    args = ["eval", "interactive", "--model", "mobile_sam", "--data", str(synth_root), "--checkpoint",
            str(checkpoint), "model.image_size=64", "max_clicks=3", "progress=false"]
    assert main([*args, f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert "3 images" in printed and "miou_1" in printed and "noc85" in printed
    rows = out.read_text().splitlines()
    assert rows[0] == "image,object,iou_1,iou_2,iou_3" and len(rows) > 3
    assert main([*args, f"out={out}"]) == 2  # never overwrites
    assert "exists" in capsys.readouterr().err
    assert main(["eval", "interactive", "--model", "mobile_sam", "--data", str(tmp_path / "nothing")]) == 2
    assert main(["eval", "interactive", "--model", "mobile_sammy", "--data", str(synth_root)]) == 2
    assert "mobile_sam" in capsys.readouterr().err
    assert main(["eval", "davis"]) == 2  # davis still needs its folders
