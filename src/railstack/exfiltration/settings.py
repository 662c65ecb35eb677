"""Settings of the exfiltration rail: ``custom_data.railstack.exfiltration``."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from railstack.core.settings import RailPolicy
from railstack.exfiltration.urls import normalize_host


def _hosts(entries: list[str]) -> list[str]:
    normalized = []
    for entry in entries:
        wildcard = entry.startswith("*.")
        name = entry[2:] if wildcard else entry
        host = None if any(c in name for c in "/:@?#\\*% ") else normalize_host(name)
        if host is None:
            raise ValueError(f"not a host name or *.domain: {entry!r}")
        normalized.append(f"*.{host}" if wildcard else host)
    return normalized


class ExfiltrationSettings(RailPolicy):
    """Images, links and terminal escapes in the answer."""

    on_detect: Literal["block", "transform"] = Field(
        default="block",
        description="block the answer, or remove only what was found (not in a stream: there it blocks)",
    )
    # Hosts an answer's images may load from; "*.example.com" allows the subdomains of example.com.
    image_hosts: list[str] = Field(default_factory=list)
    # Hosts an answer's links may point to; None: any host (a link still may not carry data).
    link_hosts: Optional[list[str]] = None
    max_url_data_chars: int = Field(default=100, ge=0, description="query and fragment of a URL together")
    max_blob_chars: int = Field(default=64, ge=16, description="longest hex or base64-like run in a URL")
    max_percent_encoded: int = Field(default=48, ge=0, description="most %XX escapes in a URL")

    @field_validator("image_hosts")
    @classmethod
    def _image_hosts(cls, entries: list[str]) -> list[str]:
        return _hosts(entries)

    @field_validator("link_hosts")
    @classmethod
    def _link_hosts(cls, entries: Optional[list[str]]) -> Optional[list[str]]:
        return None if entries is None else _hosts(entries)
