"""CurriculumConfig: the seed's YAML, strict errors that name the key, every shipped YAML loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from torch_curriculum import ConfigError, CurriculumConfig
from torch_curriculum.config import DEFAULT_SYSTEM_PROMPT

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "examples" / "configs").glob("*.yaml")) + sorted(
    (ROOT / "torch_curriculum" / "experiments" / "presets").glob("*.yaml"))


def test_seed_yaml_matches_the_seed():
    cfg = CurriculumConfig.from_yaml(ROOT / "examples" / "configs" / "seed.yaml")
    assert cfg.meta_token.distance_metric == "l2"
    assert cfg.meta_token.top_k == 3
    assert cfg.meta_token.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert cfg.curriculum.strategy == "layer_wise_progressive"
    assert cfg.curriculum.num_stages == 3
    assert cfg.curriculum.stage_percentiles == [0.33, 0.66, 1.0]
    assert (cfg.curriculum.loss_threshold, cfg.curriculum.difficulty_step_up, cfg.curriculum.difficulty_step_down) == (2.0, 0.05, 0.02)
    assert (cfg.training.curriculum_start_epoch, cfg.training.curriculum_end_epoch, cfg.training.warmup_epochs) == (0, 5, 1)
    # defaults equal the seed too
    assert CurriculumConfig() == cfg


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "preset" in data:  # an experiment preset: its `curriculum` section is a CurriculumConfig
        cfg = CurriculumConfig.from_dict(data["curriculum"])
    else:
        cfg = CurriculumConfig.from_yaml(path)
    assert CurriculumConfig.from_dict(cfg.to_dict()) == cfg


def test_round_trip_through_yaml(tmp_path):
    cfg = CurriculumConfig.from_dict({"meta_token": {"distance_metric": "cosine", "tau": 4, "layer_map": [1, 3, 5]},
                                      "curriculum": {"strategy": "layer_wise", "stage_percentiles": [0.25, 0.5, 1.0]}})
    assert cfg.curriculum.strategy == "layer_wise_progressive"  # alias resolved
    assert cfg.meta_token.tau == 4.0 and isinstance(cfg.meta_token.tau, float)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert CurriculumConfig.from_yaml(tmp_path / "c.yaml") == cfg


def test_num_stages_is_derived_from_percentiles_and_vice_versa():
    assert CurriculumConfig.from_dict({"curriculum": {"stage_percentiles": [0.5, 1.0]}}).curriculum.num_stages == 2
    assert CurriculumConfig.from_dict({"curriculum": {"num_stages": 4}}).curriculum.stage_percentiles == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"curriculm": {}}, "curriculm", "did you mean 'curriculum'"),
        ({"curriculum": {"stage_percentile": [1.0]}}, "curriculum.stage_percentile", "did you mean 'stage_percentiles'"),
        ({"meta_token": {"bogus": 1}}, "meta_token.bogus", "unknown key"),
        ({"curriculum": {"stage_percentiles": [0.5, 0.4, 1.0]}}, "curriculum.stage_percentiles", "strictly increasing"),
        ({"curriculum": {"stage_percentiles": [0.3, 0.9]}}, "curriculum.stage_percentiles", "end with 1.0"),
        ({"curriculum": {"stage_percentiles": [0.0, 1.0]}}, "curriculum.stage_percentiles", r"\(0, 1\]"),
        ({"curriculum": {"num_stages": 2, "stage_percentiles": [0.3, 0.6, 1.0]}}, "curriculum.num_stages", "conflicts"),
        ({"curriculum": {"num_stages": 0}}, "curriculum.num_stages", ">= 1"),
        ({"curriculum": {"strategy": "curriculum_magic"}}, "curriculum.strategy", "valid strategies: random, easy_to_hard"),
        ({"curriculum": {"difficulty_step_up": 1.5}}, "curriculum.difficulty_step_up", r"\[0, 1\]"),
        ({"curriculum": {"loss_threshold": "2.0"}}, "curriculum.loss_threshold", "expected float, got str"),
        ({"meta_token": {"top_k": 0}}, "meta_token.top_k", ">= 1"),
        ({"meta_token": {"top_k": True}}, "meta_token.top_k", "expected int, got bool"),
        ({"meta_token": {"top_k": 2.5}}, "meta_token.top_k", "expected int"),
        ({"meta_token": {"distance_metric": "l1"}}, "meta_token.distance_metric", "must be one of l2, cosine, coord_softmax_kl, mahalanobis"),
        ({"meta_token": {"top_k": 4, "layer_map": [0, 1, 2]}}, "meta_token.top_k", "exceeds the 3 mapped layers"),
        ({"meta_token": {"tau": 0}}, "meta_token.tau", "> 0"),
        ({"training": {"warmup_epochs": -1}}, "training.warmup_epochs", ">= 0"),
        ({"training": {"curriculum_start_epoch": 6}}, "training.curriculum_end_epoch", "before curriculum_start_epoch"),
        ({"training": {"warmup_epochs": 9}}, "training.warmup_epochs", "exceeds the curriculum's 5 epochs"),
        ({"training": []}, "training", "must be a mapping"),
        ([1, 2], "<root>", "must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        CurriculumConfig.from_dict(data)
    assert info.value.key == key
    assert str(info.value).startswith(key)


def test_yaml_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("curriculum:\n  num_stages: -3\n")
    with pytest.raises(ConfigError, match=r"curriculum\.num_stages: .*bad\.yaml"):
        CurriculumConfig.from_yaml(p)
    p.write_text("curriculum: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        CurriculumConfig.from_yaml(p)


def test_hand_edits_are_revalidated():
    cfg = CurriculumConfig()
    cfg.curriculum.num_stages = 5
    with pytest.raises(ConfigError, match="curriculum.num_stages"):
        cfg.validate()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_yaml_opens_with_the_command_that_runs_it(path):
    # the leading comment block must hold a "Run: <command>" line naming a real entry point
    header = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    assert header, f"{path.name} does not open with a comment"
    runs = [h[len("Run:"):].strip() for h in header if h.startswith("Run:")]
    assert runs, f"{path.name}: no 'Run: <command>' line in its opening comment {header}"
    command = runs[0]
    assert command.split()[0] in ("python", "torchrun", "bash", "make", "torch-curriculum"), command
    scripts = [w for w in command.split() if w.endswith((".py", ".sh"))]
    assert all((ROOT / s).is_file() for s in scripts), f"{path.name}: {command!r} names a missing script"
    if "--config" in command:  # a command that passes a config must pass this one
        # (a shipped experiment preset may be named by its stem: `--config cpu`)
        assert path.relative_to(ROOT).as_posix() in command or f"--config {path.stem} " in command + " ", command
