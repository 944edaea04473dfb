"""How `auto` picks a job's execution plan from its rounds' timings (`service.execution`)."""

from service.execution import PROBE_ROUNDS, ExecutionPlan, Plan


def _probe(plan: ExecutionPlan, seconds: dict[Plan, float], work: float) -> list[Plan]:
    """Feed `plan` rounds that take `seconds[plan]` each (inner loops `work` a round, over all
    actors) until it settles; the plans it asked for, a call at a time."""
    asked, done = [], 0
    while plan.chosen is None:
        kind, stop = plan.next(done, boundary=10_000)
        rounds = stop - done
        asked.append(kind)
        plan.measured(kind, rounds, seconds[kind] * rounds, work * rounds)
        done = stop
    return asked


def test_small_rounds_go_in_actor_after_three_turns_of_each() -> None:
    plan = ExecutionPlan("auto", num_workers=2)
    asked = _probe(plan, {"split": 0.012, "in_actor": 0.005}, work=0.008)
    # 2 warm-up rounds, then split turns of 8 one-round calls and in_actor turns of one call
    assert asked == ["split"] * (2 + PROBE_ROUNDS) + (["in_actor"] + ["split"] * 8) * 2 + [
        "in_actor"
    ]
    assert plan.chosen == "in_actor"
    assert plan.summary().startswith("in_actor (auto: split 12.00 ms/round, in_actor 5.00")
    # sized to ~0.25 s a call from the last call's rounds, up to the next boundary
    assert plan.next(100, boundary=10_000) == ("in_actor", 150)
    assert plan.next(100, boundary=120) == ("in_actor", 120)


def test_rounds_whose_inner_loops_outweigh_the_split_round_stay_split_at_once() -> None:
    """Conv4: two actors each compute ~0.45 s of a 0.5 s round; one actor would need 0.9 s."""
    plan = ExecutionPlan("auto", num_workers=2)
    asked = _probe(plan, {"split": 0.5, "in_actor": 1.0}, work=0.9)
    assert asked == ["split"] * (2 + PROBE_ROUNDS)  # no in_actor round was tried
    assert plan.chosen == "split"
    assert "inner loops 900.00 ms/round on all actors together" in plan.summary()


def test_a_requested_plan_and_a_one_worker_job_need_no_timing() -> None:
    assert ExecutionPlan("split", num_workers=1).next(0, 10) == ("split", 1)
    single = ExecutionPlan("auto", num_workers=1)
    assert single.chosen == "in_actor" and single.next(0, 10) == ("in_actor", 1)
    assert single.summary() == "in_actor (auto: one worker)"
