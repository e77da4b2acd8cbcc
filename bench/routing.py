"""What routing adds to each request: classification and ranking, in microseconds.

    .venv/bin/python bench/routing.py [--providers 2 5 10] [--repeat 5]

For each number of providers (simulated, with prices, strengths and measured
health) and each strategy, times `Router.choose` over the prompts of
tests/data/task_prompts.csv (best of --repeat passes), and the classifier alone.
Also prints the classifier's accuracy on that table.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from tokenwire.core.provider import Message
from tokenwire.core.route import AttemptOutcome, ProviderProfile, ProviderSlot
from tokenwire.core.spec import RequestSpec, Routing
from tokenwire.protocol.messages import RoutingStrategy
from tokenwire.providers.simulated import SimulatedProvider
from tokenwire.routing.classify import TaskType, classify
from tokenwire.routing.health import HealthBook
from tokenwire.routing.router import RoutingPolicy, StrategyRouter
from tokenwire.settings import ProviderSettings

TABLE = Path(__file__).resolve().parent.parent / "tests" / "data" / "task_prompts.csv"


def fleet(count: int) -> StrategyRouter:
    tasks = [task.value for task in TaskType]
    slots = {}
    for n in range(count):
        name = f"p{n}"
        provider = SimulatedProvider(ProviderSettings(name=name, kind="simulated"))
        profile = ProviderProfile(
            input_cost_per_mtok=0.1 * (n + 1),
            output_cost_per_mtok=0.4 * (n + 1),
            max_concurrency=64,
            strengths=(tasks[n % len(tasks)],),
        )
        slots[name] = ProviderSlot(provider, profile)
    health = HealthBook((name, 64) for name in slots)
    for n, name in enumerate(slots):
        for attempt in range(20):
            health.attempt_started(name)
            health.first_text(name, 0.05 * (n + 1))
            failed = attempt % (n + 3) == 0
            outcome = AttemptOutcome.FAILED if failed else AttemptOutcome.OK
            health.attempt_ended(name, outcome, 100, 1.0)
    return StrategyRouter(slots, health, RoutingPolicy(default_provider="p0"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--providers", type=int, nargs="+", default=[2, 5, 10])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows = list(csv.DictReader(TABLE.open()))
    prompts = [row["prompt"] for row in rows]
    right = sum(classify(row["prompt"]).task.value == row["task"] for row in rows)
    print(f"classifier accuracy on {TABLE.name}: {right}/{len(rows)} = {right / len(rows):.1%}")

    def best_of(work: object) -> float:
        timings = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            work()  # type: ignore[operator]
            timings.append(time.perf_counter() - started)
        return min(timings) / len(prompts) * 1e6

    classify_us = best_of(lambda: [classify(p) for p in prompts])
    print(f"classify alone: {classify_us:.1f} us per prompt ({len(prompts)} prompts)")
    print(f"{'providers':>9} " + " ".join(f"{s.value:>18}" for s in RoutingStrategy))
    for count in args.providers:
        router = fleet(count)
        cells = []
        for strategy in RoutingStrategy:
            specs = [
                RequestSpec(
                    user_id="bench",
                    request_id="r",
                    messages=(Message(role="user", content=p),),
                    routing=Routing(strategy=strategy),
                )
                for p in prompts
            ]
            cells.append(best_of(lambda specs=specs, r=router: [r.choose(s) for s in specs]))
        print(f"{count:>9} " + " ".join(f"{us:>15.1f} us" for us in cells))


if __name__ == "__main__":
    main()
