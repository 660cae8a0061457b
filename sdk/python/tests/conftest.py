"""The SDK's tests run against a real coved with real guests: `cargo test -p cove-tests --test
python_sdk` (part of `make test`) starts one and sets

    COVE_HOST, COVE_API_KEY   a key of the tenant the tests work as (scope exec)
    COVE_OTHER_KEY            a key of another tenant
    COVE_QUOTA_KEY            a key of a tenant whose quota allows no sandbox

Without them the tests fail rather than skip."""

from __future__ import annotations

import os
from typing import Iterator

import pytest

from cove import Client, Sandbox


def env(name: str) -> str:
    v = os.environ.get(name)
    if not v:
        pytest.fail(f"{name} is not set: run these through `cargo test -p cove-tests --test python_sdk`")
    return v


@pytest.fixture(scope="session")
def client() -> Iterator[Client]:
    env("COVE_HOST")
    env("COVE_API_KEY")
    with Client() as c:
        yield c


@pytest.fixture(scope="session")
def other() -> Iterator[Client]:
    with Client(env("COVE_HOST"), env("COVE_OTHER_KEY")) as c:
        yield c


@pytest.fixture(scope="module")
def sbx(client: Client) -> Iterator[Sandbox]:
    """One sandbox a module's tests share (a boot each would dominate under TCG)."""
    with Sandbox.create(image="busybox", client=client, labels={"suite": "python-sdk"}) as s:
        yield s


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
