"""Agent workflows: the four ways of composing LLM calls in code, each step durable.

Where an agent decides its own next step (tools, handoffs), a workflow fixes the steps in
code and lets the model fill them in. Four shapes, one service each:

    sequential chain      ClaimReimbursement/process
        parse (agent) --> analyse (agent) --gate--> convert currency --> pay

    parallel agents       ParallelAgentClaimApproval/run
        +--> EligibilityAnalyst --+
        +--> RateAnalyst ---------+--> decide (agent)
        +--> FraudAnalyst --------+

    orchestrator-worker   ResearchReport/generate
        plan (agent) --> Researcher x N, in parallel --> write the report (agent)

    evaluator-optimizer   CodeGenerator/generate
        generate (agent) --> evaluate (agent) --FAIL + feedback--> generate ... (bounded)

Every model call goes through `DurableRunner.run` (restate.ext.openai), which journals the
model's answer: after a crash, Restate replays the finished steps from the journal and
calls the model only for the step that had not finished. Parallel agents are separate
invocations (`ctx.service_call`), so each one is retried and recovered on its own, and
`await`ing them in the order they were started gathers their results in that order,
whichever finished first.
"""

import datetime
import json
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import restate
from agents import Agent, AgentsException, RunResult
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel
from restate.ext.openai import DurableRunner

logger = restate.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    # the model every agent uses (the provider is OPENAI_BASE_URL, or OpenAI)
    model: str = os.environ.get("OPENAI_MODEL", "gpt-4.1-mini")
    # evaluator-optimizer: generate-evaluate rounds before giving up on a passing answer
    max_iterations: int = int(os.environ.get("MAX_ITERATIONS", "3"))
    # orchestrator-worker: research tasks run at most from one plan
    max_research_tasks: int = int(os.environ.get("MAX_RESEARCH_TASKS", "4"))


SETTINGS = Settings()


class Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",  # an unknown field is a 400 that names it
    )


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
        raise restate.TerminalError(problems, status_code=400) from None


RAW = restate.serde.BytesSerde()  # handlers take raw bytes and validate them with `parse`


async def run_agent(agent: Agent[Any], prompt: str) -> RunResult:
    """Run an agent with every model call journaled. An answer the agent cannot use (no
    valid structured output, too many turns) is terminal: the answer is in the journal, so
    a retry would read it back and fail the same way, forever."""
    try:
        return await DurableRunner.run(agent, prompt)
    except AgentsException as error:
        if isinstance(error, restate.TerminalError):
            raise
        raise restate.TerminalError(f"{agent.name}: {error}", status_code=502) from None


# --- 1. sequential chain: parse, analyse, gate, convert, pay --------------------------------


class ClaimPrompt(Model):
    message: str = Field(min_length=1)


class ClaimData(Model):
    """What the parser extracts from the claim document."""

    date: str
    amount: float
    currency: str
    category: str
    description: str


class ClaimAnalysis(Model):
    approved: bool
    approved_amount: float
    explanation: str


class Reimbursement(Model):
    approved: bool
    analysis: str
    amount_usd: float
    confirmation: str


# a fixed table, so that the example runs offline: a real one calls an exchange-rate API
USD_PER_UNIT = {"USD": 1.0, "EUR": 1.08, "GBP": 1.27, "CHF": 1.13, "JPY": 0.0067}

parser = Agent(
    name="DocumentParser",
    instructions="Extract the claim's date, amount, currency (ISO code), category and a short "
    "description from the claim document.",
    output_type=ClaimData,
    model=SETTINGS.model,
)
analyst = Agent(
    name="ClaimsAnalyst",
    instructions="Assess whether the claim is valid and decide the amount to reimburse, "
    "in the claim's currency.",
    output_type=ClaimAnalysis,
    model=SETTINGS.model,
)


def convert_to_usd(amount: float, currency: str) -> float:
    rate = USD_PER_UNIT.get(currency.upper())
    if rate is None:
        raise restate.TerminalError(f"no exchange rate for currency {currency!r}", 422)
    usd = round(amount * rate, 2)
    logger.info("Converted %.2f %s to %.2f USD", amount, currency, usd)
    return usd


def process_payment(claim_id: str, amount_usd: float) -> str:
    logger.info("Paid %.2f USD for claim %s", amount_usd, claim_id)
    return f"payment of {amount_usd:.2f} USD for claim {claim_id}"


claim_reimbursement = restate.Service("ClaimReimbursement")


