"""The verdict rule of the results page: the sign of a 95% interval against the claimed sign."""

from __future__ import annotations

import pytest

from saeseeds.studies.claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    REPRODUCED,
    Claim,
    Finding,
    verdict,
)


@pytest.mark.parametrize(
    ("interval", "direction", "expected"),
    [
        ([0.01, 0.2], 1, REPRODUCED),
        ([-0.2, -0.01], -1, REPRODUCED),
        ([-0.2, -0.01], 1, NOT_REPRODUCED),
        ([0.01, 0.2], -1, NOT_REPRODUCED),
        ([-0.1, 0.1], 1, INCONCLUSIVE),
        ([float("nan"), float("nan")], 1, INCONCLUSIVE),
        ([None, None], -1, INCONCLUSIVE),
    ],
)
def test_verdict_follows_the_interval(interval, direction, expected):
    assert verdict(interval, direction) == expected


def test_a_claim_needs_half_its_settings_and_none_against():
    claim = Claim("size", "text", "source", "shared", "a − b", "control", -1)
    claim.findings = [Finding("one", 0.1, 0.2, -0.1, [-0.2, -0.05], REPRODUCED)]
    assert claim.verdict == REPRODUCED and claim.summary == "1 setting: 1 reproduced"
    claim.findings.append(Finding("two", 0.1, 0.1, 0.0, [-0.1, 0.1], INCONCLUSIVE))
    assert claim.verdict == REPRODUCED  # half decided, none against
    assert claim.summary == "2 settings: 1 reproduced, 1 inconclusive"
    claim.findings.append(Finding("three", 0.1, 0.1, 0.0, [-0.1, 0.1], INCONCLUSIVE))
    assert claim.verdict == INCONCLUSIVE  # too few decided
    claim.findings.append(Finding("four", 0.2, 0.1, 0.1, [0.05, 0.2], NOT_REPRODUCED))
    assert claim.verdict == INCONCLUSIVE  # contradictory
