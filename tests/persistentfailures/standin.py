"""The pattern's downstream stand-in (`python -m persistentfailures.downstream`) as the tests
run it: one process per test session, and a client for its switches and records."""

from pathlib import Path
from typing import Any

from devkit.processes import StandInProcess, http

# Quick to test: a Retry-After of 1 s (the smallest HTTP can say), renders without delay.
STANDIN_SETTINGS = {"RETRY_AFTER_SECONDS": "1", "RATE_LIMITED_CALLS": "1", "RENDER_SECONDS": "0"}


class Downstream(StandInProcess):
    def __init__(self, port: int, log_path: Path) -> None:
        module = "persistentfailures.downstream"
        super().__init__(module, port, "DOWNSTREAM_PORT", log_path, settings=STANDIN_SETTINGS)

    def service_settings(self, settings: dict[str, str]) -> dict[str, str]:
        """The service's settings, pointed at this stand-in."""
        return {"DOWNSTREAM_URL": self.url, **settings}

    def order(self, order_id: str) -> dict[str, Any]:
        """What the order did here: its calls and their effects."""
        return self._call("GET", f"/orders/{order_id}")  # type: ignore[no-any-return]

    def events(self, order_ids: set[str], call: str | None = None) -> list[dict[str, Any]]:
        """The calls of these orders as they came and were answered, in order."""
        events: list[dict[str, Any]] = self._call("GET", "/events")
        return [e for e in events if e["orderId"] in order_ids and call in (None, e["call"])]

    def received(self, order_id: str, call: str) -> int:
        return len([e for e in self.events({order_id}, call) if e["event"] == "received"])

    def hold(self, order_id: str, call: str) -> None:
        """Answer this order's `call` only once `release` is called (the call still works)."""
        self._call("PUT", f"/holds/{order_id}/{call}")

    def release(self, order_id: str, call: str) -> None:
        self._call("DELETE", f"/holds/{order_id}/{call}")

    def set_carrier(self, up: bool) -> None:
        self._call("PUT", "/carrier", {"up": up})

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = http().request(method, self.url + path, json=body, timeout=10)
        assert response.status_code == 200, f"{method} {path}: {response.text}"
        return response.json()
