"""Checks beyond the policy: each a pure function of request, decision so far and now."""

from .base import KINDS, Check, Request
from .pipeline import Judgement, Objection, Pipeline

__all__ = ["KINDS", "Check", "Judgement", "Objection", "Pipeline", "Request"]
