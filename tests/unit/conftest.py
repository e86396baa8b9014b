"""Unit tests are pure: no network, no AWS, fresh settings for every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_socket

# Imported before any test blocks sockets: urllib3's import opens one to probe IPv6 support,
# which a blocked socket would answer wrongly for the rest of the session (and warn).
import urllib3  # noqa: F401

from bulk_import.config import get_settings


@pytest.fixture(autouse=True)
def _no_network() -> Iterator[None]:
    """An accidental network call fails loudly instead of reaching a real service."""
    pytest_socket.disable_socket(allow_unix_socket=True)
    try:
        yield
    finally:
        pytest_socket.enable_socket()


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    get_settings.cache_clear()
    try:
        yield
    finally:
        get_settings.cache_clear()
