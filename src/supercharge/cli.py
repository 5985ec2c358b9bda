"""`supercharge predict | export | gate | cache`: the steps people do by hand; bad input exits 2."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from supercharge.errors import SuperchargeError
from supercharge.floors import SpeedupFloor, load_floors
from supercharge.models import DEFAULT_MODEL

if TYPE_CHECKING:
    from supercharge.cache_usage import Entry


class UsageError(SuperchargeError):
    """A command line argparse refused; `prog` is the (sub)command whose --help explains it."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """Raises UsageError instead of printing a usage block, so a usage mistake reads like any
    other bad input: one line, exit 2 (argparse hands this class on to the subparsers)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


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
        type=_artifact_dir,
        default=None,
        help="artifact cache (default: $SUPERCHARGE_ARTIFACT_DIR or the per-user cache dir)",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    from supercharge.cases import PRECISIONS
    from supercharge.pipeline import PREPROCESS
    from supercharge.runners import BACKENDS

    parser = _Parser(prog="supercharge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    pr = sub.add_parser("predict", parents=[_common()], help="top-k classes for images")
    pr.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    pr.add_argument("--backend", choices=sorted(BACKENDS), default="torch-cpu")
    pr.add_argument(
        "--preprocess",
        choices=PREPROCESS,
        default="timm",
        help="timm (PIL reference), numpy, cupy (GPU), baked into the ONNX graph (any size), "
        "separable (baked, one graph per image size), or the blog post's flawed 'seed' graph "
        "(the baked ones need an ort-* backend)",
    )
    pr.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="fp32 (default; TF32 off), fp16 and bf16 (torch autocast; TensorRT fp16), int8 "
        "(ort-cpu: static QDQ calibrated on fixtures/calibration)",
    )
    pr.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")

    ex = sub.add_parser(
        "export",
        parents=[_common()],
        help="build or reuse the ONNX artifacts",
        description="Build or reuse the fp32 ONNX export, the model with baked and seed "
        "preprocessing merged in front, and the static int8 model (calibrated on "
        "fixtures/calibration) with and without baked preprocessing, and with --image-size the "
        "separable graphs for those image sizes; print each path and built|reused.",
    )
    ex.add_argument(
        "--skip",
        choices=("int8",),
        action="append",
        default=[],
        help="leave out the int8 artifacts (calibration takes a few seconds per model)",
    )
    ex.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of photos to calibrate int8 on (default: fixtures/calibration, held out "
        "from the photos the accuracy gates judge); pytest takes the same --calibration",
    )
    ex.add_argument(
        "--image-size",
        action="append",
        default=[],
        metavar="HxW",
        help="also build the separable graphs (preprocessing for this one image size, fp32 and "
        "int8), e.g. 480x640 for a VGA camera; repeatable",
    )

    ga = sub.add_parser(
        "gate",
        allow_abbrev=False,  # `--floo RUN` would slip past _bare_floors
        help="compare two saved benchmark runs, or hold one to speedup floors; exit 1 on a "
        "regression",
        description="Compare CURRENT with BASELINE (pytest-benchmark JSON files, or folders such "
        "as .benchmarks, whose newest JSON is used) case by case, and/or hold CURRENT to "
        "--min-speedup floors (then BASELINE may be left out). Exit 0: all good; 1: a case "
        "regressed, fell below its floor or is missing; 2: bad input.",
    )
    ga.add_argument(
        "runs",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="[BASELINE] CURRENT: one or two pytest-benchmark JSON files or folders",
    )
    ga.add_argument(
        "--min-speedup",
        action="append",
        default=[],
        metavar="CASE_PATTERN=RATIO",
        help="end-to-end speedup over PyTorch fp32+timm that every matching case of CURRENT "
        "must reach, e.g. 'ort-cpu-baked-fp32-bs1=4' (glob over case ids, any model; "
        "repeatable)",
    )
    ga.add_argument(
        "--floors",
        nargs="?",
        const="",
        default=None,
        metavar="PYPROJECT.toml",
        help="also hold CURRENT to [tool.supercharge.speedup_floors] of PYPROJECT.toml (default: "
        "the nearest pyproject.toml); a floor no case matches is listed as not-run, not failed "
        "(it may concern another model)",
    )
    ga.add_argument(
        "--max-slowdown",
        type=float,
        default=10.0,
        metavar="PERCENT",
        help="largest tolerated slowdown per case, in percent (default %(default)s)",
    )
    ga.add_argument(
        "--stat",
        choices=("speedup", "median"),
        default="speedup",
        help="speedup: each case's ratio over its own run's PyTorch fp32 baseline (robust to "
        "runner drift, default); median: absolute medians, with a Mann-Whitney check when "
        "rounds were saved (--benchmark-save-data)",
    )
    ga.add_argument(
        "--allow-missing", action="store_true", help="do not fail on cases CURRENT did not run"
    )
    ca = sub.add_parser(
        "cache",
        help="list the artifact cache, or prune what has not been used lately",
        description="List every folder of the artifact cache (kind, size, when last built or "
        "used, name) and the total. With --prune DAYS, remove those not used for DAYS days (0: "
        "all but what another process is building right now; each reuse marks an artifact "
        "used, and a removed one is rebuilt when next needed), and the temporary folders of "
        "interrupted builds whose process is gone. Old graph revisions and version bumps leave "
        "artifacts no run asks for again; a cache kept by CI runners grows until pruned. Exit "
        "0; 1 when a folder could not be removed (named on stderr); 2 on bad input.",
    )
    ca.add_argument(
        "--artifact-dir",
        type=_artifact_dir,
        default=None,
        help="artifact cache (default: $SUPERCHARGE_ARTIFACT_DIR or the per-user cache dir)",
    )
    ca.add_argument(
        "--prune",
        type=_days,
        default=None,
        metavar="DAYS",
        help="remove what was last used more than DAYS days ago (fractions allowed)",
    )
    ca.add_argument(
        "--dry-run", action="store_true", help="with --prune: list what would go, remove nothing"
    )
    return parser


