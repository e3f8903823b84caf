"""tests/workflows/test_e2e.py, run as it is with the Ray executor: its app's stream consumer,
workflow steps and callback completer run on the Ray nodes, the engines stay with the gateway
(their tables in the same PostgreSQL database), and the stream puts and task completions the
functions make travel back from the nodes to the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ray_executor.ray_helpers import NODES, TESTS, load_module, store_url, wait_nodes
from trapeze import App

_suite = load_module("trapeze_engines_suite_on_ray", TESTS / "workflows" / "test_e2e.py")

test_stream_records_reach_the_consumer_at_their_own_label = \
    _suite.test_stream_records_reach_the_consumer_at_their_own_label
test_workflow_label_rises_and_a_callback_completes_at_it = \
    _suite.test_workflow_label_rises_and_a_callback_completes_at_it
test_a_workflow_started_high_is_invisible_low = _suite.test_a_workflow_started_high_is_invisible_low


@pytest.fixture(scope="module")
def platform(ray_cluster: Any, pg_cluster: Any) -> Iterator[tuple[Any, Any, str]]:
    url = store_url(pg_cluster)
    with App.load(_suite.APP).start(store=url, executor="ray") as rt:
        wait_nodes(rt, NODES)
        assert rt.engines is not None and rt.invoker.engines is rt.engines
        yield rt, rt.engines, url
