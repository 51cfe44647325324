"""How a run is judged: with or without task labels at test time, on the
test stream or on validation data, and how tuning trials are judged; and
where runs execute.

Constants alone, so that the command line can offer them (and refuse
others) without importing torch or Avalanche.
"""

__all__ = ["SCENARIOS", "EVALUATED_ON", "VALIDATION_SIZE", "TUNING_PROTOCOLS", "EXECUTORS"]

SCENARIOS = ("task_incremental", "class_incremental")
"""``task_incremental``: task labels at training and test time;
``class_incremental``: none at test time (each strategy's
:attr:`~piggyback_avalanche.training.registry.RegisteredStrategy.class_incremental_settings`)."""

EVALUATED_ON = ("test", "validation")
"""``test``: the stream's test experiences; ``validation``: a fifth of each
training experience, held out (the rest trains), so that settings can be
chosen without reading the test stream."""

VALIDATION_SIZE = 0.2
"""The share of each training experience held out for validation."""

TUNING_PROTOCOLS = ("validation", "first_tasks")
"""How trials are judged: see :mod:`~piggyback_avalanche.app.tuning`."""

EXECUTORS = ("serial", "ray")
"""``serial``: every run in turn, in the runner's process; ``ray``: each run
a task on a Ray cluster (:mod:`~piggyback_avalanche.app.executors`)."""
