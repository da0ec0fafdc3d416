"""Plumbing every room shares: atomic writes, strict JSON, hashing, default folders and device choice.

One home for each so that a rule (a file is written whole or not at all; NaN is written as null; every cache lives
under ``$KSTAR_HOME``) is stated once.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


# ------------------------------------------------------------------------------------------------------ atomic writes
@contextmanager
def atomic_path(path: str | os.PathLike, mode: int = 0o666) -> Iterator[Path]:
    """A temporary path beside ``path``; on success it is renamed onto ``path`` (atomic on one file system), on
    failure it is removed. Readers never see a half-written file, and two writers never interleave."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode & ~_UMASK)  # mkstemp makes 0600 files; results are shared like any other file
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write text to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes to ``path`` through a temporary file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# ------------------------------------------------------------------------------------------------------------- JSON
def json_safe(value: Any) -> Any:
    """Strict-JSON form of nested data: NaN -> None (null), +/-inf -> "inf"/"-inf", numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Path):
        return str(value)
    return value


def json_float(value: Any) -> float:
    """The inverse of :func:`json_safe` for one number: null -> NaN, "inf"/"-inf" -> infinities."""
    if value is None:
        return float("nan")
    return float(value)


def to_json(data: Any, indent: int | None = 2) -> str:
    """Strict JSON text (NaN written as null, infinities as strings)."""
    return json.dumps(json_safe(data), indent=indent, allow_nan=False)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Atomic, strict JSON, indented for people."""
    atomic_write_text(path, to_json(data) + "\n")


