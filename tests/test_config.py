"""Configs: presets, validation messages, overrides, serialisation."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest

from ftstudy.core.config import (
    PRESETS,
    ConfigError,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    apply_overrides,
    check_seed,
    get_preset,
    parse_set_args,
)

#: Every float field of the three sections (found from the annotations, so a new one is covered).
FLOAT_FIELDS = [f"{cls.__name__}.{f.name}" for cls in (ModelConfig, TaskConfig, TrainConfig)
                for f in dataclasses.fields(cls) if float in typing.get_args(typing.get_type_hints(cls)[f.name])
                or typing.get_type_hints(cls)[f.name] is float]


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_round_trip(name: str) -> None:
    cfg = get_preset(name)
    assert cfg.preset == name
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_required_presets_exist() -> None:
    assert {"synthetic-tiny", "synthetic-quick", "synthetic-long", "paper-1.5b", "paper-8b"} <= set(PRESETS)
    assert get_preset("synthetic-quick").model.is_free


def test_field_names_unique_across_sections() -> None:
    names = [f.name for cls in (ModelConfig, TaskConfig, TrainConfig) for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("key,value,pattern", [
    ("kappa_bits", -0.5, r"kappa_bits = -0\.5 .*>= 0"),
    ("inject_layer", 0, r"inject_layer = 0 .*1 … n_layers − 1 = 3"),
    ("inject_layer", 4, r"inject_layer = 4 .*1 … n_layers − 1 = 3"),
    ("latent_bits", 21, r"latent_bits = 21 .*1 … 20"),
    ("latent_bits", -1, r"latent_bits = -1"),
    ("n_heads", 3, r"n_heads = 3 .*divisor of dim = 64"),
    ("n_kv_heads", 3, r"n_kv_heads = 3 .*divisor of n_heads = 4"),
    ("post_sampler", "sparse", r"post_sampler = 'sparse' .*'dense', 'factored'"),
    ("precision", "16-mixed", r"precision = '16-mixed' .*one of"),
    ("lr", 0.0, r"lr = 0\.0 .*> 0"),
    ("steps", 0, r"steps = 0 .*positive"),
    ("dim", "wide", r"dim = 'wide' cannot be parsed as int"),
    ("dim", 12.5, r"dim = 12.5 .*type int"),
    ("tie_embeddings", 1, r"tie_embeddings = 1 .*type bool"),
    ("seed", -1, r"TrainConfig\.seed = -1 .*0 … 4294967295"),
    ("seed", "4294967296", r"TrainConfig\.seed = 4294967296 .*0 … 4294967295 \(2\^32 − 1"),
])
def test_impossible_values_name_field_value_and_allowed(key: str, value: object, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides(get_preset("synthetic-quick"), {key: value})


def test_unknown_keys_rejected() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key 'kappa'"):
        get_preset("synthetic-quick", {"kappa": 1})
    with pytest.raises(ConfigError, match=r"unknown ModelConfig key\(s\) \['colour'\]"):
        RunConfig.from_dict({"model": {"colour": "red"}})
    with pytest.raises(ConfigError, match=r"unknown preset 'huge'"):
        get_preset("huge")
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_args(["kappa_bits"])


def test_command_line_overrides_are_parsed() -> None:
    cfg = get_preset("synthetic-quick", parse_set_args(
        ["kappa_bits=1/8", "model.n_layers=6", "inject_layer=none", "tie_embeddings=true", "seed=3"]))
    assert cfg.model.kappa_bits == 0.125
    assert cfg.model.n_layers == 6 and cfg.model.inject_layer is None and cfg.model.injection == 3
    assert cfg.model.tie_embeddings is True and cfg.train.seed == 3
    assert get_preset("synthetic-quick", {"seed": "4294967295"}).train.seed == 2**32 - 1  # the largest allowed
    assert isinstance(get_preset("synthetic-quick", {"kappa_bits": 1}).model.kappa_bits, float)


def test_derived_quantities() -> None:
    m = ModelConfig(dim=128, n_heads=4, n_layers=8, latent_bits=16, kappa_bits=1.0)
    assert m.injection == 4 and m.head_dim == 32 and m.kv_heads == 4
    assert m.kappa_nats == pytest.approx(0.6931471805599453)
    assert m.hidden % m.mlp_multiple == 0 and m.hidden >= 8 * 128 / 3
    assert not ModelConfig(latent_bits=0).is_free


def test_config_knows_no_task() -> None:
    """task.name is any registered task's name; what a task requires is the task's check
    (ftstudy.tasks.check_config, tested in test_task_protocol.py), not the config's."""
    cfg = get_preset("synthetic-tiny", {"name": "my-task", "max_seq_len": 16})
    assert cfg.task.name == "my-task" and RunConfig.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match=r"TaskConfig\.name = '' is not allowed"):
        get_preset("synthetic-tiny", {"name": ""})
    with pytest.raises(ConfigError, match=r"TaskConfig\.probe_group_size = -1 .*>= 0"):
        get_preset("synthetic-tiny", {"probe_group_size": -1})


