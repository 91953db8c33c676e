"""Event enrichment and joins: a digital twin of each package, fed by RPC and Kafka.

    curl .../PackageTracker/package1/registerPackage  --RPC-->   PackageTracker/package1
    package-location-updates  --Kafka, key "package1"-->          (state: package-info)
    curl .../PackageTracker/package1/getPackageInfo   <--RPC--

A package is registered with its final destination over HTTP; its location updates
arrive as Kafka records keyed by package id and are joined into the same Virtual Object
state, in the order they were published. The state is queryable by RPC and with
`restate kv get PackageTracker package1`.

An update for a package that was never registered fails with a terminal error ("Package
not found"): Restate does not retry it, so it never blocks the records behind it.
"""

from typing import TypeVar

import restate
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

logger = restate.getLogger(__name__)

PACKAGE_INFO = "package-info"


class Model(BaseModel):
    # camelCase on the wire (finalDestination), snake_case in Python
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


class LocationUpdate(Model):
    location: str
    timestamp: str


class PackageRegistration(Model):
    final_destination: str


class PackageInfo(Model):
    final_destination: str
    locations: list[LocationUpdate] = Field(default_factory=list)


M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], raw: bytes) -> M:
    try:
        return model.model_validate_json(raw or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(f"invalid request: {problems}", status_code=400) from None


package_tracker = restate.VirtualObject("PackageTracker")


@package_tracker.handler(name="registerPackage", input_serde=BytesSerde())
async def register_package(ctx: restate.ObjectContext, body: bytes) -> None:
    registration = parse(PackageRegistration, body)
    info = PackageInfo(final_destination=registration.final_destination)
    ctx.set(PACKAGE_INFO, info.model_dump())
    logger.info("Registered package %s for %s", ctx.key(), info.final_destination)


@package_tracker.handler(name="updateLocation", input_serde=BytesSerde())
async def update_location(ctx: restate.ObjectContext, body: bytes) -> None:
    try:
        update = parse(LocationUpdate, body)
        info = await package_info(ctx)
    except restate.TerminalError as error:
        # Not retried: the record is skipped and the ones behind it go ahead.
        logger.error("Skipping location update for package %s: %s", ctx.key(), error.message)
        raise
    info.locations.append(update)
    ctx.set(PACKAGE_INFO, info.model_dump())
    logger.info("Package %s is at %s (%s)", ctx.key(), update.location, update.timestamp)


@package_tracker.handler(name="getPackageInfo", kind="shared")
async def get_package_info(ctx: restate.ObjectSharedContext) -> PackageInfo:
    return await package_info(ctx)


async def package_info(ctx: restate.ObjectContext | restate.ObjectSharedContext) -> PackageInfo:
    stored = await ctx.get(PACKAGE_INFO, type_hint=dict)
    if stored is None:
        raise restate.TerminalError("Package not found", status_code=404)
    return PackageInfo.model_validate(stored)


services = [package_tracker]
app = restate.app(services)
