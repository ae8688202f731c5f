"""`cas serve`: an HTTP chunk server in front of any store.

Modules: `app` (middlewares, running), `routes` (the API), `tokens`
(scopes and constant-time lookup), `verify` (upload checks), `metrics`
and `accesslog` (observability), `context` (shared keys).
"""

from cas.server.app import build_app, configure_logging, serve
from cas.server.tokens import Scope, TokenTable
from cas.server.verify import Limits

__all__ = ["Limits", "Scope", "TokenTable", "build_app", "configure_logging", "serve"]
