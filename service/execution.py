"""How a job's rounds run: split over its actors, or whole rounds inside one actor.

`split`: each round's tasks are split over the `num_workers` actors and the controller applies
the meta-update; right when a round's inner loops cost more than its calls. `in_actor`: one actor
runs whole rounds, the meta-update included, many per call; right when rounds are so small that
the calls (messages, φ in and Σ(W_i − φ) out, the controller's turn) would cost more than the
tasks themselves. Both give the same φ (the serial reference's, to float rounding).

`auto` measures both on the job's own rounds and keeps the faster: after a few untimed split
rounds (first calls build and warm each actor's inner step), it times the two plans in turns,
a few rounds each, three times over, so that a passing load (the controller drawing the first
figures, a neighbour's job) weighs on both alike, and compares their median turns. It stops
after the first split turn when the round's inner loops alone, summed over its actors, took
longer than the split round: one actor could not run them faster (Conv4's rounds). A
one-worker job has nothing to split and runs in_actor at once.
"""

from dataclasses import dataclass, field
from typing import Literal

Execution = Literal["auto", "split", "in_actor"]
Plan = Literal["split", "in_actor"]

WARMUP_ROUNDS = 2  # split rounds not timed
PROBE_ROUNDS = 8  # rounds of one timed turn
PROBE_TURNS: tuple[Plan, ...] = ("split", "in_actor") * 3
CALL_SECONDS = 0.25  # an in_actor call's length: the longest a stop waits
MAX_ROUNDS_PER_CALL = 1000


@dataclass
class _Turn:
    """One timed turn of a plan while `auto` probes."""

    plan: Plan
    rounds: int = 0
    seconds: float = 0.0
    work_seconds: float = 0.0  # the inner loops' time, summed over the actors


@dataclass
class ExecutionPlan:
    """The plan of a job's next rounds, from what its rounds measured so far."""

    requested: Execution
    num_workers: int
    chosen: Plan | None = None
    turns: list[_Turn] = field(default_factory=list)  # auto's timed turns so far
    in_actor_round_s: float | None = None  # the last in_actor call's seconds per round
    _warmed: int = 0  # untimed split rounds so far

    def __post_init__(self) -> None:
        if self.requested != "auto":
            self.chosen = self.requested
        elif self.num_workers == 1:
            self.chosen = "in_actor"

    def next(self, done: int, boundary: int) -> tuple[Plan, int]:
        """The plan of the rounds after `done` (rounds completed) and the round to stop at, no
        later than `boundary` (the next evaluation, checkpoint or the end)."""
        if self.chosen is None:
            turn = self._turn()
            if turn is None or turn.plan == "split":
                return "split", done + 1
            return "in_actor", min(boundary, done + PROBE_ROUNDS - turn.rounds)
        if self.chosen == "split":
            return "split", done + 1
        per_call = 1
        if self.in_actor_round_s:
            per_call = min(round(CALL_SECONDS / self.in_actor_round_s), MAX_ROUNDS_PER_CALL)
        return "in_actor", min(boundary, done + max(1, per_call))

    def measured(self, plan: Plan, rounds: int, seconds: float, work_seconds: float) -> bool:
        """Record `rounds` rounds of `plan` that took `seconds`, their inner loops
        `work_seconds` over all actors; True when this settles `auto`."""
        if plan == "in_actor":
            self.in_actor_round_s = seconds / rounds
        if self.chosen is not None:
            return False
        turn = self._turn()
        if turn is None:
            self._warmed += rounds
            return False
        turn.rounds += rounds
        turn.seconds += seconds
        turn.work_seconds += work_seconds
        if turn.rounds < PROBE_ROUNDS:
            return False
        if len(self.turns) == 1 and turn.work_seconds > turn.seconds:
            self.chosen = "split"  # one actor alone would take longer than the split round
            return True
        if len(self.turns) < len(PROBE_TURNS):
            return False
        fastest: Plan = min(("split", "in_actor"), key=self._median)
        self.chosen = fastest
        return True

    def _turn(self) -> _Turn | None:
        """The timed turn under way (None while warming up), starting the next one when due."""
        if self._warmed < WARMUP_ROUNDS:
            return None
        if not self.turns or self.turns[-1].rounds >= PROBE_ROUNDS:
            self.turns.append(_Turn(PROBE_TURNS[len(self.turns)]))
        return self.turns[-1]

    def _median(self, plan: Plan) -> float:
        """The median of `plan`'s turns, in seconds per round."""
        values = sorted(t.seconds / t.rounds for t in self.turns if t.plan == plan)
        return values[len(values) // 2]

    def summary(self) -> str:
        """The plan and why, for the run's tags and the log (once chosen)."""
        if self.requested != "auto":
            return f"{self.chosen} (requested)"
        if not self.turns:
            return f"{self.chosen} (auto: one worker)"
        if len(self.turns) == 1:
            turn = self.turns[0]
            return (
                f"split (auto: split {turn.seconds / turn.rounds * 1000:.2f} ms/round, its "
                f"inner loops {turn.work_seconds / turn.rounds * 1000:.2f} ms/round on all "
                "actors together)"
            )
        timed = ", ".join(
            f"{plan} {self._median(plan) * 1000:.2f} ms/round" for plan in ("split", "in_actor")
        )
        return f"{self.chosen} (auto: {timed}; medians of 3 turns of {PROBE_ROUNDS} rounds)"
