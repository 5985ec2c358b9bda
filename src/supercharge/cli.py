"""`supercharge predict | export`: the steps people do by hand, with one-line errors (exit 2)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from supercharge.errors import SuperchargeError
from supercharge.models import DEFAULT_MODEL


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help="any timm model name (default: %(default)s)"
    )
    p.add_argument(
        "--weights",
        default="pretrained",
        help="pretrained (offline only), random[:SEED], or a .pth/.safetensors state dict",
    )
    p.add_argument(
        "--artifact-dir",
        type=Path,
        default=None,
        help="artifact cache (default: $SUPERCHARGE_ARTIFACT_DIR or the per-user cache dir)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    from supercharge.pipeline import PREPROCESS
    from supercharge.runners import BACKENDS

    parser = argparse.ArgumentParser(prog="supercharge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", parents=[_common()], help="top-k classes for images")
    pr.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    pr.add_argument("--backend", choices=sorted(BACKENDS), default="torch-cpu")
    pr.add_argument(
        "--preprocess",
        choices=PREPROCESS,
        default="timm",
        help="timm (PIL reference), numpy, cupy (GPU), baked into the ONNX graph, or the "
        "blog post's flawed 'seed' graph (baked and seed need an ort-* backend)",
    )
    pr.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")

    sub.add_parser("export", parents=[_common()], help="build or reuse the ONNX artifacts")
    return parser


def cmd_predict(args: argparse.Namespace) -> int:
    from supercharge.cache import ArtifactCache
    from supercharge.images import load_image
    from supercharge.models import load_bundle
    from supercharge.pipeline import build_pipeline
    from supercharge.predict import top_k

    if args.top < 1:
        raise SuperchargeError(f"--top {args.top}: give a positive number of classes")
    images = [load_image(p) for p in args.images]  # fail on a bad image before loading a model
    bundle = load_bundle(args.model, args.weights)
    cache = ArtifactCache(args.artifact_dir)
    pipeline = build_pipeline(bundle, cache, args.backend, args.preprocess)
    ranked = top_k(pipeline(images), bundle.class_names, args.top)
    for path, preds in zip(args.images, ranked, strict=True):
        print(f"{path} ({bundle.name}, {pipeline.runner.backend}, {args.preprocess}):")
        for pred in preds:
            print(pred)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from supercharge.cache import ArtifactCache
    from supercharge.export import MODEL_FILE, export_onnx
    from supercharge.models import resolve_model

    start = time.perf_counter()
    cache = ArtifactCache(args.artifact_dir)
    ref = resolve_model(args.model, args.weights)
    artifact = export_onnx(ref, cache)
    state = "built" if artifact.built else "reused"
    print(f"onnx-model {state}: {artifact.file(MODEL_FILE)}")
    print(f"total {time.perf_counter() - start:.1f}s (weights: {ref.weights.source})")
    return 0


COMMANDS = {"predict": cmd_predict, "export": cmd_export}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except SuperchargeError as exc:
        print(f"supercharge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
