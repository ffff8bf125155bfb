"""The training engine in one process: parameter groups, schedules, accumulation, freezing, activation
checkpointing, run folders, and the `maskml train` command's messages (distributed runs and resume have their
own files)."""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import train_toy  # importing it registers the toy recipe
from conftest import sigint_as_in_a_terminal
from maskml.cli import main as cli_main
from maskml.configs import compose_train_config
from maskml.errors import MaskmlError
from maskml.models.sam.sam import build_sam
from maskml.models.sam2.sam2 import build_sam2
from maskml.train.checkpoint import load_checkpoint
from maskml.train.engine import StepBatches, Trainer, enable_activation_checkpointing, item_seed
from maskml.train.optim import encoder_blocks, encoder_layer_ids, lr_factor, param_groups
from maskml.train.recipes import Recipe, get_recipe

CONFIGS = train_toy.CONFIGS
REPO = Path(__file__).parents[1]


def toy_config(out_dir: Path, *overrides: str):
    return compose_train_config("toy", [f"trainer.out_dir={out_dir}", train_toy.device_override(), *overrides],
                                (CONFIGS,))


def train(out_dir: Path, *overrides: str) -> dict[str, torch.Tensor]:
    Trainer(toy_config(out_dir, *overrides)).fit()
    return torch.load(out_dir / "model.pt")


def max_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_param_groups_layer_decay_encoder_rate_and_no_decay_on_norms_and_biases(tmp_path):
    cfg = toy_config(tmp_path, "optim.lr=1.0", "optim.encoder_lr=0.5", "optim.layer_decay=0.5",
                     "optim.weight_decay=0.1")
    model = get_recipe("toy")(cfg).build_model()
    rate_of, decay_of = {}, {}
    for group in param_groups(model, cfg.optim):
        for p in group["params"]:
            rate_of[id(p)], decay_of[id(p)] = group["lr"], group["weight_decay"]
    named = dict(model.named_parameters())
    # 3 blocks: embed depth 0, block i depth i, neck the top (4): rate 0.5 * 0.5 ** (4 - depth)
    assert rate_of[id(named["image_encoder.embed.weight"])] == 0.5 * 0.5**4
    for i in range(3):
        assert rate_of[id(named[f"image_encoder.blocks.{i}.linear.weight"])] == 0.5 * 0.5 ** (3 - i)
    assert rate_of[id(named["image_encoder.neck.weight"])] == 0.5
    assert rate_of[id(named["head.weight"])] == 1.0
    for name, p in named.items():
        assert decay_of[id(p)] == (0.0 if name.endswith("bias") or ".norm." in name else 0.1), name


@pytest.mark.parametrize("build, blocks", [
    (lambda: build_sam(encoder="tiny_vit", image_size=256), 12),  # MobileSAM: MBConv and TinyViT blocks
    (lambda: build_sam(encoder="vit", depth=12, image_size=256), 12),  # SAM ViT-B
    (lambda: build_sam2("base_plus", image_size=256), 24),  # Hiera-B+
])
def test_layer_ids_of_the_real_image_encoders(build, blocks):
    with torch.device("meta"):
        encoder = build().image_encoder
    ids, top = encoder_layer_ids(encoder)
    assert len(encoder_blocks(encoder)) == blocks and top == blocks + 1
    names = list(ids)
    assert ids[names[0]] == 0 and ids[names[-1]] == top  # patch embedding / positions first, neck last
    assert [ids[n] for n in names] == sorted(ids[n] for n in names)  # depth never decreases in forward order


def test_schedules():
    cosine = OmegaConf.create({"name": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1})
    assert lr_factor(0, 110, cosine) == pytest.approx(0.1)
    assert lr_factor(9, 110, cosine) == pytest.approx(1.0)
    assert lr_factor(60, 110, cosine) == pytest.approx(0.55)
    assert lr_factor(110, 110, cosine) == pytest.approx(0.1)
    step = OmegaConf.create({"name": "step", "warmup_steps": 0, "milestones": [0.5, 80], "gamma": 0.1})
    assert [lr_factor(s, 100, step) for s in (49, 50, 79, 80)] == pytest.approx([1, 0.1, 0.1, 0.01])


