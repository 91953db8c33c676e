"""Reserve a product through Restate, using the reservation id as idempotency key.

    python -m durablerpc.client <productId> <reservationId>

Prints `true` if this reservation holds the product, `false` if another one does.
Sending the same reservation id again prints the first answer: Restate deduplicates
requests by idempotency key, so the handler does not run twice.
RESTATE_INGRESS_URL selects the Restate ingress (default http://localhost:8080).
"""

import argparse
import os
import sys

import httpx

INGRESS_URL = os.environ.get("RESTATE_INGRESS_URL", "http://localhost:8080")


def reserve_product(
    product_id: str, reservation_id: str, ingress_url: str = INGRESS_URL, timeout: float = 30.0
) -> bool:
    response = httpx.post(
        f"{ingress_url}/ProductService/{product_id}/reserve",
        headers={"idempotency-key": reservation_id},
        timeout=timeout,
    )
    response.raise_for_status()
    answer = response.json()
    if not isinstance(answer, bool):
        raise ValueError(f"unexpected answer from ProductService/reserve: {answer!r}")
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m durablerpc.client", description="Reserve a product through Restate."
    )
    parser.add_argument("product_id", metavar="productId")
    parser.add_argument("reservation_id", metavar="reservationId")
    args = parser.parse_args(argv)
    try:
        reserved = reserve_product(args.product_id, args.reservation_id)
    except httpx.HTTPStatusError as error:
        print(f"error: {error.response.status_code} {error.response.text}", file=sys.stderr)
        return 1
    except httpx.HTTPError as error:
        print(f"error: cannot reach Restate at {INGRESS_URL}: {error}", file=sys.stderr)
        return 1
    print("true" if reserved else "false")
    return 0


if __name__ == "__main__":
    sys.exit(main())
