"""Configs own their field policies: every field declares them, the lists commands use are derived
from them, construction is keyword-only, and config files are read strictly."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import pytest

from kdstore import BenchConfig, CacheConfig, EvalConfig, MergeConfig, SweepConfig, TeacherConfig, TrainConfig
from kdstore.errors import KdstoreError
from kdstore.options import from_dict, opt, undeclared, with_policy
from kdstore.train.loop import RESUMABLE_CHANGES, RUN_RECORD, Run
from kdstore.train.step import Step

CONFIGS = [CacheConfig, TrainConfig, TeacherConfig, SweepConfig, MergeConfig, BenchConfig, EvalConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_config_field_declares_its_policies(cls):
    assert undeclared(cls) == []


def test_the_policy_check_finds_a_field_that_declares_nothing_or_a_wrong_value():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Probe:
        POLICIES: ClassVar[dict[str, tuple[Any, ...]]] = {"resume": ("fixed", "may_change")}
        a: int = opt(1, "declared", resume="fixed")
        b: int = opt(2, "not declared")
        c: int = opt(3, "a value the policy does not take", resume="sometimes")
        d: int = opt(4, "a policy the config does not have", resume="fixed", colour="red")

    assert undeclared(Probe) == ["b: resume", "c: resume", "d: unknown policy colour"]


def test_commands_lists_come_from_the_policies():
    resumable = set(with_policy(TrainConfig, "resume", "may_change"))
    assert {"workers", "device", "loader", "progress", "resume"} <= resumable
    assert not {"epochs", "lr", "variant", "seed", "tau", "store"} & resumable
    assert resumable <= RESUMABLE_CHANGES and not set(RUN_RECORD) & {f.name for f in dataclasses.fields(TrainConfig)}
    offered = set(with_policy(TrainConfig, "teacher", True))
    assert {"epochs", "lr", "out", "resume"} <= offered and not {"variant", "tau", "lam", "store", "scorer"} & offered
    arms = set(with_policy(TrainConfig, "sweep", "arm"))
    assert arms == {"variant", "pacing", "scorer", "view_mode", "seed", "loss"}
    recorded = set(with_policy(CacheConfig, "resume", "recorded", "resolved"))
    assert {"views", "topk", "sample", "logits_dtype", "batch_size", "dataset", "checkpoint"} <= recorded
    assert not {"workers", "device", "progress", "out"} & recorded


def test_sweep_options_never_shadow_the_train_options_it_passes_on():
    passed = set(with_policy(TrainConfig, "sweep", "base", "where", "ran"))
    assert not passed & {f.name for f in dataclasses.fields(SweepConfig)}


@pytest.mark.parametrize("cls", [*CONFIGS, Run, Step], ids=lambda c: c.__name__)
def test_big_objects_are_built_by_keyword_only(cls):
    with pytest.raises(TypeError, match="positional"):
        cls("x")


def test_from_dict_refuses_unknown_and_mistyped_keys_and_widens_ints_to_floats():
    with pytest.raises(KdstoreError, match=r"unknown option\(s\) epoch for TrainConfig \(did you mean epochs\?\)"):
        from_dict(TrainConfig, {"out": "r", "epoch": 3})
    with pytest.raises(KdstoreError, match="epochs must be int, got str '3'"):
        from_dict(TrainConfig, {"out": "r", "epochs": "3"})
    with pytest.raises(KdstoreError, match="amp must be bool, got int 1"):
        from_dict(TrainConfig, {"out": "r", "amp": 1})
    cfg = from_dict(TrainConfig, {"out": "r", "lr": 1, "head_lr": None, "kind": "student"}, ignore=RUN_RECORD)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.head_lr is None


def test_a_run_recorded_before_newer_options_compares_at_their_defaults():
    from kdstore.train.config import NEWER_OPTIONS

    old = {"variant": "kd", "tau": 4.0}
    assert TrainConfig.recorded(old) == {**old, "loss": "kd", "loss_options": "", "logit_standardize": False}
    assert TrainConfig.recorded({"loss": "dkd"})["loss"] == "dkd"  # what a run recorded stays
    defaults = TrainConfig(out="")
    assert all(getattr(defaults, k) == v for k, v in NEWER_OPTIONS.items())


# ---- renamed options: the old names work for one release, with a note -----------------------------

RENAMES = [  # (command, old option, new field, value, the library function the command calls)
    ("train", "--views", "view_mode", "clean", "train_lib"),
    ("sweep", "--views", "view_modes", "clean", "sweep_lib"),
    ("cache", "--add-views", "extend", "stores/s", "cache_lib"),
]


@pytest.mark.parametrize("command,old,field,value,lib", RENAMES, ids=[r[1] + "@" + r[0] for r in RENAMES])
def test_an_old_option_name_still_works_with_a_one_line_note(command, old, field, value, lib, monkeypatch):
    from click.testing import CliRunner

    from kdstore.cli import main

    seen: list[Any] = []
    monkeypatch.setattr(getattr(main, lib), "run", lambda cfg: seen.append(cfg) or {"rows": []})
    monkeypatch.setattr(main, "render_results", lambda summary: None)
    base = ["--store", "s", "--out", "o"] if command != "cache" else ["--views", "4"]
    new = "--" + field.replace("_", "-")
    for args, note in (([old, value], True), ([new, value], False)):
        result = CliRunner().invoke(main.cli, [command, *base, *args])
        assert result.exit_code == 0, result.output
        notes = [line for line in result.stderr.splitlines() if "deprecated" in line]
        assert notes == ([f"note: {old} is deprecated and will be removed in kdstore 0.3: use {new}"] if note else [])
    assert [getattr(cfg, field) for cfg in seen] == [value, value]
    both = CliRunner().invoke(main.cli, [command, *base, old, value, new, value])
    assert both.exit_code == 2 and f"{old} is the old name of {new}" in both.output


def test_an_old_keyword_and_an_old_config_json_key_still_work():
    with pytest.warns(DeprecationWarning, match="views is deprecated .* use view_mode"):
        assert TrainConfig(out="o", views="clean").view_mode == "clean"
    with pytest.warns(DeprecationWarning, match="add_views is deprecated .* use extend"):
        assert CacheConfig(add_views="s", views=2).extend == "s"
    assert from_dict(TrainConfig, {"out": "o", "views": "replay"}).view_mode == "replay"  # an old run's config.json
    assert TrainConfig.recorded({"views": "replay"})["view_mode"] == "replay"  # compared on --resume, by sweep
    with pytest.raises(KdstoreError, match="views and view_mode are one option"):
        from_dict(TrainConfig, {"views": "clean", "view_mode": "clean"})


def test_an_old_storeloader_keyword_still_works(small_store):
    from kdstore import StoreLoader

    with pytest.warns(DeprecationWarning, match="views is deprecated"):
        loader = StoreLoader(small_store, views="clean", workers=1, batch_size=8)
    assert loader.config.view_mode == "clean"
