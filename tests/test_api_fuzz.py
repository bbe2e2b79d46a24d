"""Schema-driven fuzzing: every operation of the served OpenAPI schema, called through Django's
WSGI app with generated input, as an admin key (every endpoint reachable) and as a customer key.

Each answer must be no 5xx, have a documented status code and content type, and a body that
matches the schema (errors included: {detail, code, fields}). Operations run inline on the
fake driver, so destructive calls on the World's real objects are fine.

The API's rate limits stay on: one operation's examples (MAX_EXAMPLES per caller, each test in
its own transaction, so its own counts) are far within API_RATE_PER_KEY, and 429 is a
documented answer of every operation should a limit be reached.
"""

import json
import random

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, Phase, settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.django_db

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 20


def _openapi() -> dict:
    """The schema `/api/schema/?format=json` serves, built without a request (no database at
    collection time), as plain JSON."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    return json.loads(OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True)))


OPENAPI = _openapi()
application = get_wsgi_application()
schema = schemathesis.openapi.from_dict(OPENAPI)
schema.app = application
# The key is the fixture's, not generated; inputs are what is fuzzed.
schema.config.generation.update(with_security_parameters=False, max_examples=MAX_EXAMPLES, deterministic=True)


@pytest.fixture(autouse=True)
def _keep_the_test_transaction():
    """Django's test client does this too: a request must not close the connection that holds
    the test's transaction (the raw WSGI app closes "old" connections per request)."""
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture
def objects(world, alice_server):
    """Real ids to aim the generated path parameters at: a running server of Alice's, its
    operations, a webhook and Bob's objects too (a customer key must get 404 for those)."""
    from panel.vps.models import Operation
    from panel.webhooks.models import Webhook
    from panel.vps.models import VirtualServer

    hook = Webhook(url="https://hooks.example.com/panel", events=["*"], customer=world.alice_customer)
    hook.secret = "s" * 32
    hook.save()
    bob_server = VirtualServer.objects.create(customer=world.bob_customer, plan=world.plan, node=world.node,
                                              hostname="bob1", vcpus=1, ram_mib=256, disk_gib=1, state="stopped")
    return {
        "servers": [alice_server.id, bob_server.id],
        "operations": list(Operation.objects.values_list("id", flat=True)),
        "customers": [world.alice_customer.id, world.bob_customer.id],
        "plans": [world.plan.id],
        "nodes": [world.node.id],
        "webhooks": [hook.id],
    }


def aim(case, objects) -> None:
    """Half the generated integer ids become real ones of the resource, so the fuzz reaches
    past the 404 into validation and the action itself."""
    for name, value in (case.path_parameters or {}).items():
        if case.path.endswith("/usage/"):
            # `<int:pk>` (panel/api/urls.py): a non-number or a negative one is Django's own
            # HTML 404, not the API's.
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                case.path_parameters[name] = 0
            continue
        if isinstance(value, int):
            continue
        elif "." in str(value):
            # A dot is outside the router's id pattern: Django's own (HTML) 404, not the API's.
            case.path_parameters[name] = str(value).replace(".", "_")
    ident = case.path_parameters.get("id") if case.path_parameters else None
    if not isinstance(ident, int) or ident % 2:
        return
    resource = case.path.split("/")[3] if case.path.startswith("/api/v1/") else ""
    real = objects.get(resource)
    if real:
        case.path_parameters["id"] = random.Random(ident).choice(real)


@pytest.fixture(params=["admin", "alice"])
def caller(request, world):
    return request.param, {"Authorization": f"Token {world.admin_key if request.param == 'admin' else world.alice_key}"}


# The schema documents the admin's view (the served one follows the caller): a customer's
# templates and recipes leave out the admin-only fields, so only their bodies are not checked.
CUSTOMER_VIEW_DIFFERS = ("/api/v1/os-templates/", "/api/v1/recipes/")


@schema.parametrize()
@hypothesis_settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                     suppress_health_check=list(HealthCheck))
def test_every_operation_answers_per_its_schema(case, caller, objects):
    role, headers = caller
    aim(case, objects)
    checks = CHECKS
    if role != "admin" and case.method == "GET" and case.path.startswith(CUSTOMER_VIEW_DIFFERS):
        checks = [check for check in CHECKS if check is not response_schema_conformance]
    case.call_and_validate(headers=headers, checks=checks)


def test_the_fuzzed_schema_is_the_served_one(world):
    served = world.client(world.admin_key).get("/api/schema/?format=json")
    assert served.status_code == 200
    assert set(served.json()["paths"]) == set(OPENAPI["paths"])
    anonymous = world.client().get("/api/schema/?format=json").json()  # no caller: the admin's view
    assert "OsTemplateAdmin" in anonymous["components"]["schemas"] and "RecipeAdmin" in anonymous["components"]["schemas"]
    assert "tokenAuth" in anonymous["components"]["securitySchemes"]
    stop = OPENAPI["paths"]["/api/v1/servers/{id}/stop/"]["post"]
    assert {"202", "400", "401", "403", "404", "409", "429"} <= set(stop["responses"])
    assert any(p["name"] == "Idempotency-Key" for p in stop["parameters"])