def _days(text: str) -> float:
    """--prune DAYS: a finite number >= 0."""
    try:
        days = float(text)
    except ValueError:
        days = float("nan")
    if not (0 <= days < float("inf")):  # also refuses nan
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of days >= 0: e.g. 30, or 0 to remove everything"
        )
    return days + 0.0  # -0 -> 0


def _artifact_dir(text: str) -> Path:
    """--artifact-dir: a folder; '' would silently be the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(
            "'' is empty: pass a folder, or leave the option out for "
            "SUPERCHARGE_ARTIFACT_DIR or the per-user cache"
        )
    return Path(text)


def cmd_predict(args: argparse.Namespace) -> int:
    from supercharge.cache import ArtifactCache
    from supercharge.images import load_image
    from supercharge.models import load_bundle
    from supercharge.pipeline import BAKED, build_pipeline
    from supercharge.predict import top_k
    from supercharge.runners.base import check_combination, largest_batch_options

    if args.top < 1:
        raise SuperchargeError(f"--top {args.top}: give a positive number of classes")
    # a backend that cannot run this precision or graph: said before any model loads
    check_combination(
        args.backend, args.precision, args.preprocess if args.preprocess in BAKED else "model"
    )
    images = [load_image(p) for p in args.images]  # fail on a bad image before loading a model
    bundle = load_bundle(args.model, args.weights)
    cache = ArtifactCache(args.artifact_dir)
    options = largest_batch_options(args.backend, len(images))  # all images in one batch
    pipeline = build_pipeline(
        bundle, cache, args.backend, args.preprocess, precision=args.precision, **options
    )
    ranked = top_k(pipeline(images), bundle.class_names, args.top)
    for path, preds in zip(args.images, ranked, strict=True):
        print(
            f"{path} ({bundle.name}, {pipeline.runner.backend}, {args.preprocess}, "
            f"{args.precision}):"
        )
        for pred in preds:
            print(pred)
    return 0


def parse_image_size(text: str) -> tuple[int, int]:
    """ "480x640" -> (480, 640): height x width, as the separable graph is built for."""
    h, sep, w = text.lower().partition("x")
    size = None
    # ASCII digits only: str.isdigit() also passes "²", which int() refuses (as it does strings
    # over 4300 digits)
    if sep and all(part.isascii() and part.isdecimal() for part in (h, w)):
        try:
            size = int(h), int(w)
        except ValueError:
            size = None
    if size is None or min(size) <= 0:
        raise SuperchargeError(f"--image-size {text!r}: give HEIGHTxWIDTH in pixels, e.g. 480x640")
    return size


def cmd_export(args: argparse.Namespace) -> int:
    """Build or reuse every ONNX artifact the CPU grid runs: the export, the preprocessing-merged
    graphs, the int8 model and its merged graph. A cache hit never loads the model."""
    from supercharge.cache import ArtifactCache
    from supercharge.export import MODEL_FILE, export_onnx
    from supercharge.models import resolve_model
    from supercharge.preprocess.merge import merged_model
    from supercharge.runners.quantize import quantized_model

    # before any work; a size given twice is built and listed once
    sizes = list(dict.fromkeys(parse_image_size(text) for text in args.image_size))
    if args.calibration is not None and "int8" not in args.skip:
        from supercharge.images import readable_image_files

        # a missing or empty folder, or a photo that does not decode: before any export
        readable_image_files(args.calibration, "calibration")
    start = time.perf_counter()
    cache = ArtifactCache(args.artifact_dir)
    ref = resolve_model(args.model, args.weights)
    fp32 = export_onnx(ref, cache)
    built = [("onnx-model", fp32)]
    built += [(f"merged-{v}", merged_model(ref, cache, v, onnx_artifact=fp32)) for v in EXPORTED]
    built += [
        (f"merged-separable-{h}x{w}", merged_model(ref, cache, "separable", image_size=(h, w)))
        for h, w in sizes
    ]
    if "int8" not in args.skip:
        int8 = quantized_model(ref, cache, calibration=args.calibration)
        built += [
            ("int8", int8),
            ("int8-merged-baked", merged_model(ref, cache, onnx_artifact=int8)),
        ]
        built += [
            (
                f"int8-merged-separable-{h}x{w}",
                merged_model(ref, cache, "separable", image_size=(h, w), onnx_artifact=int8),
            )
            for h, w in sizes
        ]
    for label, artifact in built:
        state = "built" if artifact.built else "reused"
        print(f"{label} {state}: {artifact.file(MODEL_FILE)}")
    print(f"total {time.perf_counter() - start:.1f}s (weights: {ref.weights.source})")
    return 0


def _file_floors(path: str) -> list[SpeedupFloor]:
    """--floors: the speedup floors of `path` ("": the nearest pyproject.toml); none: an error."""
    from supercharge.config import find_pyproject

    pyproject = path or find_pyproject()
    if pyproject is None:
        raise SuperchargeError("--floors: no pyproject.toml here or above: give its path")
    floors = load_floors(pyproject)
    if not floors:
        raise SuperchargeError(
            f"--floors: {pyproject} has no [tool.supercharge.speedup_floors]: add one, or use "
            "--min-speedup PATTERN=RATIO"
        )
    return floors


def cmd_gate(args: argparse.Namespace) -> int:
    from supercharge import gate

    targets = [SpeedupFloor.parse(text) for text in args.min_speedup]
    from_file = [] if args.floors is None else _file_floors(args.floors)
    if len(args.runs) > 2:
        names = ", ".join(str(run) for run in args.runs)
        raise SuperchargeError(
            f"gate got {len(args.runs)} runs ({names}): give one BASELINE and one CURRENT (a "
            "glob over saved runs matches every one saved: name the files, or pass a folder "
            "for its newest)"
        )
    if len(args.runs) == 1 and not (targets or from_file):
        raise SuperchargeError(
            f"gate got 1 run ({args.runs[0]}): give BASELINE and CURRENT, or CURRENT alone "
            "with --min-speedup or --floors"
        )
    current = gate.load_run(args.runs[-1])
    baseline = gate.load_run(args.runs[0]) if len(args.runs) == 2 else None
    same = baseline is not None and Path(baseline["_path"]).samefile(current["_path"])
    if same:
        raise SuperchargeError(
            f"BASELINE and CURRENT are the same file ({current['_path']}): a run compared "
            "with itself always passes; save the change's run under another name "
            "(--benchmark-save=NAME) and give both"
        )
    floors = gate.floor_verdicts(current, targets) + gate.floor_verdicts(
        current, from_file, required=False
    )
    held = sum(v.status in ("ok", "below-target", "unmatched") for v in floors)
    if len(args.runs) == 1 and not held:  # only file floors, none of which any case matched
        raise SuperchargeError(
            f"{current['_path']}: no end-to-end case with a speedup matches any floor of "
            f"{args.floors or 'the nearest pyproject.toml'} ({len(current['benchmarks'])} "
            "benchmarks): nothing was judged; gate a run of the models the floors name, or use "
            "--min-speedup"
        )
    failing = {"regressed", "below-target", "unmatched"} | (
        set() if args.allow_missing else {"missing"}
    )
    verdicts: list[gate.Verdict] = []
    compared = 0
    if baseline is not None:
        gate.check_same_image(baseline, current)
        verdicts = gate.compare(baseline, current, args.max_slowdown / 100.0, args.stat)
        gate.check_comparable(verdicts, baseline, current)  # before anything is printed
        print(f"baseline {baseline['_path']}")
        print(f"current  {current['_path']}")
        for line in gate.machine_differences(baseline, current):
            print(f"machine differs: {line}")
        compared = sum(v.status in ("ok", "regressed") for v in verdicts)
    else:
        print(f"current  {current['_path']}")
    for note in gate.pace_notes(current, baseline):
        print(note)
    for verdict in verdicts + floors:
        print(verdict.line())
    bad = [v for v in verdicts + floors if v.status in failing]
    summary = []
    if baseline is not None:
        summary.append(f"{compared} compared (max slowdown {args.max_slowdown:g}%)")
        missing = sum(v.status == "missing" for v in verdicts)
        if missing:
            allowed = " (allowed)" if args.allow_missing else ""
            summary.append(f"{missing} missing from the current run{allowed}")
    if targets or from_file:
        summary.append(f"{held} held to speedup floors")
    print(f"{len(bad)} failing: {', '.join(summary)}")
    return 1 if bad else 0


def _size(n: int | None) -> str:
    """Bytes as people read them (decimal units); '?' when unknown."""
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 999.95 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def _when(epoch: float) -> str:
    """Local date and minute."""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(epoch))


def _count(n: int, noun: str) -> str:
    """'1 folder', '2 folders'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _total(entries: Sequence[Entry]) -> str:
    """'3 folders, 5.0 MB' (a lower bound, marked '+', when some folder is unreadable)."""
    known = sum(e.size for e in entries if e.size is not None)
    more = "+" if any(e.size is None for e in entries) else ""
    return f"{_count(len(entries), 'folder')}, {_size(known)}{more}"


