"""The ``kstar`` command line: thin wrappers over the Python API, one sub-command per job.

Every failure a user can fix (a missing file, NaN features, one class, missing weights offline, a bad profile key)
is a :class:`~kstar_utils.errors.KStarError`: the command ends with exit status 2 and one line ``kstar: error: ...``
that names the problem and the fix. Nothing else is caught: a programming error keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from . import __version__
from .errors import KStarError, KStarInputError
from .plumbing import check_output_folder, check_own_outputs, record_own_outputs

EXIT_USER_ERROR = 2


def _add_compute(sub: argparse._SubParsersAction) -> None:
    from .defaults import (AUTO_ANN_MIN_WORK, AUTO_EXACT_MAX_WORK, CANDIDATE_SOURCES, DEFAULT_AUDIT_SIZE,
                           DEFAULT_N_NEIGHBORS)

    p = sub.add_parser(
        "compute",
        help="k* of every sample from a feature file and a label file",
        description=(
            "Compute k* (the rank of each sample's nearest neighbour from another class), the per-class k* "
            "distributions and the skewness coefficients Gamma and Gamma'. Writes OUT/summary.json, "
            "OUT/samples.csv and OUT/result.json (KStarResult.from_json reads it back)."
        ),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("features", help="(N, D) features: .npy, .npz, .csv/.txt, .parquet, or a `kstar extract` folder")
    p.add_argument("labels", nargs="?", help="N labels (ints or strings), same formats; omit for a `kstar extract` folder")
    p.add_argument("--out", required=True, help="output folder for summary.json, samples.csv and result.json")
    p.add_argument("--force", action="store_true",
                   help="replace those files in --out even where kstar did not write them (never an input or a link)")
    p.add_argument("--metric", choices=["euclidean", "cosine"], default="euclidean",
                   help="distance: euclidean, or cosine (rows L2-normalised, then euclidean)")
    p.add_argument("--method", choices=["auto", "exact", "ann"], default="auto",
                   help=f"exact search, ANN: candidates (the int8 scan, or the pynndescent graph whose numba code "
                        f"compiles on its first use in every process, about a minute) + exact verification, or auto "
                        f"(exact while N^2*D <= "
                        f"{AUTO_ANN_MIN_WORK:.0e}; up to {AUTO_EXACT_MAX_WORK:.0e} ANN only for features of low "
                        f"intrinsic dimension, or where the int8 scan runs)")
    p.add_argument("--threshold", type=float, default=0.5, help="pattern threshold t: Fractured > t, Clustered < -t")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--block-size", type=int, default=None, help="query rows per block (memory ~ block x N x 4 bytes)")
    p.add_argument("--n-neighbors", type=int, default=DEFAULT_N_NEIGHBORS, help="ANN graph neighbours per sample")
    p.add_argument("--audit-size", type=int, default=DEFAULT_AUDIT_SIZE, help="ANN: samples re-checked exactly")
    p.add_argument("--candidates", choices=list(CANDIDATE_SOURCES), default="auto",
                   help="ANN candidates: auto (the int8 scan of every foreign pair for features >= 64 wide on a CPU "
                        "with AVX512-VNNI or AMX, else the pynndescent graph and sampled rows), graph, or int8-scan "
                        "(CPU only)")
    p.add_argument("--seed", type=int, default=0, help="ANN graph, audit and bootstrap seed")
    p.add_argument("--bootstrap", type=int, default=0,
                   help="bootstrap replicates for 95%% intervals of Gamma and Gamma' (samples resampled within each "
                        "class); 0: none")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all this process may use)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_compute)


def _run_compute(args: argparse.Namespace) -> int:
    import torch

    from .io import RESULT_FILES, read_features, read_labels, write_result
    from .kstar import compute_kstar

    from .validation import MAX_SEED, check_count, check_number

    # checked here first, so that a bad value is named as the user typed it (--block-size, not block_size)
    for option, value, minimum in (("--block-size", args.block_size, 1), ("--threads", args.threads, 1)):
        if value is not None:
            check_count(option, value, minimum)
    for option, value, minimum in (("--n-neighbors", args.n_neighbors, 2), ("--audit-size", args.audit_size, 0),
                                   ("--bootstrap", args.bootstrap, 0)):
        check_count(option, value, minimum)
    check_count("--seed", args.seed, 0, maximum=MAX_SEED)
    check_number("--threshold", args.threshold, 0.0)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    labels_path = args.labels or args.features
    if args.labels is None and not Path(args.features).is_dir():
        raise KStarInputError("LABELS is missing; give a label file, or pass a `kstar extract` folder as FEATURES.")
    check_output_folder(args.out)
    check_own_outputs(args.out, RESULT_FILES, args.force, inputs=(args.features, labels_path))
    one_file = Path(args.features).is_file() and Path(labels_path).is_file() \
        and Path(args.features).samefile(labels_path)
    features = read_features(args.features, labels_in_file=one_file)
    labels = read_labels(labels_path, table=one_file)  # one table gives both: read its labels as a table too
    start = time.perf_counter()
    result = compute_kstar(
        features, labels, metric=args.metric, method=args.method, threshold=args.threshold, device=args.device,
        block_size=args.block_size, n_neighbors=args.n_neighbors, audit_size=args.audit_size, seed=args.seed,
        n_jobs=args.threads, progress=not args.quiet, bootstrap=args.bootstrap, bootstrap_seed=args.seed,
        candidates=args.candidates,
    )
    seconds = time.perf_counter() - start
    inputs = {"features": str(args.features), "labels": str(labels_path), "shape": list(features.shape),
              "seconds": round(seconds, 3)}
    paths = write_result(result, args.out, inputs)
    record_own_outputs(args.out, RESULT_FILES)
    counts = result.pattern_counts
    print(
        f"k* of {len(result.kstar)} samples in {len(result.per_class)} classes ({result.method}, {seconds:.2f} s): "
        f"Gamma = {result.gamma_true:.4f}, Gamma' = {result.gamma_approx:.4f}; "
        f"{counts['Fractured']} fractured, {counts['Overlapped']} overlapped, {counts['Clustered']} clustered. "
        f"Wrote {paths['summary']} and {paths['samples']}."
    )
    if result.method == "ann" and "candidate_source" in result.params:
        print(f"ANN candidates: {result.params['candidate_source']}.")
    if result.audit and result.audit["size"]:
        print(f"ANN audit: {result.audit['fraction_identical']:.4%} of {result.audit['size']} samples identical to "
              f"exact (largest difference {result.audit['max_abs_difference']}).")
    elif result.audit:
        print("ANN audit: none (--audit-size 0), so nothing measured how far this result is from exact k*.")
    if "auto_exact_reason" in result.params:
        print(f"auto chose exact: {result.params['auto_exact_reason']}.")
    return 0


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        help="features of a model on a data set (RobustBench, OpenCLIP, torchvision, built-in zoo, pixels)",
        description=(
            "Extract a labelled feature matrix from a model's latent space, cached and resumable. Writes "
            "OUT/features.npy, labels.npy, classes.json and meta.json; `kstar compute OUT --out RESULT` reads them."
        ),
        formatter_class=_HelpFormatter,
    )
    # not argparse choices: listing the registered sources imports every source's libraries (torchvision,
    # open_clip: seconds), which every `kstar --help` would pay; an unknown name is refused by load_source
    p.add_argument("--source", required=True,
                   help="robustbench, openclip, torchvision, pixels, builtin, or a source registered by a plugin")
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
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, ...")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32, or bf16 / fp16 autocast (recorded with the features and in the cache key)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--cache-dir", help="feature cache (default: $KSTAR_CACHE or ~/.cache/kstar/features)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--force", action="store_true",
                   help="replace the output files in --out even where kstar did not write them (never a link)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_extract)


def _run_extract(args: argparse.Namespace) -> int:
    from .extract import EXTRACT_FILES, extract

    check_output_folder(args.out)
    check_own_outputs(args.out, EXTRACT_FILES, args.force, inputs=tuple(p for p in (args.data_root,) if p))
    options = {"layer": args.layer, "pretrained": args.pretrained}
    if args.source == "robustbench":
        options.update(threat_model=args.threat_model, model_dir=args.model_dir)
    if args.source == "openclip":
        options["normalize"] = args.normalize
    result = extract(
        args.source, args.model, args.dataset, split=args.split, data_root=args.data_root,
        per_class=args.per_class, seed=args.seed, batch_size=args.batch_size, device=args.device, precision=args.precision,
        num_workers=args.workers, cache=False if args.no_cache else args.cache_dir, progress=not args.quiet,
        **options,
    )
    out = result.save(args.out)
    record_own_outputs(out, EXTRACT_FILES)
    print(f"{result.features.shape[0]} x {result.features.shape[1]} features of {args.source}:{args.model} on "
          f"{args.dataset}/{args.split} ({result.meta.get('cache', 'no cache')}) -> {out}")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `study` and `report`: the profile, where results go, the Dask cluster, compute settings."""
    from .pipeline.profiles import PRECISIONS, profile_names

    p.add_argument("--profile", default="default",
                   help=f"a built-in profile ({', '.join(profile_names())}) or path/to/profile.yaml")
    p.add_argument("--results-dir", help="the results store (default: $KSTAR_RESULTS/<profile>, "
                                         "~/.cache/kstar/results/<profile>)")
    p.add_argument("--scheduler", default="local",
                   help="local (a Dask LocalCluster sized to this machine), inprocess, or the address of a running "
                        "Dask scheduler (tcp://HOST:8786)")
    p.add_argument("--workers", type=int, help="LocalCluster workers (default: one per GPU, else one per 2 cores)")
    p.add_argument("--device", help="extraction device: auto, cpu, cuda, cuda:N (default: the profile's)")
    p.add_argument("--batch-size", type=int, help="extraction batch size (default: the profile's)")
    p.add_argument("--data-workers", type=int, help="DataLoader worker processes per extraction")
    p.add_argument("--precision", choices=PRECISIONS, help="extraction precision (default: the profile's, fp32)")
    p.add_argument("--bootstrap", type=int, help="bootstrap replicates for the intervals of Gamma and Gamma'")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _compute_overrides(args: argparse.Namespace) -> dict:
    from .validation import check_count

    for name, minimum in (("workers", 1), ("batch_size", 1), ("data_workers", 0), ("bootstrap", 0)):
        value = getattr(args, name)
        if value is not None:
            check_count(f"--{name.replace('_', '-')}", value, minimum)
    if args.device is not None:
        from .plumbing import pick_device

        pick_device(args.device)
    return {"device": args.device, "batch_size": args.batch_size, "workers": args.data_workers,
            "precision": args.precision, "bootstrap": args.bootstrap}


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="compute a profile on Dask, run its notebooks with papermill and publish HTML pages and index.html",
        description=(
            "Run a profile's task grid (one task per model and data set; cached in the results store, so a rerun "
            "skips finished tasks) on a Dask cluster, aggregate the results, execute every notebook with papermill, "
            "render self-contained HTML pages (no code, images embedded, nothing loaded from the network) and "
            "publish them in OUT at once. OUT must be new, empty, or a folder kstar wrote before."
        ),
        formatter_class=_HelpFormatter,
    )
    _add_run_options(p)
    p.add_argument("--out", default="reports", help="output folder for the HTML pages")
    p.add_argument("--force", action="store_true",
                   help="write into an OUT that holds files kstar did not write (they are left alone)")
    p.add_argument("--no-model-pages", action="store_true", help="skip the per-model pages")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from .report import build_report

    start = time.perf_counter()
    index = build_report(args.profile, args.out, results_dir=args.results_dir, scheduler=args.scheduler,
                         n_workers=args.workers, force=args.force, per_model=not args.no_model_pages,
                         progress=not args.quiet, **_compute_overrides(args))
    print(f"report of profile {args.profile} in {time.perf_counter() - start:.0f} s: {index}")
    return 0


