"""Transitional re-export: the objectives live in :mod:`ebft.methods` (one module per method)."""

from ebft.methods.base import frozen_reference, rollout_seed
from ebft.methods.ebft import EBFTObjective
from ebft.methods.rlvr import RLVRObjective
from ebft.methods.sft import SFTObjective, masked_token_nll

__all__ = ["EBFTObjective", "RLVRObjective", "SFTObjective", "frozen_reference", "masked_token_nll", "rollout_seed"]
