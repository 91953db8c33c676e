"""Multi-agent: handoff to the specialist, remote agents in a deployment of their own, the
payout workflow as a tool; a crash of the remote agents' service mid-call; bad input.

Each claim's id (the object key) is a token of the test: the prompts carry it, so the
model stand-in answers every request about that claim from the test's script, the remote
agents' requests included."""

from collections.abc import Callable
from typing import Any

import httpx

from devkit.model_standin import ModelStandin, default_script, text, tool_call
from devkit.processes import PatternService
from tests.harness import (
    Admin,
    Ingress,
    StartService,
    assert_ingress_refuses,
    count_lines,
    eventually,
    logged,
)

RESTART_TIMEOUT = 120.0  # a restart imports the Agents SDK: seconds of CPU, more under load
CLAIM = {
    "date": "2024-10-01",
    "amount": 3000,
    "category": "orthopedic",
    "placeOfService": "General Hospital",
    "reason": "hospital bill for a broken leg",
}
CAR_CLAIM = {"date": "2024-11-12", "amount": 1200, "category": "car accident",
             "placeOfService": "Main Street Garage", "reason": "a dented bumper"}  # fmt: skip
# The default script's rules, by the index the stand-in reports a request under
(ELIGIBLE, LOW_RISK, ANSWER, PAY, CHECK_BOTH, CHECK_FRAUD, RESUBMITTED, TO_CAR, TO_MEDICAL) = (
    f"rule {i}" for i in range(9)
)


def start_both(
    start_service: StartService, model: ModelStandin
) -> tuple[PatternService, PatternService]:
    """The remote agents' deployment (`python -m multiagent.remote`), then the claim agents'."""
    remote = start_service("multiagent.remote", model.service_settings())
    return remote, start_service("multiagent", model.service_settings())


def submit(ingress: Ingress, claim_id: str, claim: dict[str, Any]) -> str:
    response = ingress.post(f"/MultiAgentClaimApproval/{claim_id}/run", json=claim)
    assert response.status_code == 200, f"{response.status_code} {response.text}"
    answer = response.json()
    assert isinstance(answer, str)
    return answer


