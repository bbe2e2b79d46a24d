"""One table of power actions (lifecycle.ACTIONS), read by the server page, its live buttons
and the API: each of them offers exactly what the state machine allows."""

import re

import pytest
from django.urls import Resolver404, resolve

from panel.vps import lifecycle
from panel.vps.models import Operation
from tests.test_ui_isolation import ui_inline, ui_world  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db


def test_every_transition_has_an_action_of_its_name_and_every_action_a_transition():
    assert set(lifecycle.TRANSITIONS) <= set(lifecycle.ACTIONS)
    assert {action.kind for action in lifecycle.ACTIONS.values()} == set(lifecycle.TRANSITIONS)
    assert all(name == action.name for name, action in lifecycle.ACTIONS.items())
    for action in lifecycle.ACTIONS.values():
        assert action.kind in Operation.Kind.values
        assert str(action.label) and str(action.requested)


@pytest.mark.parametrize("name", sorted(set(lifecycle.TRANSITIONS) - {Operation.Kind.DELETE}))
def test_the_api_has_a_route_for_every_power_action(name):
    match = resolve(f"/api/v1/servers/1/{name}/")
    assert match.func.actions == {"post": name}


def test_the_api_has_no_route_for_an_action_outside_the_table():
    with pytest.raises(Resolver404):
        resolve("/api/v1/servers/1/force-stop/")


def _buttons(page: str) -> set[str]:
    return set(re.findall(r'id="action-([a-z-]+)"', page))


def test_the_server_page_shows_a_button_per_action_the_actor_may_start(ui_world):
    url = f"/servers/{ui_world.alice_server.pk}/"
    customer_page = ui_world.client(ui_world.alice).get(url).content.decode()
    assert _buttons(customer_page) == {name for name, action in lifecycle.ACTIONS.items()
                                       if not action.provider_only}
    admin_page = ui_world.client(ui_world.admin).get(url).content.decode()
    assert _buttons(admin_page) == set(lifecycle.ACTIONS)
    for action in lifecycle.ACTIONS.values():
        assert f">{action.label}<" in re.sub(r"\s*(<|>)\s*", r"\1", admin_page)


def test_a_url_name_outside_the_table_is_404(ui_world):
    r = ui_world.client(ui_world.alice).post(f"/servers/{ui_world.alice_server.pk}/actions/power-cycle/")
    assert r.status_code == 404
