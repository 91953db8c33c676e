import pytest

from devkit.processes import RestateServer


@pytest.fixture
def server(server_with_kafka: RestateServer) -> RestateServer:
    """This pattern consumes from Kafka: its services use the server with a Kafka cluster."""
    return server_with_kafka
