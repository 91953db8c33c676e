"""A local stand-in for the Stripe API: localstripe (GPL-3.0), in a process of its own.

`python -m devkit.stripe_standin <port>` serves it on 127.0.0.1 only (its own command
binds every interface) with an empty store, and without its habit of saving the store to
/tmp/localstripe.pickle after every request. The rest of the project never imports it.
"""

import sys
from pathlib import Path

import httpx

from devkit import DevError
from devkit.processes import Echo, ManagedProcess, http_ok

# Local credentials: localstripe accepts any sk_ key, and signs webhooks with the secret
# it is given when the webhook endpoint is registered.
SECRET_KEY = "sk_test_local_standin"
WEBHOOK_SECRET = "whsec_local_standin"
WEBHOOK_EVENTS = ["payment_intent.succeeded", "payment_intent.payment_failed"]


class LocalStripe(ManagedProcess):
    def __init__(self, port: int, log_path: Path, echo: Echo | None = None) -> None:
        super().__init__(
            "localstripe",
            [sys.executable, "-m", "devkit.stripe_standin", str(port)],
            log_path,
            echo=echo,
        )
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 30.0) -> None:
        super().start()
        self.wait_ready(
            lambda: http_ok(f"{self.url}/js.stripe.com/v3/"),
            timeout,
            f"localstripe to listen on {self.url}",
        )

    def service_settings(self) -> dict[str, str]:
        """The environment that points the pattern's Stripe client at this stand-in."""
        return {
            "STRIPE_SECRET_KEY": SECRET_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": self.url,
        }

    def send_webhooks_to(self, url: str, name: str = "restate") -> None:
        response = httpx.post(
            f"{self.url}/_config/webhooks/{name}",
            json={"url": url, "secret": WEBHOOK_SECRET, "events": WEBHOOK_EVENTS},
            timeout=10,
        )
        if response.status_code >= 300:
            raise DevError(f"registering the webhook at localstripe failed: {response.text}")


def main() -> None:
    from aiohttp import web
    from localstripe import resources, server  # type: ignore[import-untyped]

    resources.store.dump_to_disk = lambda: None
    web.run_app(server.app, host="127.0.0.1", port=int(sys.argv[1]))


if __name__ == "__main__":
    main()
