"""The sampler machinery: :mod:`.engine` (pool, drawing, sharding, state, resume) and
:mod:`.schedules` (one small schedule per strategy). The public samplers live in
:mod:`torch_curriculum.samplers`."""

from .engine import CurriculumSampler, DifficultySource, Time, Timeline
from .schedules import Pace, Schedule, ScoreSpec

__all__ = ["CurriculumSampler", "DifficultySource", "Pace", "Schedule", "ScoreSpec", "Time", "Timeline"]
