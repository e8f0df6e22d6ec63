"""Every Config field has a group and a help text, and its flag shows them (issue 24)."""

import dataclasses
import functools
import re

import pytest
from absl import flags as absl_flags

from nri_modular import config as config_lib
from nri_modular.config import GROUPS, Config

TAGS = tuple(f"[{group}] " for group in GROUPS)


class _FlagsShim:
    """``define_flags`` registers into this private FlagValues instead of absl's global."""

    def __init__(self, flag_values):
        self._fv = flag_values

    def __getattr__(self, name):
        return functools.partial(getattr(absl_flags, name), flag_values=self._fv)


def _help(flag):
    """A flag's help without the ``<a|b|c>: `` absl puts before an enum's."""
    return re.sub(r"^<[^>]*>: ", "", flag.help)


def _defined(system_default="springs"):
    fv = absl_flags.FlagValues()
    config_lib.define_flags(_FlagsShim(fv), system_default=system_default)
    return fv


def test_every_field_has_a_group_and_a_help_text():
    assert config_lib.help_problems(Config) == []
    for field in dataclasses.fields(Config):
        text = field.metadata["help"]
        assert field.metadata["group"] in GROUPS, field.name
        assert text.strip() and text.strip(" .") != field.name, field.name
        assert text != f"Config.{field.name}", field.name


def test_every_group_has_fields_in_order():
    groups = [f.metadata["group"] for f in dataclasses.fields(Config)]
    assert sorted(set(groups), key=GROUPS.index) == list(GROUPS)
    assert groups == sorted(groups, key=GROUPS.index)  # one block per group, in GROUPS' order


def test_every_flag_is_tagged_with_its_group():
    fv = _defined()
    names = [f.name for f in dataclasses.fields(Config)]
    assert set(fv) == {*names, "workdir"}
    for name in fv:
        assert _help(fv[name]).startswith(TAGS), (name, fv[name].help)
    for field in dataclasses.fields(Config):
        expected = f"[{field.metadata['group']}] {field.metadata['help']}"
        assert _help(fv[field.name]).startswith(expected), field.name


def test_flag_defaults_are_the_config_defaults():
    fv = _defined(system_default="charged")
    fv(["prog"])  # parse nothing: every flag at its default
    defaults = Config()
    for field in dataclasses.fields(Config):
        value = fv[field.name].value
        if field.name == "system":
            assert value == "charged"  # the script's system, not Config's
        elif isinstance(getattr(defaults, field.name), tuple):
            assert value == ",".join(map(str, getattr(defaults, field.name))), field.name
        else:
            assert value == getattr(defaults, field.name), field.name
            assert type(value) is type(getattr(defaults, field.name)), field.name
    assert fv["workdir"].value is None
    assert config_lib.config_from_flags(fv) == dataclasses.replace(defaults, system="charged")


def test_enum_flags_keep_their_choices():
    fv = _defined(system_default="")
    assert fv["system"].value == "" and "" in fv["system"].parser.enum_values
    assert set(config_lib.SYSTEMS) <= set(fv["system"].parser.enum_values)
    for name in ("proposal", "test_proposal"):
        assert list(fv[name].parser.enum_values) == list(config_lib.MOVE_KINDS)
    assert list(fv["edge_compute"].parser.enum_values) == list(config_lib.gnn.EDGE_COMPUTE_KINDS)


def _field(group, help_text):
    return dataclasses.field(default=0, metadata={"group": group, "help": help_text})


@dataclasses.dataclass(frozen=True)
class _Planted:
    """A made-up config: one good field, then every way to get the help metadata wrong."""

    good: int = _field("data", "A setting that says what it does.")
    bare: int = 0  # no metadata at all
    empty: int = _field("data", "  ")
    named: int = _field("data", "named.")
    reflected: int = _field("data", "Config.reflected")
    model_one: int = _field("model", "Fine on its own.")
    late_data: int = _field("data", "A data field after the model ones.")
    unknown: int = _field("misc", "A group that does not exist.")
    two_lines: int = _field("scaling", "First line.\nSecond line.")


def test_planted_regressions_are_caught():
    problems = config_lib.help_problems(_Planted)
    named = {p.split(":")[0] for p in problems}
    assert named == {"bare", "empty", "named", "reflected", "late_data", "unknown", "two_lines"}
    assert "good" not in named and "model_one" not in named


def test_define_flags_refuses_a_field_without_help(monkeypatch):
    @dataclasses.dataclass(frozen=True)
    class Unhelpful(Config):
        extra: int = 0

    monkeypatch.setattr(config_lib, "Config", Unhelpful)
    with pytest.raises(ValueError, match="extra: .*not one of"):
        _defined()
