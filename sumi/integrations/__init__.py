"""Registration of sumi with third-party frameworks, triggered by ``import sumi`` without importing them.

``import sumi`` must stay cheap, yet after it ``transformers.AutoModel`` and ``lm_eval.simple_evaluate`` must
know the ``sumi`` model. :func:`when_imported` does both: if the framework is already imported, the
registration runs now; otherwise a post-import hook on ``sys.meta_path`` runs it right after the framework's
module is first imported (this is an ordinary import hook installed by ``import sumi``, not an interpreter
start-up hook). Each integration module exposes ``register() -> None``.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

# module that must be imported first  ->  sumi integration module with a register() function
INTEGRATIONS: dict[str, str] = {
    "transformers": "sumi.integrations.hf",
    "lm_eval.api.registry": "sumi.integrations.lm_eval",
}


def _run_register(integration: str) -> None:
    try:
        importlib.import_module(integration).register()
    except ModuleNotFoundError as exc:
        logger.debug("sumi integration %s unavailable: %s", integration, exc)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Wrap the loader of watched modules so a callback runs right after the module executes."""

    def __init__(self) -> None:
        self.pending: dict[str, list[Callable[[], None]]] = {}
        self._busy: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.pending or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        callbacks = self.pending.pop(fullname)
        original_exec = spec.loader.exec_module

        def exec_module(module, _original=original_exec, _callbacks=callbacks):
            _original(module)
            for callback in _callbacks:
                callback()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


_FINDER = _PostImportFinder()


def when_imported(module_name: str, callback: Callable[[], None]) -> None:
    """Run ``callback`` now if ``module_name`` is imported, else right after its first import."""
    if module_name in sys.modules:
        callback()
        return
    _FINDER.pending.setdefault(module_name, []).append(callback)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def install() -> None:
    for trigger, integration in INTEGRATIONS.items():
        when_imported(trigger, lambda integration=integration: _run_register(integration))
