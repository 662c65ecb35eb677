"""The one settings tree of the pack: ``custom_data.railstack`` in a config's config.yml.

Every key is validated when the config is loaded; an unknown key or a bad value is a
startup error that names the key. Any setting can be overridden from the environment as
``RAILSTACK__<SECTION>__<KEY>`` (for example ``RAILSTACK__HEURISTICS__MAX_INPUT_CHARS``),
which is how deployments swap model paths and service URLs without editing a config.
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as EnvParseError

ENV_PREFIX = "RAILSTACK__"


class SettingsError(ValueError):
    """A config's railstack settings are invalid; the message names every offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RailPolicy(_Strict):
    """How one rail runs. ``None`` inherits the value from ``defaults``."""

    enabled: bool = True
    timeout_s: Optional[float] = Field(default=None, gt=0, le=600)
    on_failure: Optional[Literal["closed", "open"]] = None


class Defaults(_Strict):
    timeout_s: float = Field(default=2.0, gt=0, le=600)
    on_failure: Literal["closed", "open"] = "closed"


def _have_words(terms: list[str]) -> list[str]:
    # A term with no letters or digits would match at every punctuation mark.
    empty = [t for t in terms if not any(ch.isalnum() for ch in t)]
    if empty:
        raise ValueError(f"terms must contain a letter or digit: {empty!r}")
    return terms


class HeuristicsSettings(RailPolicy):
    """The cheap tier: normalization, hidden text, blocklist, input length."""

    max_input_chars: int = Field(default=32_000, gt=0)
    block_hidden_text: bool = True
    default_blocklist: bool = True
    phrases: list[str] = Field(default_factory=list)
    patterns: list[str] = Field(default_factory=list)

    @field_validator("phrases")
    @classmethod
    def _phrases_have_words(cls, phrases: list[str]) -> list[str]:
        return _have_words(phrases)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
        return patterns


class TopicSettings(RailPolicy):
    """Refuse turns that mention any of the listed terms (whole words, after normalization)."""

    deny: list[str] = Field(default_factory=list)
    reason: str = "this assistant does not discuss that topic"

    @field_validator("deny")
    @classmethod
    def _terms_have_words(cls, terms: list[str]) -> list[str]:
        return _have_words(terms)


class ClassifierSettings(RailPolicy):
    """A local classifier checkpoint and the engine that runs it (shared by the model rails)."""

    model: str = Field(min_length=1, description="Hugging Face hub id or local directory")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Literal["auto", "fp32", "bf16", "fp16", "int8"] = "auto"
    # None: 8 on a CPU, where bigger padded batches lose (scripts/bench_prompt_guard.py), 64 on a GPU.
    max_batch: Optional[int] = Field(default=None, gt=0, le=512, description="inputs per forward pass")
    max_delay_ms: float = Field(default=2.0, ge=0, le=1000, description="how long a batch waits to fill")
    cache_size: int = Field(default=10_000, ge=0, description="scores kept per model; 0 turns the cache off")


class PromptGuardSettings(ClassifierSettings):
    """Prompt Guard 1 or 2: jailbreak score on the conversation, injection score on third-party
    text (tool results, retrieved chunks)."""

    model: str = Field(default="meta-llama/Llama-Prompt-Guard-2-86M", min_length=1)
    timeout_s: Optional[float] = Field(default=5.0, gt=0, le=600)
    temperature: float = Field(default=1.0, gt=0)
    jailbreak_threshold: float = Field(default=0.9, ge=0, le=1)
    injection_threshold: float = Field(default=0.9, ge=0, le=1)
    retrieval: Literal["drop", "flag"] = Field(
        default="drop", description="poisoned retrieved chunks: drop them, or only flag them in the decision"
    )


class CustomCategory(_Strict):
    """A category of your own policy, or a new name and description for one of the model's."""

    code: str = Field(
        pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="S1..S99 for Llama Guard; an existing code is replaced"
    )
    name: str = Field(min_length=1)
    description: str = ""


class RemoteEngineSettings(_Strict):
    """An OpenAI-compatible completions server (vLLM) serving the same checkpoint."""

    base_url: str = Field(default="http://127.0.0.1:8001/v1", min_length=1)
    served_model: Optional[str] = Field(default=None, description="the server's model name; default: model")
    api_key: str = "EMPTY"
    top_logprobs: int = Field(default=20, ge=2, le=20, description="how many first-token log-probabilities to ask for")
    max_connections: int = Field(default=64, gt=0)


