"""Approval agent: a claim waits for a person's answer (through ClaimReview), also with the
service killed while it waits; the timeout racing the answer, across a server crash;
unknown and second answers refused; bad input."""

import re
from collections.abc import Callable

import httpx

from devkit.model_standin import ModelStandin, default_script
from devkit.processes import PatternService, RestateServer
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    assert_ingress_refuses,
    count_lines,
    eventually,
    restate_cli,
)

# importing the OpenAI Agents SDK takes ~3 CPU-s: on a busy machine a restart can take
# longer than the harness's default 30 s
RESTART_TIMEOUT = 120.0

CLAIM = "Process my hospital bill of 2024-10-01 for 3000USD for a broken leg at General Hospital."
RUN = "/HumanClaimApprovalAgent/run"
RUN_WITH_TIMEOUT = "/HumanClaimApprovalWithTimeoutsAgent/run"


def agent(start_service: StartService, model: ModelStandin, **settings: str) -> PatternService:
    return start_service("approvalagent", {**model.service_settings(), **settings})


def scripted(model: ModelStandin, unique: Callable[[str], str]) -> str:
    """A token answered by the script of `./dev run approvalagent`."""
    token = unique("t")
    script = default_script("approvalagent")
    assert script is not None
    model.script(token, **script)
    return token


def review_requested(service: PatternService, token: str) -> str:
    """The id of the review opened for the claim with `token` (the claim's reason quotes
    the user's message), from the log line of the step that requests it."""

    def find() -> str | None:
        for line in service.log_lines():
            found = re.search(r"Human review ([\w-]+) requested: ", line)
            if found and token in line:
                return found.group(1)
        return None

    return eventually(find, timeout=30, message="the review request")


def attach(ingress: Ingress, invocation: str) -> str:
    def done() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/{invocation}/attach")
        return response if response.status_code == 200 else None

    answer = eventually(done, timeout=60, message="the run completes").json()
    assert isinstance(answer, str)
    return answer


def test_walkthrough_approval_refused_answers_and_bad_input(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    client_env: dict[str, str],
    unique: Callable[[str], str],
) -> None:
    """The README's claim, approved; with a deadline (APPROVAL_TIMEOUT_SECONDS, 3 h by
    default here), approved before it: the approval wins the race, the review is never
    expired. Then second and unknown answers, a small claim, private handlers, bad input."""
    service = agent(start_service, model)
    token = scripted(model, unique)
    invocation = ingress.send(RUN, json={"message": f"{CLAIM} {token}"})
    review = review_requested(service, token)
    assert ingress.get(f"/restate/invocation/{invocation}/output").status_code == 470  # waits

    response = ingress.post(f"/ClaimReview/{review}/approve")
    assert response.status_code == 200, response.text
    assert response.json() == f"Claim review {review}: approved"
    assert attach(ingress, invocation) == "Your claim of 3000 USD went to a reviewer: Approved."

    # a second answer, and an answer to a review that does not exist, are refused
    again = ingress.post(f"/ClaimReview/{review}/reject")
    assert again.status_code == 409
    assert again.json()["message"] == f"Claim review {review} is already approved"
    unknown = ingress.post(f"/ClaimReview/{unique('review')}/approve")
    assert unknown.status_code == 404
    assert unknown.json()["message"].startswith("No claim review ")

    # with a deadline, answered before it: the approval wins, the timer is left to run out
    timed = scripted(model, unique)
    timed_run = ingress.send(RUN_WITH_TIMEOUT, json={"message": f"{CLAIM} {timed}"})
    timed_review = review_requested(service, timed)
    response = ingress.post(f"/ClaimReview/{timed_review}/approve")
    assert response.status_code == 200, response.text
    assert attach(ingress, timed_run) == "Your claim of 3000 USD went to a reviewer: Approved."
    assert admin.state("ClaimReview", timed_review)["status"] == '"approved"'
    expired = admin.query(
        f"SELECT id FROM sys_invocation WHERE target = 'ClaimReview/{timed_review}/expire'"
    )
    assert expired == []  # the deadline's branch never ran
    assert count_lines(service, f"Human review {timed_review} requested") == 1
    assert [r["last"] for r in model.requests(timed)] == ["user", "tool"]

    cli = restate_cli("kv", "get", "ClaimReview", review, env=client_env)
    assert "approved" in cli.stdout
    assert count_lines(service, f"Human review {review} requested") == 1
    assert [r["last"] for r in model.requests(token)] == ["user", "tool"]

    # a small claim is decided by the agent alone: one model call, no review
    small = scripted(model, unique)
    answer = ingress.post(RUN, json={"message": f"My bill of 2024-10-02 for 250EUR. {small}"})
    assert answer.json() == (
        "Your claim of 250 EUR is approved: at 1000 or less I decide without a review."
    )
    assert model.count(small) == 1
    for private in ("open", "expire"):
        assert_ingress_refuses(ingress, f"/ClaimReview/{review}/{private}", "x")

    # bad input: a 400 naming the field, before any model call
    for path in (RUN, RUN_WITH_TIMEOUT):
        for body, field in [
            ({}, "message: Field required"),
            ({"message": ""}, "message: String should have at least 1 character"),
            ({"message": None}, "message: Input should be a valid string"),
            ({"message": small, "amount": 3000}, "amount: Extra inputs are not permitted"),
        ]:
            response = ingress.post(path, json=body)
            assert response.status_code == 400, response.text
            assert field in response.json()["message"]
    assert model.count(small) == 1
    refused = ingress.post(f"/ClaimReview/{review}/approve", json=True)
    assert refused.status_code == 400  # the answer is the handler called: no body


def test_service_killed_while_waiting_the_answer_arrives_meanwhile(
    start_service: StartService, model: ModelStandin, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    """While a claim waits, the service is not needed: killed, the reviewer's answer is
    accepted by Restate meanwhile, and the run finishes once the service is back, with
    nothing done twice."""
    service = agent(start_service, model)
    token = scripted(model, unique)
    invocation = ingress.send(RUN, json={"message": f"{CLAIM} {token}"})
    review = review_requested(service, token)
    service.kill()

    ingress.send(f"/ClaimReview/{review}/reject")  # accepted while the service is down
    service.start(timeout=RESTART_TIMEOUT)

    assert attach(ingress, invocation) == "Your claim of 3000 USD went to a reviewer: Rejected."
    assert count_lines(service, f"Human review {review} requested") == 1
    assert model.count(token, 200) == 2
    assert model.answered_twice(token) == []


def test_timeout_wins_across_a_server_crash_and_closes_the_review(
    start_service: StartService,
    model: ModelStandin,
    server: RestateServer,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    service = agent(start_service, model, APPROVAL_TIMEOUT_SECONDS="2")
    token = scripted(model, unique)
    invocation = ingress.send(RUN_WITH_TIMEOUT, json={"message": f"{CLAIM} {token}"})
    review = review_requested(service, token)
    server.kill()  # the deadline is a durable timer: it survives
    server.start()

    assert attach(ingress, invocation) == (
        "Your claim of 3000 USD went to a reviewer: "
        "Approval timed out - evaluate the claim yourself."
    )
    late = ingress.post(f"/ClaimReview/{review}/approve")
    assert late.status_code == 409
    assert late.json()["message"] == f"Claim review {review} is already expired"
    assert admin.state("ClaimReview", review)["status"] == '"expired"'
    assert count_lines(service, f"Human review {review} requested") == 1
    assert model.count(token, 200) == 2
