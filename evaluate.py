"""Evaluate a finished stage of a run (default: its last finished one) or a weights file.

    python evaluate.py --config table1/camvid/row5                        # last finished stage
    python evaluate.py --config table1/camvid/row5 --stage student data.eval_split=val
    python evaluate.py --config demo --weights path/to/weights.pth --save-predictions preds/
    python evaluate.py --config demo --images my_photos/ --save-predictions preds/
    torchrun --nproc_per_node 4 evaluate.py --config table1/camvid/row5

Evaluates on `data.eval_split` as `eval.*` says (whole image / sliding window, scales, flip), prints
the per-class IoU table and mIoU, and writes `eval_<split>.json` (`miou` in percent and
`per_class_iou`, as in summary.json) into the evaluated stage's folder — for `--weights`, the
folder of the weights file when it is a stage of a run, else the current folder.
`--save-predictions DIR` writes `<id>.png` (class ids 0..C-1) and `<id>_color.png` for every
evaluated image; `--images DIR` predicts a folder of unlabeled images instead (no metrics).
Predictions are at the working resolution (`data.resize` when set). With torchrun every rank
evaluates (and writes the predictions of) its shard; rank 0 prints and writes the metrics.
"""
import os

# OpenMP threads that spin while they wait make every conv ~20x slower as soon as another
# process (a data loader worker, a second rank) wants the same cores. Set before torch is
# imported; an explicit environment value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402

from al.evaluate_stage import evaluate_split, prepare, report  # noqa: E402
from core import distributed  # noqa: E402
from core.checkpoint import CorruptCheckpoint  # noqa: E402
from core.cli import config_parser, exit_on_input_error, fail, load_config_or_exit  # noqa: E402
from core.errors import InputError  # noqa: E402
from core.io import writable_folder  # noqa: E402
from core.precision import configure_backends, resolve_amp  # noqa: E402
from engine.predict import save_predictions  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = config_parser(__doc__)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--stage", help="stage name (or its NN_name folder) of the config's run; "
                                       "default: the last finished stage")
    which.add_argument("--weights", help="a weights file: a run's weights.pth or a plain state dict")
    parser.add_argument("--save-predictions", metavar="DIR",
                        help="write <id>.png (class ids) and <id>_color.png for every image")
    parser.add_argument("--images", metavar="DIR",
                        help="predict the png/jpg images of DIR (no labels, no metrics); "
                             "needs --save-predictions")
    return parser.parse_intermixed_args()  # overrides may stand before or after the options


def main() -> None:
    args = parse_args()
    cfg = load_config_or_exit(args)
    if args.images and not args.save_predictions:
        fail("--images needs --save-predictions DIR (where the predictions are written)")
    try:  # a folder that cannot be written is found now, not after the whole evaluation
        out = writable_folder(args.save_predictions) if args.save_predictions else None
    except InputError as err:
        fail(f"--save-predictions {err}")
    ctx = distributed.setup(cfg.runtime.device, cfg.runtime.dist_timeout_minutes)
    try:
        amp, _ = resolve_amp(cfg.runtime.amp, ctx.device)
        configure_backends(ctx.device, cfg.deterministic)  # the kernels the run evaluated with
        job = prepare(cfg, ctx, weights=args.weights, stage=args.stage, images=args.images)
    except (ValueError, OSError, CorruptCheckpoint) as err:
        fail(str(err))
    with exit_on_input_error():
        if args.images:
            if ctx.is_main:
                print(f"predicting {len(job.data)} images of {args.images} with {job.what}")
            save_predictions(job.model, job.data, job.ids, job.palette, out, cfg, ctx, amp)
        elif (result := evaluate_split(job, cfg, ctx, amp, out)) is not None:  # rank 0
            print(report(job, cfg, *result))
    distributed.barrier(ctx)
    if ctx.is_main and out is not None:
        print(f"predictions: {args.save_predictions}")
    distributed.cleanup()


if __name__ == "__main__":
    main()
