"""Putting the app's own version of a MONAI Label route in front of MONAI Label's.

FastAPI's router answers with the first route that matches, and MONAI Label's routers are included
before the app's `on_init_complete` runs; so a route added there must be moved to the front. MONAI
Label's own route stays registered and is never reached.
"""

from __future__ import annotations


def add_first(fastapi_app, path: str, endpoint, methods: list[str], **kwargs) -> None:
    """Add the route and move it to the front (replacing one this function added before, so that an
    app built again in the same process does not stack copies)."""
    routes = fastapi_app.router.routes
    name = f"{endpoint.__module__}.{endpoint.__qualname__}"
    routes[:] = [r for r in routes if not (getattr(r, "path", None) == path and getattr(r, "endpoint", None)
                                           and f"{r.endpoint.__module__}.{r.endpoint.__qualname__}" == name)]
    before = len(routes)
    fastapi_app.add_api_route(path, endpoint, methods=methods, **kwargs)
    ours = routes[before:]
    del routes[before:]
    routes[0:0] = ours
