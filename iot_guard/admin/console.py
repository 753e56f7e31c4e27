"""The approval console's files: one HTML page, one script, one stylesheet (no build step).

The page itself carries no data, so it loads without a token; every data call it makes
sends the approver's bearer token.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
FILES = {
    "console.js": "text/javascript",
    "console.css": "text/css",
}


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers={"Content-Type": "text/html"})


async def static_file(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in FILES:  # only these files: no path from the URL reaches the disk
        raise web.HTTPNotFound(text=f"no file {name!r}")
    return web.FileResponse(STATIC / name, headers={"Content-Type": FILES[name]})


async def no_icon(request: web.Request) -> web.Response:
    return web.Response(status=204)  # browsers ask for one; a 404 would fill their console


def routes() -> list[web.RouteDef]:
    return [web.get("/", index), web.get("/static/{name}", static_file),
            web.get("/favicon.ico", no_icon)]
