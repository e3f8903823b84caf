"""tests/platform/test_gateway.py, run as it is with the Ray executor: its `running` app is
started on the 3-node Ray cluster with a PostgreSQL store instead of locally on SQLite.

Left out: test_jwt_over_http (it starts its own local runtime, with nothing to do with Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from ray_executor.ray_helpers import TESTS, load_module

_suite = load_module("trapeze_gateway_suite_on_ray", TESTS / "platform" / "test_gateway.py")

# The suite's own fixtures (an autouse one among them), bound to the Ray-backed `running`.
tokens = _suite.tokens
client = _suite.client
_admin_token = _suite._admin_token

test_each_principal_sees_exactly_its_own_data = _suite.test_each_principal_sees_exactly_its_own_data
test_anonymous_callers_run_at_bottom_and_only_where_allowed = \
    _suite.test_anonymous_callers_run_at_bottom_and_only_where_allowed
test_credentials_never_reach_the_function = _suite.test_credentials_never_reach_the_function
test_raised_invocation_gives_the_same_withheld_reply_whatever_follows = \
    _suite.test_raised_invocation_gives_the_same_withheld_reply_whatever_follows
test_detached_continuation_keeps_running_at_the_raised_label = \
    _suite.test_detached_continuation_keeps_running_at_the_raised_label
test_response_declassifier_lets_exactly_its_flow_through = \
    _suite.test_response_declassifier_lets_exactly_its_flow_through
test_http_egress_by_bound = _suite.test_http_egress_by_bound
test_email_by_bound_and_declassifier = _suite.test_email_by_bound_and_declassifier
test_sync_and_async_invokes_carry_the_label = _suite.test_sync_and_async_invokes_carry_the_label
test_logs_and_audit_are_filtered_by_clearance = _suite.test_logs_and_audit_are_filtered_by_clearance
test_bad_requests_get_clear_4xx = _suite.test_bad_requests_get_clear_4xx
test_expired_token_is_refused = _suite.test_expired_token_is_refused


@pytest.fixture(scope="module")
def running(ray_platform: Any) -> Any:
    return ray_platform
