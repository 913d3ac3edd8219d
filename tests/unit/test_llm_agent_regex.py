"""Scripted agent tests run a user-supplied regex against model output: bounded work, never a hang."""

from __future__ import annotations

import pytest

from airies.agents import testing as agent_testing
from airies.agents.schemas import AgentTestTurn
from airies.agents.testing import MAX_REGEX_SUBJECT_CHARS, regex_check, validate_expectations
from airies.core.errors import ValidationFailedError


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|aa)+$", r"(a|a)*$"])
def test_catastrophic_patterns_fail_the_check_instead_of_hanging(pattern):
    check = regex_check(pattern, "a" * 5000 + "!")
    assert check["passed"] is False and check["error"] == "regex_timeout" and "backtracking" in check["message"]


def test_ordinary_patterns_keep_re_semantics():
    assert regex_check(r"\d+ PM", "We close at 6 pm.") == {"check": "regex", "expected": r"\d+ PM", "passed": True}
    assert regex_check(r"^closed$", "We are open.")["passed"] is False
    assert regex_check(r"(?P<hour>\d+) am", "Open at 9 am")["passed"] is True


def test_the_regex_sees_at_most_the_capped_reply():
    reply = "x" * MAX_REGEX_SUBJECT_CHARS + "needle"
    assert regex_check("needle", reply)["passed"] is False
    assert regex_check("needle", "needle" + reply)["passed"] is True


@pytest.mark.parametrize("pattern", ["(unclosed", "a{2,1}", "[z-a]", "a" * (agent_testing.MAX_REGEX_LENGTH + 1)])
def test_invalid_patterns_are_rejected_before_any_call(pattern):
    with pytest.raises(ValidationFailedError) as info:
        validate_expectations([AgentTestTurn(user="hi", expect_regex=pattern)])
    assert info.value.details[0]["field"] == "turns.0.expect_regex"
