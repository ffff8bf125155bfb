"""What the two distillation recipes share (maskml.train.recipes.distill_encoder, distill_prompt): the teacher
and the student, the cache of teacher embeddings, the projections and the comparison on held-out images.

Teacher and student are SAM-family zoo models (sam_vit_*, mobile_sam, sam2*). The data is seen in the teacher's
input frame (its family's resize and padding at teacher.image_size); the student takes the same frame, resized
to student.image_size. What is distilled is what the family's mask decoder reads: the stride-16 image embedding
and, when both are SAM 2 models, its two high-resolution feature maps. A level whose student shape differs from
the teacher's (another grid or channel count) goes through a learned projection (a resize to the teacher's grid
and a 1x1 convolution), trained with the student and written beside model.pt as projection.pt.

Embedding cache (recipe.cache_dir): manifest.json names the teacher (model, weights digest, size), the
augmentation and the images; shard-NNNNN.pt files hold recipe.shard_size entries each, an entry being one
augmented version (recipe.variants per image) of one image: its teacher features in float16, its image name and
the seed of its augmentation (with the augmentation settings, so the student sees the very same image). Under
torchrun each rank computes every world-th missing shard and writes it under a temporary name, renamed into place
when complete: a killed run keeps its finished shards and computes only the missing ones when run again.
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from maskml.errors import MaskmlError
from maskml.io.images import atomic_path
from maskml.io.outputs import remove_stale_temporaries
from maskml.train import distributed as dist
from maskml.train.data.dataset import EvalDataset, TrainDataset, datasets_from_config, family_resize
from maskml.train.prompts import center_clicks
from maskml.train.recipes import Recipe
from maskml.train.recipes.sam_finetune import (SamHeads, build_sam_model, export_official, image_features,
                                               model_family, normalise, split_features)

FAMILIES = ("sam", "sam2")
CACHE_FORMAT = "maskml-embeddings-1"
PROJECTION_FORMAT = "maskml-projection-1"
PROJECTIONS = "distill_projection"  # the student's submodule holding the projections (not exported in model.pt)


# ---------------------------------------------------------------------------------------------- models

def zoo_family(name: str) -> str:
    from maskml.zoo import get_entry

    return get_entry(name).family


def check_pair(teacher: str, student: str) -> None:
    """Both models must be SAM-family models (their encoders feed a SAM or SAM 2 mask decoder)."""
    from maskml.zoo import list_models

    for role, name in (("teacher", teacher), ("student", student)):
        family = zoo_family(name)
        if family not in FAMILIES:
            choices = ", ".join(m for f in FAMILIES for m in list_models(f))
            raise MaskmlError(f"{role}={name} is a {family} model, which cannot be distilled to or from the "
                              f"{'student' if role == 'teacher' else 'teacher'} "
                              f"{student if role == 'teacher' else teacher}: teacher and student must be "
                              f"SAM-family models ({choices})")


def teacher_identity(t: DictConfig, seed: int) -> dict:
    """What makes the teacher's embeddings what they are: the model, its weights (the checkpoint's SHA-256, or
    the seed of the random weights) and its input size."""
    from maskml.hub import sha256_of

    checkpoint = OmegaConf.select(t, "checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise MaskmlError(f"teacher.checkpoint={checkpoint}: no such file")
    weights = f"sha256:{sha256_of(Path(checkpoint))}" if checkpoint is not None else f"random:seed={seed}"
    return {"name": str(t.name), "weights": weights, "image_size": int(t.image_size)}


def build_teacher(t: DictConfig, seed: int) -> nn.Module:
    """The teacher, frozen, in eval mode (a SAM ViT at a reduced size gets interpolated position embeddings)."""
    model = build_sam_model(str(t.name), int(t.image_size), OmegaConf.select(t, "checkpoint"), seed,
                            resize_positions=True)
    return model.eval().requires_grad_(False)


def heads_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything but the image encoder: the prompt encoder and mask decoder (SAM 2: and its video parts)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith(("image_encoder.", PROJECTIONS))}


def take_teacher_heads(student: nn.Module, teacher: nn.Module) -> bool:
    """Copy the teacher's prompt encoder and mask decoder into the student when they fit (same family and
    layout); returns whether they did."""
    mine, theirs = heads_state(student), heads_state(teacher)
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        return False
    student.load_state_dict(theirs, strict=False)
    return True


def feature_shapes(model: nn.Module, image_size: int) -> dict[str, tuple[int, int, int]]:
    """(C, h, w) of each level image_features returns for `model` at `image_size`."""
    if model_family(model) == "sam":
        return {"embedding": (model.prompt_encoder.embed_dim, image_size // 16, image_size // 16)}
    decoder = model.sam_mask_decoder
    return {"embedding": (model.sam_prompt_encoder.embed_dim, image_size // 16, image_size // 16),
            "high_res_0": (decoder.conv_s0.out_channels, image_size // 4, image_size // 4),
            "high_res_1": (decoder.conv_s1.out_channels, image_size // 8, image_size // 8)}


class Projection(nn.Module):
    """Student features -> the teacher's shape: bilinear resize to the teacher's grid, then a 1x1 convolution
    (starting as the identity when the channel counts agree)."""

    def __init__(self, student_shape: tuple[int, int, int], teacher_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.grid = tuple(teacher_shape[1:])
        self.conv = nn.Conv2d(student_shape[0], teacher_shape[0], kernel_size=1)
        if student_shape[0] == teacher_shape[0]:
            with torch.no_grad():
                self.conv.weight.copy_(torch.eye(teacher_shape[0])[:, :, None, None])
                self.conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.grid:
            x = F.interpolate(x, self.grid, mode="bilinear", align_corners=False)
        return self.conv(x)


def student_input(student: nn.Module, images: torch.Tensor, valid_sizes: list[tuple[int, int]]) -> torch.Tensor:
    """Teacher-frame images (B, 3, S, S) uint8 -> the student's normalised input at its own size."""
    size = student.image_size
    if images.shape[-1] != size:
        scale = size / images.shape[-1]
        images = F.interpolate(images.float(), (size, size), mode="bilinear", align_corners=False, antialias=True)
        valid_sizes = [(max(1, round(h * scale)), max(1, round(w * scale))) for h, w in valid_sizes]
    return normalise(student, images, valid_sizes)


