"""boss_fast.models.classifier."""

from __future__ import annotations
