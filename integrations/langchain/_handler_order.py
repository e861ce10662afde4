"""Why `GuardCallbackHandler` hashes to 0: it must be heard before every other handler of a run (rt61d F3).

LangChain calls a run's handlers in the order of its callback manager's list, and the guard relies on that: listed
first in the config's callbacks, it raises on a token, an answer (``on_llm_end``) or a tool's result before
LangGraph's ``stream_mode="messages"`` handler or a UI handler after it hears them. But where two callback managers
meet (``merge_configs``: ``model.with_retry()``, a ``RunnableBinding`` such as ``llm.bind_tools(tools)`` invoked with
a node's ``config``, ``prompt | llm.bind(...)``), ``BaseCallbackManager.merge`` joins their handlers as
``list(set(a) | set(b))``: set order, not list order.

CPython iterates a set by its table's slots from slot 0, and puts an element first at slot ``hash & mask`` (then
the next free slots, linear probing). An element whose hash is 0, added first to an empty set (it is first in the
list), takes slot 0; a copy (``set_merge``), a union and a resize re-insert the old table's elements from slot 0
on, so it keeps slot 0 and comes out first. A second guard handler listed right after it takes slot 1, before
any other handler can. Equality stays identity: two handlers are never merged into one. A handler listed before
the guard can take slot 0 first: the guard must be listed first (docs/langchain.md).
"""

from __future__ import annotations


class HeardFirst:
    """A callback handler that stays first when LangChain merges handler lists through sets (see module)."""

    __slots__ = ()

    def __hash__(self) -> int:
        return 0