# ---------------------------------------------------------------------------------------------------------- hashing
def stable_hash(spec: Any) -> str:
    """SHA-256 of the canonical JSON of ``spec`` (sorted keys): equal specs give equal keys on any machine."""
    text = json.dumps(json_safe(spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 2**20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_array(array: np.ndarray, length: int = 16) -> str:
    """Short SHA-256 of an array's bytes (C order): identifies a data selection or a label vector."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:length]


# ---------------------------------------------------------------------------------------------------- default folders
def kstar_home() -> Path:
    """Root of every cache: ``$KSTAR_HOME``, else (unset or empty, like the other folder variables)
    ``~/.cache/kstar``."""
    return Path(os.environ.get("KSTAR_HOME") or Path.home() / ".cache" / "kstar")


def _folder(variable: str, name: str) -> Path:
    return Path(os.environ[variable]) if os.environ.get(variable) else kstar_home() / name


def default_data_dir() -> Path:
    """Data sets: ``$KSTAR_DATA``, else ``$KSTAR_HOME/data``."""
    return _folder("KSTAR_DATA", "data")


def default_feature_cache_dir() -> Path:
    """Extracted features: ``$KSTAR_CACHE``, else ``$KSTAR_HOME/features``."""
    return _folder("KSTAR_CACHE", "features")


def default_zoo_dir() -> Path:
    """Trained built-in zoo models: ``$KSTAR_ZOO``, else ``$KSTAR_HOME/zoo``."""
    return _folder("KSTAR_ZOO", "zoo")


def default_results_dir() -> Path:
    """The results store of report runs: ``$KSTAR_RESULTS``, else ``$KSTAR_HOME/results``."""
    return _folder("KSTAR_RESULTS", "results")


def default_robustbench_dir() -> Path:
    """RobustBench checkpoints: ``$KSTAR_ROBUSTBENCH_DIR``, else ``$KSTAR_HOME/robustbench``."""
    return _folder("KSTAR_ROBUSTBENCH_DIR", "robustbench")


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` can be created or written as a folder: not a file, not below a file, writable. Checked before long
    work starts, so a bad ``--out`` costs seconds, not a lost result. The check leaves nothing behind: folders it made
    to try are removed again (the command makes them when it writes), so a run that then fails on its input leaves no
    empty ``--out`` folder."""
    from .errors import KStarInputError

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise KStarInputError(f"{option} {p} is a file; give a folder (new or existing).")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise KStarInputError(f"{option} {p}: {parent} is a file, so no folder can be made below it.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise KStarInputError(f"{option} {p}: {parent} is not writable; choose a folder you can write.")
    made = [q for q in [p, *p.parents] if not q.exists()]  # deepest first
    try:  # permissions can pass where writing cannot (/proc, a read-only mount, a full disk): try it
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=p, prefix=".kstar-probe-"):
            pass
    except OSError as err:
        raise KStarInputError(f"{option} {p} cannot be written ({err.strerror or err}); choose another folder.") from None
    finally:
        for folder in made:
            try:
                folder.rmdir()  # only when still empty: never anything another process put there meanwhile
            except OSError:
                break
    return p


OUTPUTS_MANIFEST = ".kstar-outputs.json"  # the files `kstar compute` / `kstar extract` wrote into an --out folder


def check_own_outputs(folder: str | os.PathLike, names: tuple[str, ...], force: bool = False,
                      inputs: tuple[str | os.PathLike, ...] = (), option: str = "--out") -> None:
    """Refuse, before any work, to write ``names`` into ``folder`` where that would replace a file kstar did not
    write there: one missing from the folder's list of kstar's outputs, or changed since (unless ``force``); and,
    even with ``force``, a link (it would be replaced, or written through) or one of the command's ``inputs``.

    Why: an --out folder may hold the user's own files (even the input itself, ``--out .``); the tool replaces only
    its own outputs, as the report folder does (:mod:`kstar_utils.report.publish`)."""
    from .errors import KStarInputError

    out = Path(folder)
    if out.is_symlink():
        raise KStarInputError(f"{option} {out} is a link; kstar does not write through links: give the folder it "
                              f"points to ({out.resolve()}) or another folder.")
    recorded = _recorded_outputs(out)
    sources = [Path(p).resolve() for p in inputs]
    foreign = []
    for name in names:
        target = out / name
        if target.is_symlink():
            raise KStarInputError(f"{option} {out}: {name} is a link; kstar does not write through links or replace "
                                  "them: choose another folder.")
        if not target.exists():
            continue
        if not target.is_file():  # a folder or a FIFO: hashing it would fail or wait forever
            raise KStarInputError(f"{option} {out}: {name} there is not a file (a folder or a pipe), so kstar cannot "
                                  "write its output there; choose another folder.")
        if target.resolve() in sources:
            raise KStarInputError(f"{option} {out}: writing {name} there would replace an input of this command; "
                                  "choose another folder.")
        if recorded.get(name) != sha256_file(target):
            foreign.append(name)
    if foreign and not force:
        raise KStarInputError(f"{option} {out} holds {', '.join(foreign)}, which kstar did not write (or which changed "
                              "since); choose a new or empty folder, or pass --force to replace them.")


def record_own_outputs(folder: str | os.PathLike, names: tuple[str, ...]) -> None:
    """Record ``names`` (just written into ``folder``) with their SHA-256 as kstar's outputs there."""
    out = Path(folder)
    recorded = _recorded_outputs(out)
    recorded.update({name: sha256_file(out / name) for name in names})
    write_json(out / OUTPUTS_MANIFEST, {"tool": "kstar_utils", "files": recorded})


def _recorded_outputs(out: Path) -> dict[str, str]:
    try:
        files = json.loads((out / OUTPUTS_MANIFEST).read_text())["files"]
        return {str(k): str(v) for k, v in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # none, or damaged: nothing counts as kstar's, so only --force replaces files there


# ----------------------------------------------------------------------------------------------------------- devices
def pick_device(device: "str | Any | None" = None):
    """The device asked for, else CUDA, then Apple MPS, then CPU. A bad name is a :class:`KStarInputError`."""
    import torch

    from .errors import KStarInputError

    if device not in (None, "auto"):
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise KStarInputError(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps ({exc}).") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise KStarInputError(f"device {device!r} asked for, but CUDA is not available here; use --device cpu "
                                  "or auto.")
        if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise KStarInputError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s).")
        return chosen
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_rounding() -> str:
    """What decides the rounding of float32 work on this CPU: its architecture, the instruction set torch dispatches
    to, and torch's threads ("x86_64 AVX512, 2 threads"). A zoo model (trained on CPU) comes out different when any
    of them differs, since its sums are ordered differently, so the report names where its models were trained."""
    import platform

    import torch

    threads = torch.get_num_threads()
    return f"{platform.machine()} {torch.backends.cpu.get_cpu_capability()}, {threads} thread{'' if threads == 1 else 's'}"


def usable_cpus() -> int:
    """The cores this process may use, not the host's: its CPU affinity (which ``taskset`` and cgroup cpusets such as
    ``docker --cpuset-cpus`` narrow), and no more than a cgroup CPU quota allows (``docker --cpus``, Kubernetes CPU
    limits: :func:`cgroup_cpu_quota`, rounded up). On 2 allowed cores of 16, sizing workers by ``os.cpu_count()``
    started 8 workers of 2 threads each."""
    cores = max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def cgroup_cpu_quota(root: Path | None = None, proc_cgroup: Path | None = None) -> float | None:
    """CPUs' worth of time this process's cgroup may use (quota / period), or None where no quota is set or none can
    be read (no cgroups: macOS, Windows). cgroup v2 reads ``cpu.max`` ("max 100000" is no quota), v1
    ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (-1 is no quota), in the process's own cgroup (from
    ``/proc/self/cgroup``) and at the root of the mount, as containers see it; the smallest quota found wins."""
    root = CGROUP_ROOT if root is None else Path(root)
    proc_cgroup = PROC_CGROUP if proc_cgroup is None else Path(proc_cgroup)
    v2_paths, v1_paths = [""], [""]
    try:
        for line in proc_cgroup.read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controllers == "":
                v2_paths.append(path.lstrip("/"))
            elif "cpu" in controllers.split(","):
                v1_paths.append(path.lstrip("/"))
    except (OSError, ValueError):
        pass
    quotas = []
    for path in dict.fromkeys(v2_paths):
        try:
            limit, period = (root / path / "cpu.max").read_text().split()[:2]
            if limit != "max" and float(period) > 0:
                quotas.append(float(limit) / float(period))
        except (OSError, ValueError):
            continue
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        for path in dict.fromkeys(v1_paths):
            try:
                limit = float((root / folder / path / "cpu.cfs_quota_us").read_text())
                period = float((root / folder / path / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if limit > 0 and period > 0:
                quotas.append(limit / period)
    return min(quotas) if quotas else None


def cuda_device_count() -> int:
    """Number of CUDA devices (0 without torch CUDA), for sizing a cluster: one worker per GPU."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0
