"""`dapt ui`: a read-only, server-rendered web view of the registry (Starlette + Jinja2, no JavaScript).

Serves only: imports models.registry.store and the HTML helpers, never training code.
"""

from services.ui.app import create_app

__all__ = ["create_app"]
