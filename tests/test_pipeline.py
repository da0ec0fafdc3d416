"""The task grid on Dask: LocalCluster vs in-process, a TCP cluster of separate processes, a killed worker, failed
tasks, resumed runs, and two runs sharing one store."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import isolated_kstar_home

from kstar_utils.pipeline import load_profile
from kstar_utils.pipeline.aggregate import aggregate, collect_tables
from kstar_utils.pipeline.results import ResultStore
from kstar_utils.pipeline.run import open_client, run_grid
from kstar_utils.pipeline.tasks import build_grid, run_task

pytestmark = pytest.mark.slow
TABLE_COLUMNS = ["model", "gamma", "gamma_prime", "fractured", "overlapped", "clustered", "latent_1nn_accuracy"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One zoo and feature cache for the module (trained once), isolated from the user's caches."""
    with isolated_kstar_home(tmp_path_factory.mktemp("pipeline")) as root:
        yield root


@pytest.fixture(scope="module")
def inprocess(shared):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as a one-thread Dask worker
    try:
        profile = load_profile("smoke")
        statuses = run_grid(build_grid(profile), shared / "store-a", client=None, progress=False)
    finally:
        torch.set_num_threads(threads)
    return profile, statuses


def _tables(profile, store) -> dict[str, pd.DataFrame]:
    parts = collect_tables(profile, ResultStore(store))
    return {k: parts[k].sort_values(["model"] + (["data"] if "data" in parts[k] else [])).reset_index(drop=True)
            for k in ("robustness", "generalisation")}


def test_grid_has_one_kstar_task_per_model_and_data_set():
    profile = load_profile("smoke")
    tasks = build_grid(profile)
    kinds = pd.Series([t.kind for t in tasks]).value_counts().to_dict()
    models = {t.model.id for t in tasks}
    assert models == {"standard-s0", "pgd-linf-0.1-s0", "pgd-l2-0.5-s0", "width8-s0"}
    assert kinds == {"train": 4, "evaluate": 3, "kstar": 4 + 2 * 2}  # clean for all; noise and blur for 2
    keys = {t.key for t in tasks}
    assert all(set(t.needs) <= keys for t in tasks) and len(keys) == len(tasks)
    assert [t.key for t in build_grid(profile)] == [t.key for t in tasks]  # keys are stable
    assert {t.key for t in build_grid(profile.with_compute(bootstrap=7)) if t.kind == "kstar"}.isdisjoint(
        {t.key for t in tasks if t.kind == "kstar"})


def test_figure_twos_pair_must_name_two_models_of_the_profile(tmp_path):
    """A typo in compare: would silently drop Figure 2; the grid refuses it with the ids it could name."""
    from kstar_utils.errors import ProfileError

    smoke = load_profile("smoke")
    for compare, message in (
        (("standard-s0", "nope"), r"compare names 'nope', not a model of this profile; give two model ids .* "
                                  r"e\.g\. standard-s0"),
        (("standard-s0", "pgd-l2-0.5-s0", "width8-s0"), "compare lists 3 models"),
    ):
        with pytest.raises(ProfileError, match=message):
            build_grid(smoke.replace(compare=compare))
    assert build_grid(smoke.replace(compare=()))  # no Figure 2 pair is allowed
    assert build_grid(smoke.replace(compare=("standard-s0",)))  # one model: Figure 2's page says it has no pair
    mine = tmp_path / "mine.yaml"  # a user's profile file is named, so the line to fix can be found
    mine.write_text("extends: smoke\ncompare: [standard-s0, nope]\n")
    with pytest.raises(ProfileError, match=re.escape(f"({mine}): compare names 'nope'")):
        build_grid(load_profile(mine))