def test_every_float_field_is_covered() -> None:
    assert {"ModelConfig.init_std", "ModelConfig.rope_base", "ModelConfig.norm_eps", "ModelConfig.kappa_bits",
            "TaskConfig.temperature", "TaskConfig.top_p", "TrainConfig.lr", "TrainConfig.grad_clip",
            "TrainConfig.weight_decay", "TrainConfig.beta2"} <= set(FLOAT_FIELDS)


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("field", FLOAT_FIELDS)
def test_nan_and_inf_are_refused_for_every_float_field(field: str, bad: str) -> None:
    """grad_clip=nan once trained to a "finished" run; lr=inf, weight_decay=nan, init_std=inf were accepted."""
    section, name = field.split(".")
    with pytest.raises(ConfigError) as e:  # from the command line (a string) ...
        get_preset("synthetic-tiny", {name: bad})
    msg = str(e.value)
    assert msg.startswith(f"{section}.{name} = ") and "not allowed" in msg and "\n" not in msg
    if bad == "nan":
        assert f"{name} = nan" in msg and "finite" in msg
    with pytest.raises(ConfigError, match="finite"):  # ... and from a config.json (JSON reads NaN and Infinity)
        RunConfig.from_dict(json.loads(json.dumps({section.removesuffix("Config").lower(): {name: float(bad)}})))


@pytest.mark.parametrize("key,value,pattern", [
    ("init_std", 0.0, r"init_std = 0\.0 .*> 0"),
    ("norm_eps", -1e-5, r"norm_eps = -1e-05 .*> 0"),
    ("rope_base", 0.5, r"rope_base = 0\.5 .*> 1"),
    ("kl_weight_below", -1.0, r"kl_weight_below = -1\.0 .*>= 0"),
    ("marginal_weight", -1.0, r"marginal_weight = -1\.0 .*>= 0"),
    ("temperature", -0.5, r"temperature = -0\.5 .*>= 0"),
    ("top_p", 0.0, r"top_p = 0\.0 .*\(0, 1\]"),
    ("top_p", 1.5, r"top_p = 1\.5 .*\(0, 1\]"),
    ("min_lr_ratio", 1.5, r"min_lr_ratio = 1\.5 .*0 … 1"),
    ("weight_decay", -0.1, r"weight_decay = -0\.1 .*>= 0"),
    ("grad_clip", -1.0, r"grad_clip = -1\.0 .*>= 0"),
    ("beta1", 1.0, r"beta1 = 1\.0 .*0 <= beta < 1"),
])
def test_float_fields_out_of_range_are_refused(key: str, value: float, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        get_preset("synthetic-tiny", {key: value})


def test_finite_floats_in_range_still_pass() -> None:
    cfg = get_preset("synthetic-tiny", {"grad_clip": 0, "weight_decay": 0, "temperature": 0, "top_p": 1,
                                        "min_lr_ratio": 1, "lr": "1/1000"})
    assert cfg.train.grad_clip == 0.0 and cfg.task.top_p == 1.0 and math.isclose(cfg.train.lr, 1e-3)


@pytest.mark.parametrize("seed", [-1, 2**32, True, "3", 1.0])
def test_check_seed_is_one_line_naming_the_option(seed: object) -> None:
    with pytest.raises(ConfigError) as e:
        check_seed(seed, "--seeds")
    assert str(e.value).startswith(f"--seeds = {seed!r} is not allowed: an integer 0 … 4294967295")
    assert "\n" not in str(e.value)
    assert check_seed(0) == 0 and check_seed(2**32 - 1) == 2**32 - 1
