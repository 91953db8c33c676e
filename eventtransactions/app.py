"""Transactional event processing from Kafka.

Restate subscribes `UserFeed/processPost` to the topic `social-media-posts`. The record
key (the user id) is the Virtual Object key, so each user gets a queue of their own:

    social-media-posts --userid1--> UserFeed/userid1: post 1 ... post 2 ... (in order)
                       --userid2--> UserFeed/userid2: post 1 ...            (in parallel)

For each post the handler creates the post, waits until content moderation is done
(polling, with a durable sleep in between), then updates the user's feed. Each step is
durable: after a crash the handler fast-forwards to where it was, keeps the post id it
already created and goes on waiting. A slow post delays only later posts of the same
user; other users' posts go ahead (no head-of-line blocking across keys).
"""

import os
import time
from dataclasses import dataclass
from datetime import timedelta

import restate
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from restate.serde import BytesSerde

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # How long content moderation of a post takes, from its creation.
    moderation_time: timedelta = timedelta(
        seconds=float(os.environ.get("MODERATION_TIME_SECONDS", "12"))
    )
    # How long to wait between two moderation checks (the seed: 5 s).
    poll_interval: timedelta = timedelta(
        seconds=float(os.environ.get("MODERATION_POLL_INTERVAL_SECONDS", "5"))
    )


SETTINGS = Settings()


class SocialMediaPost(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    content: str
    metadata: str


def parse(raw: bytes) -> SocialMediaPost:
    try:
        return SocialMediaPost.model_validate_json(raw or b"null")
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in e['loc']) or 'body'}: {e['msg']}"
            for e in error.errors()
        )
        raise restate.TerminalError(f"invalid post: {problems}", status_code=400) from None


# --- stand-ins for the social media platform's APIs ----------------------------------


def create_post(user_id: str, post_id: str, post: SocialMediaPost) -> float:
    """Store the post; returns its creation time (moderation starts then)."""
    logger.info("Creating post %s for user %s", post_id, user_id)
    return time.time()


def moderation_done(post_id: str, created_at: float) -> bool:
    if time.time() - created_at >= SETTINGS.moderation_time.total_seconds():
        logger.info("Content moderation for post %s is done", post_id)
        return True
    logger.info(
        "Content moderation for post %s is still pending... Will check again in %g seconds",
        post_id,
        SETTINGS.poll_interval.total_seconds(),
    )
    return False


def update_user_feed(user_id: str, post_id: str) -> None:
    logger.info("Updating user feed for user %s with post %s", user_id, post_id)


# --- the Restate handler -------------------------------------------------------------

user_feed = restate.VirtualObject("UserFeed")


@user_feed.handler(name="processPost", input_serde=BytesSerde())
async def process_post(ctx: restate.ObjectContext, body: bytes) -> None:
    user_id = ctx.key()
    try:
        post = parse(body)
    except restate.TerminalError as error:
        # A malformed record fails this invocation only: Restate does not retry terminal
        # errors, so the user's later posts are processed as usual.
        logger.error("Skipping a malformed post for user %s: %s", user_id, error.message)
        raise

    post_id = str(ctx.uuid())
    created_at = await ctx.run_typed(
        "create post", create_post, user_id=user_id, post_id=post_id, post=post
    )
    while not await ctx.run_typed(
        "check moderation", moderation_done, post_id=post_id, created_at=created_at
    ):
        await ctx.sleep(SETTINGS.poll_interval)
    await ctx.run_typed("update user feed", update_user_feed, user_id=user_id, post_id=post_id)


services = [user_feed]
app = restate.app(services)
