"""Public names of the pipeline, the figures and the engine that no other test names: cache keys and result records,
the results store's location, file names of aggregated results, cluster sizing and job running, profile sections'
validation, the verdict rule's wording, shifts, zoo model ids and labels, the foreign pass's minima."""

from __future__ import annotations

import dataclasses
import json
import math
import operator
import os
import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import kstar_utils
from kstar_utils import compute_kstar, evidence, plots
from kstar_utils.errors import ProfileError
from kstar_utils.evidence import (
    INCONCLUSIVE,
    MIN_UNITS,
    NOT_REPRODUCED,
    REPRODUCED,
    VERDICT_RULE,
    Evidence,
    verdict,
    verdict_rule,
)
from kstar_utils.pipeline import load_profile, profile_names
from kstar_utils.pipeline import run as run_mod
from kstar_utils.pipeline import tasks as tasks_mod
from kstar_utils.pipeline.aggregate import _published_robust, _published_zeroshot, slug
from kstar_utils.pipeline.claims import x_labels
from kstar_utils.pipeline.profiles import (
    ComputeOptions,
    OpenCLIPModel,
    OpenCLIPSection,
    RobustBenchModel,
    RobustBenchSection,
    profiles_dir,
)
from kstar_utils.pipeline.results import ResultStore, task_record
from kstar_utils.pipeline.run import TorchThreads, local_cluster_size, open_client, run_jobs
from kstar_utils.pipeline.tasks import (
    DataEntry,
    ModelEntry,
    Task,
    build_grid,
    engine_versions,
    gallery_partners,
    store_for,
)
from kstar_utils.validation import MAX_SEED
from kstar_utils.zoo.shifts import SHIFTS, ShiftSpec, apply_shift
from kstar_utils.zoo.study import ZooModel, zoo_models
from kstar_utils.zoo.train import ZooModelSpec


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def smoke():
    return load_profile("smoke")


def _model(**changes) -> ModelEntry:
    base = dict(id="net/v1", source="robustbench", name="Net", label="Net (Linf)", family="robustness",
                metric="euclidean", options={"threat_model": "Linf", "dataset": "cifar10"}, info={"seed": 0})
    return ModelEntry(**{**base, **changes})


def _data(**changes) -> DataEntry:
    return DataEntry(**{**dict(id="cifar10/test", dataset="cifar10", split="test", per_class=10, seed=0), **changes})


def _task(**changes) -> Task:
    return Task(**{**dict(kind="kstar", model=_model(), data=_data()), **changes})


# ------------------------------------------------------------------------------------------------- slug (file names)
HOSTILE = ["a/b", "../../etc/passwd", "a\\b", "C:\\x", "a\x00b", "name with spaces", "tab\there", "new\nline",
           "ViT-B-32//home/user/weights/clip.pt", "é/ß", "a\u2215b", "a\uff0fb", "*?<>|\"'", "$(rm -rf ~)"]


def test_slug_leaves_ids_of_the_pipeline_as_they_are():
    """Zoo ids and the kstar file's separators are already safe: the report's file names stay readable."""
    for safe in ("standard-s0", "pgd-linf-0.1-s0", "data25pct-s2", "width8-s1", "a+c_d.e"):
        assert slug(safe) == safe
    # "@" joins a model's and a data set's names in kstar/: ("a@b", "c") and ("a", "b@c") must not meet
    assert f"{slug('a@b')}@{slug('c')}" != f"{slug('a')}@{slug('b@c')}"
    assert slug("a_b-" + slug("a/b").rsplit("-", 1)[1]) != slug("a/b")  # an id shaped like a hashed name
    assert slug("café-ß") == "café-ß"  # lower-case letters of any script are safe too
    # anything replaced or upper case keeps a readable head and gets a hash of the whole id
    assert re.fullmatch(r"Carmon2019Unlabeled_Linf-[0-9a-f]{10}", slug("Carmon2019Unlabeled/Linf"))
    assert re.fullmatch(r"cifar10_test-[0-9a-f]{10}", slug("cifar10/test"))
    assert re.fullmatch(r"ViT-B-32_openai-[0-9a-f]{10}", slug("ViT-B-32/openai"))
    assert slug("ViT-B-32/openai") == slug("ViT-B-32/openai")  # one id, one name, in every run


@pytest.mark.parametrize("text", HOSTILE)
def test_slug_removes_every_path_separator_and_control_character(text, tmp_path):
    """A model id with a slash, a backslash, NUL or a newline must not make a folder or escape ``kstar/``."""
    out = slug(text)
    assert out.startswith("".join(c if c.isalnum() or c in "-_.@+" else "_" for c in text)[:20].strip("."))
    assert not set(out) & {"/", "\\", "\x00", "\n", "\t", ":", "*", "?", "<", ">", "|", '"', "'", " ", "$"}
    assert Path(out).name == out and len(Path(out).parts) == 1
    (tmp_path / f"{out}@x.json").write_text("{}")  # it really is one file name here
    assert [p.name for p in tmp_path.iterdir()] == [f"{out}@x.json"]


def test_slug_keeps_unicode_letters_and_replaces_unicode_slashes():
    assert slug("café-ß-ω") == "café-ß-ω"
    assert slug("café-ß-Ω").startswith("café-ß-Ω-")  # upper case: hashed, apart from "café-ß-ω"
    assert slug("a\u2215b\uff0fc\u29f8d").startswith("a_b_c_d-")  # division slash, fullwidth solidus, big solidus


@pytest.mark.parametrize("text", ["", ".", ".."])
def test_slug_never_returns_a_special_or_empty_name(text):
    assert slug(text) not in ("", ".", "..")


