"""Judging answers 0-100 for alignment and coherence, through one interface for every backend."""

from spillover.judge.aggregate import MIN_NUMERIC_MASS, score_from_probs
from spillover.judge.base import Judge, JudgeItem, JudgeScore, available_judges, get_judge, register_judge

__all__ = [
    "MIN_NUMERIC_MASS",
    "Judge",
    "JudgeItem",
    "JudgeScore",
    "available_judges",
    "get_judge",
    "register_judge",
    "score_from_probs",
]
