"""Blocked runs are not logged as callback errors.

LangChain logs every exception a callback handler raises, at WARNING, before it re-raises it to the
caller (``raise_error=True``): a blocked stream printed ``Error in GuardCallbackHandler.on_llm_new_token
callback: GuardViolation(...)``, shown by default. For qwenguard's own exceptions that line only
repeats what the caller receives, so a filter on LangChain's callback logger moves it to DEBUG on the
``qwenguard.integrations.langchain`` logger. To see it::

    import logging
    logging.basicConfig()
    logging.getLogger("qwenguard.integrations.langchain").setLevel(logging.DEBUG)

Only the handlers registered here (qwenguard's, and their subclasses) and only exceptions of
qwenguard's tree (`QwenGuardError`) are moved; any other handler error is logged as LangChain does.
"""

from __future__ import annotations

import logging

from qwenguard.core import QwenGuardError

__all__ = ["quiet_guard_stops", "logger"]

logger = logging.getLogger("qwenguard.integrations.langchain")

#: LangChain's logger of callback errors, and its message (langchain_core.callbacks.manager).
_MANAGER_LOGGER = "langchain_core.callbacks.manager"
_MESSAGE = "Error in %s.%s callback: %s"

_handlers: set[str] = set()


def _error_prefixes() -> tuple[str, ...]:
    """``"GuardViolation("``, ... for every class of qwenguard's exception tree (``repr`` starts so)."""
    names, todo = [], [QwenGuardError]
    while todo:
        cls = todo.pop()
        names.append(f"{cls.__name__}(")
        todo.extend(cls.__subclasses__())
    return tuple(names)


class _GuardStopsAreNotErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.msg == _MESSAGE
            and isinstance(args, tuple)
            and len(args) == 3
            and args[0] in _handlers
            and str(args[2]).startswith(_error_prefixes())
        ):
            logger.debug("%s.%s stopped the run: %s", *args)
            return False
        return True


_filter = _GuardStopsAreNotErrors()


def quiet_guard_stops(handler_name: str) -> None:
    """Register a handler class by name (idempotent); installs the filter on first use."""
    _handlers.add(handler_name)
    manager_logger = logging.getLogger(_MANAGER_LOGGER)
    if _filter not in manager_logger.filters:
        manager_logger.addFilter(_filter)
