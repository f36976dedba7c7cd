"""Testing helpers: an in-process client for a model, with authentication wired.

``TestClient(Iris, project_dir=...)`` loads the project's ``secureserve.toml``
and model files exactly as ``secureserve run`` would, mints a throw-away API
key held only in memory (nothing is written to the project's key file), and
talks to the app over the ASGI interface with an ``https`` scope. It needs
``httpx2`` (``pip install secureserve[testing]``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.testclient import TestClient as _StarletteClient

from secureserve.app import create_app
from secureserve.config import Settings, load_settings
from secureserve.keys import KeyStore, mint_key
from secureserve.model import Model

if TYPE_CHECKING:
    import httpx2

__all__ = ["TestClient"]


class TestClient(_StarletteClient):
    """A Starlette test client for one model, authenticated with a fresh in-memory key.

    Use it as a context manager so the app's start-up and shutdown run. Without
    ``audit_path`` the audit log goes to a temporary folder, removed on exit.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        model: Model[Any, Any] | type[Model[Any, Any]],
        *,
        project_dir: Path | None = None,
        config: Settings | None = None,
        roles: tuple[str, ...] = ("predict",),
        models: tuple[str, ...] | None = None,
        audit_path: Path | None = None,
    ) -> None:
        settings = config or load_settings(project_dir=project_dir or Path.cwd())
        # a folder of its own unless one is given; removed when the client closes
        self._temporary: Path | None = None
        if audit_path is None:
            self._temporary = Path(tempfile.mkdtemp(prefix="secureserve-audit-"))
            audit_path = self._temporary / "audit.jsonl"
        self.audit_path = audit_path
        settings = msgspec.structs.replace(
            settings, audit=msgspec.structs.replace(settings.audit, path=self.audit_path)
        )
        key = mint_key(name="testing", roles=roles, models=models)
        app = create_app(
            model,
            config=settings,
            keys=KeyStore(None, records=[key.record]),
            audit_key=os.urandom(32),
        )
        (self.model_name,) = app.state.models.by_name  # the one model it serves
        super().__init__(
            app, base_url="https://testserver", headers={"Authorization": f"Bearer {key.secret}"}
        )

    def __exit__(self, *args: object) -> None:
        """Stop the app; remove the temporary audit folder this client made, if any."""
        try:
            super().__exit__(*args)
        finally:
            if self._temporary is not None:
                shutil.rmtree(self._temporary, ignore_errors=True)

    def predict(self, instances: list[Any]) -> httpx2.Response:
        """``POST /v1/models/{name}:predict`` with ``{"instances": instances}``."""
        return self.post(f"/v1/models/{self.model_name}:predict", json={"instances": instances})

    def anonymous(self) -> _StarletteClient:
        """A client for the same app that sends no credentials."""
        return _StarletteClient(self.app, base_url="https://testserver")