def test_slug_keeps_ids_that_differ_in_punctuation_apart():
    ids = ["ViT//w/a_b.pt", "ViT//w/a/b.pt", "ViT//w/a b.pt", "ViT//w/a:b.pt"]
    assert len({slug(i) for i in ids}) == len(ids)


def test_slug_keeps_ids_that_differ_in_case_apart_on_any_file_system():
    assert slug("ViT-B-32/openai").lower() != slug("vit-b-32/openai").lower()


def test_slug_of_a_very_long_id_fits_a_file_name():
    long_id = "ViT-B-32/" + "/very/long/path" * 20 + "/clip.pt"
    assert len(slug(long_id).encode()) <= 255
    assert len(slug("é" * 200).encode()) <= 255


# -------------------------------------------------------------------------------- Task, ModelEntry, DataEntry: keys
def test_task_key_is_stable_for_equal_descriptions():
    """The key names the result file: an equal task (even with dicts built in another order) finds its result."""
    a = _task()
    b = _task(model=_model(options={"dataset": "cifar10", "threat_model": "Linf"}))
    assert a.key == b.key == _task().key
    assert re.fullmatch(r"kstar-net_v1-[0-9a-f]{16}", a.key)


@pytest.mark.parametrize("change", [
    dict(kind="evaluate"),
    dict(model=_model(name="Other")),
    dict(model=_model(source="openclip")),
    dict(model=_model(metric="cosine")),
    dict(model=_model(options={"threat_model": "L2", "dataset": "cifar10"})),
    dict(model=_model(id="net/v2")),
    dict(data=_data(seed=1)),
    dict(data=_data(per_class=11)),
    dict(data=_data(shift="noise")),
    dict(data=_data(split="train")),
    dict(data=_data(dataset="cifar100")),
    dict(data=None),
    dict(keep_features=True),
    dict(evaluation={"attack_samples": 10}),
    dict(compute=ComputeOptions(bootstrap=7)),
    dict(compute=ComputeOptions(seed=3)),
    dict(compute=ComputeOptions(precision="bf16")),
])
def test_task_key_changes_with_whatever_determines_the_result(change):
    assert _task(**change).key != _task().key


def test_task_key_ignores_what_only_the_report_shows():
    """Relabelling a model or editing its table info must not recompute it; compute options only key k* tasks."""
    base = _task()
    assert _task(model=_model(label="renamed")).key == base.key
    assert _task(model=_model(info={"seed": 0, "note": "x"})).key == base.key
    assert _task(model=_model(family="generalisation")).key == base.key
    assert _task(needs=("train-x",)).key == base.key
    for kind in ("train", "evaluate"):
        plain = Task(kind, _model())
        assert Task(kind, _model(), compute=ComputeOptions(bootstrap=7, seed=5)).key == plain.key


def test_task_key_is_a_bounded_file_name_for_hostile_model_ids(tmp_path):
    for model_id in ("../../etc/passwd", "a\\b:c", "x" * 500, "é" * 100):
        key = _task(model=_model(id=model_id)).key
        assert "/" not in key and "\\" not in key and Path(key).name == key
        assert len(key) <= len("kstar-") + 60 + 1 + 16
        store = ResultStore(tmp_path)
        assert store.path(key).parent == tmp_path / "done"


def test_task_key_changes_with_the_pipeline_version(monkeypatch):
    """Bumping PIPELINE_VERSION invalidates every stored result."""
    before = _task().key
    monkeypatch.setattr(tasks_mod, "PIPELINE_VERSION", tasks_mod.PIPELINE_VERSION + 1)
    assert _task().key != before


def test_task_gpu_and_title():
    assert [Task(k, _model()).gpu for k in ("train", "evaluate", "kstar")] == [True, False, True]
    assert _task().title == "kstar net/v1 on cifar10/test"
    assert Task("train", _model()).title == "train net/v1"


def test_model_and_data_entries_of_the_smoke_grid(smoke):
    """The zoo's entries as build_grid makes them: train before evaluate and k*, data entries per shift."""
    tasks = build_grid(smoke)
    train = next(t for t in tasks if t.kind == "train" and t.model.id == "standard-s0")
    kstar = [t for t in tasks if t.kind == "kstar" and t.model.id == "standard-s0"]
    assert train.model == ModelEntry("standard-s0", "builtin", "standard-s0", "standard, seed 0", "robustness",
                                     "euclidean", train.model.options, train.model.info)
    assert train.model.options["spec"]["width"] == 4 and train.data is None
    assert [t.data.id for t in kstar] == ["digits/test", "digits/test+noise", "digits/test+blur"]
    assert [t.data.shift for t in kstar] == [None, "noise", "blur"]
    assert all(t.needs == (train.key,) for t in kstar)
    assert kstar[0].data == DataEntry("digits/test", "digits", "test", None, 0, None, None)


# ---------------------------------------------------------------------------- task_record, engine_versions, store_for
def test_task_record_identifies_the_task_for_readers():
    task = _task()
    record = task_record(task)
    assert record == {"key": task.key, "kind": "kstar", "model": dataclasses.asdict(task.model),
                      "data": dataclasses.asdict(task.data)}
    assert task_record(Task("train", _model()))["data"] is None
    json.dumps(record)  # plain types: it goes into a JSON file
    assert task_record(_task(data=_data(seed=9)))["key"] != record["key"]


