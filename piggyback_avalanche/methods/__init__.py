"""One package per method: its layers, model, strategy, settings
(a :class:`~piggyback_avalanche.task_aware.registration.MethodConfig`) and
what only it needs (Piggyback's masks); each registers itself when
imported.

Importing this package imports every built-in method, so that each has
registered (what :mod:`piggyback_avalanche.training.registry` relies on).
"""

from piggyback_avalanche.methods import bitfit, lora, packnet, piggyback, prompt, reference

__all__ = ["bitfit", "lora", "packnet", "piggyback", "prompt", "reference"]
