"""What the daemon's task groups share."""

from __future__ import annotations

import anyio


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first failure inside a task group's exception group, skipping the siblings'
    cancellations (a group of nothing but cancellations is returned whole), so callers
    see the exception type they would have met without the task group."""
    cancelled = anyio.get_cancelled_exc_class()
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop(0)
        if isinstance(exc, BaseExceptionGroup):
            pending[:0] = exc.exceptions
        elif not isinstance(exc, cancelled):
            return exc
    return group
