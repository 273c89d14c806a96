"""Command-line arguments shared by the per-config benchmarks: config names, `key=value`
overrides (in any order, as for train_al.py), and `--table` for a whole paper table."""
from __future__ import annotations

import argparse

from experiments.reproduce import TABLE_CONFIGS


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="*", metavar="CONFIG|KEY=VALUE",
                        help="config names (e.g. tableS1/r101d_186) and overrides applied to each")
    parser.add_argument("--table", action="append", default=[], choices=sorted(TABLE_CONFIGS),
                        help="every config of a paper table (repeatable)")


def configs_and_overrides(parser: argparse.ArgumentParser, args) -> tuple[list[str], list[str]]:
    overrides = [a for a in args.args if "=" in a]
    names = [a for a in args.args if "=" not in a]
    for table in args.table:
        names += [n for n in TABLE_CONFIGS[table] if n not in names]
    if not names:
        parser.error("name at least one config, or --table")
    return names, overrides
