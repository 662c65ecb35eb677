"""The process's engines: one per checkpoint and the way it runs, shared by every config that
names it, each together with the bounded stage in front of it."""

from __future__ import annotations

import threading
from typing import Any, Callable, NamedTuple, Optional, Protocol, Sequence, TypeVar

from railstack.engines.loading import CheckpointError, checkpoint_error
from railstack.overload.health import dependencies
from railstack.overload.stages import Stage, stages

Item = TypeVar("Item", contravariant=True)
Result = TypeVar("Result", covariant=True)


class Engine(Protocol[Item, Result]):
    """What a model rail scores through: a local model behind a ``Batcher``, or a remote server."""

    async def score(self, items: Sequence[Item]) -> list[Result]: ...


class ConflictingStages(ValueError):
    """Two configs share an engine but ask for different bounded stages in front of it."""


Built = TypeVar("Built")


class _StageOwner(NamedTuple):
    stage: Optional[Stage]  # None: backpressure is off for it
    settings: Any  # the backpressure settings it was made with
    owner: str  # the config that made it


class EnginePool:
    def __init__(self) -> None:
        self._entries: dict[tuple, Any] = {}
        self._stages: dict[str, _StageOwner] = {}
        self._lock = threading.RLock()

    def stage(self, runtime: Any, engine: str) -> Optional[Stage]:
        """The bounded stage in front of the engine called ``engine`` (None when backpressure is
        off), one per engine for every config that shares it."""
        bp, health = runtime.settings.backpressure, runtime.settings.health
        wanted = (bp.engines, bp.degraded_at, bp.overloaded_at, bp.retry_after_s, health) if bp.enabled else None
        name = f"engine/{engine}"
        with self._lock:
            if name not in self._stages:
                made = None
                if bp.enabled:
                    # The engine's calls all pass its stage: there they are judged for its health.
                    made = stages.get(name, bp.engines, bp, dependencies.calls("engine", engine, health))
                self._stages[name] = _StageOwner(made, wanted, runtime.scope)
            stage, settings, owner = self._stages[name]
            if settings != wanted:
                raise ConflictingStages(
                    f"configs '{owner}' and '{runtime.scope}' share the engine {engine!r} but set different "
                    "backpressure for it (backpressure.enabled, .engines, the health thresholds and health): one "
                    "engine has one stage; give both configs the same settings"
                )
            return stage

    def get(self, runtime: Any, section: str, key: tuple, build: Callable[[Any, Optional[Stage]], Built]) -> Built:
        """The engine of the settings ``section`` of ``runtime``'s config (``build(settings, stage)``),
        shared by every config whose ``key`` (the checkpoint and how it runs) is the same."""
        settings = getattr(runtime.settings, section)
        with self._lock:
            # Engines of one checkpoint (other batching, say) queue at one stage, as health shows it.
            stage = self.stage(runtime, f"{section}:{settings.model}")
            if (section, *key) not in self._entries:
                try:
                    self._entries[(section, *key)] = build(settings, stage)
                except CheckpointError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a model that half loads is refused whole, by name
                    raise checkpoint_error(section, settings.model, f"{type(exc).__name__}: {exc}") from exc
            return self._entries[(section, *key)]

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()
            self._stages.clear()


pool = EnginePool()
