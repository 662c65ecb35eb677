"""The Prometheus metrics railstack keeps, served at ``/metrics`` by ``railstack.http.install``.

They live in prometheus-client's default registry, so a process that already exports it
(or adds its own collectors) serves them together.
"""

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets from sub-millisecond cheap checks to slow classifier and model calls.
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

ADMISSION = Counter(
    "railstack_admission", "Admission decisions per config.", ["config", "result"]
)  # result: admitted | limited | unavailable
SHED = Counter("railstack_shed", "Requests shed by a bounded stage.", ["stage", "reason"])
STAGE_IN_FLIGHT = Gauge("railstack_stage_in_flight", "Requests holding a slot of the stage.", ["stage"])
STAGE_QUEUED = Gauge("railstack_stage_queued", "Requests waiting for a slot of the stage.", ["stage"])
STAGE_CAPACITY = Gauge("railstack_stage_capacity", "Slots of the stage.", ["stage"])
RAIL_DECISIONS = Counter(
    "railstack_rail_decisions", "Rail decisions.", ["rail", "source", "verdict", "failed"]
)  # verdict: allow | block | skipped | cancelled
RAIL_LATENCY = Histogram("railstack_rail_latency_seconds", "Time one rail took.", ["rail", "source"], buckets=_SECONDS)
MAIN_MODEL_LATENCY = Histogram(
    "railstack_main_model_latency_seconds", "Time of the main model call, to its last token.", ["config"], buckets=_SECONDS
)
SPECULATIVE_CANCELLED = Counter(
    "railstack_speculative_cancelled", "Main-model calls started speculatively and cancelled by a later input rail's block."
)
DEPENDENCY_STATE = Gauge(
    "railstack_dependency_state", "Health of a dependency: 0 healthy, 1 degraded, 2 unhealthy.", ["dependency", "name"]
)  # dependency: main_model | redis | engine
STAGE_STATE = Gauge("railstack_stage_state", "Health of a bounded stage: 0 healthy, 1 degraded, 2 overloaded.", ["stage"])
READY = Gauge("railstack_ready", "1 while /railstack/ready answers 200, else 0.")
