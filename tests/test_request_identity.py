"""Request identity (opt-in): the server signs its requests, the service serves only those.

One server with a signing key and durablerpc served with the matching public key in
IDENTITY_KEYS: calls through the ingress work, an unsigned request straight to the
service's port is refused with 401, and so is a server holding another key. Without
IDENTITY_KEYS the service answers unsigned requests as before.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from devkit import identity
from devkit.processes import PatternService, RestateServer, free_port, register
from devkit.pytest_restate import ProcessError, StartServer, attach_log
from tests.harness import HTTP_TIMEOUT, Ingress, eventually

DISCOVER = {"accept": "application/vnd.restate.endpointmanifest.v3+json"}
INVOKE = {"content-type": "application/vnd.restate.invocation.v5"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> identity.KeyPair:
    return identity.generate(tmp_path_factory.mktemp("identity"))


@pytest.fixture(scope="module")
def signing_server(
    tmp_path_factory: pytest.TempPathFactory, keys: identity.KeyPair, start_server: StartServer
) -> Iterator[RestateServer]:
    """A server of its own (the shared one does not sign)."""
    server = start_server(
        tmp_path_factory.mktemp("restate-identity"), settings=keys.server_settings()
    )
    yield server
    server.stop()


@pytest.fixture
def serve(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., PatternService]]:
    """Start `python -m durablerpc` with the given settings (not registered)."""
    started: list[PatternService] = []

    def start(settings: dict[str, str]) -> PatternService:
        service = PatternService(
            "durablerpc", free_port(), tmp_path / f"durablerpc-{len(started)}.log", settings
        )
        started.append(service)
        attach_log(request, service)
        service.start()
        return service

    yield start
    for service in started:
        service.stop()


def unsigned_requests(service: PatternService) -> tuple[httpx.Response, int]:
    """Discovery and an (empty) invocation sent straight to the service, unsigned: the
    discovery answer, and the status the invocation's answer starts with (an empty
    invocation then breaks off in the SDK's protocol handling, so its body is not read)."""
    with httpx.Client(timeout=HTTP_TIMEOUT) as client:
        discover = client.get(f"{service.url}/discover", headers=DISCOVER)
        url = f"{service.url}/invoke/ProductService/reserve"
        with client.stream("POST", url, headers=INVOKE) as invoke:
            return discover, invoke.status_code


def test_the_public_key_is_in_the_form_the_sdk_reads(keys: identity.KeyPair) -> None:
    from restate._internal import (  # type: ignore[import-not-found]
        IdentityKeyException,
        PyIdentityVerifier,
    )

    assert keys.public_key.startswith("publickeyv1_")
    PyIdentityVerifier([keys.public_key])  # raises on a malformed key
    with pytest.raises(IdentityKeyException):
        PyIdentityVerifier([keys.public_key[:-2]])


def test_with_identity_signed_calls_work_and_unsigned_ones_are_refused(
    signing_server: RestateServer,
    keys: identity.KeyPair,
    serve: Callable[..., PatternService],
    request: pytest.FixtureRequest,
) -> None:
    attach_log(request, signing_server)
    service = serve(keys.service_settings())
    # discovery through the server is signed, so registering works
    known_to = [signing_server.ingress_url]
    assert register(signing_server.admin_url, service.url, ingress_urls=known_to) == [
        "ProductService"
    ]
    ingress = Ingress(signing_server)
    response = ingress.post("/ProductService/product-identity/reserve")
    assert response.status_code == 200, response.text
    assert response.json() is True
    discover, invoke_status = unsigned_requests(service)
    assert (discover.status_code, invoke_status) == (401, 401)
    assert httpx.get(f"{service.url}/health", timeout=HTTP_TIMEOUT).status_code == 200
    # a request signed with another key is refused too: the server's discovery fails
    other = identity.generate(Path(service.log_path).parent / "other")
    stranger = serve(other.service_settings())
    with pytest.raises(ProcessError, match="401"):
        register(signing_server.admin_url, stranger.url)


def test_without_identity_the_service_answers_unsigned_requests(
    serve: Callable[..., PatternService],
) -> None:
    service = serve({})
    assert "Serving only requests signed" not in service.log_text()
    discover, invoke_status = unsigned_requests(service)
    assert discover.status_code == 200, discover.text
    assert {s["name"] for s in discover.json()["services"]} == {"ProductService"}
    # the invocation reached the SDK (no 401), which then failed on the empty body; hypercorn
    # had sent the SDK's 200 by then, granian (SERVER=granian) holds it back and answers 500
    assert invoke_status in (200, 500)
    eventually(
        lambda: "The input was closed while still waiting" in service.log_text(),
        timeout=10,
        message="the SDK to refuse the empty invocation",
    )
