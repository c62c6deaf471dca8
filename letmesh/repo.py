"""``letmesh repo add MODEL_FILE``: serve your own model. Parses and prints; ``controller.model_import``
does the work, with the worker's runtime (``agents.model_runner``) for the forward pass."""

from __future__ import annotations

import argparse
import sys


def add_repo_arguments(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("repo", help="a model repository: add your own model to it")
    rsub = r.add_subparsers(dest="repo_command", required=True)
    ra = rsub.add_parser("add", help="copy a model file into a repository with its manifest, once it runs as declared",
                         description="Copies MODEL_FILE into REPOSITORY/NAME/, writes manifest.json with its sha256, "
                                     "and checks it first: loaded in its backend and run at batch sizes 1 and 2 "
                                     "on the declared inputs. A failed check changes nothing.")
    ra.add_argument("model_file",
                    help="TorchScript (.pt), ONNX (.onnx, for onnx or openvino) or torch.export (.pt2) file")
    ra.add_argument("--repository", required=True, help="the model repository folder (made if missing)")
    ra.add_argument("--name", required=True, help="the variant's name (its folder, and the model name clients use)")
    ra.add_argument("--family", required=True, help="the family it belongs to (variants of one task)")
    ra.add_argument("--accuracy", type=float, required=True, help="its measured accuracy, 0..1 (accuracy scaling "
                    "and the bandit's rewards use it)")
    ra.add_argument("--input", action="append", required=True, metavar="NAME:DATATYPE:SHAPE",
                    help="an input, e.g. image:FP32:-1,3,32,32 (-1 first: the batch); repeat for several")
    ra.add_argument("--output", action="append", default=[], metavar="NAME:DATATYPE:SHAPE",
                    help="an output to check for; none given: taken from the model's forward pass")
    ra.add_argument("--backend", default="", help="torchscript, onnx, torch_export or openvino (an ONNX file "
                    "compiled by OpenVINO; default: from the suffix)")
    ra.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16: OpenVINO may compute in bfloat16 where the CPU has it (AMX, AVX-512 BF16); "
                         "measure --accuracy that way (default fp32)")
    ra.add_argument("--max-batch", type=int, default=8, help="largest batch a worker forms (default 8)")
    ra.add_argument("--slo-ms", type=float, default=100.0, help="default latency objective in ms (default 100)")
    ra.add_argument("--model-version", default="1", help="the model version it reports (default 1)")
    ra.add_argument("--accuracy-metric", default="as declared by the user", help="how --accuracy was measured")
    ra.add_argument("--replace", action="store_true", help="replace a variant of that name already there")
    ra.set_defaults(func=cmd_repo_add)


def cmd_repo_add(args: argparse.Namespace) -> int:
    from agents.model_runner import trial_run
    from controller.error import RepositoryError
    from controller.model_import import NewVariant, add_model, parse_tensor

    try:
        new = NewVariant(name=args.name, family=args.family, accuracy=args.accuracy,
                         inputs=tuple(parse_tensor(t) for t in args.input),
                         outputs=tuple(parse_tensor(t) for t in args.output), backend=args.backend,
                         max_batch=args.max_batch, default_slo_ms=args.slo_ms, version=args.model_version,
                         accuracy_metric=args.accuracy_metric, precision=args.precision)
        variant = add_model(args.repository, args.model_file, new, trial=trial_run, replace=args.replace)
    except RepositoryError as exc:
        print(f"letmesh repo add: {exc}", file=sys.stderr)
        return 1

    def shapes(specs) -> str:
        return ", ".join(f"{s.name} {s.datatype} {list(s.shape)}" for s in specs)

    served = variant.backend + (f", {variant.precision}" if variant.precision != "fp32" else "")
    print(f"added {variant.name} (family {variant.family}, {served}) to {args.repository}\n"
          f"  artifact  {variant.artifact}  sha256 {variant.sha256}\n"
          f"  inputs    {shapes(variant.inputs)}\n  outputs   {shapes(variant.outputs)}\n"
          f"  a controller serves it after its next start: letmesh up --repository {args.repository}")
    return 0
