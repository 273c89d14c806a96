"""The steps of a run, as methods of one `Experiment` built from a checked `RunPlan`
(al/checks.py): scan and start the run directory, train a stage, pseudo-label the pool, query
regions, summarise. train_al.py and train_ssl.py call them in the paper's order."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from al import guard, oracle
from al.checks import RunPlan
from al.pseudo import StalePass, load_pass, pseudo_label_pass, save_pass
from al.query_step import class_pixel_shares, select_regions, write_query_panels
from al.reuse import copy_finished_stage
from al.rundir import RunDirectory, describe_device, read_stage_record, with_query_stats
from al.train_stage import RunContext, StageJob, fresh_model, train_and_evaluate
from core import distributed as dist_utils
from core import faults
from core.cli import provenance
from core.config import dump_config
from core.logger import RunLogger
from datasets import SegmentationView
from engine import data as data_utils
from engine.scan import load_scan, save_scan, scan_source
from models.build import inference_model, load_weights
from query.strategies import MC_SAMPLES, get_strategy
from query.pool import LabelPool


class Experiment:
    """The steps of a run whose checks passed (a `RunPlan`): start (scan, run directory, logger),
    the labeled pool, finished or reused stages, the pseudo-label / scoring pass, the query, the
    training of a stage and the summary. train_al.py and train_ssl.py call them in the paper's order."""

    def __init__(self, plan: RunPlan):
        self.plan = plan
        self.cfg, self.ctx, self.overwrite, self.partial_import = plan.cfg, plan.ctx, plan.overwrite, plan.partial_import
        self.amp, self.pool_src, self.eval_src, self.grid = plan.amp, plan.pool_src, plan.eval_src, plan.grid
        self.reuse_dir, self.reusable = plan.reuse_dir, plan.reusable
        self._initial = plan.initial

    # ------------------------------------------------------------------ start (run directory)
    def start(self) -> None:
        """Scan every image and label (bad data fails here, before a run directory exists),
        then create the run directory and the logger."""
        cfg, ctx = self.cfg, self.ctx
        dist_utils.check_shared_output_dir(cfg.output_dir, ctx)  # rank 0 writes what every rank reads
        guard.lock(Path(cfg.output_dir), ctx)  # an existing run directory: before its files are read
        self._check_finished_stages()  # also: a run reads only its own files (no link out of it)
        cache = Path(cfg.output_dir) / "data_check.npz"
        valid = None if self.overwrite else load_scan(cache, self.pool_src)
        if valid is None:
            if ctx.is_main:
                print(f"checking {len(self.pool_src)} training and {len(self.eval_src)} evaluation images ...")
            self.valid_counts = scan_source(self.pool_src, self.grid, ctx, workers=cfg.data.workers)
            scan_source(self.eval_src, None, ctx, workers=cfg.data.workers)
        else:
            self.valid_counts = valid
        self.run = RunDirectory(cfg, ctx, self.overwrite)
        if valid is None and ctx.is_main:
            save_scan(cache, self.pool_src, self.valid_counts)
        self.logger = RunLogger(self.run.root, enabled=ctx.is_main)
        self.logger.log(provenance(), echo=False)
        self.logger.log("resolved config:\n" + dump_config(cfg), echo=False)
        self.logger.log(self.plan.describe())
        self.device_name = describe_device(ctx)
        self.records: list[dict] = []
        self.query_stats: dict[int, dict] = {}  # stage index -> class pixels revealed by its query

    def initial_pool(self) -> LabelPool:
        """The labeled pool before any stage (drawn, or read from data.labeled_split)."""
        return self._initial

    def stage_seed(self, index: int) -> int:
        """The query stage's seed, the same on every rank: BALD's noisy passes and random's draws."""
        return self.cfg.seed * 1000 + index

    def labeled_pct(self, pool: LabelPool) -> float:
        return 100.0 * pool.labeled_pixel_fraction()

    # ------------------------------------------------------------------ finished / reused stages
    def reuse_source(self, index: int, name: str) -> Path:
        return self.plan.reuse_source(index, name)

    def finished_stage(self, index: int, name: str):
        """(pool, weights) of a stage finished earlier — in this run or, via init_from, another."""
        stage_dir = self.run.stage_dir(index, name)
        source_dir = self.reuse_source(index, name) if name in self.reusable else None
        if not RunDirectory.stage_done(stage_dir) and source_dir is not None and RunDirectory.stage_done(source_dir):
            guard.check_links(source_dir)
            guard.read_record(source_dir / "weights.pth", load_weights,  # an unsafe or damaged file is named where it is, never copied
                              f"it belongs to the init_from run {self.reuse_dir}: finish or repair that run, or remove init_from")
            if self.ctx.is_main:
                copy_finished_stage(source_dir, stage_dir)
                self.logger.log(f"[{name}] reused from {source_dir}")
            dist_utils.barrier(self.ctx)
        if not RunDirectory.stage_done(stage_dir):
            return None
        if source_dir is not None and self.ctx.is_main:
            oracle.copy_human_labels(source_dir, stage_dir)  # no-op unless reused with human labels
        dist_utils.barrier(self.ctx)
        record, pool, weights = read_finished(stage_dir)
        self.records.append(record)
        self.logger.log(f"[{name}] already finished: mIoU {record['miou']:.2f}")
        # A stage reused from a run without queries holds whole-image cells: refine them to our grid.
        return pool.on_grid(self.grid), weights

    def _check_finished_stages(self) -> None:
        """Every finished stage this run will load (its own, or the init_from run's) is read once
        before anything is written: a damaged or missing record is one line naming it, with the
        run directory left as it was."""
        if not self.overwrite:  # --overwrite replaces this run: its old files are not read
            guard.check_links(Path(self.cfg.output_dir))
        for index, name in enumerate(self.cfg.stages):
            folders = [] if self.overwrite else [Path(self.cfg.output_dir) / RunDirectory.stage_folder(index, name)]
            if name in self.reusable:
                folders.append(self.reuse_source(index, name))
            for folder in folders:
                guard.check_links(folder)
                if RunDirectory.stage_done(folder):
                    read_finished(folder)

    # ------------------------------------------------------------------ pseudo labels (+ scores)
    def pseudo_label(self, index: int, name: str, teacher_state: dict, pool: LabelPool, *, score: bool) -> dict:
        """Teacher inference over every image not fully labeled: pseudo-label PNGs, and the
        region scores of query.strategy when the stage queries. Kept on disk so a resumed stage
        skips it."""
        stage_dir = self.run.stage_dir(index, name)
        done = stage_dir / "pseudo_done.npz"
        strategy = get_strategy(self.cfg.query.strategy) if score else None
        written_for = strategy.name if score else ""  # what the file must hold to be this pass
        if done.is_file():
            try:
                return load_pass(done, written_for)
            except StalePass as err:  # an older run directory, or another strategy: computed again
                self.logger.log(f"warning: {err}; pseudo-labelling again")
            except guard.DAMAGED as err:  # a cache of the pass below: computed again
                self.logger.log(f"warning: {done} is damaged ({type(err).__name__}); pseudo-labelling again")
        started = time.time()
        # bald samples the student's noise (off in eval mode, so the plain prediction is unchanged)
        noisy = strategy is not None and strategy.needs == MC_SAMPLES
        teacher = inference_model(self.cfg.model, self.pool_src.num_classes, teacher_state, self.ctx.device,
                                  channels_last=self.cfg.runtime.channels_last, noise=noisy)
        todo = [i for i in range(len(pool)) if not pool.cells[i].all()]
        vis = todo[: self.cfg.query.vis_images] if score else []
        human = score and self.cfg.query.oracle == "human"  # the annotator is offered the prediction
        out = pseudo_label_pass(teacher, self.pool_src, todo, self.cfg, self.ctx, amp=self.amp,
                                out_dir=stage_dir / "pseudo", grid=self.grid if score else None,
                                strategy=strategy, stage_seed=self.stage_seed(index), keep_maps_for=vis,
                                prediction_dir=stage_dir / oracle.PREDICTION if human else None)
        out["seconds"] = time.time() - started
        if self.ctx.is_main:
            save_pass(done, out, len(pool), self.grid.shape, written_for)
        dist_utils.barrier(self.ctx)
        self.logger.log(f"[{name}] pseudo-labeled {len(todo)} images in {out['seconds']:.0f}s")
        return load_pass(done, written_for)

    # ------------------------------------------------------------------ query
    def query(self, index: int, name: str, pool: LabelPool, scored: dict) -> LabelPool:
        """Select regions (from the model's scores and the pool only), reveal them through the
        oracle (ground truth, or a human annotator: this may stop the run until the labels are
        there) and count what they hold."""
        q = self.cfg.query
        new, budget, scores = select_regions(q, self.grid, pool, scored, stage_seed=self.stage_seed(index))
        faults.reached("before_reveal")
        imported = None
        if q.oracle == "human" and new.any():  # nothing selected: nothing to ask anyone
            try:
                labelled = oracle.reveal_by_human(stage_dir=self.run.stage_dir(index, name), stage=name,
                                                  earlier_dirs=self._stage_dirs(index), src=self.pool_src,
                                                  pool=pool, new=new, scores=scores, ctx=self.ctx,
                                                  logger=self.logger, partial=self.partial_import)
            except oracle.AwaitingLabels as wait:
                self.write_summary(finished=False, waiting=wait.record())
                self.logger.log(f"{wait} (summary.json state: waiting_for_labels; the same command again "
                                f"continues once they are there)")
                raise
            imported = oracle.import_record(new, labelled, self.grid, self.pool_src.ids)
            new = labelled  # a partial import reveals only the images that were labelled
        next_pool = pool.reveal(new, budget)
        next_pool.check_grows_from(pool)
        if self.ctx.is_main:
            write_query_panels(self.run.stage_dir(index, name) / "query_vis", q.strategy, self.pool_src, self.grid,
                               pool, new, scored, scores, q.vis_images,
                               show=lambda image_id, panel: self.logger.image(f"{name}/query_{image_id}", panel, index))
        stats = oracle.class_pixels(self.pool_src, next_pool, new, self.human_labels(index + 1), self.ctx)
        if imported is not None:
            stats["human_import"] = imported
        self.query_stats[index] = stats
        self.logger.scalars(class_pixel_shares(stats), index)
        pct = self.labeled_pct(next_pool)
        self.logger.log(f"[{name}] queried {int(new.sum())} regions ({q.strategy}, {q.selection}, oracle "
                        f"{q.oracle}); labeled pixels {self.labeled_pct(pool):.2f}% -> {pct:.2f}%")
        return next_pool

    def _stage_dirs(self, count: int) -> list[Path]:
        """The folders of the first `count` stages, in order."""
        return [self.run.stage_dir(i, name) for i, name in enumerate(list(self.cfg.stages)[:count])]

    def human_labels(self, count: int) -> dict[int, str]:
        """{image index: newest human-label PNG} after the first `count` stages."""
        return oracle.human_label_paths(self._stage_dirs(count), self.pool_src.ids)

    # ------------------------------------------------------------------ training
    def views(self, pool: LabelPool, pseudo_dir: Path | None, human_paths: dict[int, str]):
        """Labeled view (weak aug) and pseudo view (strong aug; None without pseudo labels); which
        image goes where, and where its revealed labels come from: `oracle.view_items`."""
        labeled, pseudo = oracle.view_items(pool, self.pool_src.ids, pseudo_dir, human_paths)
        region = self.grid.region
        weak = SegmentationView(self.pool_src, labeled, data_utils.weak_aug(self.cfg), region_size=region)
        strong = SegmentationView(self.pool_src, pseudo, data_utils.strong_aug(self.cfg), region_size=region) \
            if pseudo_dir is not None else None
        return weak, strong

    def train(self, index: int, name: str, stage, pool: LabelPool, teacher_state: dict | None,
              pseudo: dict | None) -> dict:
        stage_dir = self.run.stage_dir(index, name)
        if self.ctx.is_main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            pool.save(stage_dir / "pool.npz")
        # Seed per stage (same on every rank): a stage's fresh weights and noise do not depend on
        # whether earlier stages ran in this process or were loaded after a restart.
        seed_everything(self.cfg.seed * 100 + index)
        model = fresh_model(self.cfg.model, stage, self.pool_src.num_classes, teacher_state)
        labeled_view, pseudo_view = self.views(pool, stage_dir / "pseudo" if pseudo is not None else None,
                                               self.human_labels(index + 1))
        extra = {"pool": {"labeled_pixel_pct": self.labeled_pct(pool),
                          "labeled_valid_pixel_pct": 100.0 * pool.labeled_valid_pixel_fraction(self.valid_counts),
                          "history": pool.history},
                 "pool_sha256_per_rank": self._check_pools_agree(pool, name),
                 **self.query_stats.get(index, {})}  # query stages: queried / pool class pixels
        run = RunContext(self.cfg, self.ctx, self.logger, self.eval_src, self.amp)
        record = train_and_evaluate(run, StageJob(index, name, stage, stage_dir), model, labeled_view, pseudo_view,
                                    labeled_pct=self.labeled_pct(pool), extra_metrics=extra,
                                    extra_wall_s=pseudo["seconds"] if pseudo else 0.0)
        record = with_query_stats(record, extra)  # as read back from metrics.json after a restart
        self.records.append(record)
        self.write_summary(finished=False)
        self._log_labelled_curve(index)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    def _log_labelled_curve(self, index: int) -> None:
        """TensorBoard: mIoU against labelled pixels after every stage so far, beside the random-query
        twin's (<output_dir>_random, when that run exists)."""
        if not self.ctx.is_main:
            return
        from engine.figures import labelled_curve
        from core.io import read_json
        series = {self.cfg.name: [(r["labeled_pixel_pct"], r["miou"]) for r in self.records]}
        twin = Path(str(self.cfg.output_dir).rstrip("/") + "_random") / "summary.json"
        if twin.is_file():
            series[f"{self.cfg.name}_random (same budget, random regions)"] = [
                (r["labeled_pixel_pct"], r["miou"]) for r in read_json(twin).get("stages", [])]
        self.logger.image("summary/miou_vs_labelled_pct", labelled_curve(series, f"{self.cfg.name}: mIoU vs labels"),
                          index)

    def _check_pools_agree(self, pool: LabelPool, name: str) -> list[str]:
        """Every rank must train on the same pool: identical weights after DDP's averaged
        gradients would not show a rank that trained on other labels."""
        digest = hashlib.sha256(np.packbits(pool.cells).tobytes() + "\n".join(pool.ids).encode()).hexdigest()
        digests = dist_utils.all_gather_objects(digest, self.ctx)
        if len(set(digests)) != 1:
            raise RuntimeError(f"stage {name!r}: ranks hold different label pools: {digests}")
        return digests

    # ------------------------------------------------------------------ summary
    def write_summary(self, finished: bool, waiting: dict | None = None) -> None:
        self.run.write_summary(self.cfg, self.records, self.pool_src.classes, self.device_name, finished,
                               num_stages=len(self.cfg.stages), waiting=waiting)

    def finish(self) -> None:
        self.write_summary(finished=True)
        self.logger.log(results_table(self.records, self.pool_src.classes))
        self.logger.log(f"summary: {self.run.root / 'summary.json'}  "
                        f"TensorBoard: tensorboard --logdir {self.run.root / 'tensorboard'}")
        self.logger.close()