def test_result_files_carry_the_task_record_and_the_engine_versions(tmp_path):
    store = ResultStore(tmp_path)
    task = _task()
    path = store.write(task, {"x": 1}, seconds=1.23456, host="h")
    saved = json.loads(path.read_text())
    assert {k: saved[k] for k in ("key", "kind", "model", "data")} == task_record(task)
    assert saved["versions"] == engine_versions()
    assert saved["result"] == {"x": 1} and saved["seconds"] == 1.235 and saved["status"] == "done"
    failed = json.loads(store.write_failure(_task(kind="evaluate"), "boom", "trace").read_text())
    assert failed["key"] == _task(kind="evaluate").key and failed["error"] == "boom"


def test_engine_versions_name_the_package_and_pipeline_versions(monkeypatch):
    assert engine_versions() == {"kstar_utils": kstar_utils.__version__, "pipeline": tasks_mod.PIPELINE_VERSION}
    monkeypatch.setattr(tasks_mod, "PIPELINE_VERSION", 99)
    assert engine_versions()["pipeline"] == 99


def test_store_for_uses_the_given_folder_else_one_per_profile(smoke, tmp_path, monkeypatch):
    monkeypatch.delenv("KSTAR_RESULTS", raising=False)
    monkeypatch.setenv("KSTAR_HOME", str(tmp_path / "home"))
    assert store_for(smoke, tmp_path / "mine") == tmp_path / "mine"
    assert store_for(smoke, str(tmp_path / "mine")) == tmp_path / "mine"
    assert store_for(smoke) == tmp_path / "home" / "results" / "smoke"
    other = smoke.replace(name="my study")
    assert store_for(other) == tmp_path / "home" / "results" / "my study"
    monkeypatch.setenv("KSTAR_RESULTS", str(tmp_path / "results"))
    assert store_for(smoke) == tmp_path / "results" / "smoke"
    assert store_for(smoke) != store_for(other)
    assert not (tmp_path / "results").exists()  # naming a store creates nothing


# ---------------------------------------------------------------------------------------------------- gallery
def test_gallery_partners_pairs_the_smallest_k_of_each_class_with_its_nearest_foreign_sample(rng):
    """The per_class smallest k* per class (ties by index), each with its nearest foreign sample (ties: lowest)."""
    x = rng.normal(size=(24, 3))
    labels = np.repeat(np.array(["a", "b", "c"]), 8)
    kstar = np.array([3, 1, 1, 5, 2, 2, 9, 1] + [4] * 8 + [2, 7, 1, 1, 6, 1, 3, 8])
    found = gallery_partners(x, labels, SimpleNamespace(kstar=kstar), "euclidean", per_class=3)
    assert list(found) == ["1", "2", "7", "8", "9", "10", "18", "19", "21"]
    for q, partner in found.items():
        q = int(q)
        d = np.sqrt(((x - x[q]) ** 2).sum(axis=1))
        d[labels == labels[q]] = np.inf
        assert partner == int(np.argmin(d)) and labels[partner] != labels[q]
    everything = gallery_partners(x, labels, SimpleNamespace(kstar=kstar), "euclidean", per_class=50)
    assert len(everything) == 24  # a class smaller than per_class shows every sample


def test_gallery_partners_uses_the_metric():
    """Cosine: direction, not length, picks the partner."""
    x = np.array([[1.0, 0.0], [10.0, 1.0], [1.5, 1.5]])
    labels = np.array([0, 1, 1])
    res = SimpleNamespace(kstar=np.array([1, 1, 1]))
    assert gallery_partners(x, labels, res, "euclidean", per_class=1)["0"] == 2
    assert gallery_partners(x, labels, res, "cosine", per_class=1)["0"] == 1


# ------------------------------------------------------------------------------------------ local_cluster_size
@pytest.mark.parametrize("cores, gpus, n_workers, expected", [
    (4, 0, None, {"n_workers": 4, "threads_per_worker": 1, "torch_threads": 1}),
    (32, 0, None, {"n_workers": 8, "threads_per_worker": 1, "torch_threads": 4}),
    (12, 0, 3, {"n_workers": 3, "threads_per_worker": 1, "torch_threads": 4}),
    (None, 0, None, {"n_workers": 1, "threads_per_worker": 1, "torch_threads": 1}),
    (2, 0, 6, {"n_workers": 6, "threads_per_worker": 1, "torch_threads": 1}),
    (16, 2, None, {"n_workers": 2, "threads_per_worker": 1, "resources": {"GPU": 1}, "torch_threads": 8}),
    (16, 2, 4, {"n_workers": 4, "threads_per_worker": 1, "resources": {"GPU": 1}, "torch_threads": 4}),
])
def test_local_cluster_size_shares_the_cores(monkeypatch, cores, gpus, n_workers, expected):
    """One worker per GPU, else per core (at most 8); torch threads times workers never exceed the cores."""
    monkeypatch.setattr(run_mod, "usable_cpus", lambda: cores or 1)
    monkeypatch.setattr(run_mod, "cuda_device_count", lambda: gpus)
    size = local_cluster_size(n_workers)
    assert size == expected
    if size["n_workers"] <= (cores or 1):
        assert size["n_workers"] * size["torch_threads"] <= (cores or 1)


def test_local_cluster_size_counts_only_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(run_mod, "cuda_device_count", lambda: 0)
    size = local_cluster_size()
    assert size["n_workers"] * size["torch_threads"] <= 2


