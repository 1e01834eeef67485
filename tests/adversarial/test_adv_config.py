"""Issue 14 items 3, 4 (config side) and 5 (config files): strict YAML and values checked up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch_curriculum.config import ConfigError, CurriculumConfig, load_yaml


def _yaml(tmp_path, text: str | bytes):
    p = tmp_path / "c.yaml"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    return p


def test_two_curriculum_blocks_are_an_error_naming_key_and_lines(tmp_path):
    p = _yaml(tmp_path, "curriculum:\n  strategy: easy_to_hard\ntraining:\n  seed: 3\ncurriculum:\n  num_stages: 3\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'curriculum' at line 5 \(first defined at line 1\)") as e:
        CurriculumConfig.from_yaml(p)
    assert str(p) in str(e.value)


def test_duplicate_nested_key_is_an_error(tmp_path):
    p = _yaml(tmp_path, "meta_token:\n  top_k: 3\n  pooling: mean\n  top_k: 5\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'top_k' at line 4 \(first defined at line 2\)"):
        CurriculumConfig.from_yaml(p)


def test_yaml_merge_keys_and_equal_keys_in_different_mappings_still_work(tmp_path):
    p = _yaml(tmp_path, "curriculum:\n  strategy: dynamic\nmeta_token:\n  top_k: 2\ntraining:\n  seed: 2\n")
    cfg = CurriculumConfig.from_yaml(p)
    assert (cfg.curriculum.strategy, cfg.meta_token.top_k, cfg.training.seed) == ("dynamic", 2, 2)
    assert load_yaml(_yaml(tmp_path, "a: &x {k: 1}\nb:\n  <<: *x\n  j: 2\n")) == {"a": {"k": 1}, "b": {"k": 1, "j": 2}}


@pytest.mark.parametrize(("field", "value"), [
    ("curriculum.loss_threshold", ".nan"), ("curriculum.loss_threshold", ".inf"),
    ("curriculum.difficulty_step_up", ".nan"), ("curriculum.difficulty_step_down", "-.inf"),
    ("meta_token.tau", ".nan"), ("meta_token.ridge_alpha", ".inf"), ("meta_token.kl_temperature", ".inf"),
    ("curriculum.min_percentile", ".nan"), ("curriculum.phase1_epochs", ".nan"),
])
def test_nan_and_inf_are_rejected_naming_the_field(tmp_path, field, value):
    section, key = field.split(".")
    p = _yaml(tmp_path, f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=rf"^{field}: must be a finite number") as e:
        CurriculumConfig.from_yaml(p)
    assert e.value.key == field


def test_nan_inside_a_list_and_from_dict_and_by_hand():
    with pytest.raises(ConfigError, match="curriculum.stage_percentiles: must be a finite number"):
        CurriculumConfig.from_dict({"curriculum": {"stage_percentiles": [0.5, float("nan"), 1.0]}})
    with pytest.raises(ConfigError, match="curriculum.loss_threshold: must be a finite number"):
        CurriculumConfig.from_dict({"curriculum": {"loss_threshold": float("nan")}})
    cfg = CurriculumConfig()
    cfg.curriculum.loss_threshold = float("inf")
    with pytest.raises(ConfigError, match="curriculum.loss_threshold"):
        cfg.validate()


@pytest.mark.parametrize("seed", [2**70, 2**64, -1])
def test_seed_outside_torch_and_numpy_range_is_rejected_at_config_time(seed):
    with pytest.raises(ConfigError, match=r"training.seed: must lie in \[0, 2\*\*64 - 1\]"):
        CurriculumConfig.from_dict({"training": {"seed": seed}})


@pytest.mark.parametrize("seed", [0, 2**63, 2**64 - 1])
def test_every_accepted_seed_works_in_torch_and_numpy(seed):
    cfg = CurriculumConfig.from_dict({"training": {"seed": seed}})
    torch.Generator().manual_seed(cfg.training.seed)
    np.random.default_rng(cfg.training.seed)


def test_invalid_utf8_names_file_line_and_byte(tmp_path):
    p = _yaml(tmp_path, b"curriculum:\n  strategy: \"caf\xe9\"\n")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(line 2, byte offset 28") as e:
        CurriculumConfig.from_yaml(p)
    assert str(p) in str(e.value)


def test_bom_is_accepted_and_directory_is_named(tmp_path):
    p = _yaml(tmp_path, b"\xef\xbb\xbfcurriculum:\n  strategy: random\n")
    assert CurriculumConfig.from_yaml(p).curriculum.strategy == "random"
    with pytest.raises(IsADirectoryError, match="is a directory"):
        CurriculumConfig.from_yaml(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CurriculumConfig.from_yaml(tmp_path / "missing.yaml")
