"""S4AL+ as a semi-supervised trainer (the paper's Table S1): no queries.

    torchrun --nproc_per_node 4 train_ssl.py --config tableS1/r101d_372

The labeled images are `data.labeled_split` (a standard split list); every other image of
`data.train_split` is unlabeled. Stages: a teacher on the labeled images, then each
self-training round pseudo-labels the unlabeled images with the current model (confidence
>= pseudo.threshold) and trains a fresh noisy student on labeled (weak aug) + pseudo-labeled
(strong aug) batches; the student becomes the next round's teacher.
"""
import os

# OpenMP threads that spin while they wait make every conv ~20x slower as soon as another
# process (a data loader worker, a second rank) wants the same cores; passive waiting costs
# nothing measurable when they are alone. Set before torch is imported; an explicit
# environment value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from core import distributed  # noqa: E402
from al.experiment import open_experiment, run_stages  # noqa: E402
from core.cli import exit_on_input_error, setup_or_exit, fail, load_config_or_exit, parse_args  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    cfg = load_config_or_exit(args)
    if not cfg.data.labeled_split:
        fail("data.labeled_split: train_ssl.py needs the list of labeled images")
    if any(stage.kind == "query" for stage in cfg.stages.values()):
        fail("stages: train_ssl.py does not query labels; use train_al.py for query stages")
    ctx = distributed.setup(cfg.runtime.device, cfg.runtime.dist_timeout_minutes)
    with exit_on_input_error():  # bad input found mid-run (e.g. an unsafe checkpoint): one error line
        exp = setup_or_exit(open_experiment, args, cfg, ctx)  # checks, then the run directory; None after --dry-run
        if exp is None:
            return
        run_stages(exp)  # teacher, then each self-training round's student
    distributed.cleanup()


if __name__ == "__main__":
    main()