def test_walkthrough_routes_checks_remotely_and_pays_once(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """The README's claims, answered by the script `./dev run multiagent` uses."""
    _, claims = start_both(start_service, model)
    script = default_script("multiagent")
    assert script is not None

    # a medical claim: intake hands it to the medical specialist, who asks both remote
    # agents, then pays through the workflow
    claim_id = unique("claim")
    model.script(claim_id, **script)
    receipt = f"transfer of 3000.00 for claim {claim_id}"
    answer = submit(ingress, claim_id, CLAIM)
    assert answer == f"Approved. Payout: {receipt}"
    assert model.by_step(claim_id) == {
        TO_MEDICAL: 1, CHECK_BOTH: 1, ELIGIBLE: 1, LOW_RISK: 1, PAY: 1, ANSWER: 1,
    }  # fmt: skip
    logged(claims, f"Transferred 3000.00 for claim {claim_id}")
    logged(claims, f"Sent the payout notice for claim {claim_id}")
    state = admin.state("MultiAgentClaimApproval", claim_id)
    assert state["lastAgent"] == '"MedicalSpecialist"'
    assert "transfer_to_medicalspecialist" in state["conversation"]
    response = ingress.post(f"/ClaimPayout/{claim_id}/receipt")
    assert response.status_code == 200, response.text
    assert response.json() == receipt

    # submitted again: straight to the specialist (no intake), and no second payout
    again = submit(ingress, claim_id, CLAIM)
    assert again == f"Approved. Payout: already paid ({receipt})"
    assert model.by_step(claim_id)[RESUBMITTED] == 1
    assert model.by_step(claim_id)[TO_MEDICAL] == 1
    logged(claims, f"Transferred 3000.00 for claim {claim_id}")
    payouts = admin.query(
        f"SELECT status FROM sys_invocation WHERE target = 'ClaimPayout/{claim_id}/run'"
    )
    assert payouts == [{"status": "completed"}]

    # a car claim goes to the car specialist, who checks the fraud risk only
    car_id = unique("claim")
    model.script(car_id, **script)
    answer = submit(ingress, car_id, CAR_CLAIM)
    assert answer == f"Approved. Payout: transfer of 1200.00 for claim {car_id}"
    assert model.by_step(car_id) == {
        TO_CAR: 1, CHECK_FRAUD: 1, LOW_RISK: 1, PAY: 1, ANSWER: 1,
    }  # fmt: skip
    assert admin.state("MultiAgentClaimApproval", car_id)["lastAgent"] == '"CarSpecialist"'

    # only the agents call the remote agents and start a payout
    review = {"claimId": claim_id, "claim": CLAIM}
    assert_ingress_refuses(ingress, "/EligibilityAgent/run", review)
    assert_ingress_refuses(ingress, "/FraudAgent/run", review)
    assert_ingress_refuses(ingress, f"/ClaimPayout/{unique('claim')}/run", {"amount": 1})


def test_a_crash_of_the_remote_agents_service_mid_call_completes_the_claim_once(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """kill -9 of the remote agents' service while the eligibility agent's model call is in
    flight; the claim agent waits, suspended, for the one answer. Counted: the claim agents'
    model requests (4, each once), the remote ones (eligibility 2: the one cut short and its
    retry; fraud 1), the payout transfer (1, logged inside its step), the claim's
    invocations (1) and their answers (1)."""
    remote, claims = start_both(start_service, model)
    claim_id = unique("claim")
    model.script(claim_id, steps=[
        tool_call("transfer_to_medicalspecialist"),                      # 0 intake
        {"tool_calls": [{"name": "check_eligibility", "arguments": {}},
                        {"name": "check_fraud", "arguments": {}}]},      # 1 specialist
        text("eligible", delay=60),                                      # 2 remote, cut short
        text("eligible"),                                                # 3 remote, retried
        text("low risk"),                                                # 4 remote
        tool_call("pay_claim", amount=3000),                             # 5 specialist
        text("Approved: {output}"),                                      # 6 specialist
    ])  # fmt: skip
    ingress.send(
        f"/MultiAgentClaimApproval/{claim_id}/run",
        json=CLAIM,
        headers={"idempotency-key": claim_id},
    )
    eventually(lambda: model.count(claim_id) == 3, timeout=60, message="the remote call")

    remote.kill()
    remote.start(timeout=RESTART_TIMEOUT)

    def answer() -> httpx.Response | None:
        response = ingress.get(
            f"/restate/invocation/MultiAgentClaimApproval/{claim_id}/run/{claim_id}/attach"
        )
        return response if response.status_code == 200 else None

    result = eventually(answer, timeout=60, message="the claim decided after the crash")
    assert result.json() == f"Approved: transfer of 3000.00 for claim {claim_id}"
    assert [r["step"] for r in model.requests(claim_id)] == [str(i) for i in range(7)]
    logged(claims, f"Transferred 3000.00 for claim {claim_id}")
    logged(claims, f"Claim {claim_id} decided by MedicalSpecialist")
    runs = admin.query(
        "SELECT id, status, completion_result FROM sys_invocation "
        f"WHERE target = 'MultiAgentClaimApproval/{claim_id}/run'"
    )
    assert [(r["status"], r["completion_result"]) for r in runs] == [("completed", "success")]
    called = admin.query(
        f"SELECT target, status FROM sys_invocation WHERE invoked_by_id = '{runs[0]['id']}' "
        "ORDER BY created_at"
    )
    assert [call["target"] for call in called] == [  # one call each: Restate retried the
        "EligibilityAgent/run",  # cut-short one inside it
        "FraudAgent/run",
        f"ClaimPayout/{claim_id}/receipt",  # pay_claim's check: not paid yet (404)
        f"ClaimPayout/{claim_id}/run",
    ]
    assert {call["status"] for call in called} == {"completed"}


def test_bad_input_the_payout_cap_and_the_turn_limit(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """Bad input: a 400 naming the field, no agent started. Then, with AGENT_MAX_TURNS 3: a
    specialist asking pay_claim for more than was claimed is refused by the tool (no
    payout workflow, no transfer); a run that would take a 4th model call ends with a 502,
    the claim's state untouched. Counted: model requests (3 each), transfers (0)."""
    claims = start_service("multiagent", {**model.service_settings(), "AGENT_MAX_TURNS": "3"})
    claim_id = unique("claim")
    model.script(claim_id, rules=[text("unused")])
    cases: list[tuple[Any, str]] = [
        ({}, "date: Field required"),
        ({**CLAIM, "amount": 0}, "amount: Input should be greater than 0"),
        ({**CLAIM, "amount": "3000"}, "amount: Input should be a valid number"),
        ({**CLAIM, "date": "2024-13-01"}, "date: Input should be a valid date"),
        ({**CLAIM, "placeOfService": None}, "placeOfService: Input should be a valid string"),
        ({**CLAIM, "customer": "Bob"}, "customer: Extra inputs are not permitted"),
        ([CLAIM], "Input should be an object"),
    ]
    for body, message in cases:
        response = ingress.post(f"/MultiAgentClaimApproval/{claim_id}/run", json=body)
        assert response.status_code == 400, f"{body}: {response.text}"
        assert message in response.json()["message"], response.text
    assert model.count(claim_id) == 0
    assert admin.state("MultiAgentClaimApproval", claim_id) == {}
    # the receipt takes no body; a claim that was not paid has none
    response = ingress.post(f"/ClaimPayout/{claim_id}/receipt", json={"amount": 1})
    assert response.status_code == 400
    response = ingress.post(f"/ClaimPayout/{claim_id}/receipt")
    assert response.status_code == 404
    assert response.json()["message"] == f"claim {claim_id} has not been paid"

    # pay_claim's cap: the model asks for more than the 3000 claimed, the tool refuses
    capped = unique("claim")
    model.script(capped, steps=[
        tool_call("transfer_to_medicalspecialist"),
        tool_call("pay_claim", amount=5000),
        text("Specialist: {output}"),
    ])  # fmt: skip
    answer = submit(ingress, capped, CLAIM)
    assert answer == "Specialist: Refused: the amount must be above 0 and at most 3000.00."
    assert model.count(capped) == 3
    paid = admin.query(f"SELECT id FROM sys_invocation WHERE target = 'ClaimPayout/{capped}/run'")
    assert paid == []
    assert ingress.post(f"/ClaimPayout/{capped}/receipt").status_code == 404

    # AGENT_MAX_TURNS: three model calls, and the run that would need a fourth ends, 502
    looping = unique("claim")
    model.script(looping, steps=[
        tool_call("transfer_to_medicalspecialist"),
        tool_call("pay_claim", amount=9999),
        tool_call("pay_claim", amount=9999),
        text("never asked for"),
    ])  # fmt: skip
    response = ingress.post(f"/MultiAgentClaimApproval/{looping}/run", json=CLAIM)
    assert response.status_code == 502, response.text
    assert response.json()["message"] == "IntakeAgent: Max turns (3) exceeded"
    assert model.count(looping) == 3
    assert admin.state("MultiAgentClaimApproval", looping) == {}
    assert count_lines(claims, "Transferred ") == 0
