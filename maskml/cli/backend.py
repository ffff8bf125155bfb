"""`--backend` and `--providers`: the options that run a command's model on ONNX Runtime."""
from __future__ import annotations


# for commands with a tracker and a prompter (track, demo): one backend runs both
PIPELINE_BACKEND_HELP = ("torch (default), or onnxruntime for --model and --prompter alike: then --checkpoint and "
                         "--prompter-checkpoint are folders written by `maskml export` (the tracker's and the "
                         "prompter's)")


def add_backend_arguments(parser, backend_help: str = "torch (default), or onnxruntime with --checkpoint a folder "
                                                      "written by `maskml export`") -> None:
    parser.add_argument("--backend", choices=("torch", "onnxruntime"), default="torch", help=backend_help)
    parser.add_argument("--providers", metavar="NAME[,NAME]",
                        help="with --backend onnxruntime: execution providers in order of preference "
                             "(default CPUExecutionProvider; e.g. CUDAExecutionProvider,CPUExecutionProvider)")


def backend_options(args) -> dict:
    """load_model's keyword arguments for the backend chosen on the command line."""
    from maskml.errors import MaskmlError

    if args.providers and args.backend != "onnxruntime":
        raise MaskmlError("--providers applies to --backend onnxruntime only")
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    return {"backend": args.backend, "providers": providers}
