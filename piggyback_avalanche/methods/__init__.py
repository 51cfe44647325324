"""One package per method: its layers, model, strategy, settings
(a :class:`~piggyback_avalanche.task_aware.registration.MethodConfig`) and
what only it needs (Piggyback's masks); each registers itself when
imported.

Importing this package imports every method package in it, so that each
has registered (what :mod:`piggyback_avalanche.training.registry` relies
on): a new method is its folder, with no edit here.
"""

import importlib
import pkgutil

__all__ = sorted(module.name for module in pkgutil.iter_modules(__path__) if module.ispkg)

for _name in __all__:
    importlib.import_module(f"{__name__}.{_name}")
