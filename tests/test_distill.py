"""The distillation recipes (distill_encoder, distill_prompt): the teacher-feature cache (filled once, resumed
after an interruption, shared by torchrun ranks, refused when made for another teacher or augmentation, a damaged
shard named), what trains and what stays the teacher's, the official-layout export, bad teacher/student pairs.

Teacher: MobileSAM with its parity weights (a checkpoint file, so the cache key holds its digest; the SAM ViT
teachers at a reduced size have their own test); student: MobileSAM from seeded random weights. Everything at
64 px on four tiny synthetic images."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import maskml
from maskml.configs import compose_train_config
from maskml.errors import MaskmlError
from maskml.train.distill import CACHE_FORMAT, EmbeddingCache
from maskml.train.engine import Trainer
from maskml.train.recipes import get_recipe
from conftest import FIXTURES, manifest_keys
from train_toy import free_port, subprocess_env


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from maskml.train.data.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("distill_synth")
    generate(root, SynthConfig(images=4, seed=0, width=96, height=64, min_objects=2, max_objects=3), progress=False)
    return root / "images"


def overrides(synth_root, tmp_path, teacher_checkpoint=None, **extra) -> list[str]:
    teacher = [f"teacher.checkpoint={teacher_checkpoint}", "teacher=mobile_sam"] if teacher_checkpoint else \
        ["teacher=sam_vit_b"]
    items = {"data.root": synth_root, "data.val_root": synth_root, "teacher.image_size": 64,
             "trainer.out_dir": tmp_path / "run", "recipe.cache_dir": tmp_path / "cache", "recipe.shard_size": 3,
             "trainer.num_workers": 0, "trainer.progress": "false", "trainer.log_every": 1,
             "trainer.batch_size": 2, "trainer.max_steps": 2, "recipe.val_max_objects": 2, **extra}
    return teacher + [f"{k}={v}" for k, v in items.items()]


def recipe_for(name, synth_root, tmp_path, teacher_checkpoint=None, **extra):
    cfg = compose_train_config(name, overrides(synth_root, tmp_path, teacher_checkpoint, **extra))
    return get_recipe(name)(cfg)


def shard_times(folder) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*.pt"))}


class Interrupt(Exception):
    pass


class InterruptedFrames:
    """The recipe's frames, but the `after`-th sample stops the process (as Ctrl-C would)."""

    def __init__(self, frames, after: int) -> None:
        self.frames, self.left = frames, after

    def sample(self, index, seed):
        self.left -= 1
        if self.left < 0:
            raise Interrupt
        return self.frames.sample(index, seed)


def test_cache_is_filled_once_resumed_after_an_interruption_and_holds_what_made_it(synth_root, tmp_path,
                                                                                   sam_checkpoints):
    recipe = recipe_for("distill_encoder", synth_root, tmp_path, sam_checkpoints["mobile_sam"])
    dataset = recipe.train_dataset()  # fills the cache: 4 images x 1 variant in shards of 3
    cache = dataset.cache
    folder = tmp_path / "cache"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "shard-00000.pt", "shard-00001.pt"]
    shard = torch.load(folder / "shard-00000.pt", weights_only=True)
    assert shard["format"] == CACHE_FORMAT and shard["names"] == [f"images/sa_00000{i}.json" for i in range(3)]
    assert shard["features"]["embedding"].dtype == torch.float16
    assert shard["features"]["embedding"].shape == (3, 256, 4, 4)
    assert shard["teacher"]["weights"].startswith("sha256:") and shard["teacher"]["name"] == "mobile_sam"
    assert shard["augment"]["flip"] == 0.0 and len(shard["seeds"]) == 3  # the augmentation is stored with them
    # the student gets exactly the image the teacher saw: its features again, from the stored augmentation seed
    item = dataset.sample(1, 12345)
    from maskml.train.distill import teacher_features

    fresh = teacher_features(recipe.teacher(), [item])["embedding"][0]
    assert torch.allclose(item["targets"]["embedding"].float(), fresh, atol=2e-2)

    # interrupted while filling: the finished shard stays, the unfinished one leaves nothing behind
    (folder / "shard-00001.pt").unlink()
    before = shard_times(folder)
    frames = dataset.frames
    with pytest.raises(Interrupt):
        EmbeddingCache(folder, cache.key, 3).fill(InterruptedFrames(frames, 0), recipe.teacher(), 4, False)
    assert shard_times(folder) == before and len(list(folder.iterdir())) == 2
    # run again: only the missing shard is computed
    assert EmbeddingCache(folder, cache.key, 3).fill(frames, recipe.teacher(), 4, False) == 1
    assert shard_times(folder)["shard-00000.pt"] == before["shard-00000.pt"]
    assert recipe_for("distill_encoder", synth_root, tmp_path, sam_checkpoints["mobile_sam"]).train_dataset() \
        .cache.missing() == []
    assert shard_times(folder)["shard-00000.pt"] == before["shard-00000.pt"]


