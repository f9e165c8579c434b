"""The chaos run's front-door invariant, from the answers its load counted: 503 + Retry-After for a
fault, never another 5xx (HTTP) nor a SNAP ``500xxxx``; a failing check fails the run."""

from __future__ import annotations

from collections import Counter

from emeterai_testkit.chaos import front_doors


def test_faults_answered_with_503_and_retry_after_pass() -> None:
    answers = Counter({"order_get 200": 40, "order_get 503": 3, "order_create 429": 2, "upload 202": 9,
                       "snap_payment 2002500": 5, "snap_payment 5042500": 2, "order_get ClientOSError": 1})
    check = front_doors(answers, Counter())
    assert (check.ok, check.kind, check.status(), check.violations) == (True, "invariant", "ok", [])


def test_a_500_a_snap_general_error_or_a_shed_answer_without_retry_after_fails_the_run() -> None:
    answers = Counter({"order_get 200": 40, "order_get 500": 1, "upload 502": 2, "snap_payment 5002500": 1,
                       "order_get 503": 4})
    check = front_doors(answers, Counter({"order_get 503": 1}))
    assert (check.ok, check.kind, check.status()) == (False, "invariant", "FAIL")
    assert check.violations == ["order_get 500: 1", "snap_payment 5002500: 1", "upload 502: 2",
                                "order_get 503 without Retry-After: 1"]