def open_experiment(args, cfg, ctx) -> Experiment | None:
    """Check everything that can be checked before a run directory exists (config, data, weights,
    init_from, output dir: `RunPlan`), then start the run. Bad input raises (ValueError, OSError;
    the scripts' `setup_or_exit` makes it one `error:` line and exit code 2).
    Returns None after a --dry-run, which only prints what the run would do."""
    plan = RunPlan(cfg, ctx, dry_run=args.dry_run, overwrite=args.overwrite, overrides=args.overrides,
                   partial_import=getattr(args, "import_partial", False))
    if args.dry_run:
        print(plan.describe())
        return None
    exp = Experiment(plan)
    exp.start()  # decodes every image and label once, then creates the run directory
    return exp


def run_stages(exp: Experiment) -> None:
    """The paper's loop: every stage in order, finished ones loaded instead of recomputed. Without
    query stages (train_ssl.py) it is the semi-supervised trainer: teacher, then student rounds."""
    pool = exp.initial_pool()  # 10% of the images (or data.labeled_split), fully labeled
    teacher = None
    for index, (name, stage) in enumerate(exp.cfg.stages.items()):
        finished = exp.finished_stage(index, name)
        if finished is not None:
            pool, teacher = finished
            continue
        pseudo = None
        if stage.kind != "supervised":
            pseudo = exp.pseudo_label(index, name, teacher, pool, score=stage.kind == "query")
        if stage.kind == "query":
            pool = exp.query(index, name, pool, pseudo)
        teacher = exp.train(index, name, stage, pool, teacher, pseudo)  # the student becomes the teacher
    exp.finish()


def seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def results_table(records: list[dict], classes) -> str:
    short = [c[:8] for c in classes]
    head = f"{'stage':<14}{'kind':<11}{'labeled %':>10}{'mIoU':>7}  " + " ".join(f"{c:>8}" for c in short)
    lines = [head, "-" * len(head)]
    for r in records:
        ious = " ".join(f"{r['per_class_iou'][c]:8.1f}" if r["per_class_iou"][c] is not None else f"{'-':>8}"
                        for c in classes)
        lines.append(f"{r['name']:<14}{r['kind']:<11}{r['labeled_pixel_pct']:>10.2f}{r['miou']:>7.2f}  {ious}")
    return "\n".join(lines)


def read_finished(stage_dir: Path) -> tuple[dict, LabelPool, dict]:
    """(summary record, pool, weights) of a finished stage folder; a file that is missing or does
    not read is one line naming it, with what to do."""
    def remedy() -> str:
        return (f"restore it, or delete the stage folder {stage_dir} and those after it to compute them again "
                f"(or start afresh: {guard.describe_overwrite(stage_dir.parent)})")
    record = guard.read_record(stage_dir / "metrics.json", lambda p: read_stage_record(p.parent), remedy)
    pool = guard.read_record(stage_dir / "pool.npz", LabelPool.load, remedy)
    return record, pool, guard.read_record(stage_dir / "weights.pth", load_weights, remedy)