@claim_reimbursement.handler(name="process", input_serde=RAW)
async def process(ctx: restate.Context, body: bytes) -> Reimbursement:
    """Parse the claim document, analyse it, and pay what the analyst approved."""
    prompt = parse(ClaimPrompt, body)

    # step 1 (agent): the document's fields
    claim = (await run_agent(parser, prompt.message)).final_output_as(ClaimData)
    logger.info("Parsed claim: %s", claim.model_dump_json())

    # step 2 (agent): the decision, with the document and its fields as context
    analysis = (
        await run_agent(
            analyst, f"Claim document: {prompt.message}\nExtracted: {claim.model_dump_json()}"
        )
    ).final_output_as(ClaimAnalysis)
    logger.info("Analysis: approved=%s %s", analysis.approved, analysis.explanation)
    if not analysis.approved:  # the gate: a refused claim stops the chain here
        return Reimbursement(
            approved=False, analysis=analysis.explanation, amount_usd=0, confirmation=""
        )

    # steps 3 and 4 (plain durable steps): convert and pay, each exactly once
    amount_usd = await ctx.run_typed(
        "convert currency",
        convert_to_usd,
        amount=analysis.approved_amount,
        currency=claim.currency,
    )
    claim_id = str(ctx.uuid())  # deterministic: the same id on every replay
    confirmation = await ctx.run_typed(
        "process payment", process_payment, claim_id=claim_id, amount_usd=amount_usd
    )
    return Reimbursement(
        approved=True,
        analysis=analysis.explanation,
        amount_usd=amount_usd,
        confirmation=confirmation,
    )


# --- 2. parallel agents: three analysts at once, then a decision ----------------------------


class InsuranceClaim(Model):
    date: datetime.date
    amount: float = Field(gt=0, strict=True, allow_inf_nan=False)
    category: str
    place_of_service: str
    reason: str


async def analyse(agent: Agent[Any], question: str, claim: InsuranceClaim) -> str:
    """One analyst agent, run in an invocation of its own."""
    logger.info("%s started", agent.name)
    result = await run_agent(agent, f"{question} Claim: {claim.model_dump_json()}")
    logger.info("%s finished: %s", agent.name, result.final_output)
    return str(result.final_output)


eligibility_agent = Agent(
    name="EligibilityAnalyst",
    instructions="Decide whether the claim is eligible for reimbursement. Answer eligible if "
    "it is a medical claim, not eligible otherwise.",
    model=SETTINGS.model,
)
rate_agent = Agent(
    name="RateAnalyst",
    instructions="Decide whether the cost of the claim is reasonable for the treatment. "
    "Answer reasonable or not reasonable.",
    model=SETTINGS.model,
)
fraud_agent = Agent(
    name="FraudAnalyst",
    instructions="Decide whether the claim is fraudulent. Answer low risk, medium risk or "
    "high risk.",
    model=SETTINGS.model,
)

eligibility_analyst = restate.Service("EligibilityAnalyst")
rate_analyst = restate.Service("RateAnalyst")
fraud_analyst = restate.Service("FraudAnalyst")


@eligibility_analyst.handler(name="run", input_serde=RAW, ingress_private=True)
async def check_eligibility(ctx: restate.Context, body: bytes) -> str:
    claim = parse(InsuranceClaim, body)
    return await analyse(eligibility_agent, "Is this claim eligible?", claim)


@rate_analyst.handler(name="run", input_serde=RAW, ingress_private=True)
async def compare_rates(ctx: restate.Context, body: bytes) -> str:
    claim = parse(InsuranceClaim, body)
    return await analyse(rate_agent, "Is the cost of this claim reasonable?", claim)


@fraud_analyst.handler(name="run", input_serde=RAW, ingress_private=True)
async def check_fraud(ctx: restate.Context, body: bytes) -> str:
    claim = parse(InsuranceClaim, body)
    return await analyse(fraud_agent, "How likely is this claim fraudulent?", claim)


decision_agent = Agent(
    name="ClaimApprovalAgent",
    instructions="You are a claim decision engine. Approve or reject the claim, based on the "
    "analyses you are given, and say why in one sentence.",
    model=SETTINGS.model,
)

parallel_claim_approval = restate.Service("ParallelAgentClaimApproval")


@parallel_claim_approval.handler(name="run", input_serde=RAW)
async def approve_in_parallel(ctx: restate.Context, body: bytes) -> str:
    """Run the three analysts at the same time, then decide on their verdicts."""
    claim = parse(InsuranceClaim, body)
    arg = claim.model_dump_json().encode()
    # fan out: all three invocations start before we wait for any of them
    eligibility = ctx.service_call(check_eligibility, arg=arg)
    rates = ctx.service_call(compare_rates, arg=arg)
    fraud = ctx.service_call(check_fraud, arg=arg)
    await restate.gather(eligibility, rates, fraud)
    # fan in: in the order they were started, whichever finished first
    verdicts = f"Eligibility: {await eligibility}. Cost: {await rates}. Fraud: {await fraud}."
    logger.info("Analyses gathered: %s", verdicts)
    decision = await run_agent(
        decision_agent, f"Decide about claim {claim.model_dump_json()}. Analyses: {verdicts}"
    )
    return str(decision.final_output)


