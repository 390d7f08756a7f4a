"""The budget of the property suites (tests/collector/test_properties.py, tests/server/test_snapshot_properties.py).

In CI a bounded number of examples, derandomized (the same inputs every run: CI must not be flaky), no
shrinking; RAYHISTORY_PROPERTY_EXAMPLES over that number: the deep profile, a random seed (printed;
RAYHISTORY_PROPERTY_SEED replays one) and shrinking. RAYHISTORY_PROPERTY_REPORT_ONLY=1 prints every
example's problems and goes on (a survey of what fails); never in CI.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Callable

import pytest
from hypothesis import HealthCheck, Phase, seed, settings

REPORT_ONLY = os.environ.get("RAYHISTORY_PROPERTY_REPORT_ONLY") == "1"


def fail(message: str) -> None:
    if REPORT_ONLY:
        print("PROBLEM " + message.replace("\n", "\n        "))
    else:
        pytest.fail(message, pytrace=False)


@dataclass(frozen=True)
class Budget:
    name: str
    examples: int
    deep: bool
    seed: int

    def apply(self, fn: Callable) -> Callable:
        """The suite's hypothesis settings (and, when deep, its seed) on a test function."""
        common = dict(max_examples=self.examples, deadline=None, database=None, print_blob=True,
                      suppress_health_check=list(HealthCheck))
        if self.deep:
            fn = settings(derandomize=False, report_multiple_bugs=False, **common)(fn)
            return seed(self.seed)(fn)
        return settings(derandomize=True, phases=[Phase.explicit, Phase.generate], report_multiple_bugs=True,
                        **common)(fn)

    def describe(self) -> str:
        return (f"[{self.name} properties] profile={'deep' if self.deep else 'ci'} examples={self.examples} "
                + (f"seed={self.seed} (RAYHISTORY_PROPERTY_SEED={self.seed} replays it)" if self.deep
                   else "derandomize=True"))


def budget(name: str, ci_examples: int) -> Budget:
    examples = int(os.environ.get("RAYHISTORY_PROPERTY_EXAMPLES", ci_examples))
    return Budget(name, examples, examples > ci_examples,
                  int(os.environ.get("RAYHISTORY_PROPERTY_SEED", random.randrange(1 << 32))))
