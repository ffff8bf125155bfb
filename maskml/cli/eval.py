"""`maskml eval davis`: J&F of predicted masks against DAVIS-layout ground truth."""
from __future__ import annotations

import time


def register(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate predicted masks (DAVIS 2017 J&F)",
                              description="Evaluate predicted masks against ground truth, both in the DAVIS "
                                          "Annotations layout DIR/<sequence>/<frame>.png (indexed PNGs). Computes "
                                          "what the davis2017-evaluation tool computes for the semi-supervised task.")
    p.add_argument("dataset", choices=["davis"], help="benchmark protocol")
    p.add_argument("--pred", required=True, help="folder of predicted masks")
    p.add_argument("--gt", required=True, help="folder of ground-truth masks")
    p.add_argument("--out", help="folder for global_results.csv and per-sequence_results.csv")
    p.set_defaults(func=run)


def run(args) -> None:
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