def test_a_cache_of_another_teacher_or_augmentation_or_a_damaged_shard_is_one_clear_error(synth_root, tmp_path,
                                                                                         sam_checkpoints):
    recipe_for("distill_encoder", synth_root, tmp_path, sam_checkpoints["mobile_sam"]).train_dataset()
    folder = tmp_path / "cache"
    contents = {p.name: p.read_bytes() for p in folder.iterdir()}
    with pytest.raises(MaskmlError, match=r"was made by teacher mobile_sam \(sha256:.*not for this run "
                                          r"\(teacher sam_vit_b \(random:seed=0.*give another recipe.cache_dir"):
        recipe_for("distill_encoder", synth_root, tmp_path).train_dataset()
    with pytest.raises(MaskmlError, match=r"flip 0.0.*not for this run.*flip 0.5"):
        recipe_for("distill_encoder", synth_root, tmp_path, sam_checkpoints["mobile_sam"],
                   **{"data.augment.flip": 0.5}).train_dataset()
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == contents  # nothing lost, nothing overwritten

    shard = folder / "shard-00001.pt"
    for damage in (contents["shard-00001.pt"][:1000], b"\x00" * 100):
        shard.write_bytes(damage)
        with pytest.raises(MaskmlError, match=r"embedding cache shard .*shard-00001.pt is damaged \(.*\); delete "
                                              r"that file and run again: only it is recomputed") as error:
            recipe_for("distill_encoder", synth_root, tmp_path, sam_checkpoints["mobile_sam"]).train_dataset()
        assert "\n" not in str(error.value)
    assert (folder / "shard-00000.pt").read_bytes() == contents["shard-00000.pt"]
    shard.unlink()  # as the message says: the run recomputes it
    recipe_for("distill_encoder", synth_root, tmp_path, sam_checkpoints["mobile_sam"]).train_dataset()
    assert torch.equal(torch.load(shard, weights_only=True)["features"]["embedding"],
                       torch.load(__import__("io").BytesIO(contents["shard-00001.pt"]),
                                  weights_only=True)["features"]["embedding"])


def test_incompatible_teacher_and_student_are_refused(synth_root, tmp_path):
    with pytest.raises(MaskmlError, match="teacher=cutie_small is a cutie model.*must be SAM-family models"):
        get_recipe("distill_encoder")(compose_train_config("distill_encoder", [
            f"data.root={synth_root}", "teacher.name=cutie_small"]))
    result = subprocess.run([sys.executable, "-m", "maskml", "train", "distill_prompt", f"data.root={synth_root}",
                             "student.name=cutie_small", f"trainer.out_dir={tmp_path / 'run'}"],
                            capture_output=True, text=True, timeout=300, env=subprocess_env())
    assert result.returncode != 0 and not (tmp_path / "run").exists()
    assert "student=cutie_small is a cutie model" in result.stderr and "Traceback" not in result.stderr


def test_a_vit_teacher_below_1024_gets_interpolated_positions():
    from maskml.train.distill import build_teacher
    from maskml.train.recipes.sam_finetune import build_sam_model

    teacher = build_teacher(compose_train_config("distill_encoder", ["teacher=sam_vit_b", "teacher.image_size=128",
                                                                     "data.root=."]).teacher, seed=0)
    released = build_sam_model("sam_vit_b", 1024, seed=0)
    assert teacher.image_encoder.pos_embed.shape == (1, 8, 8, 768)
    assert teacher.image_encoder.blocks[2].attn.rel_pos_h.shape == (15, 64)  # a global block: 2 x 8 - 1
    assert torch.equal(teacher.mask_decoder.iou_token.weight, released.mask_decoder.iou_token.weight)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        assert teacher.image_encoder(torch.zeros(1, 3, 128, 128)).shape == (1, 256, 8, 8)


def test_distill_encoder_trains_the_encoder_only_and_exports_the_mobile_sam_layout(synth_root, tmp_path,
                                                                                  sam_checkpoints):
    cfg = compose_train_config("distill_encoder", overrides(synth_root, tmp_path, sam_checkpoints["mobile_sam"],
                                                            **{"data.val_max_images": 1}))
    recipe = get_recipe("distill_encoder")(cfg)
    path = Trainer(cfg, recipe).fit()
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0].split(",")[:5] == ["step", "lr", "grad_norm", "loss", "mse_embedding"] and len(log) == 3
    assert "click_iou" in (tmp_path / "run" / "val.csv").read_text()
    raw = torch.load(path, weights_only=True)
    # exactly the keys and shapes of the official MobileSAM state dict (its classifier included), which its own
    # code loads strictly
    official = manifest_keys(FIXTURES / "sam" / "manifest_vit_t.json")
    assert {k: list(v.shape) for k, v in raw.items()} == official
    student = maskml.load_model("mobile_sam", checkpoint=path)
    teacher = recipe.teacher()
    fresh = get_recipe("distill_encoder")(cfg).build_model()
    got, theirs, init = student.state_dict(), teacher.state_dict(), fresh.state_dict()
    heads = [k for k in got if not k.startswith("image_encoder.")]
    assert heads and all(torch.equal(got[k], theirs[k]) for k in heads)  # the teacher's, frozen
    assert not torch.equal(got["image_encoder.neck.0.weight"], init["image_encoder.neck.0.weight"])
    assert not (tmp_path / "run" / "projection.pt").exists()  # same shapes: no projection