def test_data_order_covers_each_epoch_once_and_seeds_items_by_epoch_and_index():
    batches = list(StepBatches(10, batch_size=2, grad_accum=2, seed=3, start=0, stop=5))
    assert len(batches) == 10 and all(len(b) == 2 for b in batches)
    first_epoch = [i for b in batches[:4] for i, _, _ in b]  # 2 steps of 4 items; the tail of 2 is dropped
    assert len(set(first_epoch)) == 8
    assert all(seed == item_seed(3, 0, i) for b in batches[:4] for i, seed, _ in b)
    assert all(seed == item_seed(3, 2, i) for b in batches[8:] for i, seed, _ in b)
    # each item carries its optimizer step (grad_accum micro-batches per step)
    assert [{step for _, _, step in b} for b in batches] == [{m // 2} for m in range(10)]
    # the stream from step 3 is the tail of the stream from step 0: the data position is the step
    assert list(StepBatches(10, 2, 2, 3, start=3, stop=5)) == batches[6:]


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    big = train(tmp_path / "big", "trainer.max_steps=4", "trainer.batch_size=4")
    accumulated = train(tmp_path / "acc", "trainer.max_steps=4", "trainer.batch_size=2", "trainer.grad_accum=2")
    # the same sums in another order: float32 rounding only
    assert max_difference(big, accumulated) < 1e-6


def test_frozen_image_encoder_keeps_its_weights(tmp_path):
    cfg = toy_config(tmp_path / "a", "trainer.max_steps=3")
    torch.manual_seed(cfg.seed)
    initial = get_recipe("toy")(cfg).build_model().state_dict()
    trained = train(tmp_path / "b", "trainer.max_steps=3", "trainer.freeze=[image_encoder]")
    for name, value in trained.items():
        assert torch.equal(value, initial[name]) == name.startswith("image_encoder."), name
    with pytest.raises(MaskmlError, match="trainer.freeze names 'encoder'.*image_encoder"):
        train(tmp_path / "c", "trainer.freeze=[encoder]")


def test_activation_checkpointing_changes_nothing_but_memory(tmp_path):
    plain = train(tmp_path / "plain", "trainer.max_steps=3", "model.depth=2")
    checkpointed = train(tmp_path / "ckpt", "trainer.max_steps=3", "model.depth=2",
                         "trainer.activation_checkpointing=true")
    assert max_difference(plain, checkpointed) == 0


def test_activation_checkpointing_of_mobile_sam_encoder_same_gradients_and_batch_norm_statistics():
    torch.manual_seed(0)
    reference = build_sam(encoder="tiny_vit", image_size=64).image_encoder.train()
    checkpointed = build_sam(encoder="tiny_vit", image_size=64).image_encoder.train()
    checkpointed.load_state_dict(reference.state_dict())
    assert enable_activation_checkpointing(checkpointed) == 12
    image = torch.randn(2, 3, 64, 64)
    for encoder in (reference, checkpointed):
        encoder(image).square().mean().backward()
    for (name, a), b in zip(reference.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-7, msg=name)
    # BatchNorm statistics were updated once, not again by the recomputation
    for (name, a), b in zip(reference.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)


def test_run_folder_outputs_and_best_model(tmp_path):
    out = tmp_path / "run"
    train(out, "trainer.max_steps=8", "trainer.val_every=2")
    assert {p.name for p in out.iterdir()} == {"config.yaml", "log.csv", "val.csv", "checkpoints", "model.pt"}
    assert OmegaConf.load(out / "config.yaml").trainer.max_steps == 8
    assert [line.split(",")[0] for line in (out / "log.csv").read_text().splitlines()] == ["step", *map(str, range(1, 9))]
    val = [line.split(",") for line in (out / "val.csv").read_text().splitlines()]
    assert val[0] == ["step", "mse", "score"] and [row[0] for row in val[1:]] == ["2", "4", "6", "8"]
    best_step = max(val[1:], key=lambda row: float(row[2]))[0]
    best = torch.load(out / "checkpoints" / "best.pt")
    assert best["step"] == int(best_step)
    exported = torch.load(out / "model.pt")
    assert max_difference(exported, best["model"]) == 0


def test_a_folder_of_other_files_or_another_run_is_never_overwritten(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MaskmlError, match="is not empty .*notes.txt"):
        train(foreign, "trainer.max_steps=2")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]

    run = tmp_path / "run"
    train(run, "trainer.max_steps=2")
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(MaskmlError, match=r"another config \(optim.lr: 0.0001 -> 0.001"):
        train(run, "trainer.max_steps=4", "optim.lr=1e-3")
    with pytest.raises(MaskmlError, match="already holds a run"):
        train(run, "trainer.max_steps=4", "trainer.resume=false")
    with pytest.raises(MaskmlError, match="no checkpoints/last.pt"):
        train(tmp_path / "new", "trainer.resume=true")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


def test_model_without_a_recipe_is_refused(tmp_path):
    class SamOnly(Recipe):
        name = "sam_only"
        families = ("sam",)

    cfg = OmegaConf.create({"model": {"name": "cutie_base"}})
    with pytest.raises(MaskmlError, match="recipe sam_only does not train cutie_base .*: train it with `maskml train cutie model=cutie_base`"):
        SamOnly(cfg)
    SamOnly(OmegaConf.create({"model": {"name": "mobile_sam"}}))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tests" / "train_toy.py"), *args], capture_output=True,
                          text=True, cwd=REPO, env=train_toy.subprocess_env())


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    config_dir = f"--config-dir={CONFIGS}"
    cases = [
        (["train", "tyo"], "unknown recipe 'tyo'. Did you mean toy\\? Known recipes:"),
        (["train", "toy", config_dir, "trainer.max_step=3"],
         "Could not override 'trainer.max_step'.* Did you mean trainer.max_steps\\? Valid keys in trainer: out_dir"),
        (["train", "toy", config_dir, "schedule=linear"],
         "Could not find 'schedule/linear' Available options in 'schedule': constant, cosine, step"),
        (["train", "toy", config_dir, "model=sam_vit_x"], "Could not find 'model/sam_vit_x'"),
        (["train", "toy", config_dir, "optim.lr=abc", "trainer.max_steps=1.5"],
         r"optim.lr=abc \(expected a number\); trainer.max_steps=1.5 \(expected an integer\)"),
        (["train", "toy", config_dir, "trainer.batch_size=0", f"trainer.out_dir={tmp_path / 'never'}"],
         "trainer.batch_size=0: it must be at least 1"),
        (["train", "sam_finetune", "model=sam_vit_x"],
         "Could not find 'model/sam_vit_x' Available options in 'model': cutie_base, cutie_small, mobile_sam, "),
        (["train", "sam_finetune", "model.name=cutie_base", f"trainer.out_dir={tmp_path / 'never'}"],
         "recipe sam_finetune does not train cutie_base .*: train it with `maskml train cutie model=cutie_base`; "
         "sam_finetune trains "),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("maskml train: error: "), err
        assert re.search(message, err), err
    assert not (tmp_path / "never").exists()


def test_cli_help_lists_recipes_and_groups_and_runs_in_a_subprocess(tmp_path):
    result = run_cli("train", "--help")
    assert result.returncode == 0
    assert "recipes: " in result.stdout and "toy" in result.stdout
    assert "schedule  constant, cosine, step" in result.stdout and "optim     adamw" in result.stdout
    result = run_cli("train", "toy", "--config-dir", str(CONFIGS), "trainer.max_steps=7", "--print-config")
    assert result.returncode == 0 and OmegaConf.create(result.stdout).trainer.max_steps == 7
    result = run_cli("train", "toy", "--config-dir", str(CONFIGS), f"trainer.out_dir={tmp_path / 'r'}",
                     "trainer.max_steps=2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"trained weights: {tmp_path / 'r' / 'model.pt'}")


def test_out_of_memory_names_the_options_and_keeps_checkpoints(tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(out, "trainer.max_steps=2")
    before = (out / "checkpoints" / "last.pt").read_bytes()
    # No GPU here: the step raises the exception CUDA raises when its memory runs out
    def out_of_memory(self, model, batch):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_toy.ToyRecipe, "training_step", out_of_memory)
    with pytest.raises(MaskmlError, match="out of GPU memory.*trainer.batch_size.*data.image_size.*"
                                          "activation_checkpointing.*trainer.freeze.*are kept"):
        train(out, "trainer.max_steps=4")
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_ctrl_c_stops_with_one_line_and_the_run_continues(tmp_path):
    out = tmp_path / "run"
    command = train_toy.toy_command(out, ["trainer.max_steps=40", "recipe.step_seconds=0.1", "trainer.ckpt_every=1"])
    process = subprocess.Popen(command, env=train_toy.subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, preexec_fn=sigint_as_in_a_terminal)
    while not (out / "checkpoints" / "last.pt").is_file():
        assert process.poll() is None
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert err == "maskml train: interrupted; run the same command again to continue from the last checkpoint\n"
    assert train_toy.read_log(out / "log.csv")  # what it logged is kept


def test_tensorboard_log_or_a_message_saying_what_to_install(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(MaskmlError, match="needs the tensorboard package: pip install tensorboard"):
            train(tmp_path / "run", "trainer.max_steps=2", "trainer.tensorboard=true")
        assert not (tmp_path / "run").exists()  # refused before anything was written
    else:
        train(tmp_path / "run", "trainer.max_steps=2", "trainer.tensorboard=true")
        assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_a_diverging_run_stops_with_a_message_and_keeps_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    # the first step's update makes the weights ~1e30: the second step's loss overflows
    with pytest.raises(MaskmlError, match=r"the loss became (inf|nan) by step 2; lower optim.lr"):
        train(out, "trainer.max_steps=6", "optim.lr=1e30", "trainer.clip_grad=null", "trainer.log_every=2",
              "trainer.ckpt_every=1")
    assert load_checkpoint(out / "checkpoints" / "last.pt")["step"] == 1
