"""The settings groups and their reference page: every setting sits in exactly one group under its own
environment variable, and docs/reference/settings.md is what the groups say today."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from agent_service.config import Settings
from agent_service.config.reference import COMMAND, groups, render

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference" / "settings.md"


def test_every_setting_belongs_to_exactly_one_group():
    # Given the groups Settings composes, When their fields are counted
    listed = Counter(name for group in groups() for name in group.model_fields)
    # Then each setting is in one group (a second definition would silently replace the first), and none is
    # defined on Settings itself, outside every group
    assert [name for name, times in listed.items() if times > 1] == []
    assert set(listed) == set(Settings.model_fields)


def test_environment_variable_names_are_the_upper_case_field_names_and_unique():
    # The page and the error messages name a setting by its upper-cased field name: that holds while no field
    # has an alias and the names have no prefix; environment names are case-insensitive, so they must differ
    # in more than case.
    assert (Settings.model_config.get("env_prefix", ""), Settings.model_config.get("case_sensitive")) == ("", False)
    assert [name for name, field in Settings.model_fields.items() if field.alias or field.validation_alias] == []
    variables = Counter(name.upper() for group in groups() for name in group.model_fields)
    assert [variable for variable, times in variables.items() if times > 1] == []


def test_every_setting_is_described():
    # The descriptions are the reference page's text
    assert [name for name, field in Settings.model_fields.items() if not field.description] == []


def test_committed_settings_reference_is_what_the_settings_say():
    # Given the committed page, When the page is generated from the settings, Then they are the same
    assert PAGE.read_text(encoding="utf-8") == render(), f"docs/reference/settings.md is out of date: run `{COMMAND}`"
