"""Typed profiles: every built-in profile parses; bad YAML gets one line naming the key, the file and what is allowed."""

from __future__ import annotations

import pytest

from kstar_utils.errors import KStarError, ProfileError
from kstar_utils.pipeline.profiles import Profile, ZooSection, load_profile, profile_names


def test_every_builtin_profile_parses_into_typed_sections():
    assert {"default", "smoke", "fashion", "paper"} <= set(profile_names())
    for name in profile_names():
        profile = load_profile(name)
        assert isinstance(profile, Profile) and profile.name == name and profile.origin == "built-in"
        assert profile.zoo or profile.robustbench or profile.openclip
    default = load_profile("default")
    assert isinstance(default.zoo, ZooSection) and isinstance(default.zoo.linf_budgets, tuple)
    assert set(default.zoo.eval_eps) == {"Linf", "L2"}
    paper = load_profile("paper")
    assert "Wang2023Better_WRN-70-16/L2" in paper.compare and paper.openclip.normalize is True


def test_digest_changes_with_content_only(tmp_path):
    a = load_profile("smoke")
    assert a.digest() == load_profile("smoke").digest()
    assert a.with_compute(batch_size=7).digest() != a.digest()
    assert a.with_compute(batch_size=None) is a


def test_a_user_profile_extends_a_builtin_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("extends: smoke\ntitle: mine\nzoo:\n  seeds: [1, 2]\ncompute:\n  bootstrap: 10\n")
    profile = load_profile(path)
    assert profile.name == "mine" and profile.title == "mine" and profile.origin == str(path)
    assert profile.zoo.seeds == (1, 2) and profile.zoo.epochs == load_profile("smoke").zoo.epochs
    assert profile.compute.bootstrap == 10


