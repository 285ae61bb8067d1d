"""A real app (create_app, migrated SQLite and PostgreSQL) trusting one test EHR key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hooks_support import ISSUER, Caller, SigningKey

from cds.config import Settings
from cds.store.db import Database


@pytest.fixture(scope="session")
def ehr_key() -> SigningKey:
    return SigningKey()


@pytest.fixture
def hooks_settings(app_settings: Settings, tmp_path: Path, ehr_key: SigningKey) -> Settings:
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps([{"iss": ISSUER, "jwks": ehr_key.jwks()}]))
    return app_settings.with_overrides(
        clients_file=clients,
        public_base_url="https://cds.example.org",
        fhir_allowed_hosts=("127.0.0.1",),
        fhir_timeout_s=2.0,
        max_request_bytes=64 * 1024,
    )


@pytest.fixture
def hooks_app(db: Database, hooks_settings: Settings) -> Iterator[Flask]:
    from cds import create_app
    from cds.extensions import services

    application = create_app(hooks_settings)
    application.config["TESTING"] = True
    try:
        yield application
    finally:
        services(application).close()


@pytest.fixture
def hooks_client(hooks_app: Flask) -> FlaskClient:
    return hooks_app.test_client()


@pytest.fixture
def caller(hooks_client: FlaskClient, ehr_key: SigningKey) -> Caller:
    return Caller(hooks_client, ehr_key, "https://cds.example.org")