def test_torch_threads_plugin_sets_threads_and_picks_the_workers_gpu(monkeypatch):
    """Worker i takes GPU i % n; a name without a trailing number takes GPU 0; at least one torch thread."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    before = torch.get_num_threads()
    try:
        TorchThreads(3).setup(SimpleNamespace(name=3))
        assert torch.get_num_threads() == 3
        TorchThreads(0).setup(SimpleNamespace(name="worker-4"))
        assert torch.get_num_threads() == 1
        TorchThreads(1).setup(SimpleNamespace(name="tcp://127.0.0.1:4000"))
        TorchThreads(1).setup(SimpleNamespace(name="w-7"))
    finally:
        torch.set_num_threads(before)
    assert chosen == [1, 0, 0, 1]
    assert TorchThreads.name == "kstar-torch-threads"  # registering it twice replaces, not duplicates


def test_torch_threads_plugin_leaves_the_gpu_alone_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: pytest.fail("set_device without CUDA"))
    before = torch.get_num_threads()
    try:
        TorchThreads(2).setup(SimpleNamespace(name=0))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------------------------------- run_jobs
def test_run_jobs_in_process_keeps_job_order_and_raises_the_jobs_error():
    assert run_jobs(pow, [(2, 3), (3, 2), (10, 0)], progress=False) == [8, 9, 1]
    assert run_jobs(pow, [], progress=False) == []
    seen = []
    with pytest.raises(ZeroDivisionError):
        run_jobs(lambda a, b: seen.append(a) or a / b, [(1, 1), (2, 0), (3, 1)], progress=False)
    assert seen == [1, 2]  # in-process jobs run in order and stop at the failure


def test_run_jobs_on_a_one_worker_local_cluster():
    """The cluster path returns results in job order, re-raises a job's error, and its worker got the cluster's
    torch threads and a memory limit within the machine's memory."""
    import psutil

    with open_client("local", n_workers=1) as client:
        assert run_jobs(pow, [(2, 10), (3, 3), (5, 0), (7, 1)], client, progress=False) == [1024, 27, 1, 7]
        assert run_jobs(divmod, [(7, 2)], client, progress=False) == [(3, 1)]
        with pytest.raises(ZeroDivisionError):
            run_jobs(operator.truediv, [(1, 1), (1, 0)], client, progress=False)
        workers = client.scheduler_info()["workers"]
        threads = set(client.run(torch.get_num_threads).values())
    assert len(workers) == 1
    assert threads == {local_cluster_size(1)["torch_threads"]}
    limit = next(iter(workers.values()))["memory_limit"]
    assert 0 < limit <= psutil.virtual_memory().total


def test_open_client_in_process_yields_none():
    for name in ("inprocess", "none", None):
        with open_client(name) as client:
            assert client is None
            assert run_jobs(abs, [(-2,)], client, progress=False) == [2]


# ---------------------------------------------------------------------------------------- profiles: the sections
def test_profiles_dir_holds_every_built_in_profile():
    folder = profiles_dir()
    assert folder == Path(kstar_utils.__file__).resolve().parent / "profiles" and folder.is_dir()
    stems = sorted(p.stem for p in folder.glob("*.yaml"))
    assert stems == profile_names() and {"smoke", "default", "paper"} <= set(stems)
    for name in ("smoke", "robustbench-cifar10"):
        profile = load_profile(folder / f"{name}.yaml")
        assert profile.name == name and profile.origin == "built-in"


def test_compute_options_defaults_and_accepted_values():
    opts = ComputeOptions()
    assert (opts.device, opts.batch_size, opts.workers, opts.precision, opts.bootstrap, opts.seed) == \
        ("auto", 128, 0, "fp32", 1000, 0)
    for device in ("auto", "cpu", "mps", "cuda", "cuda:0", "cuda:12"):
        assert ComputeOptions(device=device).device == device
    assert ComputeOptions(seed=MAX_SEED, bootstrap=0, workers=0, batch_size=1).seed == MAX_SEED


@pytest.mark.parametrize("change, message", [
    (dict(precision="fp64"), r"compute\.precision is 'fp64'; allowed: fp32, bf16, fp16"),
    (dict(device="gpu"), r"compute\.device is 'gpu'"),
    (dict(device="cuda:"), r"compute\.device is 'cuda:'"),
    (dict(device="CUDA"), r"compute\.device is 'CUDA'"),
    (dict(device=" cpu"), r"compute\.device is ' cpu'"),
    (dict(device=0), r"compute\.device is 0"),
    (dict(batch_size=0), r"compute\.batch_size is 0; it must be at least 1"),
    (dict(workers=-1), r"compute\.workers is -1"),
    (dict(bootstrap=-5), r"compute\.bootstrap is -5"),
    (dict(seed=-1), r"compute\.seed is -1"),
    (dict(seed=MAX_SEED + 1), r"seeds are 32-bit"),
])
def test_compute_options_refuse_bad_values_by_name(change, message):
    with pytest.raises(ProfileError, match=message):
        ComputeOptions(**change)


