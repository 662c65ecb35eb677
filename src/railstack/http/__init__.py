"""The HTTP layer railstack puts in front of ``nemoguardrails server``, outermost first:
``ops`` (health, metrics), ``decisions`` (request id and decision headers), ``validation``
(400/404/408/413), ``upstream`` (the request deadline, the main model's failures as 502/504/its
4xx), ``admission`` (429), ``backpressure`` (503), ``input_rails`` (the input rails before NeMo,
speculative start). ``install`` wires them at server start."""
