"""The interactive API page of ``secureserve run --dev``: Swagger UI at ``/docs``.

Development only: ``create_app(..., dev=True)`` puts :class:`DocsPage` in front of
authentication, and nothing else does. A browser cannot send a bearer key with a page
load, so the page and its files are public; they hold nothing but Swagger UI and this
module's own page. The OpenAPI document keeps its authentication: the page asks for
the API key (kept in the tab's memory, sent to this origin only), loads
``/openapi.json`` with it, and Swagger UI's Authorize button can switch keys.

Swagger UI's files come from the ``flask-swagger-ui`` package (the ``docs`` extra; the
files are the upstream ``swagger-ui-dist`` ones, and the package is located, never
imported, so Flask is not loaded). They are read once, at start, into memory: a request
path selects one of a fixed set of names and never reaches the filesystem. The page has
no inline script or style, so its Content-Security-Policy allows this origin only.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Final, NamedTuple

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from secureserve.errors import RequestRejected
from secureserve.middleware.probes import app_path

__all__ = ["CSP", "DOCS_EXTRA", "Asset", "DocsPage", "installed", "load_assets"]

PAGE_PATH: Final = "/docs"
ASSETS_PREFIX: Final = "/docs/assets/"
#: Sent with the page and its files (instead of the API's ``default-src 'none'``).
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: What to install for the page: the extra and the package that ships Swagger UI.
DOCS_EXTRA: Final = "pip install 'secureserve[docs]'"
_PACKAGE: Final = "flask_swagger_ui"
#: Swagger UI's files served, by name, as its package ships them under ``dist/``.
_SWAGGER_FILES: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}
_MAX_ASSET_BYTES: Final = 16 * 1024 * 1024
_ALLOW: Final = "GET, HEAD"
_UNDER_PAGE: Final = PAGE_PATH + "/"  # all of it is the page's: unknown names are 404


class Asset(NamedTuple):
    """One file of the page, in memory: its bytes and media type."""

    body: bytes
    media_type: str


_PAGE: Final = b"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>secureserve API (development)</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="stylesheet" href="docs/assets/docs.css">
<script src="docs/assets/swagger-ui-bundle.js" defer></script>
<script src="docs/assets/docs.js" defer></script>
</head>
<body>
<form id="secureserve-key-form" class="secureserve-key" autocomplete="off">
<label for="secureserve-key">API key</label>
<input id="secureserve-key" type="password" autocomplete="off" spellcheck="false" required>
<button type="submit">Load the API</button>
<p>Development page of <code>secureserve run --dev</code>. The key stays in this tab's
memory and is sent to this server only; the OpenAPI document needs it. The Authorize
button below can switch to another key.</p>
</form>
<div id="swagger-ui"></div>
</body>
</html>
"""

_SCRIPT: Final = b"""// The interactive API page of `secureserve run --dev` (secureserve.docs_page).
// The API key is kept in this closure only (a reload of the page asks again) and is
// added to requests for this origin that carry no Authorization of their own.
"use strict";
(function () {
  var form = document.getElementById("secureserve-key-form");
  var input = document.getElementById("secureserve-key");
  var origin = window.location.origin;

  function sameOrigin(url) {
    try {
      return new URL(url, document.baseURI).origin === origin;
    } catch (error) {
      return false;
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var authorization = "Bearer " + input.value.trim();
    input.value = "";
    window.ui = SwaggerUIBundle({
      url: new URL("openapi.json", document.baseURI).href,
      dom_id: "#swagger-ui",
      deepLinking: false,
      queryConfigEnabled: false,
      persistAuthorization: false,
      validatorUrl: null,
      requestInterceptor: function (request) {
        if (sameOrigin(request.url) && !request.headers.Authorization) {
          request.headers.Authorization = authorization;
        }
        return request;
      },
    });
  });
})();
"""

_STYLE: Final = b"""/* The API key form above Swagger UI (secureserve.docs_page). */
.secureserve-key {
  max-width: 1460px;
  margin: 0 auto;
  padding: 16px 20px 0;
  font-family: sans-serif;
}
.secureserve-key input {
  width: 28em;
  max-width: 100%;
  margin: 0 8px;
  padding: 4px 6px;
}
.secureserve-key p {
  color: #555;
  font-size: 0.9em;
}
"""

_MISSING: Final = (
    "secureserve: the interactive API page needs Swagger UI's files, which come with the "
    f"docs extra:\n\n    {DOCS_EXTRA}\n\nthen restart `secureserve run --dev`.\n"
).encode()


def installed() -> bool:
    """Whether Swagger UI's package is installed (the page has its files), without importing it."""
    return importlib.util.find_spec(_PACKAGE) is not None


def load_assets() -> dict[str, Asset] | None:
    """The page's files by name, read once; None when Swagger UI's package is missing.

    The package is found without being imported. A file missing from it or larger than
    ``_MAX_ASSET_BYTES`` counts as missing (an unexpected layout of a later version).
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    dist = Path(next(iter(spec.submodule_search_locations))) / "dist"
    assets = {"docs.js": Asset(_SCRIPT, "text/javascript; charset=utf-8")}
    assets["docs.css"] = Asset(_STYLE, "text/css; charset=utf-8")
    for name, media_type in _SWAGGER_FILES.items():
        try:
            with (dist / name).open("rb") as file:
                body = file.read(_MAX_ASSET_BYTES + 1)
        except OSError:
            return None
        if len(body) > _MAX_ASSET_BYTES:
            return None
        assets[name] = Asset(body, media_type)
    return assets


class DocsPage:
    """Answer ``GET /docs`` and ``GET /docs/assets/{name}`` (else 404 under ``/docs/``).

    Every other path goes on to the app.

    ``assets`` None (Swagger UI not installed): ``/docs`` says which extra to install.
    """

    def __init__(self, app: ASGIApp, *, assets: dict[str, Asset] | None) -> None:
        self.app = app
        self.assets = assets
        self.headers = {"content-security-policy": CSP}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        path = app_path(scope) if scope["type"] == "http" else None
        if path is None or (path != PAGE_PATH and not path.startswith(_UNDER_PAGE)):
            await self.app(scope, receive, send)
            return
        if scope["method"] not in {"GET", "HEAD"}:
            raise RequestRejected(
                405, "method-not-allowed", "Method not allowed", headers={"Allow": _ALLOW}
            )
        if path == PAGE_PATH:
            if self.assets is None:
                response = Response(_MISSING, media_type="text/plain; charset=utf-8")
            else:
                response = Response(_PAGE, media_type="text/html; charset=utf-8")
        else:
            name = path[len(ASSETS_PREFIX) :] if path.startswith(ASSETS_PREFIX) else ""
            asset = (self.assets or {}).get(name)
            if asset is None:
                raise RequestRejected(404, "not-found", "Not found", log_reason="docs-asset")
            response = Response(asset.body, media_type=asset.media_type)
        response.headers.update(self.headers)
        await response(scope, receive, send)