def test_compute_options_are_checked_when_a_profile_is_read(smoke, tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text("extends: smoke\ncompute: {device: gpu}\n")
    with pytest.raises(ProfileError, match=r"\(" + re.escape(str(mine)) + r"\): compute\.device is 'gpu'"):
        load_profile(mine)
    assert smoke.with_compute(bootstrap=7, device=None).compute == ComputeOptions(bootstrap=7)


def test_robustbench_model_validates_its_threat_model_and_accuracies():
    m = RobustBenchModel("Carmon2019Unlabeled", "Linf", clean_accuracy=0.0, robust_accuracy=1.0)
    assert (m.clean_accuracy, m.robust_accuracy, m.label) == (0.0, 1.0, None)
    with pytest.raises(ProfileError, match=r"threat_model is 'linf'; allowed: Linf, L2, corruptions"):
        RobustBenchModel("M", "linf")
    with pytest.raises(ProfileError, match=r"clean_accuracy of M is 89\.7.*divide a percentage by 100"):
        RobustBenchModel("M", "Linf", clean_accuracy=89.7)
    with pytest.raises(ProfileError, match="robust_accuracy of M is nan"):
        RobustBenchModel("M", "L2", robust_accuracy=math.nan)


def test_robustbench_entries_and_own_accuracies_reach_the_tables():
    """A model's own accuracies replace RobustBench's published ones; without them the published ones are used."""
    profile = load_profile({"name": "rb", "robustbench": {"dataset": "cifar10", "models": [
        {"name": "Carmon2019Unlabeled", "threat_model": "Linf"},
        {"name": "Carmon2019Unlabeled", "threat_model": "L2", "label": "mine", "clean_accuracy": 0.5,
         "robust_accuracy": 0.25}]}})
    section = profile.robustbench
    assert isinstance(section, RobustBenchSection) and section.models[1] == RobustBenchModel(
        "Carmon2019Unlabeled", "L2", "mine", 0.5, 0.25)
    first, second = build_grid(profile)
    assert (first.model.id, first.model.label) == ("Carmon2019Unlabeled/Linf", "Carmon2019Unlabeled (Linf)")
    assert second.model.label == "mine" and first.data.id == "cifar10/test"
    published = _published_robust(first.model)
    assert published["clean"] == pytest.approx(0.8969) and published["eps"] == pytest.approx(8 / 255)
    own = _published_robust(second.model)
    assert (own["clean"], own["robust"]) == (0.5, 0.25)


@pytest.mark.parametrize("change, message", [
    (dict(models=()), "robustbench.models is empty"),
    (dict(dataset="mnist"), r"robustbench\.dataset is 'mnist'; RobustBench's data sets are cifar10, cifar100 and "
                            r"imagenet"),
    (dict(split="dev"), r"robustbench\.split is 'dev'"),
    (dict(per_class=0), r"robustbench\.per_class is 0"),
])
def test_robustbench_section_refuses_what_would_fail_later(change, message):
    with pytest.raises(ProfileError, match=message):
        RobustBenchSection(**{"models": (RobustBenchModel("M", "Linf"),), **change})


def test_robustbench_section_spelling_of_the_data_set_does_not_lose_published_accuracies():
    profile = load_profile({"name": "rb", "robustbench": {"dataset": "CIFAR-10", "models": [
        {"name": "Carmon2019Unlabeled", "threat_model": "Linf"}]}})
    (task,) = build_grid(profile)
    assert _published_robust(task.model)["clean"] == pytest.approx(0.8969)


def test_openclip_entries_from_the_section():
    """Each encoder on each data set, cosine metric, Figure 2's features kept on the first data set only."""
    profile = load_profile({"name": "oc", "compare": ["ViT-B-32/openai"], "openclip": {
        "datasets": ["cifar10", "stl10"], "per_class": 5, "normalize": False,
        "models": [{"name": "ViT-B-32", "pretrained": "openai"},
                   {"name": "tiny", "pretrained": "/w/tiny.pt", "label": "Tiny", "model_config": "/w/tiny.json"}]}})
    assert profile.openclip.models[1] == OpenCLIPModel("tiny", "/w/tiny.pt", "Tiny", "/w/tiny.json")
    tasks = build_grid(profile)
    assert [(t.model.id, t.data.id, t.keep_features) for t in tasks] == [
        ("ViT-B-32/openai", "cifar10/test", True), ("ViT-B-32/openai", "stl10/test", False),
        ("tiny//w/tiny.pt", "cifar10/test", False), ("tiny//w/tiny.pt", "stl10/test", False)]
    assert tasks[0].model.label == "ViT-B-32 (openai)" and tasks[2].model.label == "Tiny"
    assert tasks[2].model.options == {"pretrained": "/w/tiny.pt", "model_config": "/w/tiny.json", "normalize": False}
    assert {t.model.metric for t in tasks} == {"cosine"} and tasks[0].data.per_class == 5
    assert _published_zeroshot(tasks[0].model, tasks[0].data) == pytest.approx(0.8983, abs=0.05)


@pytest.mark.parametrize("change, message", [
    (dict(models=()), "openclip.models is empty"),
    (dict(datasets=()), "openclip.datasets is empty"),
    (dict(datasets=("cifar10", "CIFAR-10")), r"openclip\.datasets repeats \['cifar10'\]"),
    (dict(datasets=("nope",)), r"openclip\.datasets\[0\] is 'nope', not a data set kstar knows"),
    (dict(split="dev"), r"openclip\.split is 'dev'"),
    (dict(per_class=0), r"openclip\.per_class is 0"),
])
def test_openclip_section_refuses_what_would_fail_later(change, message):
    with pytest.raises(ProfileError, match=message):
        OpenCLIPSection(**{"models": (OpenCLIPModel("ViT-B-32", "openai"),), "datasets": ("cifar10",), **change})


@pytest.mark.parametrize("dataset", ["CIFAR-10", "imagenet"])
def test_openclip_section_spelling_of_the_data_set_does_not_lose_zero_shot_accuracy(dataset):
    profile = load_profile({"name": "oc", "openclip": {"datasets": [dataset],
                                                       "models": [{"name": "ViT-B-32", "pretrained": "openai"}]}})
    (task,) = build_grid(profile)
    assert math.isfinite(_published_zeroshot(task.model, task.data))


# -------------------------------------------------------------------------------------------------- x_labels
def test_x_labels_state_the_zoos_attack_and_budgets(smoke):
    assert x_labels(smoke) == {
        "robustness": "AutoAttack robust accuracy (Linf eps = 0.1, L2 eps = 0.5; apgd-ce, 50 images)",
        "generalisation": "accuracy on the (shifted) test set"}
    other = smoke.replace(zoo=dataclasses.replace(smoke.zoo, eval_eps={"Linf": 0.03}, attack_samples=200,
                                                  attack_version="standard"))
    assert x_labels(other)["robustness"] == "AutoAttack robust accuracy (Linf eps = 0.03; standard, 200 images)"


def test_x_labels_of_published_models():
    profile = load_profile("robustbench-cifar10")
    assert x_labels(profile) == {"robustness": "AutoAttack robust accuracy (RobustBench, published)",
                                 "generalisation": "zero-shot accuracy (open_clip results table)"}


# ---------------------------------------------------------------------------------------------- verdict_rule
def _rule_numbers(rule: str) -> tuple[float, float, int]:
    negligible = float(re.search(r"within \+-([0-9.]+) of zero", rule).group(1))
    alpha = {float(a) for a in re.findall(r"p(?:-value)? is below ([0-9.]+\d)", rule)}
    units = int(re.search(r"fewer than (\d+) units", rule).group(1))
    assert len(alpha) == 1, rule
    return negligible, alpha.pop(), units


def test_verdict_rule_names_the_thresholds_the_code_uses():
    assert VERDICT_RULE == verdict_rule()
    negligible, alpha, units = _rule_numbers(VERDICT_RULE)
    assert (negligible, alpha, units) == (evidence.NEGLIGIBLE, pytest.approx(1 - evidence.CONFIDENCE), MIN_UNITS)
    assert "the 95% bootstrap interval of Spearman's rho" in VERDICT_RULE
    assert "reproduced\" when the whole interval lies below zero (the paper's direction" in VERDICT_RULE
    assert "\"not reproduced\" when the whole interval lies above zero (the opposite direction)" in VERDICT_RULE


def test_verdict_rule_p_threshold_is_strict_at_the_stated_value():
    _, alpha, units = _rule_numbers(VERDICT_RULE)
    assert verdict(Evidence(rho=-0.4, ci=(-0.6, -0.2), p_value=alpha, n=units, units="models")) == INCONCLUSIVE


def test_verdict_rule_follows_its_arguments():
    rule = verdict_rule(expected_sign=1, negligible=0.2, confidence=0.9)
    assert _rule_numbers(rule)[:2] == (0.2, 0.1) and "the 90% bootstrap interval" in rule
    assert "lies above zero (the expected direction)" in rule and "lies below zero (the opposite" in rule
    assert verdict_rule(-1) != verdict_rule(1)


def test_verdict_rule_describes_what_verdict_decides():
    """Each case the rule names, at its stated thresholds, gets the verdict the rule says."""
    negligible, alpha, units = _rule_numbers(VERDICT_RULE)

    def ev(ci, p, n=units):
        return Evidence(rho=sum(ci) / 2, ci=ci, p_value=p, n=n, units="models")

    assert verdict(ev((-negligible, negligible), 0.5)) == NOT_REPRODUCED  # "within +-0.1": bounds included
    assert verdict(ev((-0.6, -0.2), alpha / 2)) == REPRODUCED  # below zero, p below alpha
    assert verdict(ev((0.2, 0.6), alpha / 2)) == NOT_REPRODUCED  # the opposite direction
    assert verdict(ev((0.2, 0.6), alpha / 2), expected_sign=1) == REPRODUCED
    assert verdict(ev((-0.6, -0.2), alpha * 1.001)) == INCONCLUSIVE  # p must be below alpha
    assert verdict(ev((-0.6, 0.05), alpha / 2)) == INCONCLUSIVE  # the interval contains zero
    assert verdict(ev((-0.6, -0.2), alpha / 2, n=units - 1)) == INCONCLUSIVE  # too few units
    assert verdict(ev((-negligible - 0.01, -0.02), 0.5)) == INCONCLUSIVE  # reaches past +-negligible


# --------------------------------------------------------------------------------------------------- figures
def test_displayed_font_sizes_scale_with_the_display_width():
    """Points as shown: a 10 pt text on a 9 in figure shown 900 px wide (96 px per inch) is 10.42 pt."""
    fig = plt.figure(figsize=(9, 3))
    fig.text(0.1, 0.5, "shown", fontsize=10)
    fig.text(0.5, 0.5, "hidden", fontsize=10).set_visible(False)
    fig.text(0.7, 0.5, "   ", fontsize=10)  # blank: nothing is drawn
    sizes = plots.displayed_font_sizes(fig)
    assert [t for t, _ in sizes] == ["shown"]
    assert sizes[0][1] == pytest.approx(10 * 900 / (9 * 96))
    assert plots.displayed_font_sizes(fig, display_px=450)[0][1] == pytest.approx(10 * 450 / (9 * 96))
    wide = plt.figure(figsize=(18, 3))
    wide.text(0.1, 0.5, "wide", fontsize=10)
    assert plots.displayed_font_sizes(wide)[0][1] == pytest.approx(10 * 900 / (18 * 96))


def test_displayed_font_sizes_skip_ticks_outside_the_view_and_hidden_axes():
    fig = plt.figure(figsize=(9, 3))
    ax, hidden = fig.subplots(1, 2)
    ax.set_xticks([0.0, 0.5, 2.0], ["zero", "half", "two"], fontsize=12)
    ax.set_xlim(0, 1)
    ax.set_yticks([])
    hidden.set_title("gone")
    hidden.set_visible(False)
    texts = dict(plots.displayed_font_sizes(fig))
    assert {"zero", "half"} <= set(texts) and "two" not in texts and "gone" not in texts
    assert texts["zero"] == pytest.approx(12 * 900 / 864)


@pytest.fixture(scope="module")
def three_classes():
    """Two overlapping spread-out classes and one tight, distant class (every k*/n_c = 1: drawn as a line)."""
    r = np.random.default_rng(0)
    x = np.vstack([r.normal(0, 1, (20, 2)), r.normal(0.3, 1, (20, 2)), r.normal(0, 0.01, (10, 2)) + 50])
    y = np.array(["a"] * 20 + ["b"] * 20 + ["c"] * 10)
    return compute_kstar(x, y, method="exact", device="cpu")


def test_kstar_density_gives_every_class_a_mark(three_classes):
    res = three_classes
    assert list(res.per_class["pattern"]) == ["Fractured", "Fractured", "Clustered"]
    fig = plots.kstar_density(res)
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(legend) == 3 and legend[0].startswith("a: skew ") and legend[0].endswith(", Fractured")
    assert legend[2] == "c: skew -inf, Clustered\n(every k*/n_c = 1)"
    lines = ax.get_lines()
    assert len(lines) == 3
    assert list(lines[2].get_xdata()) == [1, 1]  # the constant class: a vertical line at its value
    curve = lines[0].get_ydata()
    assert len(curve) == 201 and (curve >= 0).all()
    grid = lines[0].get_xdata()
    assert np.trapezoid(curve, grid) == pytest.approx(1.0, abs=0.02)  # reflected at 0 and 1: no mass lost at the ends
    assert ax.get_xlim() == (0, 1.02) and ax.get_xlabel() == "normalised k* (k* / n_c)"
    assert plots.alt_text(fig).startswith("Density of normalised k* for 3 classes")
    assert plots.readability_problems(fig) == []


def test_kstar_density_limits_classes_and_draws_into_a_given_axis(three_classes):
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    out = plots.kstar_density(three_classes, ax=right, max_classes=2, legend_inside=True)
    assert out is fig and not left.get_lines() and len(right.get_lines()) == 2
    assert [t.get_text().split(":")[0] for t in right.get_legend().get_texts()] == ["a", "b"]
    assert "for 2 classes" in plots.alt_text(fig)


# ------------------------------------------------------------------------------------------------------ shifts
def test_shift_specs_are_named_hashable_and_compare_without_their_function():
    assert list(SHIFTS) == ["noise", "blur", "rotation", "contrast"]
    assert all(name == spec.name for name, spec in SHIFTS.items())
    assert len({hash(s) for s in SHIFTS.values()}) == 4  # hashable despite the parameters dict
    noise = SHIFTS["noise"]
    twin = dataclasses.replace(noise, function=lambda x, seed: x)
    assert twin == noise and hash(twin) == hash(noise) and "function" not in repr(noise)
    assert dataclasses.replace(noise, seeded=False) != noise
    with pytest.raises(dataclasses.FrozenInstanceError):
        noise.name = "x"


def test_shift_descriptions_state_their_parameters():
    assert "sigma = 0.2" in SHIFTS["noise"].description and SHIFTS["noise"].parameters == {"sigma": 0.2}
    assert "[0.15, 0.7, 0.15]" in SHIFTS["blur"].description
    assert "12 degrees" in SHIFTS["rotation"].description and SHIFTS["rotation"].parameters == {"degrees": 12.0}
    assert "x0.65" in SHIFTS["contrast"].description and SHIFTS["contrast"].parameters == {"factor": 0.65}


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_spec_seeded_says_whether_the_seed_changes_the_images(name):
    spec: ShiftSpec = SHIFTS[name]
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    same = torch.equal(apply_shift(x, name, 0), apply_shift(x, name, 0))
    other_seed = torch.equal(apply_shift(x, name, 0), apply_shift(x, name, 1))
    assert same and other_seed == (not spec.seeded)
    assert spec.seeded == (name == "noise")
    out = spec.function(x, 0)
    assert out.shape == x.shape and not torch.equal(out, x)


# ---------------------------------------------------------------------------------------------------- zoo models
def test_zoo_model_labels_name_training_or_configuration_and_seed(smoke):
    models = {m.id: m for m in zoo_models(smoke.zoo)}
    assert models["standard-s0"].label == "standard, seed 0"
    assert models["pgd-linf-0.1-s0"].label == "PGD Linf eps=0.1, seed 0"
    assert models["pgd-l2-0.5-s0"].threat_models == ("L2",)
    assert models["standard-s0"].threat_models == ("Linf", "L2")
    assert models["width8-s0"].label == "width8, seed 0" and models["width8-s0"].family == "generalisation"
    spec = ZooModelSpec(name="d-pgd", training="pgd", norm="L2", eps=0.25)
    assert ZooModel("x-s3", "x", 3, spec, "robustness", ("L2",)).label == "PGD L2 eps=0.25, seed 3"
    assert ZooModel("x-s3", "x", 3, spec, "generalisation", ()).label == "x, seed 3"


def test_zoo_model_ids_are_unique_for_every_profile_the_schema_accepts(smoke):
    zoo = dataclasses.replace(smoke.zoo, fractions=(0.12, 0.125))
    ids = [m.id for m in zoo_models(zoo)]
    assert len(ids) == len(set(ids)), ids


# ---------------------------------------------------------------------------------------------- ForeignMinima
def _foreign_minima(rows=None, block_rows=4):
    from kstar_utils import neighbours as nb
    from tqdm import tqdm

    r = np.random.default_rng(7)
    x = r.normal(size=(37, 5))
    y = r.integers(0, 4, 37)
    data = nb.sort_by_class(x, y, torch.device("cpu"))
    with nb.full_float32_precision(), torch.inference_mode():
        if rows is None:
            fm = nb._foreign_pass(data, block_rows, tqdm(disable=True))
        else:
            fm = nb._foreign_minima_rows(data, torch.as_tensor(rows), block_rows)
    return data, fm


def test_foreign_minima_hold_each_rows_nearest_foreign_distance_and_its_tile(monkeypatch):
    """best = min foreign D2 (float32, within the error bound); [lo, hi) holds the argmin; second >= best; where
    second > best + 2 eps, every foreign candidate lies in that one tile."""
    from kstar_utils import neighbours as nb

    monkeypatch.setattr(nb, "TILE_BYTES", 4 * 8 * 5)  # a few columns per tile: many tiles per row
    data, fm = _foreign_minima()
    assert isinstance(fm, nb.ForeignMinima)
    ex = data.exact.numpy()
    d2 = ((ex[:, None, :] - ex[None, :, :]) ** 2).sum(-1)
    foreign = data.codes[:, None] != data.codes[None, :]
    d2[~foreign] = np.inf
    eps = data.eps(slice(None)).numpy()
    best, second = fm.best.numpy().astype(np.float64), fm.second.numpy().astype(np.float64)
    lo, hi = fm.lo.numpy(), fm.hi.numpy()
    np.testing.assert_allclose(best, d2.min(axis=1), atol=float(2 * eps.max()))
    assert (second >= best).all() and np.isfinite(second).sum() > 0
    nearest = d2.argmin(axis=1)
    assert ((lo <= nearest) & (nearest < hi)).all()
    single = second > best + 2 * eps
    assert single.sum() > len(single) // 2  # most rows: one tile to recompute, not the whole row
    for p in np.flatnonzero(single):
        candidates = np.flatnonzero(d2[p] <= best[p] + 2 * eps[p])
        assert ((lo[p] <= candidates) & (candidates < hi[p])).all()


def test_foreign_minima_of_some_rows_match_the_full_pass():
    data, full = _foreign_minima()
    rows = [0, 5, 20, 36]
    _, part = _foreign_minima(rows=rows)
    np.testing.assert_allclose(part.best[rows].numpy(), full.best[rows].numpy(), rtol=1e-5, atol=1e-5)
    others = np.setdiff1d(np.arange(data.n), rows)
    assert np.isinf(part.best[others].numpy()).all()  # only the asked rows are filled in


def test_significance_level_is_the_level_the_rule_prints():
    """1 - 0.95 is 0.05000000000000004 in floating point; the level is 0.05, so p = 0.05 is not below it."""
    from kstar_utils.evidence import significance_level

    assert significance_level(0.95) == 0.05 and significance_level() == 0.05
    assert significance_level(0.9) == 0.1 and significance_level(0.99) == 0.01


def test_aggregation_removes_only_the_result_files_its_previous_summary_listed(tmp_path):
    """Rerun into the same folder, an aggregation deletes the k* files the previous one wrote and this one does not
    (renamed, or a model left out), and nothing else: not a file it never listed, not a path out of kstar/."""
    from kstar_utils.pipeline.aggregate import _remove_previous_results

    (tmp_path / "kstar").mkdir()
    for name in ("old@x.json", "kept@x.json", "foreign.json"):
        (tmp_path / "kstar" / name).write_text("{}")
    (tmp_path / "outside.json").write_text("{}")
    listed = ["kstar/old@x.json", "kstar/kept@x.json", "kstar/../outside.json", "../outside.json", "kstar/"]
    (tmp_path / "summary.json").write_text(json.dumps({"models": [{"results": [{"file": f} for f in listed]}]}))
    _remove_previous_results(tmp_path, keep={"kept@x.json"})
    assert sorted(p.name for p in (tmp_path / "kstar").iterdir()) == ["foreign.json", "kept@x.json"]
    assert (tmp_path / "outside.json").exists()
    (tmp_path / "summary.json").write_text("not json")  # a damaged summary: nothing is removed
    _remove_previous_results(tmp_path, keep=set())
    assert len(list((tmp_path / "kstar").iterdir())) == 2


def test_aggregation_removes_the_feature_folders_its_previous_summary_listed(tmp_path):
    """Figure 2's feature folders: one the previous summary listed and this run does not copy goes; the one it copies
    again, a folder it never listed and anything named by a path stay."""
    from kstar_utils.pipeline.aggregate import _remove_previous_results

    for name in ("old-model", "kept", "foreign"):
        (tmp_path / "features" / name).mkdir(parents=True)
        (tmp_path / "features" / name / "features.npy").write_bytes(b"x")
    (tmp_path / "elsewhere").mkdir()
    listed = {"a": "features/old-model", "b": "features/kept", "c": "features/../elsewhere", "d": "elsewhere"}
    (tmp_path / "summary.json").write_text(json.dumps({"models": [], "features": listed}))
    _remove_previous_results(tmp_path, keep=set(), keep_features={"kept"})
    assert sorted(p.name for p in (tmp_path / "features").iterdir()) == ["foreign", "kept"]
    assert (tmp_path / "elsewhere").is_dir()


def test_listed_name_takes_one_name_below_its_folder_and_nothing_else():
    from kstar_utils.pipeline.aggregate import listed_name

    assert listed_name("features/vit-b-32", "features/") == "vit-b-32"
    for bad in ("features/../x", "features/a/b", "features/", "features/..", "kstar/a.json", None, 3, "/features/a"):
        assert listed_name(bad, "features/") is None
