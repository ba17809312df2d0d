"""The verdict rule of the results page: the sign of a 95% interval against the claimed sign."""

from __future__ import annotations

import pytest

from saeseeds.studies.claims import (
    INCONCLUSIVE,
    NOT_BEYOND_GEOMETRY,
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


def control(interval, verdict_against):
    return {"name": "gaussian", "difference": sum(interval) / 2, "interval": interval,
            "verdict": verdict_against}  # fmt: skip


def test_a_trend_the_geometry_control_shows_as_much_is_not_beyond_geometry():
    # The page's "median matched cosine falls with dictionary size": both settings reproduced
    # raw, neither beyond the geometry control (one against it, one inconclusive).
    claim = Claim("size_median", "text", "source", "decoder_median", "a − b", "control", -1)
    claim.findings = [
        Finding("32k", 0.165, 0.243, -0.077, [-0.089, -0.066], REPRODUCED,
                control([0.009, 0.035], NOT_REPRODUCED)),
        Finding("131k", 0.228, 0.264, -0.036, [-0.057, -0.015], REPRODUCED,
                control([-0.036, 0.019], INCONCLUSIVE)),
    ]  # fmt: skip
    assert claim.raw_verdict == REPRODUCED  # kept beside the verdict, as its own column
    assert claim.verdict == NOT_BEYOND_GEOMETRY
    assert [f.judged for f in claim.findings] == [NOT_BEYOND_GEOMETRY, NOT_BEYOND_GEOMETRY]
    # Beyond the control in every setting: reproduced.
    for found in claim.findings:
        found.control = control([-0.03, -0.01], REPRODUCED)
    assert claim.verdict == REPRODUCED and claim.findings[0].judged == REPRODUCED


def test_the_verdict_against_the_control_never_reverses_the_raw_trend():
    claim = Claim("layer", "text", "source", "live_decoder_median", "a − b", "control", -1)
    # Raw inconclusive, the opposite beyond geometry: not reproduced against the control.
    claim.findings = [Finding("one", 0.5, 0.5, 0.0, [-0.1, 0.1], INCONCLUSIVE,
                              control([0.01, 0.05], NOT_REPRODUCED))]  # fmt: skip
    assert claim.raw_verdict == INCONCLUSIVE and claim.verdict == NOT_REPRODUCED
    # Raw opposite, beyond geometry as claimed: still not reproduced (the trend itself is not).
    claim.findings = [Finding("one", 0.6, 0.5, 0.1, [0.05, 0.15], NOT_REPRODUCED,
                              control([-0.05, -0.01], REPRODUCED))]  # fmt: skip
    assert claim.verdict == NOT_REPRODUCED
    # No control: the raw verdict is the verdict.
    claim.findings = [Finding("one", 0.4, 0.5, -0.1, [-0.15, -0.05], REPRODUCED)]
    assert claim.verdict == REPRODUCED and claim.findings[0].judged == REPRODUCED
