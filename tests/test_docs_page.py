"""The interactive API page of ``--dev`` (secureserve.docs_page): public page, same-origin only.

The page and its files need no key; everything else, ``/openapi.json`` included, still
does. Swagger UI's files are an allowlist read once at start, and a production app has
no ``/docs`` at all.
"""

from __future__ import annotations

import importlib.util
import io
import re
from pathlib import Path

import pytest
from app_helpers import asgi_client, json_lines, json_logs, unlimited_iris_settings
from conftest import load_iris

from secureserve import docs_page
from secureserve.app import create_app
from secureserve.docs_page import CSP, DOCS_EXTRA, load_assets
from secureserve.keys import KeyStore, mint_key
from secureserve.problems import SECURITY_HEADERS

Iris = load_iris()
KEY = mint_key(name="docs", roles=("predict",))
API_CSP = dict(SECURITY_HEADERS)[b"content-security-policy"].decode()
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css", "docs.js", "docs.css")


def _app(*, dev: bool):
    """The iris app, in development mode or not, with one predict key."""
    store = KeyStore(None, records=[KEY.record])
    return create_app(Iris, config=unlimited_iris_settings(), keys=store, dev=dev)


@pytest.fixture(scope="module")
def dev_app():
    """One development app for the module (the page's files are read once, at start)."""
    return _app(dev=True)


def _swagger_dist() -> Path:
    spec = importlib.util.find_spec("flask_swagger_ui")
    assert spec is not None
    assert spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "dist"


def test_docs_page_served_without_a_key_with_its_own_csp(dev_app):
    """GET /docs: HTML, no credential needed, one CSP (the page's), the other headers kept."""
    with asgi_client(dev_app) as client:
        reply = client.get("/docs")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.headers.get_list("content-security-policy") == [CSP]
    assert "script-src 'self'" in CSP
    assert "'unsafe-inline'" not in CSP
    assert "'unsafe-eval'" not in CSP
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["x-request-id"]


def test_docs_page_has_no_inline_script_or_style(dev_app):
    """Every script is a same-origin file: nothing inline, no style attribute, no <style>."""
    with asgi_client(dev_app) as client:
        page = client.get("/docs").text
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", page, flags=re.DOTALL)
    assert len(scripts) == 2
    for attributes, body in scripts:
        assert re.search(r'src="docs/assets/[a-z.-]+"', attributes)
        assert body.strip() == ""
    assert "<style" not in page
    assert "style=" not in page
    assert re.search(r"\son[a-z]+=", page) is None  # no inline event handlers


def test_docs_page_and_its_files_name_no_other_origin(dev_app):
    """No CDN: the page and this module's own files load nothing from another origin."""
    with asgi_client(dev_app) as client:
        texts = [client.get("/docs").text]
        texts += [client.get(f"/docs/assets/{name}").text for name in ("docs.js", "docs.css")]
    for text in texts:
        assert "http://" not in text
        assert "https://" not in text
        assert "//cdn" not in text


def test_docs_page_references_only_served_assets(dev_app):
    """Each file the page names is served, with the page's CSP and its media type."""
    with asgi_client(dev_app) as client:
        page = client.get("/docs").text
        named = re.findall(r'(?:src|href)="docs/assets/([^"]+)"', page)
        assert sorted(named) == sorted(ASSETS)
        for name in named:
            reply = client.get(f"/docs/assets/{name}")
            assert reply.status_code == 200, name
            assert reply.headers.get_list("content-security-policy") == [CSP]
            kind = "text/css" if name.endswith(".css") else "text/javascript"
            assert reply.headers["content-type"] == f"{kind}; charset=utf-8"


def test_docs_assets_are_swagger_uis_own_files(dev_app):
    """swagger-ui-bundle.js is served byte for byte as the installed package ships it."""
    with asgi_client(dev_app) as client:
        reply = client.get("/docs/assets/swagger-ui-bundle.js")
    assert reply.content == (_swagger_dist() / "swagger-ui-bundle.js").read_bytes()


