"""Losses of S4AL+: the ReCo contrastive loss on the representation map."""

from .reco import IGNORE_INDEX, ReCoIndices, ReCoLoss, reco_from_indices, reco_loss, sample_reco_indices

__all__ = ["IGNORE_INDEX", "ReCoIndices", "ReCoLoss", "reco_from_indices", "reco_loss", "sample_reco_indices"]
