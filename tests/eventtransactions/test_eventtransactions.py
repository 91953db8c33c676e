"""Transactional event processing: posts from Kafka, in order per user, no head-of-line
blocking across users, exactly-once side effects across crashes, malformed records."""

import json
import re
from collections.abc import Callable

from devkit.kafka import TansuBroker
from devkit.processes import PatternService, RestateServer
from tests.harness import StartService, Topic, count_lines, eventually

SINK = "service://UserFeed/processPost"
FAST = {"MODERATION_TIME_SECONDS": "1.5", "MODERATION_POLL_INTERVAL_SECONDS": "0.5"}


def post(text: str) -> str:
    return json.dumps({"content": text, "metadata": "public"})


def events(service: PatternService, user: str) -> list[tuple[str, str]]:
    """(event, post id) for `user` in log order: created, updated."""
    found = []
    for line in service.log_lines():
        if m := re.search(rf"Creating post (\S+) for user {user}$", line):
            found.append(("created", m.group(1)))
        elif m := re.search(rf"Updating user feed for user {user} with post (\S+)$", line):
            found.append(("updated", m.group(1)))
    return found


def feed_updates(service: PatternService, user: str) -> int:
    return count_lines(service, f"Updating user feed for user {user} with post")


def test_walkthrough_posts_of_one_user_in_order_other_users_in_parallel(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    unique: Callable[[str], str],
) -> None:
    service = start_service("eventtransactions", FAST)
    topic = Topic(kafka_broker, server, unique("social-media-posts"), SINK)
    user1, user2 = unique("userid1"), unique("userid2")

    topic.produce(
        [
            (user1, '{"content": "Hi! This is my first post!", "metadata": "public"}'),
            (user2, '{"content": "Hi! This is my first post!", "metadata": "public"}'),
            (user1, '{"content": "Hi! This is my second post!", "metadata": "public"}'),
        ]
    )

    eventually(
        lambda: feed_updates(service, user1) == 2 and feed_updates(service, user2) == 1,
        timeout=90,
        message="user1's two posts and user2's post reach the feeds",
    )
    first, second = events(service, user1)[0][1], events(service, user1)[2][1]
    # user1: post 1 created and published, only then post 2 (a queue per user)
    assert events(service, user1) == [
        ("created", first),
        ("updated", first),
        ("created", second),
        ("updated", second),
    ]
    # user2's post did not wait behind user1's first post, which was in moderation
    lines = service.log_lines()
    user2_created = next(i for i, line in enumerate(lines) if f"for user {user2}" in line)
    user1_first_done = next(i for i, line in enumerate(lines) if f"with post {first}" in line)
    assert user2_created < user1_first_done
    assert count_lines(service, f"Content moderation for post {first} is still pending") >= 1
    assert "Will check again in 0.5 seconds" in service.log_text()
    assert "[UserFeed/processPost][inv_" in next(line for line in lines if first in line)


def crash_during_moderation(
    crash: Callable[[], None],
    restart: Callable[[], None],
    service: PatternService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    unique: Callable[[str], str],
) -> None:
    topic = Topic(kafka_broker, server, unique("posts"), SINK)
    user = unique("user")
    topic.produce([(user, post("one")), (user, post("two"))])
    eventually(
        lambda: count_lines(service, "is still pending") > 0,
        timeout=60,
        message="the first post waits for moderation",
    )
    crash()
    restart()
    eventually(lambda: feed_updates(service, user) == 2, timeout=90, message="both posts published")
    created = [post_id for event, post_id in events(service, user) if event == "created"]
    updated = [post_id for event, post_id in events(service, user) if event == "updated"]
    assert len(created) == 2, "each post created exactly once, the post id kept across the crash"
    assert updated == created, "each post published once, in order"


def test_service_crash_during_moderation_resumes_with_the_same_post(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    unique: Callable[[str], str],
) -> None:
    slow = {**FAST, "MODERATION_TIME_SECONDS": "4"}
    service = start_service("eventtransactions", slow)
    crash_during_moderation(service.kill, service.start, service, server, kafka_broker, unique)


def test_server_crash_during_moderation_resumes_with_the_same_post(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    unique: Callable[[str], str],
) -> None:
    slow = {**FAST, "MODERATION_TIME_SECONDS": "4"}
    service = start_service("eventtransactions", slow)
    crash_during_moderation(server.kill, server.start, service, server, kafka_broker, unique)


def test_malformed_records_are_skipped_and_do_not_block_the_user(
    start_service: StartService,
    server: RestateServer,
    kafka_broker: TansuBroker,
    unique: Callable[[str], str],
) -> None:
    service = start_service("eventtransactions", FAST)
    topic = Topic(kafka_broker, server, unique("posts"), SINK)
    user = unique("user")
    topic.produce([(user, "not json"), (user, '{"content": "no metadata"}'), (user, post("fine"))])
    eventually(
        lambda: feed_updates(service, user) == 1, timeout=60, message="the good post published"
    )
    assert count_lines(service, f"Skipping a malformed post for user {user}") == 2
    assert "metadata: Field required" in service.log_text()
    assert len(events(service, user)) == 2  # created + updated, for the good post only
