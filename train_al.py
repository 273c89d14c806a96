"""S4AL+ active learning: stages of train -> pseudo-label -> query, resumable.

    python train_al.py --config table1/camvid/row5 [key.sub=value ...]
    torchrun --nproc_per_node 4 train_al.py --config table1/camvid/row5

Each stage of the config is one of
  supervised  train a teacher on the labeled pool (weak aug, CE [+ ReCo]);
  self_train  pseudo-label the pool with the current model, train a fresh noisy student on
              labeled (weak aug) + pseudo-labeled (strong aug) batches;
  query       the same pass also scores regions by mean entropy of the prediction (never the
              labels); the top regions are revealed (ground truth, or a person's labels with
              query.oracle=human), then self-train as above.
A finished stage is never recomputed; a killed stage resumes from its last checkpoint.
"""
import os
import sys

# OpenMP threads that spin while they wait make every conv ~20x slower as soon as another
# process (a data loader worker, a second rank) wants the same cores; passive waiting costs
# nothing measurable when they are alone. Set before torch is imported; an explicit
# environment value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from core import distributed  # noqa: E402
from al.oracle import AwaitingLabels  # noqa: E402
from al.experiment import open_experiment, run_stages  # noqa: E402
from core.cli import (EXIT_AWAITING_LABELS, exit_on_input_error, setup_or_exit,  # noqa: E402
                      load_config_or_exit, parse_args)
from al.rundir import interrupted_message  # noqa: E402


def main() -> None:
    args = parse_args(__doc__)
    cfg = load_config_or_exit(args)
    ctx = distributed.setup(cfg.runtime.device, cfg.runtime.dist_timeout_minutes)
    with exit_on_input_error():  # bad input found mid-run (e.g. an unsafe checkpoint): one error line
        exp = setup_or_exit(open_experiment, args, cfg, ctx)  # checks, then the run directory; None after --dry-run
        if exp is None:
            return
        interrupted = False
        try:
            run_stages(exp)
        except AwaitingLabels:  # query.oracle=human: the task is written, summary.json says so
            exp.logger.close()
            distributed.cleanup()
            raise SystemExit(EXIT_AWAITING_LABELS)
        except KeyboardInterrupt:  # Ctrl-C: no traceback, one line saying where the same command resumes
            interrupted = True
        if interrupted:  # printed once the progress bars the interrupted frames held have closed
            if ctx.is_main:
                print(f"\n{interrupted_message(exp.run.root)}", file=sys.stderr, flush=True)
            raise SystemExit(130)
    distributed.cleanup()



if __name__ == "__main__":
    main()
