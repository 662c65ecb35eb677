"""The one settings tree of the pack: ``custom_data.railstack`` in a config's config.yml.

Every key is validated when the config is loaded; an unknown key or a bad value is a
startup error that names the key. Any setting can be overridden from the environment as
``RAILSTACK__<SECTION>__<KEY>`` (for example ``RAILSTACK__HEURISTICS__MAX_INPUT_CHARS``),
which is how deployments swap model paths and service URLs without editing a config.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Mapping, Optional

from pydantic import Field, ValidationError, create_model, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as EnvParseError

from railstack.admission.settings import AdmissionSettings
from railstack.core.settings import Defaults, MemorySettings, Policy, RailPolicy, SettingsError, Strict
from railstack.exfiltration.settings import ExfiltrationSettings
from railstack.hallucination.settings import HallucinationSettings
from railstack.heuristics.settings import HeuristicsSettings
from railstack.intents.settings import IntentsSettings
from railstack.lakera.settings import LakeraSettings
from railstack.http.settings import RequestLimits
from railstack.llama_guard.settings import LlamaGuardSettings
from railstack.overload.settings import BackpressureSettings, HealthSettings
from railstack.prompt_guard.settings import PromptGuardSettings
from railstack.topic.settings import TopicSettings

__all__ = ["RailstackSettings", "SettingsError", "parse_settings"]

ENV_PREFIX = "RAILSTACK__"

# The settings section of each rail that ships with the pack: one line per rail.
RAIL_SECTIONS: dict[str, type[RailPolicy]] = {
    "admission": AdmissionSettings,
    "heuristics": HeuristicsSettings,
    "exfiltration": ExfiltrationSettings,
    "topic": TopicSettings,
    "intents": IntentsSettings,
    "prompt_guard": PromptGuardSettings,
    "lakera": LakeraSettings,
    "llama_guard": LlamaGuardSettings,
    "hallucination": HallucinationSettings,
}


class LatencySettings(Strict):
    """Time-to-first-token and latency budgets of a request's rails."""

    speculative_start: bool = Field(
        default=False,
        description="over HTTP: start the main model once the cheap tiers pass, while the classifier tiers run; "
        "a block cancels it and nothing of its answer is sent",
    )
    input_budget_s: Optional[float] = Field(
        default=None, gt=0, le=600, description="deadline for all input rails of a request together"
    )
    output_budget_s: Optional[float] = Field(
        default=None, gt=0, le=600, description="deadline for the output rails of an answer (of a streamed chunk)"
    )


class LoggingSettings(Strict):
    # NeMo's server builds every config with verbose=True: each request's events, prompts and
    # answers go to the console. That logs user text, and its CPU on the event loop delays every
    # other request (shed answers too). Railstack's decision log carries no message text.
    nemo_verbose: bool = Field(default=False, description="keep NeMo's verbose console log")


class _Tree(BaseSettings):
    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        case_sensitive=False,
    )

    # Rails of one tier run concurrently and the first block cancels the rest; off runs
    # them one after another in the order the flow names them.
    concurrent_tiers: bool = True
    defaults: Defaults = Field(default_factory=Defaults)
    limits: RequestLimits = Field(default_factory=RequestLimits)
    backpressure: BackpressureSettings = Field(default_factory=BackpressureSettings)
    health: HealthSettings = Field(default_factory=HealthSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    latency: LatencySettings = Field(default_factory=LatencySettings)
    # Policy of rails that have no section of their own (your own rails), by rail name.
    rails: dict[str, RailPolicy] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rails_are_not_builtin_sections(self) -> "_Tree":
        builtin = sorted(name for name in self.rails if isinstance(getattr(self, name, None), RailPolicy))
        if builtin:
            raise ValueError(f"rails.{builtin[0]}: set it under custom_data.railstack.{builtin[0]} instead")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file: that is what a deployment override is for.
        return (env_settings, init_settings)

    def _own(self, rail: str) -> RailPolicy:
        section = getattr(self, rail, None)
        return section if isinstance(section, RailPolicy) else self.rails.get(rail, RailPolicy())

    def policy(self, rail: str) -> Policy:
        own = self._own(rail)
        return Policy(
            own.timeout_s if own.timeout_s is not None else self.defaults.timeout_s,
            own.on_failure or self.defaults.on_failure,
        )

    def enabled(self, rail: str) -> bool:
        return self._own(rail).enabled


def tree(sections: Mapping[str, type[RailPolicy]]) -> type[_Tree]:
    """The settings tree with a section for each rail in ``sections``."""
    return create_model(
        "RailstackSettings",
        __base__=_Tree,
        __doc__="The one settings tree of the pack: ``custom_data.railstack``.",
        **{name: (section, Field(default_factory=section)) for name, section in sections.items()},
    )


RailstackSettings = tree(RAIL_SECTIONS)


def _env_name(loc: tuple) -> str:
    return ENV_PREFIX + "__".join(str(p) for p in loc).upper()


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in ("custom_data", "railstack", *err["loc"]))
        # Say where a bad value came from when the environment set it.
        env = next((_env_name(err["loc"][:n]) for n in range(len(err["loc"]), 0, -1) if _env_name(err["loc"][:n]) in os.environ), None)
        where = f" (from {env})" if env else ""
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key{where}")
        else:
            lines.append(f"{key}: {err['msg']} (got {err.get('input')!r}){where}")
    return "invalid railstack settings:\n  " + "\n  ".join(lines)


def _unknown_env_sections() -> list[str]:
    # pydantic-settings ignores an environment variable whose first part names no setting;
    # an override that silently does nothing is worse than an error.
    known = set(RailstackSettings.model_fields)
    return sorted(
        name for name in os.environ
        if name.upper().startswith(ENV_PREFIX) and name[len(ENV_PREFIX):].split("__")[0].lower() not in known
    )


def _looks_like_railstack(key: Any) -> bool:
    return isinstance(key, str) and bool(difflib.get_close_matches(key.lower().replace("-", "_"), ["railstack"], cutoff=0.75))


def parse_settings(custom_data: Optional[Mapping[str, Any]]) -> RailstackSettings:
    """Validate ``custom_data`` of a RailsConfig; raise SettingsError naming the bad keys."""
    near = [key for key in custom_data or {} if key != "railstack" and _looks_like_railstack(key)]
    if near:
        raise SettingsError(
            f"invalid railstack settings:\n  custom_data.{near[0]}: unknown key; did you mean custom_data.railstack? "
            "(railstack reads its settings from custom_data.railstack only)"
        )
    raw = (custom_data or {}).get("railstack") or {}
    if not isinstance(raw, Mapping):
        raise SettingsError(f"custom_data.railstack must be a mapping, got {type(raw).__name__}")
    unknown_env = _unknown_env_sections()
    if unknown_env:
        raise SettingsError(f"invalid railstack settings:\n  {', '.join(unknown_env)}: no such setting")
    try:
        return RailstackSettings(**raw)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    except EnvParseError as exc:  # an override that is not valid JSON where a list or mapping is due
        raise SettingsError(f"invalid railstack settings:\n  {exc} (write lists and mappings as JSON)") from None
