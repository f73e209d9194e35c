"""Data sources, augmentation record/replay, the teacher stages and the replay loader."""

from .replay import ReplayDataset, ReplayLoader, replay_inputs

__all__ = ["ReplayDataset", "ReplayLoader", "replay_inputs"]
