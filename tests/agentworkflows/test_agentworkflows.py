"""Agent workflows: the README's four workflows on the model stand-in, their limits, a crash
between the steps of a chain, bad input.

Every test keys its model script by a token of its own, which it puts in the input."""

import json
from collections.abc import Callable
from typing import Any

import httpx

from devkit.model_standin import ModelStandin, default_script, text
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
BILL = "Process my hospital bill of 2024-10-01 for 3000 EUR for a broken leg at General Hospital."
CLAIM = {
    "date": "2024-10-01",
    "amount": 3000,
    "category": "orthopedic",
    "placeOfService": "General Hospital",
    "reason": "hospital bill for a broken leg",
}
TOPIC = "The impact of renewable energy on global economies"
TASK = "Write a function that checks if a string is a palindrome"
FIRST_CODE = "def is_palindrome(s):\n    return s == s[::-1]"
FIXED_CODE = (
    "def is_palindrome(s):\n    s = ''.join(c for c in s.lower() if c.isalnum())\n"
    "    return s == s[::-1]"
)
# The default script's rules, by the index the stand-in reports a request under
ANALYST, PARSER, DECISION, ELIGIBILITY, RATES, FRAUD = (f"rule {i}" for i in range(6))
RESEARCHER, WRITER, PASS, FAIL, RETRY, GENERATE, PLANNER = (f"rule {i}" for i in range(6, 13))


def start(start_service: StartService, model: ModelStandin, **settings: str) -> PatternService:
    return start_service("agentworkflows", {**model.service_settings(), **settings})


def call(ingress: Ingress, path: str, body: Any) -> Any:
    response = ingress.post(path, json=body)
    assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
    return response.json()


def test_the_four_workflows_of_the_readme(
    start_service: StartService,
    model: ModelStandin,
    ingress: Ingress,
    admin: Admin,
    unique: Callable[[str], str],
) -> None:
    """The README's four requests, answered by the script `./dev run agentworkflows` uses."""
    service = start(start_service, model)
    script = default_script("agentworkflows")
    assert script is not None

    # sequential chain: parse, analyse, then convert and pay, each once
    chain = unique("t")
    model.script(chain, **script)
    answer = call(ingress, "/ClaimReimbursement/process", {"message": f"{BILL} {chain}"})
    claim_id = answer["confirmation"].rsplit(" ", 1)[1]
    assert answer == {
        "approved": True,
        "analysis": "A broken leg is covered and the amount is usual for its treatment.",
        "amountUsd": 3240.0,
        "confirmation": f"payment of 3240.00 USD for claim {claim_id}",
    }
    assert model.by_step(chain) == {PARSER: 1, ANALYST: 1}
    logged(service, "Converted 3000.00 EUR to 3240.00 USD")
    logged(service, f"Paid 3240.00 USD for claim {claim_id}")

    # parallel agents: the three analyses gathered in the order the agents were started,
    # though the first one answers last (the script delays it 1 s, the second 0.5 s)
    parallel = unique("t")
    model.script(parallel, **script)
    run_id = ingress.send(
        "/ParallelAgentClaimApproval/run",
        json={**CLAIM, "reason": f"broken leg {parallel}"},
        headers={"idempotency-key": parallel},
    )
    response = ingress.get(f"/restate/invocation/{run_id}/attach")
    assert response.status_code == 200, response.text
    assert response.json() == (
        "Approved. Eligibility: eligible; cost: reasonable; fraud risk: low risk."
    )
    assert model.by_step(parallel) == {ELIGIBILITY: 1, RATES: 1, FRAUD: 1, DECISION: 1}
    # all three calls were made before any of their results came back: they ran side by side
    sql = f"SELECT entry_type FROM sys_journal WHERE id = '{run_id}' ORDER BY index"
    journal = [entry["entry_type"] for entry in admin.query(sql)]
    calls = [i for i, entry in enumerate(journal) if entry == "Command: Call"]
    results = [i for i, entry in enumerate(journal) if entry == "Notification: Call"]
    assert len(calls) == 3, journal
    assert len(results) == 3, journal
    assert max(calls) < min(results), journal
    analysts = admin.query(
        "SELECT target, status FROM sys_invocation "
        f"WHERE invoked_by_id = '{run_id}' ORDER BY target"
    )
    assert analysts == [
        {"target": "EligibilityAnalyst/run", "status": "completed"},
        {"target": "FraudAnalyst/run", "status": "completed"},
        {"target": "RateAnalyst/run", "status": "completed"},
    ]

    # orchestrator-worker: a plan of three questions, three workers, one report
    research = unique("t")
    model.script(research, **script)
    topic = f"{TOPIC} {research}"
    assert call(ingress, "/ResearchReport/generate", {"topic": topic}) == {
        "report": f"Report on {topic}: three findings, on jobs, on energy prices and on "
        "trade, all pointing the same way.",
        "taskCount": 3,
    }
    assert model.by_step(research) == {PLANNER: 1, RESEARCHER: 3, WRITER: 1}
    for question in ("jobs", "energy prices", "trade"):
        logged(service, f"Researching: the effect on {question}")

    # evaluator-optimizer: the first attempt is rejected, the second passes
    code = unique("t")
    model.script(code, **script)
    assert call(ingress, "/CodeGenerator/generate", {"task": f"{TASK} {code}"}) == {
        "code": FIXED_CODE,
        "passed": True,
        "iterations": 2,
    }
    assert model.by_step(code) == {GENERATE: 1, FAIL: 1, RETRY: 1, PASS: 1}
    assert model.answered_twice(code) == []


