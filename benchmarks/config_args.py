"""What the per-config benchmarks share: command-line arguments (config names, `key=value`
overrides in any order as for train_al.py, `--table` for a whole paper table) and the stage
they measure."""
from __future__ import annotations

import argparse

from datasets import dataset_classes
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


# What nvidia-smi reports as total memory on a V100 16 GB, the card the paper trained on.
V100_MIB = 16160

def num_classes(cfg) -> int:
    """Classes of a config's data set, without indexing any file (folder configs name them)."""
    kind = "camvid" if cfg.data.dataset == "synthetic" else cfg.data.dataset  # synthetic = CamVid's classes
    return len(dataset_classes(kind, cfg.data.classes))


def largest_stage(cfg):
    """(name, stage) with the largest per-GPU batch: the most demanding stage of a config."""
    return max(cfg.stages.items(), key=lambda kv: kv[1].batch_labeled + kv[1].batch_unlabeled)
