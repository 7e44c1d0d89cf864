"""The live view's panel of active dispatches: the latest report of each, merged from the
fleet's stream of reports and a first look at the fleet.

The stream (``fleet.subscribe_dispatches``) and the first look (``fleet.dispatches()``) can
cross: a report read at start may be older than one the stream already brought, and a
dispatch may end between the two. So a report never replaces a newer one of its dispatch,
and a dispatch once seen ending stays gone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from twin.control.dispatch import DispatchReport
from twin.web.messages import dispatches_message, encode

ENDED_KEPT: Final = 1000       # ids of ended dispatches remembered (a late report is ignored)


class DispatchBook:
    """Active dispatch id → its latest report; ``text()`` is the panel's message."""

    def __init__(self, ended_kept: int = ENDED_KEPT) -> None:
        self.latest: dict[str, DispatchReport] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()
        self._ended_kept = ended_kept
        self._text: str | None = None

    def apply(self, report: DispatchReport) -> bool:
        """Take a report; whether the panel changed."""
        dispatch_id = report.dispatch_id
        if report.status != "active":
            self._ended[dispatch_id] = None
            while len(self._ended) > self._ended_kept:
                self._ended.popitem(last=False)
            return self._changed(self.latest.pop(dispatch_id, None) is not None)
        if dispatch_id in self._ended:
            return False
        known = self.latest.get(dispatch_id)
        if known is not None and known.at > report.at:
            return False
        self.latest[dispatch_id] = report
        return self._changed(True)

    def _changed(self, changed: bool) -> bool:
        if changed:
            self._text = None
        return changed

    def text(self) -> str:
        """The ``dispatches`` message, encoded once per change whatever the clients."""
        if self._text is None:
            self._text = encode(dispatches_message(self.latest.values()))
        return self._text

    def __len__(self) -> int:
        return len(self.latest)
