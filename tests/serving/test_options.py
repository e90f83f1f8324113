"""SERVING_OPTIMISATIONS: which optimisations are on, and refusals that name the variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.config import ConfigError
from serving.handler import OPTIMISATIONS, RequestHeaders, ServingHandler, handler_class
from serving.options import optimisations
from tests.servers import ROOT

ALL = frozenset(OPTIMISATIONS)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ALL),
        ("", ALL),
        ("all", ALL),
        ("ALL", ALL),
        ("none", frozenset()),
        ("-header_reader", ALL - {"header_reader"}),
        (" -header_reader, ", ALL - {"header_reader"}),
        ("header_reader", frozenset({"header_reader"})),
    ],
)
def test_values(value: str | None, expected: frozenset[str]) -> None:
    env = {} if value is None else {"SERVING_OPTIMISATIONS": value}
    assert optimisations(env) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [("-header_reader,-fast", "unknown optimisations ['fast']"),
     ("header_reader,-header_reader", "mixes names and -names")],
)
def test_unusable_values_are_refused_naming_the_variable(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match="SERVING_OPTIMISATIONS") as err:
        optimisations({"SERVING_OPTIMISATIONS": value})
    assert says in str(err.value)


def test_switched_off_means_gunicorns_handler_behaviour() -> None:
    on, off = handler_class(ALL), handler_class(frozenset())
    assert on.MessageClass is RequestHeaders
    assert off.MessageClass is ServingHandler.MessageClass  # gevent's header parsing
    assert off.__mro__[1] is ServingHandler and on.__mro__[-len(ServingHandler.__mro__)] is ServingHandler


def test_a_server_does_not_start_with_an_unusable_value() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "router", "serve", "--port", "0"], cwd=ROOT, capture_output=True,
        text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "SERVING_OPTIMISATIONS": "-fast",
             "ROUTER_UPSTREAMS": "v1=http://127.0.0.1:9,v2=http://127.0.0.1:10"},
    )
    assert proc.returncode != 0
    assert "SERVING_OPTIMISATIONS='-fast' names unknown optimisations" in proc.stderr
