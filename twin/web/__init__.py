"""The websocket live view: the fleet's owner → region → site → asset tree in a browser.

>>> from twin.web import LiveServer
>>> server = LiveServer(fleet, port=0).start()     # doctest: +SKIP
>>> server.url                                     # doctest: +SKIP
'http://127.0.0.1:43117/'

See ``docs/live-view.md`` for the endpoints, the websocket protocol and authentication.
"""

from twin.web.auth import AuthConfigError, FailureLimiter
from twin.web.coalesce import Coalescer
from twin.web.history import History, Point
from twin.web.live import LiveHub
from twin.web.server import LiveServer, create_app

__all__ = ["AuthConfigError", "Coalescer", "FailureLimiter", "History", "LiveHub", "LiveServer",
           "Point", "create_app"]