class LlamaGuardSettings(ClassifierSettings):
    """Llama Guard 3 (1B, 8B), Llama Guard 4 (text) or ShieldGemma: P(unsafe) of the last user turn
    (input) or of the answer (output) from one prefill, compared with ``threshold``."""

    model: str = Field(default="meta-llama/Llama-Guard-3-1B", min_length=1)
    timeout_s: Optional[float] = Field(default=10.0, gt=0, le=600)
    engine: Literal["local", "remote"] = "local"
    remote: RemoteEngineSettings = Field(default_factory=RemoteEngineSettings)
    family: Literal["auto", "llama_guard_3", "llama_guard_4", "shieldgemma"] = Field(
        default="auto", description="prompt format and answer tokens; auto: from the tokenizer's special tokens"
    )
    prompt: Literal["auto", "template", "builtin"] = Field(
        default="auto", description="auto: the checkpoint's chat template when it has one, else the built-in format"
    )
    threshold: float = Field(default=0.5, ge=0, le=1)
    categories: Optional[list[str]] = Field(default=None, description="codes to check; default: the model's own set")
    excluded_categories: list[str] = Field(default_factory=list)
    custom_categories: list[CustomCategory] = Field(default_factory=list)
    max_prompt_tokens: int = Field(
        default=8192, ge=256, description="longer conversations lose their oldest turns; a longer judged turn fails"
    )
    category_tokens: int = Field(default=16, ge=1, le=64, description="greedy decode budget of the category line")
    reuse_policy_prefix: bool = Field(
        default=True, description="compute the fixed start of the prompt (task and policy) once, and reuse its cache"
    )

    @field_validator("categories", "excluded_categories")
    @classmethod
    def _are_codes(cls, codes: Optional[list[str]]) -> Optional[list[str]]:
        # Llama Guard's S1..S14, or ShieldGemma's harm types (dangerous_content, ...): one code per item.
        bad = [c for c in codes or [] if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", c)]
        if bad:
            raise ValueError(f"category codes are single words such as S1 or hate_speech: {bad!r}")
        return codes


class HallucinationSettings(ClassifierSettings):
    """Grounded NLI check of each answer sentence against the turn's context, or, with no context,
    against k more answers sampled from the main model (SelfCheckGPT-NLI)."""

    model: str = Field(default="MoritzLaurer/DeBERTa-v3-base-mnli-fever-anli", min_length=1)
    timeout_s: Optional[float] = Field(default=10.0, gt=0, le=600)
    entailed_label: str = Field(default="entailment", min_length=1, description="the label meaning supported")
    contradiction_label: Optional[str] = Field(
        default="contradiction", description="for self-consistency; None: inconsistency = 1 - P(entailed)"
    )
    mode: Literal["auto", "grounded", "self_consistency"] = Field(
        default="auto", description="auto: grounded when the turn has context, else self-consistency"
    )
    context_key: str = Field(default="relevant_chunks", min_length=1, description="the context variable to check against")
    threshold: float = Field(default=0.5, ge=0, le=1, description="a sentence scoring under it is unsupported")
    on_low_score: Literal["block", "warn"] = "block"
    warning: str = Field(
        default="\n\nNote: parts of this answer could not be verified against the sources.", min_length=1
    )
    samples: int = Field(default=3, ge=1, le=10, description="self-consistency: extra answers from the main model")
    sample_temperature: float = Field(default=1.0, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=64, le=4096, description="NLI input length; longer context is windowed")
    window_overlap: int = Field(default=64, ge=0, description="tokens shared by neighbouring context windows")
    short_claim_words: int = Field(
        default=6, ge=0, description="a sentence of fewer words is judged with the question before it"
    )


class RateTier(_Strict):
    """Limits of one class of client. A burst defaults to one minute's worth."""

    requests_per_minute: float = Field(default=60, gt=0)
    request_burst: Optional[int] = Field(default=None, gt=0)
    tokens_per_minute: float = Field(default=100_000, gt=0)
    token_burst: Optional[int] = Field(default=None, gt=0)


class ClientKeySettings(_Strict):
    """Where the client's identity comes from: the first of ``sources`` the request has, else
    the shared "anonymous" bucket. The credential comes first because a client chooses its
    header and context freely; put ``header`` first only behind a proxy that sets it."""

    sources: list[Literal["authorization", "header", "context"]] = Field(
        default_factory=lambda: ["authorization", "header", "context"], min_length=1
    )
    header: str = Field(default="x-client-id", min_length=1)
    context_field: str = Field(default="client_id", min_length=1)


class AdmissionSettings(RailPolicy):
    """Per-client token buckets for requests and tokens per minute. Off unless enabled: the
    limits are a deployment's own choice."""

    enabled: bool = False
    default_tier: RateTier = Field(default_factory=RateTier)
    tiers: dict[str, RateTier] = Field(default_factory=dict)
    clients: dict[str, str] = Field(default_factory=dict, description="client key -> tier name")
    client_key: ClientKeySettings = Field(default_factory=ClientKeySettings)
    default_max_tokens: int = Field(default=1024, ge=0, description="counted when a request sets no max_tokens")
    chars_per_token: float = Field(default=4.0, gt=0)
    engine: Literal["local", "redis"] = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: float = Field(default=0.25, gt=0, le=10)
    redis_max_connections: int = Field(default=64, gt=0)
    redis_outage: Literal["local", "closed", "open"] = "local"
    key_prefix: str = "railstack:rl"
    # In-process buckets kept, least recently seen evicted first: about 1.5 kB each, so the
    # default stays within ~30 MB however many client ids arrive (scripts/bench_admission.py).
    max_clients: int = Field(default=20_000, gt=0)

    @model_validator(mode="after")
    def _clients_name_tiers(self) -> "AdmissionSettings":
        unknown = sorted({t for t in self.clients.values() if t not in self.tiers})
        if unknown:
            raise ValueError(f"clients refer to undefined tiers: {', '.join(unknown)}")
        return self


class RequestLimits(_Strict):
    """What one chat request may hold; past these it is refused with 413 before NeMo sees it."""

    max_body_bytes: int = Field(default=4_000_000, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0, description="a body still arriving after this gets 408")
    # NeMo spends about 5 ms of CPU per message turning a conversation into events.
    max_messages: int = Field(default=100, gt=0)
    max_message_chars: int = Field(default=100_000, gt=0)
    max_total_chars: int = Field(default=400_000, gt=0)
    max_tokens: int = Field(default=32_768, gt=0, description="the largest max_tokens a request may ask for")
    # Model names a request may ask for besides the config's main model: NeMo builds and keeps
    # a rails instance for each distinct name.
    models: list[str] = Field(default_factory=list)


class StageSettings(_Strict):
    """A concurrency limit with a bounded wait queue; past either, a request is shed (503)."""

    max_concurrency: int = Field(default=32, gt=0)
    max_queue: int = Field(default=64, ge=0, description="0 sheds every request that finds the slots full")
    max_wait_s: float = Field(default=5.0, gt=0, le=600)


class BackpressureSettings(_Strict):
    """Bounded stages in front of the main model and each classifier engine, and the health
    thresholds served at /railstack/health."""

    enabled: bool = True
    main: StageSettings = Field(default_factory=StageSettings)
    engines: StageSettings = Field(
        default_factory=lambda: StageSettings(max_concurrency=64, max_queue=256, max_wait_s=2.0),
        description="each classifier engine's stage (checks in flight, batched together)",
    )
    degraded_at: float = Field(default=0.8, gt=0, le=1, description="share of a stage's slots in use")
    overloaded_at: float = Field(default=0.5, gt=0, le=1, description="share of a stage's wait queue in use")
    retry_after_s: float = Field(default=1.0, gt=0, le=3600, description="the Retry-After of a shed request")


class LatencySettings(_Strict):
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


class LoggingSettings(_Strict):
    # NeMo's server builds every config with verbose=True: each request's events, prompts and
    # answers go to the console. That logs user text, and its CPU on the event loop delays every
    # other request (shed answers too). Railstack's decision log carries no message text.
    nemo_verbose: bool = Field(default=False, description="keep NeMo's verbose console log")


class RailstackSettings(BaseSettings):
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
    admission: AdmissionSettings = Field(default_factory=AdmissionSettings)
    backpressure: BackpressureSettings = Field(default_factory=BackpressureSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    latency: LatencySettings = Field(default_factory=LatencySettings)
    heuristics: HeuristicsSettings = Field(default_factory=HeuristicsSettings)
    topic: TopicSettings = Field(default_factory=TopicSettings)
    prompt_guard: PromptGuardSettings = Field(default_factory=PromptGuardSettings)
    llama_guard: LlamaGuardSettings = Field(default_factory=LlamaGuardSettings)
    hallucination: HallucinationSettings = Field(default_factory=HallucinationSettings)
    # Policy of rails that have no section of their own (your own rails), by rail name.
    rails: dict[str, RailPolicy] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _rails_are_not_builtin_sections(self) -> "RailstackSettings":
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

    def policy(self, rail: str) -> tuple[float, Literal["closed", "open"]]:
        """The effective (timeout, failure policy) of a rail."""
        own = self._own(rail)
        return (
            own.timeout_s if own.timeout_s is not None else self.defaults.timeout_s,
            own.on_failure or self.defaults.on_failure,
        )

    def enabled(self, rail: str) -> bool:
        return self._own(rail).enabled


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


def parse_settings(custom_data: Optional[Mapping[str, Any]]) -> RailstackSettings:
    """Validate ``custom_data`` of a RailsConfig; raise SettingsError naming the bad keys."""
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