def cmd_cache(args: argparse.Namespace) -> int:
    """List the cache's folders, or prune those unused for --prune DAYS (exit 1 if one could
    not be removed)."""
    from supercharge import cache_usage
    from supercharge.cache import ArtifactCache

    if args.dry_run and args.prune is None:
        raise SuperchargeError(
            "--dry-run lists what --prune DAYS would remove: add --prune DAYS (e.g. 30)"
        )
    cache = ArtifactCache(args.artifact_dir, create=False)
    if args.prune is None:
        entries = cache_usage.entries(cache.root)
        for e in sorted(entries, key=lambda e: (e.kind, -e.last_used)):
            state = "" if e.state == "artifact" else f"  ({e.state})"
            print(f"{e.kind:<12} {_size(e.size):>9}  {_when(e.last_used)}  {e.name}{state}")
        print(f"{_total(entries)} in {cache.root}")
        return 0
    pruned = cache_usage.prune(cache, args.prune * 86400.0, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for e in pruned.removed:
        print(f"{verb} {e.label} ({_size(e.size)}, last used {_when(e.last_used)})")
    for e in pruned.in_use:
        print(f"kept {e.label}: another process is building it")
    cannot = "would not be able to remove" if args.dry_run else "could not remove"
    for e, reason in pruned.failed:
        print(f"{cannot} {e.label}: {reason}", file=sys.stderr)
    gone = {e.path for e in pruned.removed}
    left = [e for e in cache_usage.entries(cache.root) if e.path not in gone]
    whole = args.prune == int(args.prune) and args.prune < 1e6  # else 1e+300 days, not 301 digits
    days = _count(int(args.prune), "day") if whole else f"{args.prune:g} days"
    print(
        f"{verb} {_total(pruned.removed)} (unused for {days}); {_total(left)} "
        f"{'would be ' if args.dry_run else ''}left in {cache.root}"
    )
    return 1 if pruned.failed else 0


EXPORTED = ("baked", "seed")  # the merged graphs the CPU grid runs

COMMANDS = {"predict": cmd_predict, "export": cmd_export, "gate": cmd_gate, "cache": cmd_cache}


class _ReaderSafeStdout:
    """stdout that goes quiet instead of raising once its reader has gone (`| head`): the
    command carries on, so its exit status still says what it found (a gate that passed does
    not turn into exit 1, a regression, because nobody read its last lines)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._reader_gone()

    def _reader_gone(self) -> None:
        # What is still buffered goes to /dev/null, so the interpreter's flush at exit is quiet
        # too (the Python documentation's recipe for SIGPIPE, signal module notes).
        self._gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())
        os.close(devnull)

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    from supercharge.gpu import forbid_tf32

    forbid_tf32()  # before any CUDA library loads: --precision fp32 is strict fp32 everywhere
    stdout = sys.stdout
    try:
        stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured output (pytest's capsys)
        return _main(argv)
    safe = sys.stdout = _ReaderSafeStdout(stdout)
    try:
        return _main(argv)
    finally:
        safe.flush()  # what is still buffered, while a gone reader is still caught
        sys.stdout = stdout


def _bare_floors(argv: list[str]) -> list[str]:
    """`gate --floors RUN.json`: argparse would take RUN.json for the optional PYPROJECT and
    then miss RUN. A value after --floors that is a run (a .json file, or a folder of them) is
    the next argument."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        following = out[i + 1]
        if arg == "--floors" and (following.lower().endswith(".json") or Path(following).is_dir()):
            out[i] = "--floors="
    return out


def _main(argv: Sequence[str] | None) -> int:
    argv = _bare_floors(sys.argv[1:] if argv is None else list(argv))
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command == "gate" and not any(a.startswith("-") for a in extra):
            # `gate BASE --max-slowdown 10 CURRENT`: argparse's nargs="+" takes only the runs
            # before the first option; a run after it is still a run
            args.runs += [Path(a) for a in extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except UsageError as exc:
        prog = exc.prog
        if prog == parser.prog:  # e.g. an unrecognized option after the command: its --help
            command = next((a for a in argv if not a.startswith("-")), None)
            prog = f"{prog} {command}" if command in COMMANDS else prog
        print(f"supercharge: error: {exc}; see {prog} --help", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](args)
    except SuperchargeError as exc:
        print(f"supercharge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the cache removes its partial build; no traceback to read
        print(f"supercharge: {args.command} interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # e.g. predict's one batch of every image, too large to hold
        from supercharge.errors import memory_error, out_of_memory

        if not out_of_memory(exc):
            raise
        if args.command == "predict":
            what, advice = f"predict of {len(args.images)} images in one batch", "pass fewer"
        else:
            what, advice = f"{args.command} of {args.model}", "free memory or use a larger machine"
        print(f"supercharge: error: {memory_error(what, exc, advice)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
