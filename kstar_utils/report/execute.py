"""Papermill runs of the report's notebooks.

Each run gets its own private temporary folder for the kernel's IPC sockets and connection file (nothing is left in
``/tmp`` or the Jupyter runtime folder, even when the run fails), uses the inline matplotlib backend (Agg would drop
every figure), and writes the executed notebook atomically: papermill saves it after every cell into the private
folder, and only a finished notebook is moved to its destination.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
NOTEBOOKS = (
    ("01_framework", "Figure 1: the k* framework"),
    ("02_compare_models", "Figure 2: two models compared by k* distributions, t-SNE and UMAP"),
    ("03_robustness", "Figure 3: Gamma' against robustness"),
    ("04_generalisation", "Figure 4: Gamma' against generalisation"),
    ("05_summary_table", "Table 1: summary of the models"),
)
PER_MODEL_NOTEBOOK = "model"


def notebooks_dir() -> Path:
    """The notebooks shipped in the package (the repository's top-level ``notebooks/`` links here)."""
    return Path(__file__).resolve().parent.parent / "notebooks"


@contextmanager
def _environment(**values: str) -> Iterator[None]:
    previous = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ipc_kernel_manager(socket_dir: Path):
    """A kernel manager on local IPC sockets in ``socket_dir``: no TCP port, its connection file there too."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(socket_dir / "kernel"))
            kwargs.setdefault("connection_file", str(socket_dir / "kernel.json"))
            super().__init__(**kwargs)

    return IPCKernelManager


def execute_notebook(notebook: str | os.PathLike, output: str | os.PathLike, parameters: dict) -> Path:
    """Run ``notebook`` with ``parameters`` and write the executed copy to ``output`` (atomically)."""
    import papermill as pm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kstar-kernel-") as private:
        work = Path(private)
        partial = work / output.name
        with _environment(MPLBACKEND=INLINE_BACKEND, JUPYTER_RUNTIME_DIR=str(work)):
            pm.execute_notebook(str(notebook), str(partial), parameters=parameters, kernel_name="python3",
                                cwd=str(Path(notebook).parent), progress_bar=False, log_output=False,
                                kernel_manager_class=_ipc_kernel_manager(work))
        tmp = output.with_name(f".{output.name}.tmp")
        shutil.copyfile(partial, tmp)
        os.replace(tmp, output)
    return output
