"""The learning-rate schedule, and how many steps it spans when a run has a time limit.

The schedule is a linear warm-up, then cosine decay to zero at the run's last step. `/train` gives a
run 2000 steps (1000 until 2026-12-07) and 14 minutes (training/defaults.py). The machines this
project runs on differ about twofold: 1000 steps of the demo model on Colin27 took 593 s on 2 cores
when docs/training.md measured them, and an AMD EPYC's 2 cores ran 667 of them in the 14 minutes. A
run that the limit stops part-way stops with its learning rate still high: at 667 of 1000 steps, the
cosine is still at a quarter of its peak, and the weights it publishes are those of a run that never
settled.

`StepPlan` times the warm-up's steps and then shortens the schedule to the steps the limit allows,
refitted every 100 steps from the mean step time so far, so that the run anneals and ends by itself.
The limit stays as a safety net. Without a limit nothing is timed, and a run is the same on every
machine. With one, the steps planned depend on the machine's speed, as the steps a limit allowed
always did. The run's record names them (`TrainResult.chosen`, MLflow's `chosen.planned_steps`).
Measured (docs/training.md, "Slower machines"): on its own this did not make a slow machine's run
better; what it lacked was steps, which several CPU processes give (launch.cpu_processes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Share of the time left that the plan spends. The rest absorbs steps slower than the warm-up's: the
# clips differ in prompts and corrections.
TIME_SAFETY = 0.95
REFIT_EVERY = 100  # steps between two fits of the plan, each from the mean step time so far


def lr_factor(step: int, warmup: int, total: int) -> float:
    """The learning rate at `step`, as a share of the peak."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


@dataclass
class StepPlan:
    """The steps a run's schedule spans: `max_steps`, or fewer when `max_minutes` cannot hold them."""

    max_steps: int
    max_minutes: float | None  # the run's time limit; None: no limit, the plan is max_steps
    warmup: int  # warm-up steps (TrainConfig.warmup_steps)
    total: int = field(init=False)  # the schedule's last step, max_steps until fitted

    def __post_init__(self):
        self.total = self.max_steps

    @property
    def timing_step(self) -> int:
        """The step after which the plan is first fitted: the end of the warm-up, so that the shortened
        cosine starts where the warm-up ends (the warm-up does not depend on the total), and at least 5
        steps, so that steps 2 to 5 are timed (the first carries one-off costs)."""
        return max(5, self.warmup)

    @property
    def timed(self) -> bool:
        """Whether this run fits its schedule to a time limit (one that more steps than the timing could hit)."""
        return self.max_minutes is not None and self.timing_step < self.max_steps

    def due(self, step: int) -> bool:
        """Whether the plan is fitted after `step`: at the end of the warm-up, then every REFIT_EVERY steps
        (steps grew slower after the warm-up: 0.79 s over the demo model's warm-up on Colin27, 0.95 s later)."""
        return self.timed and step >= self.timing_step and (step - self.timing_step) % REFIT_EVERY == 0 \
            and step < self.total

    def factor(self, step: int) -> float:
        return lr_factor(step, self.warmup, self.total)

    def fit(self, step: int, seconds_per_step: float, seconds_left: float, validation_s: float = 0.0,
            val_every: int = 0) -> int:
        """Set the schedule's last step to what `seconds_left` holds after `step`, at `seconds_per_step`,
        counting a validation of `validation_s` every `val_every` steps and one at the end; never beyond
        max_steps, never before the next step."""
        per_step = seconds_per_step + (validation_s / val_every if val_every else 0.0)
        affordable = (TIME_SAFETY * seconds_left - validation_s) / max(per_step, 1e-9)
        self.total = max(step + 1, min(self.max_steps, step + int(affordable)))
        return self.total
