"""The latency budgets' clock of one request: when its input rails began, and when the output
rails of each of its answers began (each streamed chunk is an answer of its own)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Optional

from railstack.core.types import Deadline, Source


@dataclass
class BudgetClock:
    input_started: Optional[float] = None
    output_started: dict[bytes, float] = field(default_factory=dict)

    def deadline(self, source: Source, text: str, limit: Optional[float]) -> Optional[Deadline]:
        if limit is None or source == "retrieval":
            return None
        now = time.perf_counter()
        if source == "input":
            self.input_started = self.input_started or now
            return Deadline(self.input_started + limit, limit)
        # Every output flow of one answer checks the same text: they share its clock.
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        return Deadline(self.output_started.setdefault(key, now) + limit, limit)
