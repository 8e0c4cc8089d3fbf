"""`/docs` (Swagger UI) and `/redoc` from assets served by the app, not from a CDN.

FastAPI's default pages load Swagger UI and ReDoc from jsdelivr, so they are blank on a
machine without internet. The `fastapi-offline` package ships both bundles; we serve its
files under `/docs-assets/` and point FastAPI's own page builders at them. ReDoc's bundle
also fetches its maker's logo from a CDN for the menu's footer (a failed request, and an
error in the browser console, when offline): we serve the bundle with our icon instead.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, Request, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def install(app: FastAPI) -> None:
    """Add `/docs`, `/redoc` and their assets; `app` must be built with both URLs None."""
    bundle = files("fastapi_offline").joinpath("static")
    redoc_js = (
        bundle.joinpath("redoc.standalone.js").read_bytes().replace(_REDOC_LOGO, b"/favicon.ico")
    )

    @app.get(f"{ASSETS}/redoc.standalone.js", include_in_schema=False)
    async def redoc_bundle() -> Response:
        return Response(
            redoc_js, media_type="text/javascript", headers={"Cache-Control": "max-age=3600"}
        )

    app.mount(ASSETS, StaticFiles(directory=str(bundle)), name="docs-assets")
    openapi = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}/favicon.ico",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(
            openapi_url=f"{root}{openapi}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}/favicon.ico",
            with_google_fonts=False,
        )
