"""Versioning with immutable deployments: each invocation finishes on the code it started on.

A subscription renewal sends a notice, waits for the renewal date (a durable sleep) and
then charges the card. Two versions of that code run side by side, each registered with
Restate as a deployment of its own, at an address whose code never changes:

    VERSION=v1 on :9080 = deployment A         VERSION=v2 on :9081 = deployment B (latest)
    renew: notice, sleep, charge               renew: discount, notice, sleep, charge

    renew sub-1 (sent before B was registered) --> pinned to A --> v1's answer, from A
    renew sub-2 (sent after)                   --> pinned to B --> v2's answer, from B

Restate sends a new invocation to the latest deployment of its service and pins it there:
every retry, and every replay after a suspension or a crash, goes to that deployment, so a
journal is only ever replayed by the code that wrote it. A deployment is drained once no
unfinished invocation is pinned to it (a `restate sql` query tells); then it can be
removed. Overwriting a deployment in place instead (`register --force` on the same address
with changed code) breaks that promise: where the new code differs from what the journal
recorded, the SDK stops the invocation with a journal mismatch (retried) rather than give a
wrong result.

In real life v1 and v2 are two builds (two images) of this file; here one file holds both
and VERSION picks the one a process serves, so that both can run at once. VERSION=v3 is a
breaking change: `Subscription` becomes a stateless Service (no `status` any more), which
Restate refuses to register over the Virtual Object until told `--breaking`.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

logger = restate.getLogger(__name__)

VERSIONS = ("v1", "v2", "v3")


@dataclass(frozen=True)
class Settings:
    # the build this process serves: v1, v2, or v3 (the breaking change)
    version: str = os.environ.get("VERSION", "v1")
    # the durable sleep between the renewal notice and the charge
    renewal_delay: timedelta = timedelta(
        seconds=float(os.environ.get("RENEWAL_DELAY_SECONDS", "120"))
    )
    # v2's loyalty discount, in percent of the price
    loyalty_discount_percent: int = int(os.environ.get("LOYALTY_DISCOUNT_PERCENT", "10"))


SETTINGS = Settings()
if SETTINGS.version not in VERSIONS:
    raise SystemExit(f"VERSION={SETTINGS.version}: one of {', '.join(VERSIONS)}")


class Model(BaseModel):
    # camelCase on the wire (priceCents), snake_case in Python
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


class RenewalRequest(Model):
    customer: str = Field(min_length=1)
    price_cents: int = Field(gt=0, lt=2**53)


class StatelessRenewalRequest(RenewalRequest):
    """v3's request: no object key any more, so the subscription comes in the body."""

    subscription_id: str = Field(min_length=1)


class Renewal(Model):
    """The answer of `renew` and `status`: which version renewed, and what it charged."""

    version: str
    charged_cents: int


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], body: bytes) -> M:
    """Validate a request body; a 400 naming each bad field (by its JSON name) if invalid."""
    try:
        return model.model_validate_json(body or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(f"invalid request: {problems}", status_code=400) from None


# The side effects, each in a journaled step; they stand in for an email service, a
# loyalty program and a payment provider.


def send_notice(subscription: str, customer: str, cents: int) -> None:
    logger.info(
        "%s: renewal notice for %s sent to %s: %d cents on the renewal date",
        SETTINGS.version, subscription, customer, cents,
    )  # fmt: skip


def loyalty_discount(subscription: str) -> int:
    percent = SETTINGS.loyalty_discount_percent
    logger.info("%s: loyalty discount for %s: %d%%", SETTINGS.version, subscription, percent)
    return percent


def charge_card(subscription: str, cents: int) -> None:
    logger.info("%s: charged %d cents for %s", SETTINGS.version, cents, subscription)


async def renew_v1(ctx: restate.Context, key: str, request: RenewalRequest) -> int:
    """v1: notice, wait for the renewal date, charge the full price."""
    cents = request.price_cents
    await ctx.run_typed("send renewal notice", send_notice, subscription=key,
                        customer=request.customer, cents=cents)  # fmt: skip
    await ctx.sleep(SETTINGS.renewal_delay, name="until the renewal date")
    await ctx.run_typed("charge card", charge_card, subscription=key, cents=cents)
    return cents


async def renew_v2(ctx: restate.Context, key: str, request: RenewalRequest) -> int:
    """v2: a new first step (the loyalty discount), then v1's steps at the lower price.
    Replayed from a journal that v1 wrote, its first step would not match: the journal
    holds "send renewal notice" where v2 runs "look up loyalty discount"."""
    percent = await ctx.run_typed("look up loyalty discount", loyalty_discount, subscription=key)
    cents = request.price_cents * (100 - percent) // 100
    await ctx.run_typed("send renewal notice", send_notice, subscription=key,
                        customer=request.customer, cents=cents)  # fmt: skip
    await ctx.sleep(SETTINGS.renewal_delay, name="until the renewal date")
    await ctx.run_typed("charge card", charge_card, subscription=key, cents=cents)
    return cents


LAST_RENEWAL = "last_renewal"

subscription: restate.VirtualObject | restate.Service
if SETTINGS.version in ("v1", "v2"):
    # A Virtual Object per subscription: its renewals run one at a time, its last renewal
    # is its state.
    subscription = restate.VirtualObject("Subscription")

    @subscription.handler(name="renew", input_serde=BytesSerde())
    async def renew(ctx: restate.ObjectContext, body: bytes) -> Renewal:
        """Renew the subscription (the object key); the answer names the version."""
        request = parse(RenewalRequest, body)
        steps = renew_v1 if SETTINGS.version == "v1" else renew_v2
        renewal = Renewal(version=SETTINGS.version,
                          charged_cents=await steps(ctx, ctx.key(), request))  # fmt: skip
        ctx.set(LAST_RENEWAL, renewal.model_dump())
        return renewal

    @subscription.handler(name="status", kind="shared")
    async def status(ctx: restate.ObjectSharedContext) -> Renewal:
        """The subscription's last renewal; 404 if it was never renewed."""
        stored = await ctx.get(LAST_RENEWAL, type_hint=dict)
        if stored is None:
            raise restate.TerminalError(f"subscription {ctx.key()} was never renewed", 404)
        return Renewal.model_validate(stored)

else:
    # v3, the breaking change: the same name as a stateless Service. Its callers' paths
    # (/Subscription/<id>/...) and the `status` handler are gone.
    subscription = restate.Service("Subscription")

    @subscription.handler(name="renew", input_serde=BytesSerde())
    async def renew_stateless(ctx: restate.Context, body: bytes) -> Renewal:
        """Renew the subscription named in the body."""
        request = parse(StatelessRenewalRequest, body)
        cents = await renew_v2(ctx, request.subscription_id, request)
        return Renewal(version=SETTINGS.version, charged_cents=cents)


services = [subscription]
app = restate.app(services)