BAD = [
    ("compair: [a, b]\nzoo: {}\n", "unknown key 'compair'.*allowed at the top level: name, title"),
    ("- a\n- b\n", "is a YAML list; it must be a mapping"),
    ("extends: smoke\nzoo:\n  seeds: 3\n", r"zoo.seeds is 3; expected a list of an integer"),
    ("extends: smoke\ncompare: 5\n", "compare is 5; expected a list of a string"),
    ("extends: smoke\ncompare: digits-standard\n", "compare is 'digits-standard'; expected a list"),
    ("extends: smoke\ntorchvision: {models: [resnet18]}\n", "unknown key 'torchvision'"),
    ("robustbench:\n  models:\n    - {name: X}\n", r"missing key 'robustbench.models\[0\].threat_model'"),
    ("robustbench:\n  models:\n    - {name: X, threat_model: Linf2}\n", "threat_model is 'Linf2'; allowed: Linf, L2"),
    ("extends: smoke\nzoo: {epochs: 'many'}\n", "zoo.epochs is 'many'; expected an integer"),
    ("extends: smoke\nzoo: {shifts: [noise, fog]}\n", "zoo.shifts.* is 'fog'; allowed: "),
    ("extends: smoke\ncompute: {precision: fp8}\n", "compute.precision is 'fp8'; allowed: fp32, bf16, fp16"),
    ("extends: smoke\ncompute: {batch_size: 0}\n", "compute.batch_size is 0; it must be at least 1"),
    ("zoo: [1\n", "invalid YAML at line 2, column 1"),
    ("title: nothing\n", "names no models"),
    ("", "is empty"),
    ("extends: nonsense\n", "unknown profile 'nonsense'"),
    ("extends: 3\n", "extends is 3; expected a profile name"),
    # values of the right type but out of range are refused when the profile is read, not by a task much later
    ("extends: smoke\nname: ../../../tmp/escaped\n", "profile name '../../../tmp/escaped' cannot name a folder"),
    ("extends: smoke\nname: /tmp/x\n", "profile name '/tmp/x' cannot name a folder"),
    ("extends: smoke\ncompute: {seed: -1}\n", "compute.seed is -1; it must be at least 0"),
    ("extends: smoke\nzoo: {epochs: -5}\n", "zoo.epochs is -5; it must be at least 1"),
    ("extends: smoke\nzoo: {lr: .nan}\n", "zoo.lr is nan; it must be a finite number above 0"),
    ("extends: smoke\nzoo: {latent: 0}\n", "zoo.latent is 0; it must be at least 1"),
    ("extends: smoke\nzoo: {train_limit: -1}\n", "zoo.train_limit is -1; it must be at least 1"),
    ("extends: smoke\nzoo: {kstar_per_class: 0}\n", "zoo.kstar_per_class is 0; it must be at least 1"),
    ("extends: smoke\nzoo: {fractions: [0.5, 7.0]}\n", r"zoo.fractions\[1\] is 7.0; a fraction .* \(0, 1\]"),
    ("extends: smoke\nzoo: {linf_budgets: [0.1, .inf]}\n", r"zoo.linf_budgets\[1\] is inf; it must be a finite"),
    ("extends: smoke\nzoo: {eval_eps: {Linf: -1}}\n", "zoo.eval_eps.Linf is -1.0; it must be a finite number"),
    ("extends: smoke\nzoo: {seeds: [0, 0]}\n", r"zoo.seeds repeats \[0\]"),
    ("robustbench:\n  models:\n    - {name: X, threat_model: Linf, clean_accuracy: 7.5}\n",
     r"clean_accuracy of X is 7.5; accuracies are fractions in \[0, 1\]"),
    ("robustbench:\n  models: []\n", "robustbench.models is empty"),
    ("robustbench:\n  models:\n    - {name: X, threat_model: Linf}\n  per_class: -3\n",
     "robustbench.per_class is -3; it must be at least 1"),
    ("openclip:\n  models: []\n  datasets: [cifar10]\n", "openclip.models is empty"),
    ("robustbench:\n  models:\n    - {name: X, threat_model: Linf}\n  dataset: cifar11\n",
     "robustbench.dataset is 'cifar11'; RobustBench's data sets are cifar10, cifar100 and imagenet"),
    ("openclip:\n  models:\n    - {name: RN50, pretrained: openai}\n  datasets: [CIFAR-10, imagenette]\n",
     r"openclip.datasets\[1\] is 'imagenette', not a data set kstar knows; choose from .*cifar10"),
    ("openclip:\n  models:\n    - {name: RN50, pretrained: openai}\n  datasets: [cifar10, CIFAR-10]\n",
     r"openclip.datasets repeats \['cifar10'\]; each value once \(cifar10, CIFAR-10 and cifar-10 name one"),
    ("openclip:\n  models:\n    - {name: RN50, pretrained: openai}\n  datasets: [cifar10]\n  split: validation\n",
     "openclip.split is 'validation'; allowed: train, test"),
    ("robustbench:\n  models:\n    - {name: X, threat_model: Linf}\n  split: tset\n", "robustbench.split is 'tset'"),
    ("extends: smoke\nzoo: {dataset: digitz}\n", "zoo.dataset is 'digitz', not a data set kstar knows"),
    ("extends: smoke\nzoo: {attack_version: foo}\n", "zoo.attack_version is 'foo'; use standard, plus, rand"),
    ("extends: smoke\nzoo: {shifts: [noise, noise]}\n", r"zoo.shifts repeats \['noise'\]"),
    ("extends: smoke\nzoo: {widths: [8, 8]}\n", r"zoo.widths repeats \[8\]"),
    ("extends: smoke\ncompute: {seed: 99999999999}\n", "compute.seed is 99999999999; seeds are 32-bit"),
    ("extends: smoke\nzoo: null\n", r"profile 'bad' names no models"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(";")[0][:30] for _, m in BAD])
def test_bad_profiles_name_the_key_and_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError, match=message) as info:
        load_profile(path)
    assert isinstance(info.value, KStarError) and "\n" not in str(info.value)
    if "YAML" not in message and "empty" not in message and "extends" not in message:
        assert str(path) in str(info.value)


def test_a_profile_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    path = tmp_path / "utf16.yaml"
    path.write_bytes(b"\xff\xfename: x\n")
    with pytest.raises(ProfileError, match="is not UTF-8 text"):
        load_profile(path)


def test_unknown_names_and_missing_files():
    with pytest.raises(ProfileError, match="unknown profile 'nope'; use one of .*default"):
        load_profile("nope")
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("/no/such/profile.yaml")


def test_robustbench_profiles_take_every_loadable_model_of_the_csv():
    from kstar_utils.accuracy import loadable_models

    for name, dataset, threat_models in (("robustbench-cifar10", "cifar10", ("Linf", "L2")),
                                         ("robustbench-cifar100", "cifar100", ("Linf",)),
                                         ("robustbench-imagenet", "imagenet", ("Linf",))):
        profile = load_profile(name)
        listed = [(m.name, m.threat_model) for m in profile.robustbench.models]
        expected = [(m, tm) for tm in threat_models for m in loadable_models(dataset, tm)]
        assert listed == expected and profile.robustbench.dataset == dataset, name