def test_a_student_of_another_size_learns_through_a_projection_saved_beside_model_pt(synth_root, tmp_path,
                                                                                    sam_checkpoints):
    cfg = compose_train_config("distill_encoder", overrides(synth_root, tmp_path, sam_checkpoints["mobile_sam"],
                                                             **{"student.image_size": 128, "trainer.max_steps": 1,
                                                                "recipe.cache": "false", "data.val_root": "null"}))
    Trainer(cfg).fit()
    saved = torch.load(tmp_path / "run" / "projection.pt", weights_only=True)
    assert saved["state"]["embedding.conv.weight"].shape == (256, 256, 1, 1)
    assert saved["student"] == "mobile_sam" and saved["teacher"]["image_size"] == 64
    assert not (tmp_path / "cache").exists()  # recipe.cache=false: the teacher ran in the steps
    maskml.load_model("mobile_sam", checkpoint=tmp_path / "run" / "model.pt")


def test_distill_prompt_step_reaches_the_encoder_and_the_decoder_only_when_unfrozen(synth_root, tmp_path,
                                                                                   sam_checkpoints):
    frozen = recipe_for("distill_prompt", synth_root, tmp_path, sam_checkpoints["mobile_sam"]).build_model()
    assert {n for n, p in frozen.named_parameters() if p.requires_grad} == \
        {n for n, _ in frozen.named_parameters() if n.startswith("image_encoder.")}
    recipe = recipe_for("distill_prompt", synth_root, tmp_path, sam_checkpoints["mobile_sam"],
                        **{"recipe.train_decoder": "true", "recipe.max_prompts": 2})
    model = recipe.build_model().train()
    items = [recipe.train_dataset().sample(2, 6)]
    out = recipe.training_step(model, items)
    assert set(out) >= {"loss", "bce", "dice", "agreement", "agreement_first"}
    assert out["loss"].item() == pytest.approx(5 * out["bce"].item() + 5 * out["dice"].item(), rel=1e-5)
    out["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["image_encoder.patch_embed.seq.0.c.weight"].abs().sum() > 0
    assert grads["mask_decoder.transformer.layers.0.mlp.lin1.weight"].abs().sum() > 0
    assert all(g is None for n, g in grads.items() if n.startswith("prompt_encoder."))
    again = recipe.training_step(model, items)["loss"]
    assert again.item() == out["loss"].item()  # prompts and refinement clicks follow the item seed


def test_two_torchrun_processes_share_the_cache_and_train(synth_root, tmp_path, sam_checkpoints):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "maskml", "train", "distill_encoder", "trainer.device=cpu",
               *overrides(synth_root, tmp_path, sam_checkpoints["mobile_sam"], **{"trainer.batch_size": 1})]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=subprocess_env())
    assert result.returncode == 0, result.stderr[-3000:]
    folder = tmp_path / "cache"
    shards = [torch.load(folder / name, weights_only=True) for name in ("shard-00000.pt", "shard-00001.pt")]
    assert [s["written_by"] for s in shards] == [0, 1]  # each rank wrote its own shard
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left
    # the same features one process computes
    alone = recipe_for("distill_encoder", synth_root, tmp_path / "alone", sam_checkpoints["mobile_sam"])
    dataset = alone.train_dataset()
    for shard_index, shard in enumerate(shards):
        for k, name in enumerate(shard["names"]):
            features, alone_name, _ = dataset.cache.entry(shard_index * 3 + k)
            assert alone_name == name
            assert torch.allclose(features["embedding"].float(), shard["features"]["embedding"][k].float(),
                                  atol=1e-2)
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 3
    maskml.load_model("mobile_sam", checkpoint=tmp_path / "run" / "model.pt")
    assert os.path.getsize(tmp_path / "run" / "model.pt") > 0


def test_a_sam2_teacher_distils_into_mobile_sam_which_keeps_its_own_decoder(synth_root, tmp_path):
    recipe = recipe_for("distill_encoder", synth_root, tmp_path, **{"teacher.name": "sam2.1_hiera_t",
                                                                   "teacher.image_size": 128})
    with pytest.warns(UserWarning, match="cannot take the prompt encoder and mask decoder of the teacher"):
        model = recipe.build_model().train()
    items = [recipe.train_dataset().sample(0, 1)]
    # the cache holds what SAM 2's decoder reads; MobileSAM learns the level it has, the stride-16 embedding
    assert {k: tuple(v.shape) for k, v in items[0]["targets"].items()} == {
        "embedding": (256, 8, 8), "high_res_0": (32, 32, 32), "high_res_1": (64, 16, 16)}
    out = recipe.training_step(model, items)
    assert set(out) == {"loss", "mse_embedding"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.image_encoder.neck[0].weight.grad.abs().sum() > 0
