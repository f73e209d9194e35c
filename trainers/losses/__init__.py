"""Distillation losses for students replayed from a labelstore (see docs/losses.md)."""

from .adl import adl_loss, adl_select_unlabeled
from .fkd import dense_soft_labels, ferkd_targets, soft_label_ce, soft_target_ce
from .kd import kd_kl, soften
from .radi import (
    bench_sinkhorn,
    mc_pair_uncertainty,
    radi_listwise_loss,
    radi_objective,
    radi_pairwise_loss,
    sample_cold_full_ranking,
    shuffle_within_rows,
    sinkhorn_margins,
)
from .teachclip import (
    AttentionalFrameAggregation,
    infonce_sym,
    teachclip_cgt_loss,
    teachclip_fgt_loss,
    teachclip_loss,
    teachclip_objective,
)

__all__ = [
    "AttentionalFrameAggregation",
    "adl_loss",
    "adl_select_unlabeled",
    "bench_sinkhorn",
    "dense_soft_labels",
    "ferkd_targets",
    "infonce_sym",
    "kd_kl",
    "mc_pair_uncertainty",
    "radi_listwise_loss",
    "radi_objective",
    "radi_pairwise_loss",
    "sample_cold_full_ranking",
    "shuffle_within_rows",
    "sinkhorn_margins",
    "soft_label_ce",
    "soft_target_ce",
    "soften",
    "teachclip_cgt_loss",
    "teachclip_fgt_loss",
    "teachclip_loss",
    "teachclip_objective",
]
