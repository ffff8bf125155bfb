"""cutie: Cutie's training (cutie/model/train_wrapper.py, losses.py, config/train_config.yaml).

Stage "pre" (pre_training): static pseudo-videos from an image dataset (maskml.train.data.pseudo_video),
3-frame clips, 2 reference frames, 1 object, 8192 sampled points. Stage "main" (main_training): videos
(maskml.train.data.video), 8-frame clips, 3 reference frames, up to 3 objects, 12544 points, two clips
merged with probability 0.5, the clips' max gap following recipe.max_gap_schedule over trainer.max_steps
(5, 10, 15, 5 frames from 0, 0.1, 0.3, 0.8 of them). Settings left null in recipe/cutie.yaml take the
stage's official value.

Per clip, the first frame's masks are encoded into memory; each later frame is segmented from the memory
of the frames before it (all of them up to num_ref_frames, then num_ref_frames of them at random), from the
sensory memory and the object memory (the sum of the summaries of every frame so far), and its predicted
masks (probabilities) are encoded into memory in turn, as at inference; the mask encoder's deep update
runs with probability 0.2. Loss on every frame but the first: cross-entropy + dice on points sampled where
the prediction is uncertain (PointRend: num_points from oversample_ratio x as many random ones, of which
importance_sample_ratio are the most uncertain), plus 0.01 x the same for the auxiliary predictions of the
sensory memory (a linear predictor, aux_computer.sensory_aux) and of each object-transformer level.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from maskml.errors import MaskmlError
from maskml.models.cutie import Cutie
from maskml.models.cutie.modules import GConv2d
from maskml.models.cutie.transformer import aggregate
from maskml.predict.cutie.memory import dense_softmax, similarity
from maskml.train.recipes import Recipe, register_recipe

# The official values of each stage (train_config.yaml: pre_training, main_training)
STAGES = {
    "pre": dict(num_frames=3, num_ref_frames=2, max_objects=1, num_points=8192, size=384),
    "main": dict(num_frames=8, num_ref_frames=3, max_objects=3, num_points=12544, size=480),
}
EMBEDDING_NAMES = ("summary_pos.weight", "query_init.weight", "query_emb.weight", "obj_pe.weight")
MERGE_PROBABILITY = {"pre": 0.0, "main": 0.5}  # main_training.merge_probability (pre pastes images instead)


def _numbers(value, setting: str, example: str) -> list[float]:
    try:
        if not isinstance(value, (list, ListConfig)) or not value:
            raise ValueError
        return [float(v) for v in value]
    except (TypeError, ValueError):
        shown = "null" if value is None else list(value) if isinstance(value, ListConfig) else value
        raise MaskmlError(f"{setting}={shown}: give a list of numbers, e.g. {setting}={example}") from None


def gap_schedule(cfg: DictConfig) -> list[tuple[int, int]] | None:
    """recipe.max_gap_schedule at recipe.max_gap_schedule_fraction of trainer.max_steps -> VideoClips' (first
    step, max_gap) pairs (the official max_skip_schedule: a gap starts at round(fraction x steps)); None when
    recipe.max_gap_schedule is null (data.max_gap throughout). The schedule counts frames of a full-rate video,
    so each gap is divided by data.frame_interval (the dataset's frames are that many source frames apart), at
    least 1, as the official code divides max_skip per dataset."""
    recipe = cfg.recipe
    if recipe.max_gap_schedule is None:
        return None
    interval = OmegaConf.select(cfg, "data.frame_interval", default=1)
    if not isinstance(interval, int) or isinstance(interval, bool) or interval < 1:
        raise MaskmlError(f"data.frame_interval={interval}: give the number of source frames between two stored "
                          f"frames of the dataset as a whole number, at least 1 (DAVIS 2, YouTube-VOS and MOSE 5)")
    gaps = _numbers(recipe.max_gap_schedule, "recipe.max_gap_schedule", "[5,10,15,5]")
    fractions = _numbers(recipe.max_gap_schedule_fraction, "recipe.max_gap_schedule_fraction", "[0.0,0.1,0.3,0.8]")
    if len(gaps) != len(fractions):
        raise MaskmlError(f"recipe.max_gap_schedule has {len(gaps)} gaps but recipe.max_gap_schedule_fraction "
                          f"{len(fractions)} fractions: give each gap the fraction of trainer.max_steps it starts at")
    if fractions[0] != 0 or any(b <= a for a, b in zip(fractions, fractions[1:])) or fractions[-1] >= 1:
        raise MaskmlError(f"recipe.max_gap_schedule_fraction={fractions}: the fractions of trainer.max_steps where "
                          f"each gap starts must begin at 0.0 and increase, below 1.0")
    if any(gap < 1 or gap != int(gap) for gap in gaps):
        raise MaskmlError(f"recipe.max_gap_schedule={gaps}: each gap is a whole number of frames, at least 1")
    return [(round(fraction * int(cfg.trainer.max_steps)), max(1, int(gap) // interval))
            for fraction, gap in zip(fractions, gaps)]


class LinearPredictor(nn.Module):
    """Object logits from a per-object feature map x and the pixel features: a 1 x 1 group convolution of x
    to pixel_dim + 1 channels, dotted with the pixel features plus the last channel (the official
    aux_computer.sensory_aux, whose weights the released checkpoints carry)."""

    def __init__(self, x_dim: int, pixel_dim: int) -> None:
        super().__init__()
        self.projection = GConv2d(x_dim, pixel_dim + 1, kernel_size=1)

    def forward(self, pix_feat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = self.projection(x)
        return (pix_feat[:, None] * x[:, :, :-1]).sum(2) + x[:, :, -1]


class AuxComputer(nn.Module):
    def __init__(self, sensory_dim: int, pixel_dim: int) -> None:
        super().__init__()
        self.sensory_aux = LinearPredictor(sensory_dim, pixel_dim)


def build_cutie_model(name: str, checkpoint: str | None, seed: int) -> Cutie:
    """A zoo Cutie with its training-only auxiliary head (aux_computer): the weights of `checkpoint`
    (official layout; its aux_computer too, when it has one) or seeded random ones."""
    from maskml.zoo import get_entry, load_state, read_checkpoint

    entry = get_entry(name)
    if checkpoint is None:
        torch.manual_seed(seed)  # the deterministic random weights of an untrained model
    model = entry.build()
    aux = {}
    if checkpoint is not None:
        # every tensor of the file: the zoo entry leaves out aux_computer, which inference does not use
        state = read_checkpoint(dataclasses.replace(entry, ignored_prefixes=()), checkpoint)
        aux = {k[len("aux_computer."):]: v for k, v in state.items() if k.startswith("aux_computer.")}
        load_state(model, entry, {k: v for k, v in state.items() if not k.startswith("aux_computer.")},
                   str(checkpoint))
    model.aux_computer = AuxComputer(model.sensory_dim, model.pix_feat_proj.out_channels)
    if aux:
        model.aux_computer.load_state_dict(aux)
    model.model_name = name
    return model


def aggregate_selected(logits: torch.Tensor, selector: torch.Tensor) -> torch.Tensor:
    """Per-object logits (B, N, ...) -> logits with background first (B, N + 1, ...), padded objects out."""
    prob = torch.sigmoid(logits) * selector.view(*selector.shape, *([1] * (logits.ndim - 2)))
    return aggregate(prob, dim=1)


def point_sample(values: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """values (T, C, H, W) at points (T, P, 2) in [0, 1] (x, y), bilinear: (T, C, P)."""
    return F.grid_sample(values, 2 * points[:, :, None] - 1, mode="bilinear", align_corners=False)[..., 0]


def uncertain_points(logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float,
                     g: torch.Generator) -> torch.Tensor:
    """PointRend's training points (T, num_points, 2): of oversample_ratio x num_points random points, the
    importance_ratio x num_points most uncertain (smallest gap between the top two logits), then random ones."""
    t = logits.shape[0]
    device = logits.device
    candidates = torch.rand(t, int(num_points * oversample_ratio), 2, generator=g).to(device)
    sampled = point_sample(logits, candidates)
    if sampled.shape[1] == 2:
        uncertainty = -sampled[:, 1].abs()
    else:
        top2 = sampled.topk(2, dim=1).values
        uncertainty = top2[:, 1] - top2[:, 0]
    num_uncertain = int(importance_ratio * num_points)
    chosen = uncertainty.topk(num_uncertain, dim=1).indices
    points = torch.gather(candidates, 1, chosen[..., None].expand(-1, -1, 2))
    random_points = torch.rand(t, num_points - num_uncertain, 2, generator=g).to(device)
    return torch.cat([points, random_points], 1)


def point_losses(logits: torch.Tensor, soft_gt: torch.Tensor, points: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy (summed over frames, mean over points) and dice of the objects (background left out;
    summed over frames, mean over objects) at the points: logits and soft_gt (T, N + 1, ., .)."""
    point_logits = point_sample(logits, points)
    labels = point_sample(soft_gt, points)
    ce = F.cross_entropy(point_logits, labels, reduction="none").sum(0).mean()
    prob = point_logits.softmax(dim=1)[:, 1:]
    gt = labels[:, 1:]
    dice = 1 - (2 * (prob * gt).sum(-1) + 1) / (prob.sum(-1) + gt.sum(-1) + 1)
    return ce, dice.sum(0).mean()


@register_recipe("cutie")
class CutieRecipe(Recipe):
    families = ("cutie",)

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        r = cfg.recipe
        if r.stage not in STAGES:
            raise MaskmlError(f"recipe.stage={r.stage}: use pre (pseudo-videos from images) or main (videos)")
        self.settings = {k: int(OmegaConf.select(r, k) if OmegaConf.select(r, k) is not None else v)
                         for k, v in STAGES[r.stage].items()}
        if self.settings["size"] % 16:
            raise MaskmlError(f"recipe.size={self.settings['size']} must be a multiple of 16")
        if self.settings["num_ref_frames"] < 1 or self.settings["num_frames"] < 2:
            raise MaskmlError("recipe.num_frames must be at least 2 and recipe.num_ref_frames at least 1")
        merge = r.merge_probability if r.merge_probability is not None else MERGE_PROBABILITY[r.stage]
        if not isinstance(merge, (int, float)) or not 0 <= merge <= 1:
            raise MaskmlError(f"recipe.merge_probability={merge}: give a probability in [0, 1] (null: the stage's "
                              f"official value)")
        self.merge_probability = float(merge)
        if r.stage == "pre" and self.merge_probability:
            raise MaskmlError("recipe.merge_probability merges videos of stage main; stage pre pastes the objects of "
                              "several images instead (up to recipe.max_objects): leave it null")
        self.gap_schedule = gap_schedule(cfg) if r.stage == "main" else None
        self.deep_update_prob = float(r.deep_update_prob)
        self.oversample_ratio, self.importance_ratio = float(r.oversample_ratio), float(r.importance_sample_ratio)
        self.sensory_weight, self.query_weight = float(r.aux_loss.sensory), float(r.aux_loss.query)

    # --- model, data, export ---
    def build_model(self) -> nn.Module:
        m = self.cfg.model
        return build_cutie_model(m.name, OmegaConf.select(m, "checkpoint"), int(self.cfg.seed))

    def train_dataset(self):
        d, s = self.cfg.data, self.settings
        if self.cfg.recipe.stage == "pre":
            from maskml.train.data.pseudo_video import PseudoVideos
            from maskml.train.data.readers import open_source

            return PseudoVideos(open_source(d.root, d.layout), s["num_frames"], s["max_objects"], s["size"],
                                on_error=d.on_error)
        from maskml.train.data.video import VideoClips, open_videos, split_videos, warn_skipped

        videos, skipped = open_videos(d.root, d.layout, min_frames=s["num_frames"])
        warn_skipped(skipped, d.root)
        train, _ = split_videos(videos, int(d.val_videos))
        return VideoClips(train, s["num_frames"], s["max_objects"], s["size"], max_gap=int(d.max_gap),
                          on_error=d.on_error, merge_probability=self.merge_probability,
                          gap_schedule=self.gap_schedule)

    def val_dataset(self):
        from maskml.train.data.video import HeldOutVideos, open_videos, split_videos, warn_skipped

        d = self.cfg.data
        val_root = OmegaConf.select(d, "val_root")
        held_out = int(OmegaConf.select(d, "val_videos") or 0)
        if val_root is not None:
            videos, skipped = open_videos(val_root, OmegaConf.select(d, "val_layout") or "auto", min_frames=3)
            warn_skipped(skipped, val_root)
        elif held_out and self.cfg.recipe.stage == "main":
            _, videos = split_videos(open_videos(d.root, d.layout, min_frames=self.settings["num_frames"])[0],
                                     held_out)
        else:
            return None
        max_videos = OmegaConf.select(d, "val_max_videos")
        return HeldOutVideos(videos[:max_videos] if max_videos else videos, OmegaConf.select(d, "val_size"),
                             OmegaConf.select(d, "val_max_frames"))

    def export(self, model: nn.Module, path: Path) -> None:
        """The layout of the released cutie-*-mega.pth: the plain state dict, aux_computer included."""
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)

    def param_groups(self, model: nn.Module) -> list[dict]:
        """Cutie's groups: the pixel encoder at backbone_lr_ratio x lr, the query and summary embeddings
        without weight decay, every other parameter (norms and biases too) with weight decay."""
        lr, decay = float(self.cfg.optim.lr), float(self.cfg.optim.weight_decay)
        ratio = float(self.cfg.recipe.backbone_lr_ratio)
        groups = {"backbone": (lr * ratio, decay), "embedding": (lr, float(self.cfg.recipe.embed_weight_decay)),
                  "other": (lr, decay)}
        params: dict[str, list] = {k: [] for k in groups}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            kind = "backbone" if name.startswith("pixel_encoder.") else \
                "embedding" if name.endswith(EMBEDDING_NAMES) else "other"
            params[kind].append(param)
        out = [{"params": params[k], "lr": rate, "base_lr": rate, "weight_decay": wd}
               for k, (rate, wd) in groups.items() if params[k]]
        if not out:
            raise MaskmlError("no trainable parameters: trainer.freeze froze the whole model")
        return out

    # --- training ---
    def training_step(self, model: nn.Module, batch: list[dict]) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        g = torch.Generator().manual_seed(int(batch[0]["seed"]))
        out = self.clip_forward(model, batch, g, device)
        totals: dict[str, torch.Tensor] = {}
        for b, item in enumerate(batch):
            n = len(item["obj_ids"])
            soft_gt = self.soft_targets(item["masks"][1:].to(device))
            item_g = torch.Generator().manual_seed(int(item["seed"]) + 1)
            parts = {"mask": out["logits"][b, :, :n + 1], "sensory": out["sensory_logits"][b, :, :n + 1]}
            for level in range(out["query_logits"].shape[2]):
                parts[f"query_l{level}"] = out["query_logits"][b, :, level, :n + 1]
            for key, logits in parts.items():
                with torch.no_grad():
                    points = uncertain_points(logits.float(), self.settings["num_points"], self.oversample_ratio,
                                              self.importance_ratio, item_g)
                ce, dice = point_losses(logits.float(), soft_gt, points)
                weight = 1.0 if key == "mask" else self.sensory_weight if key == "sensory" else self.query_weight
                totals[f"{key}_ce"] = totals.get(f"{key}_ce", 0.0) + ce * weight / len(batch)
                totals[f"{key}_dice"] = totals.get(f"{key}_dice", 0.0) + dice * weight / len(batch)
        totals["loss"] = sum(totals.values())
        with torch.no_grad():
            totals["iou"] = self.clip_iou(out["logits"], batch, device)
        return totals

    @staticmethod
    def soft_targets(masks: torch.Tensor) -> torch.Tensor:
        """(T, N, H, W) bool -> one-hot (T, N + 1, H, W) float, background first (a later object wins where
        masks overlap, as painting them into one label map does)."""
        labels = torch.zeros(masks.shape[0], *masks.shape[2:], dtype=torch.long, device=masks.device)
        for k in range(masks.shape[1]):
            labels[masks[:, k]] = k + 1
        return F.one_hot(labels, masks.shape[1] + 1).permute(0, 3, 1, 2).float()

    @staticmethod
    def clip_iou(logits: torch.Tensor, batch: list[dict], device: torch.device) -> torch.Tensor:
        """Mean IoU of the predicted objects (argmax) over the frames after the first: a training signal."""
        ious = []
        for b, item in enumerate(batch):
            n = len(item["obj_ids"])
            pred = logits[b, :, :n + 1].argmax(1)
            gt = item["masks"][1:].to(device)
            for k in range(n):
                p, t = pred == k + 1, gt[:, k]
                union = (p | t).sum()
                ious.append((p & t).sum() / union if union > 0 else torch.ones((), device=device))
        return torch.stack(ious).mean()

    def clip_forward(self, model: Cutie, batch: list[dict], g: torch.Generator, device: torch.device) -> dict:
        """Cutie through each clip, frame by frame, memory written as at inference (see the module docstring).
        Returns logits (B, T-1, N+1, S, S) and the auxiliary logits at stride 16: sensory (B, T-1, N+1, h, w),
        query (B, T-1, levels, N+1, h, w); N = the most objects of an item, the others padded (selector)."""
        frames = torch.stack([item["frames"] for item in batch]).to(device).float() / 255  # (B, T, 3, S, S)
        b, t = frames.shape[:2]
        n = max(len(item["obj_ids"]) for item in batch)
        first = torch.zeros(b, n, *frames.shape[-2:], device=device)
        selector = torch.zeros(b, n, device=device)
        for i, item in enumerate(batch):
            k = len(item["obj_ids"])
            first[i, :k] = item["masks"][0].to(device).float()
            selector[i, :k] = 1
        ms_features, pix_feat, key, shrinkage, selection = model.encode_image(frames.flatten(0, 1))
        per_frame = lambda x: x.view(b, t, *x.shape[1:])  # noqa: E731
        ms_features = [per_frame(f) for f in ms_features]
        pix_feat, key, shrinkage, selection = map(per_frame, (pix_feat, key, shrinkage, selection))
        h, w = key.shape[-2:]
        sensory = torch.zeros(b, n, model.sensory_dim, h, w, device=device)
        value, sensory, summaries = model.encode_mask(frames[:, 0], pix_feat[:, 0], sensory, first)
        values = [value]  # (B, N, CV, h, w) per memory frame
        masks = first
        sel = selector.view(b, n, 1, 1)
        logits_all, sensory_all, query_all = [], [], []
        refs_max = self.settings["num_ref_frames"]
        for ti in range(1, t):
            if ti <= refs_max:
                refs = [list(range(ti))] * b
            else:
                refs = [torch.randperm(ti, generator=g)[:refs_max].tolist() for _ in range(b)]
            mem_key = torch.stack([key[i, r].permute(1, 0, 2, 3).flatten(1) for i, r in enumerate(refs)])
            mem_shrinkage = torch.stack([shrinkage[i, r].permute(1, 0, 2, 3).flatten(1) for i, r in enumerate(refs)])
            mem_value = torch.stack([torch.stack([values[j][i] for j in r], -3).flatten(0, 1).flatten(1)
                                     for i, r in enumerate(refs)])  # (B, N * CV, refs * h * w)
            # full softmax over the memory in float32, as the official training reads it
            affinity = dense_softmax(similarity(mem_key.float(), mem_shrinkage.float(), key[:, ti].flatten(2).float(),
                                                selection[:, ti].flatten(2).float()))  # (B, hw, refs * hw)
            readout = (mem_value.float() @ affinity.transpose(1, 2)).view(b, n, -1, h, w)
            levels: list[torch.Tensor] = []
            readout = model.read_memory(readout, pix_feat[:, ti], sensory, masks, summaries, selector=sel,
                                        aux_logits=levels)
            sensory_all.append(aggregate_selected(model.aux_computer.sensory_aux(pix_feat[:, ti], sensory), selector))
            query_all.append(torch.stack([aggregate_selected(level, selector) for level in levels], 1))
            sensory, logits, prob = model.segment([f[:, ti] for f in ms_features], readout, sensory, selector=sel)
            masks = prob[:, 1:]
            logits_all.append(logits)
            if ti < t - 1:  # the last frame is never read from memory
                deep = float(torch.rand((), generator=g)) < self.deep_update_prob
                value, sensory, frame_summaries = model.encode_mask(frames[:, ti], pix_feat[:, ti], sensory, masks,
                                                                    deep_update=deep)
                values.append(value)
                summaries = summaries + frame_summaries
        return {"logits": torch.stack(logits_all, 1), "sensory_logits": torch.stack(sensory_all, 1),
                "query_logits": torch.stack(query_all, 1)}

    # --- validation ---
    def validate(self, model: nn.Module, dataset, device: torch.device) -> dict[str, float]:
        from maskml.train import distributed as dist
        from maskml.train.video_eval import evaluate_videos, tracker_fn

        # BatchNorm statistics are per process under DDP (it copies rank 0's into the others only at the next
        # forward): every rank validates with rank 0's, the weights model.pt gets
        if dist.world_size() > 1:
            mine = {k: v.cpu() for k, v in model.named_buffers()} if dist.is_main() else None
            main = dist.all_gather_objects(mine)[0]
            for name, value in model.named_buffers():
                value.copy_(main[name])
        return evaluate_videos(tracker_fn(model, dict(self.cfg.recipe.val_tracker)), dataset)