def test_docs_script_sends_the_key_to_this_origin_only(dev_app):
    """Our script loads /openapi.json with the key and adds it only to same-origin requests."""
    with asgi_client(dev_app) as client:
        script = client.get("/docs/assets/docs.js").text
    assert 'new URL("openapi.json", document.baseURI)' in script
    assert "sameOrigin(request.url) && !request.headers.Authorization" in script
    assert "localStorage" not in script
    assert "persistAuthorization: false" in script
    assert "queryConfigEnabled: false" in script  # ?url=... cannot point the page elsewhere


@pytest.mark.parametrize(
    "path",
    [
        "/docs/assets/..%2f..%2fsecureserve.toml",
        "/docs/assets/%2e%2e/%2e%2e/secureserve.toml",
        "/docs/assets/..%2f..%2f..%2fetc%2fpasswd",
        "/docs/assets/swagger-ui.js",  # in the package, but not on the allowlist
        "/docs/assets/LICENSE",
        "/docs/assets/",
        "/docs/assets/docs.js/",
        "/docs/",
        "/docs/swagger-ui-bundle.js",
    ],
)
def test_docs_assets_outside_the_allowlist_are_refused(dev_app, path):
    """A path is looked up among the files read at start, never on the filesystem.

    One that hides a '/' as %2f is refused before any route sees it (400).
    """
    with asgi_client(dev_app) as client:
        reply = client.get(path)
    assert reply.status_code == (400 if "%2f" in path else 404)
    assert reply.headers["content-type"] == "application/problem+json"
    assert reply.headers["content-security-policy"] == API_CSP
    assert "secureserve" not in reply.text.replace("urn:secureserve:", "")


def test_docs_page_refuses_other_methods(dev_app):
    """POST /docs is 405 with ``Allow: GET, HEAD``."""
    with asgi_client(dev_app) as client:
        reply = client.post("/docs")
    assert reply.status_code == 405
    assert reply.headers["allow"] == "GET, HEAD"


def test_docs_page_needs_https_like_every_route(dev_app):
    """The page sits behind the HTTPS check: a plaintext scope is refused (403)."""
    with asgi_client(dev_app, base_url="http://testserver") as client:
        assert client.get("/docs").status_code == 403


def test_openapi_still_needs_a_key_in_dev(dev_app):
    """The page is public; the OpenAPI document it shows is not."""
    with asgi_client(dev_app) as anonymous:
        refused = anonymous.get("/openapi.json")
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    with asgi_client(dev_app, KEY) as client:
        assert client.get("/openapi.json").status_code == 200


def test_production_app_has_no_docs_page():
    """Without dev: /docs and its files are 404 for a valid key, 401 without one."""
    app = _app(dev=False)
    with asgi_client(app, KEY) as client:
        assert client.get("/docs").status_code == 404
        assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 404
    with asgi_client(app) as anonymous:
        assert anonymous.get("/docs").status_code == 401


def test_docs_page_without_swagger_ui_says_which_extra_to_install(monkeypatch):
    """Swagger UI not installed: a warning at start, and /docs names the extra to install."""
    monkeypatch.setattr(docs_page, "_PACKAGE", "no_such_swagger_package")
    out = io.BytesIO()
    with json_logs(out):
        app = _app(dev=True)
    (warning,) = [line for line in json_lines(out) if "/docs" in line["event"]]
    assert warning["level"] == "warning"
    assert warning["install"] == DOCS_EXTRA
    with asgi_client(app) as client:
        page = client.get("/docs")
        asset = client.get("/docs/assets/swagger-ui-bundle.js")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/plain; charset=utf-8"
    assert DOCS_EXTRA in page.text
    assert asset.status_code == 404


def test_load_assets_refuses_an_oversized_file(monkeypatch):
    """A file beyond the size bound counts as missing rather than being read whole."""
    assert load_assets() is not None
    monkeypatch.setattr(docs_page, "_MAX_ASSET_BYTES", 1000)
    assert load_assets() is None