def test_local_cluster_with_two_workers_gives_the_in_process_tables(shared, inprocess):
    profile, statuses = inprocess
    assert all(s["status"] == "done" for s in statuses.values())
    with open_client("local", n_workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        # the workers run without Dask's statistical profiler (it took 13% of a run of GIL-bound tasks)
        assert set(client.run(_worker_profiler_enabled).values()) == {False}
        remote = run_grid(build_grid(profile), shared / "store-b", client=client, progress=False)
    assert all(s["status"] == "done" and not s["cached"] for s in remote.values())
    a, b = _tables(profile, shared / "store-a"), _tables(profile, shared / "store-b")
    for name in a:
        assert len(a[name]) > 0
        pd.testing.assert_frame_equal(a[name][TABLE_COLUMNS], b[name][TABLE_COLUMNS])
    # a rerun skips every finished task
    again = run_grid(build_grid(profile), shared / "store-a", client=None, progress=False)
    assert all(s["cached"] for s in again.values())


def _worker_profiler_enabled() -> bool:
    import dask

    return bool(dask.config.get("distributed.worker.profile.enabled"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dask(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def test_kstar_study_on_a_tcp_cluster_of_separate_processes(shared, inprocess, tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    processes = [_dask("distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
                       "--dashboard-address", ":0", "--no-dashboard")]
    try:
        time.sleep(2)
        processes += [_dask("distributed.cli.dask_worker", address, "--nthreads", "1", "--no-dashboard",
                            "--name", f"w{i}") for i in range(2)]
        from distributed import Client

        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=90)
        out = subprocess.run([sys.executable, "-m", "kstar_utils.cli", "study", "--profile", "smoke", "--quiet",
                              "--scheduler", address, "--results-dir", str(tmp_path / "store")],
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        assert "tasks done" in out.stdout
    finally:
        for p in processes:
            os.killpg(p.pid, signal.SIGTERM)
        for p in processes:
            p.wait(timeout=30)
    profile = inprocess[0]
    a, b = _tables(profile, shared / "store-a"), _tables(profile, tmp_path / "store")
    pd.testing.assert_frame_equal(a["robustness"][TABLE_COLUMNS], b["robustness"][TABLE_COLUMNS])


def test_a_worker_killed_mid_run_loses_no_result(shared, inprocess, tmp_path):
    profile = inprocess[0].with_compute(bootstrap=123)  # new k* task keys: the k* tasks run again
    tasks = build_grid(profile)
    with open_client("local", n_workers=2) as client:
        pids = client.run(os.getpid)
        from distributed import as_completed

        futures = {t.key: client.submit(run_task, t, str(tmp_path), key=t.key, pure=False)
                   for t in tasks if t.kind != "kstar"}
        futures.update({t.key: client.submit(run_task, t, str(tmp_path), *(futures[k] for k in t.needs),
                                             key=t.key, pure=False) for t in tasks if t.kind == "kstar"})
        killed = False
        for future in as_completed(list(futures.values())):
            assert future.result()["status"] == "done"
            if not killed:
                os.kill(next(iter(pids.values())), signal.SIGKILL)
                killed = True
    store = ResultStore(tmp_path)
    assert all(store.has(t.key) for t in tasks)
    for t in tasks:
        json.loads(store.path(t.key).read_text())  # every record is whole


def test_a_killed_run_resumes_where_it_stopped(shared, inprocess, tmp_path):
    script = (f"import os; os.environ['KSTAR_ZOO']={str(shared / 'zoo')!r}; os.environ['KSTAR_CACHE']="
              f"{str(shared / 'features')!r}\nfrom kstar_utils.pipeline import load_profile\n"
              "from kstar_utils.pipeline.run import run_grid\nfrom kstar_utils.pipeline.tasks import build_grid\n"
              f"run_grid(build_grid(load_profile('smoke').with_compute(bootstrap=321)), {str(tmp_path)!r}, "
              "progress=False)\n")
    proc = subprocess.Popen([sys.executable, "-c", script])
    store = ResultStore(tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline and not list((tmp_path / "done").glob("kstar-*.json")):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    profile = inprocess[0].with_compute(bootstrap=321)
    tasks = build_grid(profile)
    before = sum(store.has(t.key) for t in tasks)
    assert 0 < before < len(tasks)
    statuses = run_grid(tasks, tmp_path, progress=False)
    assert sum(s["cached"] for s in statuses.values()) == before
    assert all(store.has(t.key) for t in tasks)


def test_two_runs_sharing_one_store_never_corrupt_it(shared, inprocess, tmp_path):
    script = (f"import os; os.environ['KSTAR_ZOO']={str(shared / 'zoo')!r}; os.environ['KSTAR_CACHE']="
              f"{str(shared / 'features')!r}\nfrom kstar_utils.pipeline import load_profile\n"
              "from kstar_utils.pipeline.run import run_grid\nfrom kstar_utils.pipeline.tasks import build_grid\n"
              f"s = run_grid(build_grid(load_profile('smoke').with_compute(bootstrap=99)), {str(tmp_path)!r}, "
              "progress=False)\nassert all(v['status'] == 'done' for v in s.values())\n")
    procs = [subprocess.Popen([sys.executable, "-c", script]) for _ in range(2)]
    assert [p.wait(timeout=600) for p in procs] == [0, 0]
    profile = inprocess[0].with_compute(bootstrap=99)
    store = ResultStore(tmp_path)
    for t in build_grid(profile):
        assert store.read(t.key)["status"] == "done"
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failing_task_is_recorded_and_the_others_complete(shared, tmp_path):
    path = tmp_path / "mixed.yaml"
    path.write_text("extends: smoke\nrobustbench:\n  dataset: cifar10\n  data_root: " + str(tmp_path / "none")
                    + "\n  models:\n    - {name: Standard, threat_model: Linf}\n")
    profile = load_profile(path)
    statuses = run_grid(build_grid(profile), tmp_path / "store", progress=False)
    failed = [s for s in statuses.values() if s["status"] == "failed"]
    assert len(failed) == 1 and "CIFAR-10" in failed[0]["error"]
    out = aggregate(profile, tmp_path / "store", tmp_path / "agg")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"]["failed"] == 1 and summary["failed"][0]["model"] == "Standard/Linf"
    assert len(pd.read_csv(out / "robustness.csv")) == 4  # the zoo's four robustness points survive


def test_table_one_keeps_a_configurations_seeds_together():
    """Summary rows come seed-major from the grid; Table 1 shows each configuration's seeds together, in seed order,
    configurations in first-seen order, and models without a configuration where they were."""
    from kstar_utils.pipeline.aggregate import by_config_then_seed, summary_table

    models = [("standard-s0", "standard", 0), ("pgd-s0", "pgd", 0), ("rb-a", None, None),
              ("standard-s1", "standard", 1), ("pgd-s1", "pgd", 1), ("rb-b", None, None)]
    robustness = pd.DataFrame([{"model": m, "label": m, "config": c, "seed": s, "threat_model": "Linf",
                                "gamma": 0.1, "gamma_lo": 0.0, "gamma_hi": 0.2, "gamma_prime": 0.1,
                                "gamma_prime_lo": 0.0, "gamma_prime_hi": 0.2, "fractured": 1, "overlapped": 1,
                                "clustered": 0, "latent_1nn_accuracy": 0.9, "clean_accuracy": 0.8,
                                "robust_accuracy": 0.5} for m, c, s in models])
    table = summary_table(robustness, pd.DataFrame())
    assert list(table["model"]) == ["standard-s0", "standard-s1", "pgd-s0", "pgd-s1", "rb-a", "rb-b"]
    assert "config" not in table and "seed" not in table  # only the order changes
    # seeds sort as numbers, and a table without configurations is left alone
    info = pd.DataFrame({"model": ["a-s10", "a-s2"], "config": ["a", "a"], "seed": [10, 2]})
    assert list(by_config_then_seed(pd.DataFrame({"model": ["a-s10", "a-s2"]}), info)["model"]) == ["a-s2", "a-s10"]
    rows = pd.DataFrame({"model": ["a-s1", "a-s1", "a-s0", "a-s0"], "config": "a", "seed": [1, 1, 0, 0],
                         "data": ["clean", "noise", "clean", "noise"]})  # one model's rows keep their order
    assert list(by_config_then_seed(rows, rows)["data"]) == ["clean", "noise", "clean", "noise"]
    assert list(by_config_then_seed(rows, rows)["model"]) == ["a-s0", "a-s0", "a-s1", "a-s1"]
    plain = pd.DataFrame({"model": ["z", "y"]})
    assert list(by_config_then_seed(plain, pd.DataFrame({"model": ["z", "y"]}))["model"]) == ["z", "y"]