def _add_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "study",
        help="compute a profile (train, attack, extract, k*) and print its claims and verdicts; no HTML",
        description="Run a profile's task grid on Dask (the built-in zoo: train, AutoAttack, k*; or RobustBench and "
                    "OpenCLIP models), aggregate it into tables, and print the paper's two claims with their "
                    "evidence and verdicts.",
        formatter_class=_HelpFormatter,
    )
    _add_run_options(p)
    p.add_argument("--out", help="write the aggregated tables and summary here (default: RESULTS_DIR/report)")
    p.set_defaults(handler=_run_study)


def _run_study(args: argparse.Namespace) -> int:
    from .pipeline import load_profile
    from .pipeline.aggregate import aggregate
    from .pipeline.run import open_client, run_grid
    from .pipeline.tasks import build_grid, store_for
    from .report.notebook import Results

    start = time.perf_counter()
    profile = load_profile(args.profile).with_compute(**_compute_overrides(args))
    store = store_for(profile, args.results_dir)
    with open_client(args.scheduler, args.workers) as client:
        statuses = run_grid(build_grid(profile), store, client, progress=not args.quiet)
    out = aggregate(profile, store, args.out or store / "report")
    summary = Results(out).summary
    for claim in summary.get("claims", []):
        print(f"{claim['title']}: {claim['verdict']}. {claim['sentence']}")
    failed = [s for s in statuses.values() if s["status"] != "done"]
    print(f"{len(statuses) - len(failed)} of {len(statuses)} tasks done"
          + (f", {len(failed)} failed (see {out / 'failed.csv'})" if failed else "")
          + f"; tables in {out} ({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


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


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults appended to the help only where they say something: not for None, not for a required option, and not
    where the help text already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.required or "default" in text or action.default is argparse.SUPPRESS \
                or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            return text
        return super()._get_help_string(action)


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"kstar: warning: {category.__name__}: {message}\n"


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings printed as one line a user reads (``kstar: warning: SmallClassWarning: ...``), not Python's file,
    line and source line. Only the format changes (``warnings.formatwarning``, restored after), so whoever records
    warnings (pytest, a caller's ``catch_warnings(record=True)``) still gets them."""
    previous = warnings.formatwarning
    warnings.formatwarning = _format_warning
    try:
        yield
    finally:
        warnings.formatwarning = previous


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings(), _one_line_warnings():
            warnings.simplefilter("default")
            return int(args.handler(args) or 0)
    except KStarError as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"kstar: error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("kstar: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
