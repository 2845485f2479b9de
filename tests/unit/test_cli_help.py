"""``whm-ha COMMAND --help`` states every option's default."""

from __future__ import annotations

import argparse

from whm_ha.cli import build_parser


def test_every_option_with_a_default_says_it() -> None:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.choices.items():
        text = " ".join(command.format_help().split())
        for action in command._actions:
            if action.option_strings and action.default not in (None, False, "", argparse.SUPPRESS):
                assert action.help and "default" in command._get_formatter()._get_help_string(action), (name, action)
                assert "default" in text