# --- 3. orchestrator-worker: plan, research in parallel, write --------------------------------


class ReportRequest(Model):
    topic: str = Field(min_length=1)


class ResearchTask(Model):
    question: str


class ResearchPlan(Model):
    tasks: list[ResearchTask]


class ResearchAssignment(Model):
    topic: str
    question: str


class Report(Model):
    report: str
    task_count: int


planner = Agent(
    name="ResearchPlanner",
    instructions="You are a research planner. Break the topic into 2-4 research questions.",
    output_type=ResearchPlan,
    model=SETTINGS.model,
)
researcher = Agent(
    name="Researcher",
    instructions="You are a research assistant. Answer the question concisely and factually.",
    model=SETTINGS.model,
)
writer = Agent(
    name="ReportWriter",
    instructions="You are a report writer. Combine the research findings into a short, "
    "cohesive report on the topic.",
    model=SETTINGS.model,
)

research_report = restate.Service("ResearchReport")
researcher_service = restate.Service("Researcher")


@researcher_service.handler(name="run", input_serde=RAW, ingress_private=True)
async def research(ctx: restate.Context, body: bytes) -> str:
    """A worker: one research question, in its own invocation."""
    assignment = parse(ResearchAssignment, body)
    logger.info("Researching: %s", assignment.question)
    result = await run_agent(
        researcher, f"Research for a report on {assignment.topic}: {assignment.question}"
    )
    return str(result.final_output)


@research_report.handler(name="generate", input_serde=RAW)
async def generate_report(ctx: restate.Context, body: bytes) -> Report:
    """The orchestrator: plan the research, hand each question to a worker, write it up."""
    request = parse(ReportRequest, body)
    plan = (await run_agent(planner, request.topic)).final_output_as(ResearchPlan)
    tasks = plan.tasks[: SETTINGS.max_research_tasks]
    logger.info("Planned %d research tasks, running %d", len(plan.tasks), len(tasks))
    workers = [
        ctx.service_call(
            research,
            arg=ResearchAssignment(topic=request.topic, question=task.question)
            .model_dump_json()
            .encode(),
        )
        for task in tasks
    ]
    await restate.gather(*workers)
    findings = [await worker for worker in workers]
    report = await run_agent(
        writer,
        f"Topic: {request.topic}\n\nResearch findings:\n{json.dumps(findings, indent=2)}",
    )
    return Report(report=str(report.final_output), task_count=len(tasks))


# --- 4. evaluator-optimizer: generate, evaluate, improve, at most MAX_ITERATIONS rounds ----


class CodeRequest(Model):
    task: str = Field(min_length=1)


class Evaluation(Model):
    passed: bool
    feedback: str


class GeneratedCode(Model):
    code: str
    passed: bool
    iterations: int


generator = Agent(
    name="CodeGenerator",
    instructions="You are a code generator. Write clean, correct code for the task. Answer "
    "with the code only.",
    model=SETTINGS.model,
)
evaluator = Agent(
    name="CodeEvaluator",
    instructions="You are a code reviewer. Evaluate the code for correctness, readability "
    "and edge cases. Pass it if it is acceptable; otherwise give specific feedback.",
    output_type=Evaluation,
    model=SETTINGS.model,
)

code_generator = restate.Service("CodeGenerator")


@code_generator.handler(name="generate", input_serde=RAW)
async def generate_code(ctx: restate.Context, body: bytes) -> GeneratedCode:
    """Generate code and have it reviewed; feed the review back until it passes (bounded)."""
    request = parse(CodeRequest, body)
    code, feedback = "", ""
    for iteration in range(1, SETTINGS.max_iterations + 1):
        prompt = f"Task: {request.task}"
        if feedback:
            prompt += f"\n\nYour previous attempt was rejected:\n{feedback}\n\nFix the issues."
        code = str((await run_agent(generator, prompt)).final_output)
        review = (
            await run_agent(evaluator, f"Task: {request.task}\n\nCode:\n{code}")
        ).final_output_as(Evaluation)
        logger.info("Iteration %d: %s", iteration, "PASS" if review.passed else "FAIL")
        if review.passed:
            return GeneratedCode(code=code, passed=True, iterations=iteration)
        feedback = review.feedback
    return GeneratedCode(code=code, passed=False, iterations=SETTINGS.max_iterations)


services = [
    claim_reimbursement,
    parallel_claim_approval,
    eligibility_analyst,
    rate_analyst,
    fraud_analyst,
    research_report,
    researcher_service,
    code_generator,
]
app = restate.app(services)