def test_limits_the_chain_s_gate_and_an_unknown_currency(
    start_service: StartService, model: ModelStandin, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    """MAX_ITERATIONS and MAX_RESEARCH_TASKS bound the loops; the analyst refusing a claim
    stops the chain (model requests: parse 1, analyse 1; no conversion, no payment); a
    currency outside the table is a 422 (no payment)."""
    service = start(start_service, model, MAX_ITERATIONS="2", MAX_RESEARCH_TASKS="2")

    # an evaluator that never passes: two rounds (MAX_ITERATIONS), then the last attempt
    never = unique("t")
    verdict = json.dumps({"passed": False, "feedback": "still wrong"})
    model.script(never, rules=[
        {"when": {"user": "Code:"}, **text(verdict)},
        {"when": {"user": "rejected"}, **text("attempt 2")},
        text("attempt 1"),
    ])  # fmt: skip
    assert call(ingress, "/CodeGenerator/generate", {"task": f"{TASK} {never}"}) == {
        "code": "attempt 2",
        "passed": False,
        "iterations": 2,
    }
    assert model.by_step(never) == {"rule 0": 2, "rule 1": 1, "rule 2": 1}

    # a plan of three questions: two workers (MAX_RESEARCH_TASKS)
    wide = unique("t")
    plan = {"tasks": [{"question": q} for q in ("one", "two", "three")]}
    model.script(wide, rules=[
        {"when": {"user": "^Research for"}, **text("a finding")},
        {"when": {"user": "^Topic:"}, **text("the report")},
        text(json.dumps(plan)),
    ])  # fmt: skip
    answer = call(ingress, "/ResearchReport/generate", {"topic": f"anything {wide}"})
    assert answer == {"report": "the report", "taskCount": 2}
    assert model.by_step(wide) == {"rule 2": 1, "rule 0": 2, "rule 1": 1}

    # the gate: the analyst refuses, the chain stops before converting and paying
    refused = unique("t")
    parsed = {"date": "2024-10-01", "amount": 100, "currency": "EUR", "category": "dental",
              "description": "whitening"}  # fmt: skip
    model.script(refused, steps=[
        text(json.dumps(parsed)),
        text(json.dumps({"approved": False, "approvedAmount": 0, "explanation": "cosmetic"})),
    ])  # fmt: skip
    answer = call(ingress, "/ClaimReimbursement/process", {"message": f"Whitening {refused}"})
    assert answer == {"approved": False, "analysis": "cosmetic", "amountUsd": 0, "confirmation": ""}
    assert [r["step"] for r in model.requests(refused)] == ["0", "1"]

    # a currency outside the table: 422, nothing paid
    unknown = unique("t")
    model.script(unknown, steps=[
        text(json.dumps({**parsed, "currency": "XYZ"})),
        text(json.dumps({"approved": True, "approvedAmount": 100, "explanation": "usual"})),
    ])  # fmt: skip
    response = ingress.post("/ClaimReimbursement/process", json={"message": f"Bill {unknown}"})
    assert response.status_code == 422, response.text
    assert response.json()["message"] == "no exchange rate for currency 'XYZ'"
    assert model.count(unknown) == 2
    # neither claim was converted nor paid (these lines are written inside the steps)
    assert count_lines(service, "Converted ") == 0
    assert count_lines(service, "Paid ") == 0


def test_a_crash_between_steps_repeats_no_finished_step(
    start_service: StartService, model: ModelStandin, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    """kill -9 of the service while the chain's second model call (the analysis) is in flight.
    Counted: model requests per step (parse 1, analyse 2: the one cut short and its retry),
    the conversion and the payment (1 each, their log lines written inside their steps)."""
    service = start(start_service, model)
    token = unique("t")
    parsed = {"date": "2024-10-01", "amount": 100, "currency": "GBP", "category": "dental",
              "description": "a filling"}  # fmt: skip
    analysis = json.dumps({"approved": True, "approvedAmount": 80, "explanation": "usual"})
    model.script(token, steps=[
        text(json.dumps(parsed)),
        text(analysis, delay=60),  # in flight when the service dies
        text(analysis),  # the same call, after the restart
    ])  # fmt: skip
    ingress.send(
        "/ClaimReimbursement/process",
        json={"message": f"A dentist's bill of 100 GBP {token}"},
        headers={"idempotency-key": token},
    )
    eventually(lambda: model.count(token) == 2, timeout=30, message="the analysis requested")

    service.kill()
    service.start(timeout=RESTART_TIMEOUT)

    def answer() -> httpx.Response | None:
        response = ingress.get(f"/restate/invocation/ClaimReimbursement/process/{token}/attach")
        return response if response.status_code == 200 else None

    result = eventually(answer, timeout=60, message="the chain to finish after the crash").json()
    assert result["approved"] is True
    assert result["amountUsd"] == 101.6
    assert [r["step"] for r in model.requests(token)] == ["0", "1", "2"]  # parse once
    logged(service, "Converted 80.00 GBP to 101.60 USD")
    logged(service, "Paid 101.60 USD for claim ")


def test_bad_input_is_400_naming_the_field_and_starts_nothing(
    start_service: StartService, model: ModelStandin, ingress: Ingress, unique: Callable[[str], str]
) -> None:
    service = start(start_service, model)
    token = unique("t")
    model.script(token, rules=[text("unused")])
    cases: list[tuple[str, Any, str]] = [
        ("/ClaimReimbursement/process", {}, "message: Field required"),
        ("/ClaimReimbursement/process", {"message": ""}, "message: String should have at least"),
        ("/ClaimReimbursement/process", {"message": token, "urgent": True},
         "urgent: Extra inputs are not permitted"),
        ("/ParallelAgentClaimApproval/run", {**CLAIM, "reason": token, "amount": -1},
         "amount: Input should be greater than 0"),
        ("/ParallelAgentClaimApproval/run", {**CLAIM, "reason": token, "date": "yesterday"},
         "date: Input should be a valid date"),
        ("/ParallelAgentClaimApproval/run", {"date": "2024-10-01", "amount": 1, "reason": token},
         "category: Field required; placeOfService: Field required"),
        ("/ResearchReport/generate", {"topic": 42}, "topic: Input should be a valid string"),
        ("/CodeGenerator/generate", {"tasks": token}, "task: Field required"),
    ]  # fmt: skip
    for path, body, message in cases:
        response = ingress.post(path, json=body)
        assert response.status_code == 400, f"{path} {body}: {response.text}"
        assert message in response.json()["message"], response.text
    json_type = {"content-type": "application/json"}
    response = ingress.post("/CodeGenerator/generate", content=b"not json", headers=json_type)
    assert response.status_code == 400
    assert "Invalid JSON" in response.json()["message"]
    assert model.count(token) == 0  # no agent started
    assert count_lines(service, "Analyst started") == 0

    # the agents the workflows call are not reachable from outside
    for path in ("/EligibilityAnalyst/run", "/RateAnalyst/run", "/FraudAnalyst/run"):
        assert_ingress_refuses(ingress, path, CLAIM)
    assert_ingress_refuses(ingress, "/Researcher/run", {"topic": "x", "question": "y"})
