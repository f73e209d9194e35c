"""Distillation losses for students replayed from a labelstore (see docs/losses.md)."""

from .adl import adl_loss, adl_select_images, adl_select_unlabeled, balanced_bce, binary_kl, soft_normalizer
from .features import feature_mse, query_token_mse, simkd_loss, srrl_loss
from .fkd import BANDS, dense_soft_labels, ferkd_bands, ferkd_targets, soft_label_ce, soft_target_ce
from .focal import bce_distillation, focal_distillation_loss, sigmoid_focal_loss
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
    "adl_loss",
    "adl_select_images",
    "adl_select_unlabeled",
    "AttentionalFrameAggregation",
    "balanced_bce",
    "BANDS",
    "bce_distillation",
    "bench_sinkhorn",
    "binary_kl",
    "dense_soft_labels",
    "feature_mse",
    "ferkd_bands",
    "ferkd_targets",
    "focal_distillation_loss",
    "infonce_sym",
    "kd_kl",
    "mc_pair_uncertainty",
    "query_token_mse",
    "radi_listwise_loss",
    "radi_objective",
    "radi_pairwise_loss",
    "sample_cold_full_ranking",
    "shuffle_within_rows",
    "sigmoid_focal_loss",
    "simkd_loss",
    "sinkhorn_margins",
    "soft_label_ce",
    "soft_normalizer",
    "soft_target_ce",
    "soften",
    "srrl_loss",
    "teachclip_cgt_loss",
    "teachclip_fgt_loss",
    "teachclip_loss",
    "teachclip_objective",
]
