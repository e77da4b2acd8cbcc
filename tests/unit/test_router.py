"""Routing without sockets: the classifier and its table, each strategy, the circuit
breaker, cost limits, and what the decision says about itself."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from tokenwire.core.provider import Message
from tokenwire.core.route import AttemptOutcome, Candidate, ProviderProfile, ProviderSlot
from tokenwire.core.spec import Generation, RequestSpec, Routing
from tokenwire.protocol.errors import CostLimitExceeded, InvalidRequest, ProviderUnavailable
from tokenwire.protocol.messages import RoutingStrategy
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.routing.classify import TaskType, classify, load_classifier
from tokenwire.routing.health import CircuitState, HealthBook, HealthPolicy
from tokenwire.routing.router import RoutingPolicy, StrategyRouter
from tokenwire.routing.strategies import LOAD_WEIGHT
from tokenwire.settings import ProviderSettings

TABLE = Path(__file__).parents[1] / "data" / "task_prompts.csv"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def slot(name: str, strengths: tuple[str, ...] = (), **profile: Any) -> ProviderSlot:
    provider = SimulatedProvider(ProviderSettings(name=name, kind="simulated"))
    return ProviderSlot(provider, ProviderProfile(strengths=strengths, **profile))


def spec(prompt: str = "hello there", max_tokens: int | None = None, **routing: Any) -> RequestSpec:
    return RequestSpec(
        request_id="r",
        user_id="u",
        messages=(Message(role="user", content=prompt),),
        routing=Routing(**routing),
        generation=Generation(max_tokens=max_tokens),
    )


class Fleet:
    """Providers, their health book on a controllable clock, and a router over them."""

    def __init__(self, *slots: ProviderSlot, default: str | None = None, **policy: Any) -> None:
        self.clock = Clock()
        self.slots = {s.name: s for s in slots}
        self.health = HealthBook(
            ((s.name, s.profile.max_concurrency) for s in slots),
            HealthPolicy(failure_threshold=3, cooldown_seconds=30),
            clock=self.clock,
        )
        self.router = StrategyRouter(
            self.slots,
            self.health,
            RoutingPolicy(default_provider=default or slots[0].name, **policy),
        )

    def served(self, name: str, ttft: float, ok: bool = True, deltas: int = 50) -> None:
        self.health.attempt_started(name)
        self.health.first_text(name, ttft)
        outcome = AttemptOutcome.OK if ok else AttemptOutcome.FAILED
        self.health.attempt_ended(name, outcome, deltas, 1.0)

    def failed(self, name: str, times: int = 1) -> None:
        for _ in range(times):
            self.health.attempt_started(name)
            self.health.attempt_ended(name, AttemptOutcome.FAILED, 0, 0.0)

    def order(self, request: RequestSpec) -> list[str]:
        return [c.slot.name for c in self.router.choose(request).candidates]


# -- classification --------------------------------------------------------------


def test_the_classifier_on_its_labelled_table() -> None:
    rows = list(csv.DictReader(TABLE.open()))
    assert len(rows) >= 60
    assert {row["task"] for row in rows} == {task.value for task in TaskType}
    right = sum(classify(row["prompt"]).task.value == row["task"] for row in rows)
    accuracy = right / len(rows)
    print(f"\nclassifier accuracy on {TABLE.name}: {right}/{len(rows)} = {accuracy:.1%}")
    assert accuracy >= 0.95


@pytest.mark.parametrize(
    ("text", "task", "cue"),
    [
        ("Write a Python function that sorts a list", TaskType.CODE, "a programming language"),
        ("Please summarize this article", TaskType.SUMMARIZATION, "asks for a summary"),
        ("Translate this into French", TaskType.TRANSLATION, "asks to translate"),
        ("What is 12 * 7?", TaskType.MATH, "an arithmetic expression"),
        ("Write a poem about the sea", TaskType.CREATIVE, "asks for a creative piece"),
        ("hello there", TaskType.CONVERSATION, "no task cue"),
        ("why does parse_header() drop the last line", TaskType.CODE, "code syntax"),
    ],
)
def test_a_classification_names_the_cues_that_decided_it(
    text: str, task: TaskType, cue: str
) -> None:
    result = classify(text)
    assert result.task is task
    assert cue in result.reason


def test_only_the_start_of_a_huge_prompt_is_read() -> None:
    assert classify("hello " * 100_000 + "translate this").task is TaskType.CONVERSATION


def test_a_deployment_s_own_classifier_replaces_the_rules() -> None:
    custom = load_classifier("tests.support.classifiers:everything_is_math")
    assert custom("write a poem").task is TaskType.MATH
    assert load_classifier("tests.support.classifiers:says_nonsense")("x").task is (
        TaskType.CONVERSATION
    )


@pytest.mark.parametrize(
    "dotted",
    [
        "tests.support.classifiers",
        "tests.support.classifiers:missing",
        "tests.support.classifiers:NOT_CALLABLE",
        "no.such.module:function",
    ],
)
def test_a_classifier_that_cannot_be_used_is_a_start_up_error(dotted: str) -> None:
    with pytest.raises(ValueError, match=r"classifiers|no\.such"):
        load_classifier(dotted)


# -- strategies --------------------------------------------------------------------


def test_intelligent_sends_a_task_to_the_provider_strong_at_it() -> None:
    fleet = Fleet(slot("general"), slot("coder", ("code",)))
    route = fleet.router.choose(spec("fix this python bug"))
    assert (route.slot.name, route.task_type) == ("coder", "code")
    assert fleet.order(spec("tell me about your day"))[0] == "general"


def test_intelligent_prefers_the_faster_and_the_more_reliable_as_asked() -> None:
    fleet = Fleet(slot("quick"), slot("steady"))
    fleet.served("quick", 0.05)
    fleet.served("quick", 0.05, ok=False)
    fleet.served("steady", 2.0)
    fleet.served("steady", 2.0)
    assert fleet.order(spec(speed_priority=True))[0] == "quick"
    steady_first = spec(speed_priority=False, reliability_priority=True)
    assert fleet.order(steady_first)[0] == "steady"


def test_performance_based_tries_the_unmeasured_then_the_fastest() -> None:
    fleet = Fleet(slot("slow"), slot("fast"), slot("new"))
    fleet.served("slow", 0.9)
    fleet.served("fast", 0.1)
    assert fleet.order(spec(strategy=RoutingStrategy.PERFORMANCE_BASED)) == ["new", "fast", "slow"]


def test_cost_optimized_takes_the_cheapest() -> None:
    fleet = Fleet(
        slot("dear", output_cost_per_mtok=30.0),
        slot("cheap", output_cost_per_mtok=0.5),
        slot("mid", output_cost_per_mtok=5.0),
    )
    route = fleet.router.choose(spec(strategy=RoutingStrategy.COST_OPTIMIZED))
    assert [c.slot.name for c in route.candidates] == ["cheap", "mid", "dear"]
    assert route.candidates[0].reason.startswith("est. $")


def test_reliability_based_avoids_the_failing_one() -> None:
    fleet = Fleet(slot("flaky"), slot("solid"))
    fleet.served("flaky", 0.1, ok=False)
    fleet.served("flaky", 0.1)
    fleet.served("solid", 0.5)
    assert fleet.order(spec(strategy=RoutingStrategy.RELIABILITY_BASED)) == ["solid", "flaky"]


def test_round_robin_alternates() -> None:
    fleet = Fleet(slot("a"), slot("b"), slot("c"))
    firsts = [fleet.order(spec(strategy=RoutingStrategy.ROUND_ROBIN))[0] for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_the_server_default_strategy_applies_when_the_request_names_none() -> None:
    fleet = Fleet(slot("a"), slot("b"), default_strategy=RoutingStrategy.COST_OPTIMIZED)
    assert fleet.router.choose(spec()).strategy is RoutingStrategy.COST_OPTIMIZED
    chosen = fleet.router.choose(spec(strategy=RoutingStrategy.PERFORMANCE_BASED))
    assert chosen.strategy is RoutingStrategy.PERFORMANCE_BASED


def test_every_candidate_has_a_score_and_a_reason() -> None:
    fleet = Fleet(slot("a", ("code",)), slot("b"))
    for candidate in fleet.router.choose(spec("write python code")).candidates:
        described = candidate.describe()
        assert set(described) == {"provider", "score", "reason"}
        assert described["reason"]


def test_a_provider_s_load_lowers_its_intelligent_score_by_the_share_of_its_places_in_use() -> None:
    fleet = Fleet(slot("other"), slot("limited", max_concurrency=4), slot("unlimited"))

    def ranked() -> dict[str, Candidate]:
        return {c.slot.name: c for c in fleet.router.choose(spec()).candidates}

    idle = ranked()
    assert idle["limited"].score == idle["unlimited"].score
    for in_use in range(1, 5):
        fleet.health.attempt_started("limited")
        now = ranked()
        assert now["unlimited"].score - now["limited"].score == pytest.approx(
            LOAD_WEIGHT * in_use / 4
        )
        assert f"load {in_use / 4:.0%}" in now["limited"].reason
        assert now["unlimited"].score == idle["unlimited"].score
    assert fleet.order(spec()).index("unlimited") < fleet.order(spec()).index("limited")


# -- forced providers and the circuit breaker -------------------------------------


def test_a_forced_provider_wins_over_strengths() -> None:
    fleet = Fleet(slot("general"), slot("coder", ("code",)))
    route = fleet.router.choose(spec("fix this python bug", provider="general"))
    assert [c.slot.name for c in route.candidates] == ["general"]
    assert route.forced


def test_an_unknown_forced_provider_is_an_invalid_request_listing_the_known_ones() -> None:
    fleet = Fleet(slot("general"), slot("coder"))
    with pytest.raises(InvalidRequest, match="known: coder, general"):
        fleet.router.choose(spec(provider="ghost"))


def test_the_circuit_opens_after_repeated_failures_and_refuses_a_forced_request() -> None:
    fleet = Fleet(slot("a"), slot("b"))
    fleet.failed("a", times=2)
    assert fleet.health["a"].state is CircuitState.CLOSED
    fleet.failed("a")
    assert fleet.health["a"].state is CircuitState.OPEN
    assert fleet.order(spec()) == ["b"]
    with pytest.raises(ProviderUnavailable) as refused:
        fleet.router.choose(spec(provider="a"))
    assert refused.value.error_type == "provider_unavailable"
    assert refused.value.retry_after == pytest.approx(30)


def test_after_the_cooldown_one_probe_goes_through_and_its_success_closes_the_circuit() -> None:
    fleet = Fleet(slot("a"), slot("b"))
    fleet.failed("a", times=3)
    fleet.clock.now += 30
    assert fleet.health["a"].state is CircuitState.HALF_OPEN
    assert "a" in fleet.order(spec(provider="a"))  # the next real request is the probe
    fleet.health.attempt_started("a")
    with pytest.raises(ProviderUnavailable):  # one probe at a time
        fleet.router.choose(spec(provider="a"))
    assert fleet.order(spec()) == ["b"]
    fleet.health.attempt_ended("a", AttemptOutcome.OK, 10, 0.5)
    assert fleet.health["a"].state is CircuitState.CLOSED
    assert set(fleet.order(spec())) == {"a", "b"}


def test_a_failed_probe_opens_the_circuit_again() -> None:
    fleet = Fleet(slot("a"), slot("b"))
    fleet.failed("a", times=3)
    fleet.clock.now += 31
    fleet.failed("a")
    assert fleet.health["a"].state is CircuitState.OPEN
    fleet.clock.now += 29
    assert fleet.health["a"].state is CircuitState.OPEN


def test_a_cancelled_probe_leaves_the_circuit_half_open_for_the_next_request() -> None:
    fleet = Fleet(slot("a"), slot("b"))
    fleet.failed("a", times=3)
    fleet.clock.now += 30
    fleet.health.attempt_started("a")
    fleet.health.attempt_ended("a", AttemptOutcome.NEUTRAL, 0, 0.0)
    assert fleet.health["a"].state is CircuitState.HALF_OPEN
    assert fleet.health["a"].available


def test_when_every_circuit_is_open_the_request_is_refused_with_the_soonest_retry() -> None:
    fleet = Fleet(slot("a"), slot("b"))
    fleet.failed("a", times=3)
    fleet.clock.now += 10
    fleet.failed("b", times=3)
    with pytest.raises(ProviderUnavailable) as refused:
        fleet.router.choose(spec())
    assert refused.value.retry_after == pytest.approx(20)


# -- cost limits --------------------------------------------------------------------


def test_providers_over_the_cost_limit_are_skipped() -> None:
    fleet = Fleet(slot("dear", output_cost_per_mtok=100.0), slot("cheap", output_cost_per_mtok=1.0))
    # 100 answer tokens: dear may cost $0.01, cheap $0.0001.
    assert fleet.order(spec(max_tokens=100, cost_limit=0.001)) == ["cheap"]


def test_no_provider_within_the_cost_limit_refuses_the_request_before_anything_is_spent() -> None:
    fleet = Fleet(slot("dear", output_cost_per_mtok=100.0))
    with pytest.raises(CostLimitExceeded, match="over the limit"):
        fleet.router.choose(spec(max_tokens=100, cost_limit=0.001))
    with pytest.raises(CostLimitExceeded):
        fleet.router.choose(spec(max_tokens=100, cost_limit=0.001, provider="dear"))


def test_a_provider_whose_estimate_is_exactly_the_limit_is_within_it() -> None:
    fleet = Fleet(slot("p", output_cost_per_mtok=1000.0))
    # 100 answer tokens at $1,000 per million: $0.1.
    assert fleet.order(spec(max_tokens=100, cost_limit=0.1)) == ["p"]
    assert fleet.order(spec(max_tokens=100, cost_limit=0.1, provider="p")) == ["p"]


def test_the_cost_estimate_assumes_the_default_answer_budget_without_max_tokens() -> None:
    fleet = Fleet(slot("p", output_cost_per_mtok=1000.0), default_max_tokens=512)
    # 512 tokens at $1,000 per million: $0.512.
    assert fleet.order(spec(cost_limit=0.6)) == ["p"]
    with pytest.raises(CostLimitExceeded):
        fleet.router.choose(spec(cost_limit=0.5))


def test_the_worked_example_of_the_routing_docs() -> None:
    fleet = Fleet(
        slot("coder", ("code",), input_cost_per_mtok=0.15, output_cost_per_mtok=0.60),
        slot("local"),
        default="local",
    )
    for n in range(20):
        fleet.served("coder", 0.18, ok=n != 0)
        fleet.served("local", 0.025)
    route = fleet.router.choose(
        spec("Write a Python function that merges two sorted lists", max_tokens=500)
    )
    assert route.task_type == "code"
    scores = {c.slot.name: round(c.score, 2) for c in route.candidates}
    assert scores == {"coder": 5.22, "local": 3.71}
    assert [c.slot.name for c in route.candidates] == ["coder", "local"]
    prompt = "Write a Python function that merges two sorted lists"
    for strategy in (RoutingStrategy.COST_OPTIMIZED, RoutingStrategy.PERFORMANCE_BASED):
        assert fleet.order(spec(prompt, max_tokens=500, strategy=strategy))[0] == "local"


# -- providers reachable by name only (auto = false) ----------------------------------


def by_name_only(name: str = "simulated") -> ProviderSlot:
    return slot(name, auto=False)


@pytest.mark.parametrize("strategy", list(RoutingStrategy))
def test_routing_never_chooses_a_provider_reachable_by_name_only_even_when_it_is_faster(
    strategy: RoutingStrategy,
) -> None:
    fleet = Fleet(slot("local"), by_name_only(), slot("other", ("code",)))
    for _ in range(5):
        fleet.served("simulated", 0.001)
        fleet.served("local", 3.0)
        fleet.served("local", 3.0, ok=False)
        fleet.served("other", 2.0)
    for _ in range(4):  # round robin turns; every strategy, every turn
        assert "simulated" not in fleet.order(spec("write python code", strategy=strategy))


def test_when_every_routable_provider_is_out_the_request_is_refused_not_given_the_stand_in() -> (
    None
):
    fleet = Fleet(slot("local"), by_name_only())
    fleet.served("simulated", 0.001)
    fleet.failed("local", times=3)
    with pytest.raises(ProviderUnavailable, match="circuits open: local") as refused:
        fleet.router.choose(spec())
    assert refused.value.retry_after == pytest.approx(30)


def test_a_provider_reachable_by_name_only_answers_when_named() -> None:
    fleet = Fleet(slot("local"), by_name_only())
    fleet.failed("local", times=3)
    route = fleet.router.choose(spec(provider="simulated"))
    assert [c.slot.name for c in route.candidates] == ["simulated"]


def test_with_no_provider_routing_may_choose_a_request_must_name_one() -> None:
    fleet = Fleet(by_name_only("a"), by_name_only("b"))
    with pytest.raises(InvalidRequest, match=r"auto = false.*\(a, b\)"):
        fleet.router.choose(spec())
    assert fleet.order(spec(provider="b")) == ["b"]


def test_the_error_rate_is_that_of_the_last_window_of_outcomes() -> None:
    # Kept as outcomes come and go (not counted at each read): after every attempt it is
    # the share of failures among the last `window` ones that said anything of the provider.
    book = HealthBook([("p", None)], HealthPolicy(window=5, failure_threshold=100))
    outcomes = [AttemptOutcome.FAILED] * 3 + [AttemptOutcome.OK] * 6 + [AttemptOutcome.FAILED]
    outcomes += [AttemptOutcome.NEUTRAL, AttemptOutcome.OK, AttemptOutcome.FAILED] * 3
    said: list[bool] = []
    assert book["p"].error_rate == 0.0
    for outcome in outcomes:
        book.attempt_started("p")
        book.attempt_ended("p", outcome, 0, 0.0)
        if outcome is not AttemptOutcome.NEUTRAL:
            said.append(outcome is AttemptOutcome.OK)
        window = said[-5:]
        assert book["p"].error_rate == window.count(False) / len(window)
