"""Interactive segmentation with simulated clicks: the protocol of the SAM paper.

For each object of each image: the first click at the object's centre (the pixel farthest from its boundary,
by an exact distance transform), each next click at the centre of the widest error region of the current
mask (positive in a missed region, negative in a false one). The first click asks for three masks and keeps
the one with the highest predicted IoU; later clicks ask for one mask, with all clicks so far and the
previous mask's low-resolution logits as prompts. IoU is measured at the image's own resolution.

Reported: mIoU after 1, 3 and 5 clicks (over all objects), and NoC@85 / NoC@90: the mean number of clicks
an object needs to reach that IoU (max_clicks when never reached). Under torchrun each process takes a
shard of the images; the results are gathered on every process.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from maskml.predict.image import as_image_tensor, backend_for
from maskml.train import distributed
from maskml.train.prompts import center_clicks


@torch.inference_mode()
def click_ious(model, image: torch.Tensor, masks: torch.Tensor, max_clicks: int) -> torch.Tensor:
    """IoU of every object (N, max_clicks) after each simulated click; image (H, W, 3) uint8, masks (N, H, W)."""
    backend = backend_for(model)
    device = next(model.parameters()).device
    state = backend.embed(as_image_tensor(image, device))
    gt = masks.to(device)
    points = torch.empty(len(gt), 0, 2, device=device)
    labels = torch.empty(len(gt), 0, dtype=torch.int64, device=device)
    pred, low_res = None, None
    ious = []
    for click in range(max_clicks):
        new_points, new_labels = center_clicks(gt, pred)
        points = torch.cat([points, new_points], dim=1)
        labels = torch.cat([labels, new_labels], dim=1)
        coords = backend.to_input_frame(points.double(), state).float()
        first = click == 0
        out, scores = backend.decode(state, (coords, labels.int()), None, low_res, multimask=first)
        best = scores.argmax(1) if first else torch.zeros(len(gt), dtype=torch.int64, device=device)
        low_res = backend.clamp_low_res(out[torch.arange(len(gt), device=device), best][:, None])
        pred = backend.upscale(low_res, state)[:, 0] > 0
        inter = (pred & gt).flatten(1).sum(1).float()
        union = (pred | gt).flatten(1).sum(1).float()
        ious.append(torch.where(union > 0, inter / union.clamp(min=1), 1.0))
    return torch.stack(ious, dim=1).cpu()


@dataclass
class InteractiveResult:
    ious: torch.Tensor  # (objects, max_clicks)
    images: int
    objects: list[tuple[str, int]]  # (image name, object index) of each row of ious

    def miou(self, clicks: int) -> float:
        return float(self.ious[:, min(clicks, self.ious.shape[1]) - 1].mean()) if len(self.ious) else float("nan")

    def noc(self, threshold: float) -> float:
        reached = self.ious >= threshold
        max_clicks = self.ious.shape[1]
        first = torch.where(reached.any(1), reached.float().argmax(1) + 1, torch.tensor(max_clicks))
        return float(first.float().mean()) if len(self.ious) else float("nan")

    def metrics(self) -> dict[str, float]:
        out = {f"miou_{k}": self.miou(k) for k in (1, 3, 5) if k <= self.ious.shape[1]}
        if self.ious.shape[1] >= 2:
            out.update({"noc85": self.noc(0.85), "noc90": self.noc(0.90)})
        out["objects"] = float(len(self.ious))
        out["images"] = float(self.images)
        return out


def evaluate_interactive(model, dataset: Dataset, max_clicks: int = 20, progress: bool = False
                         ) -> InteractiveResult:
    """Every image of `dataset` (items with "image" (H, W, 3) uint8 and "masks" (N, H, W) bool), this
    process's shard of them under torchrun; every process gets the gathered result."""
    mine = distributed.shard(len(dataset))
    rows = []
    for index in tqdm(mine, desc="interactive eval", unit="image", disable=not (progress and distributed.is_main())):
        item = dataset[index]
        rows.append((index, item["name"], click_ious(model, item["image"], item["masks"], max_clicks)))
    gathered = sorted((row for part in distributed.all_gather_objects(rows) for row in part), key=lambda r: r[0])
    ious = torch.cat([r[2] for r in gathered]) if gathered else torch.empty(0, max_clicks)
    objects = [(name, k) for _, name, image_ious in gathered for k in range(len(image_ious))]
    return InteractiveResult(ious, len(gathered), objects)


def format_metrics(metrics: dict[str, float]) -> str:
    parts = [f"{k} {v:.4f}" if k.startswith("miou") else f"{k} {v:.2f}" for k, v in metrics.items()
             if k not in ("objects", "images")]
    return f"{int(metrics['images'])} images, {int(metrics['objects'])} objects: " + ", ".join(parts)


def load_eval_model(model_cfg) -> torch.nn.Module:
    """cfg.model: the released weights (checkpoint null, from the model cache) or a checkpoint in the official
    layout, e.g. a training run's model.pt, at model.image_size."""
    import maskml
    from maskml.errors import MaskmlError
    from maskml.train.recipes.sam_finetune import build_sam_model

    checkpoint = model_cfg.get("checkpoint")
    if checkpoint is None:
        if int(model_cfg.image_size) != 1024:
            raise MaskmlError("the released weights run at model.image_size=1024; give model.checkpoint for a "
                              "model trained at another size")
        return maskml.load_model(model_cfg.name)
    return build_sam_model(model_cfg.name, int(model_cfg.image_size), checkpoint)


def write_ious_csv(result: InteractiveResult, path) -> None:
    """One row per object: image name, object index, IoU after each click. Refuses to replace a file."""
    import csv
    from pathlib import Path

    from maskml.errors import MaskmlError
    from maskml.io.images import atomic_path

    path = Path(path)
    if path.exists():
        raise MaskmlError(f"{path} exists: give out= a new file name (maskml does not overwrite files)")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "object", *(f"iou_{k + 1}" for k in range(result.ious.shape[1]))])
        for (name, obj), row in zip(result.objects, result.ious.tolist()):
            writer.writerow([name, obj, *(f"{v:.6f}" for v in row)])


def run_from_config(cfg) -> dict[str, float]:
    """`maskml eval interactive`: cfg composed from maskml/configs/eval_interactive.yaml."""
    from pathlib import Path

    from maskml.errors import MaskmlError
    from maskml.train.data.dataset import EvalDataset
    from maskml.train.data.readers import open_source
    from maskml.train.engine import resolve_device

    if cfg.out is not None and Path(cfg.out).exists():
        raise MaskmlError(f"{cfg.out} exists: give out= a new file name (maskml does not overwrite files)")
    if int(cfg.max_clicks) < 1:
        raise MaskmlError(f"max_clicks must be at least 1, got {cfg.max_clicks}")
    distributed.init_distributed()
    try:
        device = resolve_device(cfg.device)
        # the data first: a wrong folder is found in a second, not after the model's download and load
        dataset = EvalDataset(open_source(cfg.data.root, cfg.data.layout), cfg.data.on_error, cfg.max_images)
        model = load_eval_model(cfg.model).to(device).eval()
        result = evaluate_interactive(model, dataset, int(cfg.max_clicks), progress=bool(cfg.progress))
        metrics = result.metrics()
        if distributed.is_main():
            print(format_metrics(metrics))
            if cfg.out is not None:
                write_ious_csv(result, cfg.out)
                print(f"-> {cfg.out}")
        return metrics
    finally:
        distributed.cleanup()
