"""`maskml eval davis`: J&F of predicted masks against DAVIS-layout ground truth.
`maskml eval interactive`: a promptable model's mIoU and NoC with simulated clicks (maskml.eval.interactive)."""
from __future__ import annotations

import time


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate predicted masks (DAVIS 2017 J&F) or a model with simulated clicks",
                              description="davis: evaluate predicted masks against ground truth, both in the DAVIS "
                                          "Annotations layout DIR/<sequence>/<frame>.png (indexed PNGs); computes "
                                          "what the davis2017-evaluation tool computes for the semi-supervised task. "
                                          "interactive: the SAM paper's click protocol (mIoU after 1, 3, 5 clicks, "
                                          "NoC@85/90) of --model on --data, configured with Hydra overrides "
                                          "(e.g. max_clicks=5 model.checkpoint=runs/a/model.pt); under torchrun the "
                                          "images are shared out among the processes.")
    p.add_argument("dataset", choices=["davis", "interactive"], help="benchmark protocol")
    p.add_argument("--pred", help="davis: folder of predicted masks")
    p.add_argument("--gt", help="davis: folder of ground-truth masks")
    p.add_argument("--out", help="davis: folder for global_results.csv and per-sequence_results.csv; "
                                 "interactive: a CSV of per-object IoUs")
    p.add_argument("--model", help="interactive: model config (mobile_sam, sam_vit_b, sam2.1_hiera_t, ...)")
    p.add_argument("--data", help="interactive: dataset folder (SA-1B, COCO, image+mask folders or DAVIS layout)")
    p.add_argument("--checkpoint", help="interactive: weights in the official layout (default: the released ones)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="interactive: config overrides")
    p.set_defaults(func=run)


def run(args) -> None:
    from maskml.errors import MaskmlError

    if args.dataset == "interactive":
        return run_interactive(args)
    if not args.pred or not args.gt:
        raise MaskmlError("eval davis needs --pred (predicted masks) and --gt (ground truth) folders")
    if args.overrides:
        raise MaskmlError(f"eval davis takes no overrides, got {' '.join(args.overrides)}")
    from maskml.eval.davis import evaluate_davis, format_table, write_csv
    from maskml.io.outputs import check_outputs

    check_outputs({"--pred": args.pred, "--gt": args.gt}, folders={"--out": args.out})
    start = time.perf_counter()
    results = evaluate_davis(args.pred, args.gt)
    print(format_table(results))
    print(f"\n{len(results.sequences)} sequences, {len(results.objects)} objects, "
          f"{time.perf_counter() - start:.1f} s")
    if args.out:
        print(f"-> {', '.join(str(path) for path in write_csv(results, args.out))}")


def run_interactive(args) -> None:
    from maskml.eval.interactive import run_from_config
    from maskml.configs import compose_config

    overrides = list(args.overrides)
    if args.model:
        overrides.insert(0, f"model={args.model}")
    if args.data:
        overrides.append(f"data.root={args.data}")
    if args.checkpoint:
        overrides.append(f"model.checkpoint={args.checkpoint}")
    if args.out:
        overrides.append(f"out={args.out}")
    run_from_config(compose_config("eval_interactive", overrides))
