"""Data sources, augmentation record/replay, the teacher stages and the replay loader."""

from .replay import ReplayLoader, replay_inputs

__all__ = ["ReplayLoader", "replay_inputs"]
