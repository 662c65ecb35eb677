"""A request the validation layer refuses: its status, the reason, and the field it names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Rejection:
    status: int
    message: str
    param: Optional[str]
    code: str


class Rejected(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: str = "invalid_request"):
        super().__init__(message)
        self.rejection = Rejection(status, message, param, code)
