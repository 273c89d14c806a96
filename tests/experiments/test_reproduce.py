"""experiments/reproduce.py: a table's commands in init_from order (dependencies just before their
first user), one process, seeds and overrides, errors naming the problem, the real configs, and
reproduce.sh from the shell."""
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from experiments import reproduce
from tests.helpers import REPO


def _write_config(configs, name, **keys):
    path = configs / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(keys))


def _fabricated_camvid_configs(configs):
    """init_from edges (child -> parent), some set through _base_ files."""
    _write_config(configs, "_base_/camvid", model="mobilenet_v2", init_from=None)
    _write_config(configs, "_base_/from_row4", init_from="table1/camvid/row4")
    _write_config(configs, "_base_/from_row3", init_from="table1/camvid/row3")
    _write_config(configs, "supervised/camvid_full", _base_="../_base_/camvid.yaml")
    _write_config(configs, "table1/camvid/row1", _base_="../../_base_/camvid.yaml",
                  init_from="table1/camvid/row2")
    _write_config(configs, "table1/camvid/row2", _base_="../../_base_/camvid.yaml")
    _write_config(configs, "table1/camvid/row3", init_from="supervised/camvid_full")
    _write_config(configs, "table1/camvid/row4", init_from="configs/table1/camvid/row3.yaml")
    # Later _base_ entries override earlier ones: row5 starts from row3, not row4.
    _write_config(configs, "table1/camvid/row5",
                  _base_=["../../_base_/from_row4.yaml", "../../_base_/from_row3.yaml"])
    # The file's own key overrides its bases: row6 starts from nothing.
    _write_config(configs, "table1/camvid/row6", _base_="../../_base_/from_row4.yaml",
                  init_from=None)
    _write_config(configs, "table1/camvid/row6_random", _base_="../../_base_/from_row4.yaml")
    return {"table1/camvid/row1": "table1/camvid/row2",
            "table1/camvid/row3": "supervised/camvid_full",
            "table1/camvid/row4": "table1/camvid/row3", "table1/camvid/row5": "table1/camvid/row3",
            "table1/camvid/row6_random": "table1/camvid/row4"}


def _dry_run_configs(capsys, argv):
    assert reproduce.main(argv + ["--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    return lines, [re.search(r"--config (\S+)\.yaml", line).group(1) for line in lines[:-1]]


def test_reproduce_dry_run_orders_by_init_from(tmp_path, capsys):
    configs = tmp_path / "configs"
    edges = _fabricated_camvid_configs(configs)
    lines, paths = _dry_run_configs(capsys, ["table1_camvid", "--configs-dir", str(configs)])
    order = [str(Path(p).relative_to(configs)) for p in paths]
    # The table's configs plus the dependency outside it, each once.
    assert sorted(order) == sorted(reproduce.TABLE_CONFIGS["table1_camvid"] +
                                   ["supervised/camvid_full"])
    for child, parent in edges.items():
        assert order.index(parent) < order.index(child), (child, parent)
    for name in reproduce.TABLE_CONFIGS["table1_camvid"]:
        assert reproduce.read_init_from(name, configs) == edges.get(name), name
    # Otherwise the table's order is kept (dependencies placed just before their first user).
    assert order == ["table1/camvid/row2", "table1/camvid/row1", "supervised/camvid_full",
                     "table1/camvid/row3", "table1/camvid/row4", "table1/camvid/row5",
                     "table1/camvid/row6", "table1/camvid/row6_random"]
    assert all(line.startswith("torchrun --nproc_per_node 4 train_al.py --config ")
               for line in lines[:-1])
    assert lines[-1] == "python experiments/summarize.py runs"


def test_reproduce_dry_run_one_process_seed_and_overrides(tmp_path, capsys):
    configs = tmp_path / "configs"
    for name in reproduce.TABLE_CONFIGS["tableS1"]:
        _write_config(configs, name, model="resnet50")
    lines, _ = _dry_run_configs(capsys, ["tableS1", "--configs-dir", str(configs), "--nproc", "1",
                                         "--seed", "1", "--overrides", "data.root=/d"])
    assert lines[0] == (f"python train_ssl.py --config {configs.resolve()}/tableS1/r50_100.yaml data.root=/d "
                        "seed=1 output_dir=runs/tableS1/r50_100_seed1")
    assert len(lines) == 8


def test_reproduce_errors_name_the_problem(tmp_path):
    configs = tmp_path / "configs"
    _write_config(configs, "equal/camvid_r50", init_from="equal/cityscapes_r50")
    with pytest.raises(FileNotFoundError, match="equal/cityscapes_r50"):
        reproduce.build_commands("equal", configs)
    _write_config(configs, "equal/cityscapes_r50", init_from="equal/camvid_r50")
    with pytest.raises(ValueError, match="init_from cycle: equal/camvid_r50 -> equal/cityscapes_r50"
                                         " -> equal/camvid_r50"):
        reproduce.build_commands("equal", configs)
    with pytest.raises(ValueError, match="override 'seed1' is not of the form key=value"):
        reproduce.build_commands("supervised", configs, overrides=["seed1"])


def test_reproduce_dry_run_on_the_real_configs(capsys):
    for table, names in reproduce.TABLE_CONFIGS.items():
        _, paths = _dry_run_configs(capsys, [table])
        assert set(names) <= {p.removeprefix("configs/") for p in paths}


def test_reproduce_script_runs_from_the_shell(tmp_path):
    configs = tmp_path / "configs"
    for name in reproduce.TABLE_CONFIGS["supervised"]:
        _write_config(configs, name)
    result = subprocess.run(["bash", "experiments/reproduce.sh", "supervised", "--dry-run",
                             "--configs-dir", str(configs)], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("train_al.py --config") == 2


def test_a_seed_run_reuses_its_own_seeds_init_from_chain_and_only_picks_configs():
    commands = dict(reproduce.build_commands("cpu_camvid", REPO / "configs", nproc=1, seed=1,
                                             only=["cpu/camvid/row6"]))
    # row 6 starts from row 4, row 4 from row 2: all three run, each seed-1 run reads seed 1's parent.
    assert list(commands) == ["cpu/camvid/row2", "cpu/camvid/row4", "cpu/camvid/row6"]
    assert commands["cpu/camvid/row2"][-2:] == ["seed=1", "output_dir=runs/cpu/camvid/row2_seed1"]
    assert commands["cpu/camvid/row4"][-1] == "init_from_dir=runs/cpu/camvid/row2_seed1"
    assert commands["cpu/camvid/row6"][-1] == "init_from_dir=runs/cpu/camvid/row4_seed1"
    assert not any("init_from_dir" in arg for arg in
                   dict(reproduce.build_commands("cpu_camvid", REPO / "configs", nproc=1))["cpu/camvid/row4"])
    with pytest.raises(ValueError, match="--only: cpu/camvid/row9 not in table 'cpu_camvid'"):
        reproduce.build_commands("cpu_camvid", REPO / "configs", only=["cpu/camvid/row9"])
