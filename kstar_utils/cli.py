"""The ``kstar`` command line: thin wrappers over the Python API, one sub-command per job.

Every failure a user can fix (a missing file, NaN features, one class, missing weights offline) ends the command with
exit status 2 and one line ``kstar: error: ...`` that names the problem and the fix; no traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from . import __version__

EXIT_USER_ERROR = 2


class UserError(Exception):
    """An error whose message is complete advice for the user; printed without a traceback."""


def _add_compute(sub: argparse._SubParsersAction) -> None:
    from .kstar import AUTO_EXACT_MAX_WORK, DEFAULT_AUDIT_SIZE, DEFAULT_N_NEIGHBORS

    p = sub.add_parser(
        "compute",
        help="k* of every sample from a feature file and a label file",
        description=(
            "Compute k* (SPEC: the rank of each sample's nearest neighbour from another class), the per-class k* "
            "distributions and the skewness coefficients Gamma and Gamma'. Writes OUT/summary.json and "
            "OUT/samples.csv."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("features", help="(N, D) features: .npy, .npz, .csv/.txt, .parquet, or a `kstar extract` folder")
    p.add_argument("labels", nargs="?", help="N labels (ints or strings), same formats; omit for a `kstar extract` folder")
    p.add_argument("--out", required=True, help="output folder for summary.json and samples.csv")
    p.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean",
                   help="distance: euclidean, or cosine (rows L2-normalised, then euclidean)")
    p.add_argument("--method", choices=["auto", "exact", "ann"], default="auto",
                   help=f"exact search, pynndescent + exact verification, or auto (exact while N^2*D <= "
                        f"{AUTO_EXACT_MAX_WORK:.0e})")
    p.add_argument("--threshold", type=float, default=0.5, help="pattern threshold t: Fractured > t, Clustered < -t")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--block-size", type=int, default=None, help="query rows per block (memory ~ block x N x 4 bytes)")
    p.add_argument("--n-neighbors", type=int, default=DEFAULT_N_NEIGHBORS, help="ANN graph neighbours per sample")
    p.add_argument("--audit-size", type=int, default=DEFAULT_AUDIT_SIZE, help="ANN: samples re-checked exactly")
    p.add_argument("--seed", type=int, default=0, help="ANN graph and audit seed")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_compute)


def _run_compute(args: argparse.Namespace) -> int:
    import torch

    from .io import read_features, read_labels, write_result
    from .kstar import compute_kstar

    if args.threads:
        torch.set_num_threads(args.threads)
    labels_path = args.labels or args.features
    if args.labels is None and not Path(args.features).is_dir():
        raise UserError("LABELS is missing; give a label file, or pass a `kstar extract` folder as FEATURES.")
    features = read_features(args.features)
    labels = read_labels(labels_path)
    start = time.perf_counter()
    result = compute_kstar(
        features, labels, metric=args.metric, method=args.method, threshold=args.threshold, device=args.device,
        block_size=args.block_size, n_neighbors=args.n_neighbors, audit_size=args.audit_size, seed=args.seed,
        n_jobs=args.threads, progress=not args.quiet,
    )
    seconds = time.perf_counter() - start
    inputs = {"features": str(args.features), "labels": str(labels_path), "shape": list(features.shape),
              "seconds": round(seconds, 3)}
    paths = write_result(result, args.out, inputs)
    counts = result.pattern_counts
    print(
        f"k* of {len(result.kstar)} samples in {len(result.per_class)} classes ({result.method}, {seconds:.2f} s): "
        f"Gamma = {result.gamma_true:.4f}, Gamma' = {result.gamma_approx:.4f}; "
        f"{counts['Fractured']} fractured, {counts['Overlapped']} overlapped, {counts['Clustered']} clustered. "
        f"Wrote {paths['summary']} and {paths['samples']}."
    )
    if result.audit:
        print(f"ANN audit: {result.audit['fraction_identical']:.4%} of {result.audit['size']} samples identical to "
              f"exact (largest difference {result.audit['max_abs_difference']}).")
    return 0


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="features of a model on a data set (RobustBench, OpenCLIP, torchvision, built-in zoo, pixels)",
        description=(
            "Extract a labelled feature matrix from a model's latent space, cached and resumable. Writes "
            "OUT/features.npy, labels.npy, classes.json and meta.json; `kstar compute OUT --out RESULT` reads them."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--source", required=True, choices=["robustbench", "openclip", "torchvision", "builtin", "pixels"])
    p.add_argument("--model", required=True, help="RobustBench model name, OpenCLIP architecture, torchvision model "
                                                  "or built-in zoo model")
    p.add_argument("--pretrained", help="OpenCLIP tag or weights file; torchvision weights name or state-dict file")
    p.add_argument("--threat-model", default="Linf", help="RobustBench threat model: Linf, L2 or corruptions")
    p.add_argument("--model-dir", help="RobustBench checkpoint folder (MODEL_DIR/<dataset>/<threat>/<name>.pt)")
    p.add_argument("--dataset", required=True, help="cifar10, cifar100, mnist, fashion-mnist, svhn, stl10, imagenet, "
                                                    "imagefolder, digits")
    p.add_argument("--data-root", help="folder holding the data set (default: $KSTAR_DATA or ~/.cache/kstar/data)")
    p.add_argument("--split", default="test", help="train or test")
    p.add_argument("--per-class", type=int, help="samples per class (deterministic subset); default: all")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-class subset")
    p.add_argument("--layer", choices=["penultimate", "logits", "embedding"],
                   help="penultimate (input of the last linear layer; classifiers' default), logits, or embedding "
                        "(OpenCLIP's encode_image; its default)")
    p.add_argument("--normalize", action="store_true", help="OpenCLIP: L2-normalise the embeddings")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 on CUDA, bfloat16 on CPU; recorded)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--cache-dir", help="feature cache (default: $KSTAR_CACHE or ~/.cache/kstar/features)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from .extract import extract

    options = {"layer": args.layer, "pretrained": args.pretrained}
    if args.source == "robustbench":
        options.update(threat_model=args.threat_model, model_dir=args.model_dir)
    if args.source == "openclip":
        options["normalize"] = args.normalize
    result = extract(
        args.source, args.model, args.dataset, split=args.split, data_root=args.data_root,
        per_class=args.per_class, seed=args.seed, batch_size=args.batch_size, device=args.device, amp=args.amp,
        num_workers=args.workers, cache=False if args.no_cache else args.cache_dir, progress=not args.quiet,
        **options,
    )
    out = result.save(args.out)
    print(f"{result.features.shape[0]} x {result.features.shape[1]} features of {args.source}:{args.model} on "
          f"{args.dataset}/{args.split} ({result.meta.get('cache', 'no cache')}) -> {out}")
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="run the notebooks of a profile with papermill and publish HTML pages and index.html",
        description=(
            "Collect a profile's results (cached), execute every notebook in notebooks/ with papermill, convert them "
            "to self-contained HTML (no code, images embedded, nothing loaded from the network) and write "
            "OUT/index.html. Profiles: default (built-in offline study on digits), smoke, fashion, paper "
            "(RobustBench and OpenCLIP; needs their weights and data), or a YAML file."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--profile", default="default", help="default | smoke | fashion | paper | path/to/profile.yaml")
    p.add_argument("--out", default="reports", help="output folder for the HTML pages")
    p.add_argument("--results-dir", help="where the collected results go (default: OUT/results)")
    p.add_argument("--no-model-pages", action="store_true", help="skip the per-model pages")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from .report import render

    start = time.perf_counter()
    index = render(args.profile, args.out, results_dir=args.results_dir, per_model=not args.no_model_pages,
                   progress=not args.quiet)
    print(f"report of profile {args.profile} in {time.perf_counter() - start:.0f} s: {index}")
    return 0


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="the built-in offline study: train the zoo, measure robustness, compute k*, answer the question",
        description="Train (or reuse) the built-in zoo of a study profile, evaluate it with AutoAttack and on shifted "
                    "data, compute k* of every model and print whether Gamma' falls as robustness rises.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--profile", default="digits", help="smoke | digits | fashion")
    p.add_argument("--data-root", help="data folder (Fashion-MNIST: default is the Debian package's folder)")
    p.add_argument("--out", help="also save the tables and k* results here")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    import pandas as pd

    from .zoo import PROFILES, run_study

    if args.profile not in PROFILES:
        raise UserError(f"unknown study profile {args.profile!r}; use one of {', '.join(PROFILES)}.")
    result = run_study(args.profile, data_root=args.data_root, progress=not args.quiet)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(result.robustness.drop(columns=["train_seconds"]).round(3).to_string(index=False))
    print(f"\n{result.answer}\n(study {args.profile}: {result.seconds:.0f} s)")
    if args.out:
        print(f"saved to {result.save(args.out)}")
    return 0


# Sub-commands register here: name -> function adding its parser. Feature extraction and reports add theirs.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "compute": _add_compute,
    "extract": _add_extract,
    "study": _add_study,
    "report": _add_report,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kstar",
        description=(
            "The k* distribution (Kotyan, Chen and Vargas): how a vision model's latent space clusters concepts. "
            "k* of a sample is the rank of its nearest neighbour from another class; per class its distribution is "
            "Fractured (skew > t), Overlapped or Clustered (skew < -t)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"kstar_utils {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS.values():
        add(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message is advice for the user (bad input, missing files, weights or data, unknown names):
    printed as one line, no traceback. Anything else is a bug and keeps its traceback."""
    from .compat import MissingDependencyError
    from .sources.base import LayerNotFoundError
    from .validation import KStarInputError

    # WeightsNotFoundError and DatasetNotFoundError are FileNotFoundErrors; unknown names raise ValueError.
    return (UserError, KStarInputError, FileNotFoundError, LayerNotFoundError, MissingDependencyError, ValueError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.handler(args) or 0)
    except user_errors() as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"kstar: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kstar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
