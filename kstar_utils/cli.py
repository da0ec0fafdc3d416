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


# Sub-commands register here: name -> function adding its parser. Feature extraction and reports add theirs.
SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {"compute": _add_compute}


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


def main(argv: Sequence[str] | None = None) -> int:
    from .validation import KStarInputError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            return int(args.handler(args) or 0)
    except (UserError, KStarInputError, FileNotFoundError) as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"kstar: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kstar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
