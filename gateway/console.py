"""The web console: static files (HTML, JS modules, CSS) served by the gateway at ``/``.

There is no build step: the files in ``gateway/console/`` are shipped as package data and
served as they are. The page holds no secret: the user types an API key, which the browser
keeps in ``sessionStorage`` and sends as ``Authorization: Bearer`` to the same API as every
other client (docs/console.md). :func:`install_console` adds the page, its assets and the few
routes it needs besides the gateway's (:mod:`gateway.console_api`).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

from .console_api import router

__all__ = ["CONSOLE_PATH", "console_directory", "install_console"]

#: Where the console's assets are served from.
CONSOLE_PATH = "/console"

#: Sent with the page: scripts and styles from the gateway only, no inline script, no framing.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def console_directory() -> str:
    """The directory of the console's files inside the installed package."""
    return str(resources.files("gateway") / "console")


def install_console(app: FastAPI) -> None:
    """Serve the console at ``/`` and its assets under ``/console/``, and add its routes."""
    directory = console_directory()
    index = f"{directory}/index.html"
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    async def console_page() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers=_PAGE_HEADERS)

    @app.get(CONSOLE_PATH, include_in_schema=False)
    async def console_redirect() -> RedirectResponse:
        return RedirectResponse("/")

    app.mount(CONSOLE_PATH, StaticFiles(directory=directory), name="console")
    del console_page, console_redirect
