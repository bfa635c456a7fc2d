"""Flags built from a config dataclass: every setting once, in its config."""

import argparse
from dataclasses import dataclass

import pytest

from emovlm_kd.apps.cli.flags import add_config_flags, config_from_flags
from emovlm_kd.config import setting


@dataclass
class Example:
    name: str | None = setting(None, "a name", metavar="NAME")
    count: int = setting(3, "how many")
    mode: str = setting("fast", "how", choices=("fast", "slow"))
    sizes: tuple[int, ...] = setting((1, 4), "sizes")
    loud: bool = setting(False, "say more")
    # No help: not a flag, keeps its default.
    seed: int = 7


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example)
    return parser, config_from_flags(Example, parser.parse_args(list(argv)))


def test_defaults_come_from_the_config():
    parser, config = parse()
    assert config == Example()
    assert "--seed" not in parser.format_help()
    assert "how many (default: 3)" in parser.format_help() and "sizes (default: 1,4)" in parser.format_help()


def test_each_kind_of_setting_parses_to_its_type():
    _, config = parse("--name", "x", "--count", "5", "--mode", "slow", "--sizes", "2,8,16", "--loud")
    assert config == Example(name="x", count=5, mode="slow", sizes=(2, 8, 16), loud=True, seed=7)


@pytest.mark.parametrize("argv", [["--count", "many"], ["--mode", "medium"], ["--sizes", "1,x"]])
def test_a_bad_value_is_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(*argv)
    assert exit_info.value.code == 2 and argv[0] in capsys.readouterr().err


def test_extra_settings_override_the_flags():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Example)
    assert config_from_flags(Example, parser.parse_args(["--count", "5"]), count=9, seed=1).count == 9