def teacher_features(teacher: nn.Module, items: list[dict]) -> dict[str, torch.Tensor]:
    device = next(teacher.parameters()).device
    images = torch.stack([item["image"] for item in items]).to(device)
    with torch.no_grad():
        return image_features(teacher, normalise(teacher, images, [tuple(item["valid_size"]) for item in items]))


def frame_masks(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Low-res mask logits (K, h, w) -> (K, size, size) bool masks in the input frame."""
    return F.interpolate(logits[:, None], (size, size), mode="bilinear", align_corners=False)[:, 0] > 0


def embedding_losses(model: nn.Module, student: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
    """MSE of each level both sides have (through its projection, if any): {"mse_<level>": value}."""
    projections = getattr(model, PROJECTIONS)
    out = {}
    for level, target in targets.items():
        if level not in student:
            continue
        x = student[level]
        if level in projections:
            x = projections[level](x)
        out[f"mse_{level}"] = F.mse_loss(x.float(), target.float())
    return out


# ---------------------------------------------------------------------------------------------- cache

def variant_seed(seed: int, entry: int, variants: int) -> int:
    """The augmentation seed of entry image x variants + variant (the same with and without a cache)."""
    from maskml.train.engine import item_seed

    image, variant = divmod(entry, variants)
    return item_seed(seed, variant, image)


def portable_name(name: str, root: Path) -> str:
    """A sample's name without the folder that holds the dataset (so a moved dataset keeps its cache)."""
    prefix = str(Path(root).resolve().parent) + "/"
    return name[len(prefix):] if name.startswith(prefix) else name


def _digest(values: list[str]) -> str:
    return hashlib.sha256("\n".join(values).encode()).hexdigest()[:16]


def _describe(key: dict) -> str:
    t, a = key["teacher"], key["augment"]
    return (f"teacher {t['name']} ({t['weights'][:23]}, {t['image_size']} px), augmentation flip {a['flip']}, "
            f"scale {a['scale']}, colour {a['colour']}, {a['variants']} variant(s) per image, seed {a['seed']}; "
            f"{key['images']['count']} images ({key['images']['names']})")


class EmbeddingCache:
    """Teacher features of every (image, augmentation variant) entry, in shards on disk (see the module doc)."""

    def __init__(self, folder: Path, key: dict, shard_size: int) -> None:
        if shard_size < 1:
            raise MaskmlError(f"recipe.shard_size={shard_size}: it must be at least 1")
        self.folder, self.key, self.shard_size = Path(folder), key, shard_size
        self.variants = int(key["augment"]["variants"])
        self.entries = int(key["images"]["count"]) * self.variants
        self.shards = math.ceil(self.entries / shard_size)
        self.opened: dict[int, dict] = {}

    def path(self, shard: int) -> Path:
        return self.folder / f"shard-{shard:05d}.pt"

    def entry_seed(self, entry: int) -> int:
        return variant_seed(int(self.key["augment"]["seed"]), entry, self.variants)

    def prepare(self) -> None:
        """Rank 0 writes manifest.json (new cache) or checks that the cache was made for this key; every rank
        raises the same error."""
        error = None
        if dist.is_main():
            try:
                self._check_manifest()
            except MaskmlError as exc:
                error = str(exc)
        error = dist.all_gather_objects(error)[0]
        if error:
            raise MaskmlError(error)

    def _check_manifest(self) -> None:
        manifest = self.folder / "manifest.json"
        wanted = {"format": CACHE_FORMAT, **self.key, "shard_size": self.shard_size}
        if manifest.is_file():
            try:
                found = json.loads(manifest.read_text())
            except (OSError, ValueError) as exc:
                raise MaskmlError(f"{manifest} cannot be read ({exc}); give another recipe.cache_dir") from None
            if found != wanted:
                made = _describe(found) if found.get("format") == CACHE_FORMAT else "another program"
                raise MaskmlError(f"the embedding cache {self.folder} was made by {made}, not for this run "
                                  f"({_describe(self.key)}); give another recipe.cache_dir (the cache is kept)")
        elif self.folder.exists() and any(self.folder.iterdir()):
            raise MaskmlError(f"recipe.cache_dir={self.folder} is not empty and holds no embedding cache "
                              f"(manifest.json); give an empty or new folder")
        else:
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps(wanted, indent=1) + "\n")
        remove_stale_temporaries(self.folder)  # shards a killed run was writing

    def missing(self) -> list[int]:
        return [s for s in range(self.shards) if not self.path(s).is_file()]

    def fill(self, dataset: TrainDataset, teacher: nn.Module, batch_size: int, progress: bool = True) -> int:
        """Compute this rank's share of the missing shards (every world-th); returns the entries it computed."""
        missing = self.missing()
        mine = missing[dist.rank()::dist.world_size()]
        todo = sum(len(self._shard_entries(s)) for s in mine)
        bar = tqdm(total=todo, desc="teacher embeddings", dynamic_ncols=True,
                   disable=not (progress and dist.is_main() and todo))
        for shard in mine:
            entries = self._shard_entries(shard)
            names, levels = [], {}
            for first in range(0, len(entries), batch_size):
                chunk = entries[first:first + batch_size]
                items = [dataset.sample(e // self.variants, self.entry_seed(e)) for e in chunk]
                for level, value in teacher_features(teacher, items).items():
                    levels.setdefault(level, []).append(value.to("cpu", torch.float16))
                names += [portable_name(item["name"], dataset.loader.source.root) for item in items]
                bar.update(len(chunk))
            record = {"format": CACHE_FORMAT, "first": entries[0], "names": names, "written_by": dist.rank(),
                      "seeds": [self.entry_seed(e) for e in entries], "augment": self.key["augment"],
                      "teacher": self.key["teacher"], "features": {k: torch.cat(v) for k, v in levels.items()}}
            with atomic_path(self.path(shard)) as tmp:
                torch.save(record, tmp)
        bar.close()
        dist.barrier()
        return todo

    def _shard_entries(self, shard: int) -> list[int]:
        return list(range(shard * self.shard_size, min(self.entries, (shard + 1) * self.shard_size)))

    def open_all(self) -> None:
        """Open (memory-mapped) and check every shard; a damaged or foreign one is one MaskmlError."""
        missing = self.missing()
        if missing:
            raise MaskmlError(f"the embedding cache {self.folder} lacks {len(missing)} shards (e.g. "
                              f"{self.path(missing[0]).name}); run again to compute them")
        for shard in range(self.shards):
            self.opened[shard] = self._open(shard)

    def _open(self, shard: int) -> dict:
        path = self.path(shard)
        fix = (f"delete that file and run again: only it is recomputed (the other shards and the run's "
               f"checkpoints are kept)")
        try:
            record = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # noqa: BLE001 - any failure to read means a damaged file
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MaskmlError(f"embedding cache shard {path} is damaged ({detail}); {fix}") from None
        entries = self._shard_entries(shard)
        problem = None
        if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
            problem = "it is not a maskml embedding shard"
        elif record.get("teacher") != self.key["teacher"] or record.get("augment") != self.key["augment"]:
            problem = "it was made by another teacher or augmentation than its manifest.json says"
        elif record.get("first") != entries[0] or len(record.get("names", ())) != len(entries) or not all(
                isinstance(v, torch.Tensor) and len(v) == len(entries) for v in record.get("features", {}).values()):
            problem = "its entries are not the ones its name stands for"
        elif not record["features"]:
            problem = "it holds no features"
        if problem:
            raise MaskmlError(f"embedding cache shard {path} is damaged ({problem}); {fix}")
        return record

    def entry(self, entry: int) -> tuple[dict[str, torch.Tensor], str, int]:
        """(features of one entry (float16), the image name it was made from, its augmentation seed)."""
        shard, k = divmod(entry, self.shard_size)
        record = self.opened.get(shard) or self._open(shard)
        self.opened[shard] = record
        return {level: v[k] for level, v in record["features"].items()}, record["names"][k], record["seeds"][k]


class DistillDataset(Dataset):
    """Training items in the teacher's frame, each one of its image's augmentation variants (picked by the item
    seed); with a cache, item["targets"] holds the teacher's features of exactly that augmented image."""

    def __init__(self, frames: TrainDataset, variants: int, cache: EmbeddingCache | None, seed: int) -> None:
        self.frames, self.variants, self.cache, self.seed = frames, variants, cache, seed

    def __len__(self) -> int:
        return len(self.frames)

    def sample(self, index: int, seed: int) -> dict:
        entry = index * self.variants + seed % self.variants
        if self.cache is None:
            item = self.frames.sample(index, variant_seed(self.seed, entry, self.variants))
            item["seed"] = seed
            return item
        targets, name, augment_seed = self.cache.entry(entry)
        item = self.frames.sample(index, augment_seed)
        if portable_name(item["name"], self.frames.loader.source.root) != name:
            raise MaskmlError(f"the embedding cache {self.cache.folder} holds the teacher's features of {name} "
                              f"where this run's data has {item['name']}: the data changed since the cache was "
                              f"made; give another recipe.cache_dir")
        item["targets"] = targets
        item["seed"] = seed  # the prompts' randomness still changes from epoch to epoch
        return item

    def __getitem__(self, index: int) -> dict:
        return self.sample(index, index)


# ---------------------------------------------------------------------------------------------- the recipes' base

class DistillRecipe(Recipe):
    """Teacher, student, data with cached teacher features, validation against the teacher, export."""

    families = ()  # checked by check_pair instead: the config has a teacher and a student, no model

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg)
        check_pair(str(cfg.teacher.name), str(cfg.student.name))
        self._teacher: nn.Module | None = None
        self._val_targets: dict[str, dict] = {}

    def teacher(self, device: torch.device | None = None) -> nn.Module:
        if self._teacher is None:
            self._teacher = build_teacher(self.cfg.teacher, int(self.cfg.seed))
        if device is not None:
            self._teacher.to(device)
        return self._teacher

    def build_model(self) -> nn.Module:
        s, seed = self.cfg.student, int(self.cfg.seed)
        student = build_sam_model(str(s.name), int(s.image_size), OmegaConf.select(s, "checkpoint"), seed)
        teacher = self.teacher()
        if bool(self.cfg.recipe.heads_from_teacher) and not take_teacher_heads(student, teacher):
            warnings.warn(f"the student {s.name} cannot take the prompt encoder and mask decoder of the teacher "
                          f"{self.cfg.teacher.name} (another family or layout): it keeps its own", stacklevel=2)
        t_shapes = feature_shapes(teacher, int(self.cfg.teacher.image_size))
        s_shapes = feature_shapes(student, int(s.image_size))
        student.add_module(PROJECTIONS, nn.ModuleDict({
            level: Projection(s_shapes[level], shape) for level, shape in t_shapes.items()
            if level in s_shapes and s_shapes[level] != shape}))
        self.set_trainable(student)
        return student

    def set_trainable(self, student: nn.Module) -> None:
        """The image encoder (and projections) train; the prompt encoder and mask decoder are frozen."""
        student.requires_grad_(False)
        student.image_encoder.requires_grad_(True)
        getattr(student, PROJECTIONS).requires_grad_(True)

    def export(self, model: nn.Module, path: Path) -> None:
        """model.pt in the student's official layout; the projections, if any, beside it in projection.pt."""
        export_official(model, path, exclude=(PROJECTIONS + ".",))
        projections = getattr(model, PROJECTIONS)
        if len(projections):
            with atomic_path(Path(path).parent / "projection.pt") as tmp:
                torch.save({"format": PROJECTION_FORMAT, "teacher": OmegaConf.to_container(self.cfg.teacher),
                            "student": str(self.cfg.student.name),
                            "state": {k: v.detach().cpu() for k, v in projections.state_dict().items()}}, tmp)

    # --- data ---
    def cache_key(self, frames: TrainDataset) -> dict:
        a = self.cfg.data.augment
        names = [portable_name(n, frames.loader.source.root) for n in frames.loader.source.names]
        return {"teacher": teacher_identity(self.cfg.teacher, int(self.cfg.seed)),
                "augment": {"frame": zoo_family(self.cfg.teacher.name), "flip": float(a.flip),
                            "scale": [float(v) for v in a.scale], "colour": float(a.colour),
                            "variants": int(self.cfg.recipe.variants), "seed": int(self.cfg.seed)},
                "images": {"count": len(names), "names": _digest(names)}}

    def train_dataset(self) -> DistillDataset:
        r = self.cfg.recipe
        frames = self.datasets()[0]
        if int(r.variants) < 1:
            raise MaskmlError(f"recipe.variants={r.variants}: it must be at least 1")
        cache = None
        if bool(r.cache):
            key = dist.all_gather_objects(self.cache_key(frames) if dist.is_main() else None)[0]
            cache = EmbeddingCache(Path(str(r.cache_dir)), key, int(r.shard_size))
            cache.prepare()
            dist.barrier()
            cache.fill(frames, self.teacher(), int(r.teacher_batch_size), bool(self.cfg.trainer.progress))
            cache.open_all()
        return DistillDataset(frames, int(r.variants), cache, int(self.cfg.seed))

    def val_dataset(self) -> EvalDataset | None:
        return self.datasets()[1]

    def datasets(self) -> tuple[TrainDataset, EvalDataset | None]:
        """Training frames in the teacher's frame, and the held-out images."""
        return datasets_from_config(self.cfg.data, zoo_family(self.cfg.teacher.name), int(self.cfg.teacher.image_size))

    def targets_of(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        """The teacher's features of the batch: from the cache, or computed now (recipe.cache=false)."""
        if "targets" in batch[0]:
            return {level: torch.stack([item["targets"][level] for item in batch]).float()
                    for level in batch[0]["targets"]}
        device = batch[0]["image"].device
        return teacher_features(self.teacher(device), batch)

    def student_features(self, model: nn.Module, batch: list[dict]) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        if bool(self.cfg.recipe.freeze_batch_norm):  # batches of a few images: running statistics stay
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        images = torch.stack([item["image"] for item in batch]).to(device)
        return image_features(model, student_input(model, images, [tuple(item["valid_size"]) for item in batch]))

    # --- validation: the student against the teacher on held-out images ---
    def validate(self, model: nn.Module, dataset, device: torch.device) -> dict[str, float]:
        """embedding_mse: the student's (projected) embedding against the teacher's; click_iou: IoU between the
        student's and the teacher's mask for one click at each object's centre (each model's best-scored
        multi-mask output, as the predictors choose)."""
        teacher = self.teacher(device)
        t_size = int(self.cfg.teacher.image_size)
        family = zoo_family(self.cfg.teacher.name)
        max_objects = int(self.cfg.recipe.val_max_objects)
        errors, ious = [], []
        for i in dist.shard(len(dataset)):
            item = dataset[i]
            image, masks, valid = family_resize(item["image"], item["masks"][:max_objects], family, t_size)
            frame = {"image": image, "valid_size": valid}
            target = self._val_targets.get(item["name"])
            if target is None:
                t_features = teacher_features(teacher, [frame])
                t_masks, points, labels = self._click_masks(SamHeads(teacher), t_features, masks.to(device), valid,
                                                            1.0, t_size)
                target = {"features": t_features, "masks": t_masks, "points": points, "labels": labels}
                self._val_targets[item["name"]] = target
            s_features = self.student_features(model, [{**frame, "image": image.to(device)}])
            errors.append(embedding_losses(model, s_features, {"embedding": target["features"]["embedding"]})
                          ["mse_embedding"].item())
            s_masks, _, _ = self._click_masks(SamHeads(model), s_features, masks.to(device), valid,
                                              model.image_size / t_size, t_size, target["points"], target["labels"])
            inter = (s_masks & target["masks"]).flatten(1).sum(1).float()
            union = (s_masks | target["masks"]).flatten(1).sum(1).float().clamp(min=1)
            ious += (inter / union).tolist()
        errors = [e for part in dist.all_gather_objects(errors) for e in part]
        ious = [v for part in dist.all_gather_objects(ious) for v in part]
        return {"embedding_mse": sum(errors) / max(1, len(errors)), "click_iou": sum(ious) / max(1, len(ious)),
                "images": float(len(errors)), "objects": float(len(ious))}

    @staticmethod
    def _click_masks(heads: SamHeads, features: dict[str, torch.Tensor], masks: torch.Tensor, valid, scale: float,
                     frame_size: int, points: torch.Tensor | None = None, labels: torch.Tensor | None = None):
        """Masks (K, S, S) bool in the teacher's frame for one click per object (at the object's centre unless
        given), with the clicks."""
        if points is None:
            points, labels = center_clicks(masks, None)
        embedding, high_res = split_features(features)[0]
        logits, iou_pred, _ = heads.decode(embedding, high_res, points * scale, labels, None, None)
        best = iou_pred[:, 1:].argmax(1) + 1
        frame = frame_masks(logits[torch.arange(len(best), device=logits.device), best], frame_size)
        frame[:, valid[0]:, :] = False
        frame[:, :, valid[1]:] = False
        return frame, points, labels
