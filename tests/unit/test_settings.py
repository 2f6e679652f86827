"""Settings that refuse values which cannot work."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tests.support import make_settings


@pytest.mark.parametrize("logins", ["admin", "admin:", ":secret", "admin:secret,", "admin:secret,other"])
def test_flower_login_without_user_or_password_is_refused(logins):
    with pytest.raises(ValidationError, match="FLOWER_BASIC_AUTH must be user:password"):
        make_settings(flower_basic_auth=logins)


def test_flower_logins_reach_child_processes_in_clear():
    settings = make_settings(flower_basic_auth="admin:secret,ops:other")
    assert settings.as_env()["FLOWER_BASIC_AUTH"] == "admin:secret,ops:other"
