"""A schemathesis fuzz run of the workbench API against its own OpenAPI schema: whatever a client sends, no
answer is a server error (5xx), and every JSON error names its problem. The server is LeNet-5 on 200 digits,
in-process. Loading models over HTTP is left out (each call loads a network, which is slow, not wrong)."""

from __future__ import annotations

from collections import Counter

import pytest

pytest.importorskip("schemathesis")

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import deepscope as ds
from deepscope.app.server.app import create_app
from deepscope.app.server.workbench import Settings, open_workbench

MODEL, IMAGE = "lenet_mnist", "sample:lenet_mnist:3"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    digits = ds.datasets.mnist5k("test").subset(range(200), "mnist5k-200")
    bench = open_workbench(["zoo:lenet_mnist"], digits, Settings(root=tmp_path_factory.mktemp("fuzz")))
    bench.wait_for_scans(timeout=300)
    yield create_app(bench, web=None)
    bench.close()


@pytest.mark.slow
def test_no_request_makes_a_server_error(app):
    """Every operation of the schema, 25 generated requests each (parameters, bodies and uploads that fit the
    schema and ones that do not)."""
    api = schemathesis.openapi.from_asgi("/api/openapi.json", app).exclude(method="POST", path="/api/models")
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) > 30

    for operation in operations:

        @given(case=operation.as_strategy(), real=st.booleans())
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case, real):
            if real:
                # Random ids mostly meet a 404 at the door: half the requests name the real model and image, so
                # that the fuzzed layers, units, methods, options and targets reach the library.
                if "model" in (case.path_parameters or {}):
                    case.path_parameters["model"] = MODEL
                for name in ("model", "a", "b"):
                    if case.query and name in case.query:
                        case.query[name] = MODEL
                if case.query and "image" in case.query:
                    case.query["image"] = IMAGE
            response = case.call()
            statuses[response.status_code // 100 * 100] += 1
            where = f"{case.method} {case.formatted_path} {case.query} {case.body!r:.200}"
            if response.status_code >= 500:
                failures.append(f"{where}: {response.status_code} {response.text[:300]}")
            elif response.status_code >= 400 and response.headers.get("content-type", [""])[0].startswith(
                "application/json"
            ):
                body = response.json()
                if not (body.get("error") and body.get("kind")):
                    failures.append(f"{where}: an error without its sentence: {body}")

        call()
    assert not failures, "\n".join(failures[:20])
    assert statuses[200] > 100, statuses  # the run reached the library, not only the 404 at the door
