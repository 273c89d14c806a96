"""The steps a run is made of, as methods of one `Experiment`: validate, scan, train a stage,
pseudo-label the pool, query regions, summarise. train_al.py and train_ssl.py call these in
the paper's order; everything they share lives here."""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from datasets import SegmentationView
from engine import data as data_utils
from engine import distributed as dist_utils
from engine import faults, guard, oracle
from engine.config import ConfigError, dump_config
from engine.precision import configure_backends, resolve_amp
from engine.io import atomic_write_npz, atomic_write_png, flat_name
from engine.logger import RunLogger
from engine.optim import make_model
from engine.pseudo import pseudo_label_pass
from engine.run import RunDirectory, check_output_dir, describe_device, read_stage_record, with_query_stats
from engine.stages import (copy_finished_stage, fresh_model, load_scan, load_weights, reusable_stages,
                           save_scan, scan_source, train_and_evaluate, transfer_weights)
from models.availability import check_pretrained, pretrained_status
from query import scoring
from query.pool import LabelPool, RegionGrid
from query.visualize import query_panel


class Experiment:
    """Everything a run knows: config, data, run directory, logger. Built by `prepare`."""

    # ------------------------------------------------------------------ validation (nothing written)
    def __init__(self, cfg, ctx, *, dry_run: bool, overwrite: bool, overrides=(), partial_import: bool = False):
        self.cfg, self.ctx, self.dry_run, self.overwrite = cfg, ctx, dry_run, overwrite
        self.partial_import = partial_import  # query.oracle=human: import the label files written so far
        self.amp, self.amp_reason = resolve_amp(cfg.runtime.amp, ctx.device)  # mode string + why
        configure_backends(ctx.device, cfg.deterministic)
        if cfg.data.dataset != "synthetic":
            data_utils.prepare_data_root(cfg)  # real data: only checks that the root exists
        elif not dry_run and ctx.is_main:
            data_utils.prepare_data_root(cfg)  # generated once, atomically, by rank 0
        dist_utils.barrier(ctx)
        synthetic_missing = cfg.data.dataset == "synthetic" and not Path(cfg.data.root).is_dir()
        # A person labels the queried regions: the pool's other images need no label file yet.
        self.pool_src = None if synthetic_missing else data_utils.source(
            cfg, cfg.data.train_split, unlabeled_ok=cfg.query.oracle == "human")
        self.eval_src = None if synthetic_missing else data_utils.source(cfg, cfg.data.eval_split)
        self.labeled_ids = None
        if cfg.data.labeled_split and not synthetic_missing:
            self.labeled_ids = data_utils.source(cfg, cfg.data.labeled_split).ids
        self.grid = self._grid() if self.pool_src is not None else None
        self._check_budget()
        if self.pool_src is not None:
            self._check_seed_labelled()
        self._initial = self._make_initial_pool() if self.pool_src is not None else None
        self.weights_note = pretrained_status(cfg.model.backbone, cfg.model.pretrained)
        if not dry_run and self._needs_pretrained():
            check_pretrained(cfg.model.backbone, cfg.model.output_stride, cfg.model.pretrained)
        self.reuse_dir, self.reusable = reusable_stages(cfg, overrides)
        if cfg.init_from and not dry_run and not (self.reuse_dir / "config.yaml").is_file():
            raise ConfigError(f"init_from: run {cfg.init_from!r} has no run directory at {self.reuse_dir}; "
                              f"run it first (or remove init_from)")
        check_output_dir(cfg, overwrite)

    def _check_seed_labelled(self) -> None:
        """An unlabelled pool (query.oracle=human) needs the labelled seed named: data.labeled_split,
        whose every image has its label file (a random draw could pick unlabelled images)."""
        unlabeled = self.pool_src.unlabeled()
        if not unlabeled:
            return
        first = self.pool_src.image_path(unlabeled[0])
        if self.labeled_ids is None:
            raise ConfigError(f"data.train_split {self.cfg.data.train_split!r}: {len(unlabeled)} images have no label "
                              f"file (e.g. {first}); a pool a person labels needs data.labeled_split listing the "
                              f"labelled seed images (`image label` lines)")
        index = {image_id: i for i, image_id in enumerate(self.pool_src.ids)}
        for image_id in self.labeled_ids:
            if image_id in index and not self.pool_src.has_label(index[image_id]):
                raise ConfigError(f"data.labeled_split lists {image_id!r}, which has no label file in "
                                  f"data.train_split ({self.pool_src.image_path(index[image_id])})")

    def _needs_pretrained(self) -> bool:
        return any(s.init == "pretrained" for s in self.cfg.stages.values())

    def _grid(self) -> RegionGrid:
        h, w = self.pool_src.image_size(0) if len(self.pool_src) else (0, 0)
        region = tuple(self.cfg.query.region_size)
        if self.has_queries and (region[0] > h or region[1] > w):
            raise ConfigError(f"query.region_size {list(region)} is larger than the images ({h}x{w})")
        return RegionGrid(h, w, region if self.has_queries else (h, w))

    @property
    def has_queries(self) -> bool:
        return any(s.kind == "query" for s in self.cfg.stages.values())

    def _check_budget(self) -> None:
        q, n = self.cfg.query, len(self.pool_src) if self.pool_src is not None else None
        if n is not None and self.labeled_ids is None and round(q.initial_fraction * n) < 1:
            raise ConfigError(f"query.initial_fraction {q.initial_fraction} of {n} images labels no image")
        labeled = len(set(self.labeled_ids)) if self.labeled_ids is not None else round(q.initial_fraction * (n or 0))
        later = [name for name, s in self.cfg.stages.items() if s.kind != "supervised"]
        if n is not None and labeled >= n and later:
            what = "data.labeled_split" if self.labeled_ids is not None else f"query.initial_fraction {q.initial_fraction}"
            raise ConfigError(f"{what} labels all {n} images of the pool, so stage {later[0]!r} ({self.cfg.stages[later[0]].kind}) "
                              f"has no unlabeled image to pseudo-label; label fewer images or keep only supervised stages")
        if not self.has_queries or self.grid is None:
            return
        gh, gw = self.grid.shape
        if q.selection == "per_image" and q.regions_per_image > gh * gw:
            raise ConfigError(f"query.regions_per_image {q.regions_per_image} exceeds the {gh}x{gw} "
                              f"regions of an image")
        cycles = sum(s.kind == "query" for s in self.cfg.stages.values())
        start = q.initial_fraction if self.labeled_ids is None else len(self.labeled_ids) / n
        if q.selection == "global" and start * 100 + cycles * q.budget_pct > 100:
            raise ConfigError(f"query.budget_pct {q.budget_pct} x {cycles} cycles plus the initial "
                              f"{start:.1%} is more than the whole pool")

    # ------------------------------------------------------------------ dry run
    def describe(self) -> str:
        cfg = self.cfg
        model = make_model(cfg, self._num_classes(), rep_head=True, noise=False, pretrained="none")
        params = sum(p.numel() for p in model.parameters())
        lines = [f"config: {cfg.name}", f"output_dir: {cfg.output_dir}",
                 f"device: {self.ctx.device}, world size {self.ctx.world_size}",
                 f"amp: {self.amp_reason}",
                 f"model: DeepLabv3+ {cfg.model.backbone} OS{cfg.model.output_stride}, {params / 1e6:.2f}M parameters",
                 f"pretrained {cfg.model.pretrained!r}: {self.weights_note['message']}"]
        if self.pool_src is None:
            lines.append(f"data: synthetic set not generated yet at {cfg.data.root} (a real run generates it)")
        else:
            lines.append(f"data: {cfg.data.dataset} train pool {len(self.pool_src)} images "
                         f"({self.grid.height}x{self.grid.width}), eval '{cfg.data.eval_split}' {len(self.eval_src)} images")
            labeled = len(self.labeled_ids) if self.labeled_ids is not None else round(cfg.query.initial_fraction * len(self.pool_src))
            lines.append(f"initial labeled images: {labeled}; {self._grid_note()}")
            if self.pool_src.cache is not None:
                lines.append(f"resized-image cache (data.cache_dir): {self.pool_src.cache.folder} "
                             f"(images the working size shrinks)")
        for i, (name, s) in enumerate(cfg.stages.items()):
            reuse = ""
            if name in self.reusable:
                finished = RunDirectory.stage_done(self.reuse_source(i, name))
                reuse = f" (same as in {self.reuse_dir}: " + ("reused)" if finished else "reused once finished there)")
            lines.append(f"stage {i} {name}: {s.kind}, {s.epochs} ep x {s.iters_per_epoch} it = "
                         f"{s.epochs * s.iters_per_epoch} steps, batch {s.batch_labeled}+{s.batch_unlabeled}, "
                         f"ReCo {s.reco}, init {s.init}, noise {s.noise}{reuse}")
        return "\n".join(lines)

    def _grid_note(self) -> str:
        """The region grid and what one query adds, so a wrong image size shows before a run."""
        gh, gw = self.grid.shape
        cell = 100.0 * self.grid.region[0] * self.grid.region[1] / (self.grid.height * self.grid.width)
        note = f"region grid {gh}x{gw} of {self.grid.region[0]}x{self.grid.region[1]} px ({cell:.3f}% of an image)"
        q = self.cfg.query
        if self.has_queries and q.selection == "per_image":
            note += f"; {q.regions_per_image} regions per query = {q.regions_per_image * cell:.2f}% of an unlabeled image"
        elif self.has_queries:
            note += f"; {q.budget_pct:g}% of the pool's pixels per query"
        return note

    def _num_classes(self) -> int:
        return self.pool_src.num_classes if self.pool_src is not None else 11

    # ------------------------------------------------------------------ start (run directory)
    def start(self) -> None:
        """Scan every image and label (bad data fails here, before a run directory exists),
        then create the run directory and the logger."""
        cfg, ctx = self.cfg, self.ctx
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
        self.logger.log("resolved config:\n" + dump_config(cfg), echo=False)
        self.logger.log(self.describe())
        self.device_name = describe_device(ctx)
        self.records: list[dict] = []
        self.query_stats: dict[int, dict] = {}  # stage index -> class pixels revealed by its query

    def initial_pool(self) -> LabelPool:
        """The labeled pool before any stage (drawn, or read from data.labeled_split)."""
        return self._initial

    def _make_initial_pool(self) -> LabelPool:
        ids, q = self.pool_src.ids, self.cfg.query
        if self.labeled_ids is not None:
            return LabelPool.from_labeled_ids(ids, self.grid, self.labeled_ids)
        return LabelPool.initial(ids, self.grid, fraction=q.initial_fraction, seed=self.cfg.seed)

    def labeled_pct(self, pool: LabelPool) -> float:
        return 100.0 * pool.labeled_pixel_fraction()

    # ------------------------------------------------------------------ finished / reused stages
    def reuse_source(self, index: int, name: str) -> Path:
        """The folder of stage `name` in the init_from run (only for names in self.reusable)."""
        return self.reuse_dir / RunDirectory.stage_folder(index, name)

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
        per-region entropy when the stage queries. Kept on disk so a resumed stage skips it."""
        stage_dir = self.run.stage_dir(index, name)
        done = stage_dir / "pseudo_done.npz"
        if done.is_file():
            try:
                return _load_pass(done)
            except guard.DAMAGED as err:  # a cache of the pass below: computed again
                self.logger.log(f"warning: {done} is damaged ({type(err).__name__}); pseudo-labelling again")
        started = time.time()
        teacher = make_model(self.cfg, self.pool_src.num_classes, rep_head=False, noise=False, pretrained="none")
        transfer_weights(teacher, teacher_state)  # the teacher predicts only: no representation head
        teacher.to(self.ctx.device)
        if self.cfg.runtime.channels_last:
            teacher.to(memory_format=torch.channels_last)
        todo = [i for i in range(len(pool)) if not pool.cells[i].all()]
        vis = todo[: self.cfg.query.vis_images] if score else []
        human = score and self.cfg.query.oracle == "human"  # the annotator is offered the prediction
        out = pseudo_label_pass(teacher, self.pool_src, todo, self.cfg, self.ctx, amp=self.amp,
                                out_dir=stage_dir / "pseudo", grid=self.grid if score else None,
                                keep_entropy_for=vis, prediction_dir=stage_dir / oracle.PREDICTION if human else None)
        out["seconds"] = time.time() - started
        if self.ctx.is_main:
            _save_pass(done, out, len(pool), self.grid.shape)
        dist_utils.barrier(self.ctx)
        self.logger.log(f"[{name}] pseudo-labeled {len(todo)} images in {out['seconds']:.0f}s")
        return _load_pass(done)

    # ------------------------------------------------------------------ query
    def query(self, index: int, name: str, pool: LabelPool, scored: dict) -> LabelPool:
        """Select regions (from the model's scores and the pool only), reveal them through the
        oracle (ground truth, or a human annotator: this may stop the run until the labels are
        there) and count what they hold."""
        q = self.cfg.query
        new, budget = self._select(index, pool, scored)
        faults.reached("before_reveal")
        imported = None
        if q.oracle == "human" and new.any():  # nothing selected: nothing to ask anyone
            try:
                labelled = oracle.reveal_by_human(stage_dir=self.run.stage_dir(index, name), stage=name,
                                                  earlier_dirs=self._stage_dirs(index), src=self.pool_src,
                                                  pool=pool, new=new, scores=scored["scores"], ctx=self.ctx,
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
        self._query_panels(index, name, pool, new, scored)
        stats = oracle.class_pixels(self.pool_src, next_pool, new, self.human_labels(index + 1), self.ctx)
        if imported is not None:
            stats["human_import"] = imported
        self.query_stats[index] = stats
        self._log_class_pixels(index, stats)
        pct = self.labeled_pct(next_pool)
        self.logger.log(f"[{name}] queried {int(new.sum())} regions ({q.strategy}, {q.selection}, oracle "
                        f"{q.oracle}); labeled pixels {self.labeled_pct(pool):.2f}% -> {pct:.2f}%")
        return next_pool

    def _select(self, index: int, pool: LabelPool, scored: dict) -> tuple[np.ndarray, int]:
        """(new cells, budget). Only the scores and the pool decide — never the labels of unlabeled
        images, which a real query step does not have. Identical on every rank (gathered scores)."""
        q, n = self.cfg.query, len(pool)
        eligible = scoring.eligible_cells(pool.cells, scored["has_scores"])
        if q.selection == "per_image":
            k, total, budget = q.regions_per_image, None, q.regions_per_image * n
        else:
            cell_area = q.region_size[0] * q.region_size[1]
            k, total = None, int(q.budget_pct / 100 * n * self.grid.height * self.grid.width // cell_area)
            budget = total
        if q.strategy == "random":
            new = scoring.select_random(eligible, k_per_image=k, n_total=total, seed=self.cfg.seed * 1000 + index)
        elif k is not None:
            new = scoring.select_topk_per_image(scored["scores"], eligible, k)
        else:
            new = scoring.select_topk_global(scored["scores"], eligible, total)
        return new, budget

    def _stage_dirs(self, count: int) -> list[Path]:
        """The folders of the first `count` stages, in order."""
        return [self.run.stage_dir(i, name) for i, name in enumerate(list(self.cfg.stages)[:count])]

    def human_labels(self, count: int) -> dict[int, str]:
        """{image index: newest human-label PNG} after the first `count` stages."""
        return oracle.human_label_paths(self._stage_dirs(count), self.pool_src.ids)

    def _log_class_pixels(self, index: int, stats: dict) -> None:
        """TensorBoard: each class's share (%) of the revealed and of the pool's labeled pixels."""
        for key, tag in (("queried_class_pixels", "revealed"), ("pool_class_pixels", "pool")):
            total = max(sum(stats[key].values()), 1)
            self.logger.scalars({f"query_{tag}_pct/{c}": 100.0 * v / total for c, v in stats[key].items()}, index)

    def _query_panels(self, index, name, pool, new, scored) -> None:
        if not self.ctx.is_main:
            return
        folder = self.run.stage_dir(index, name) / "query_vis"
        max_entropy = float(np.log(self.pool_src.num_classes))
        for i, entropy in scored["entropy"].items():
            image, _ = self.pool_src.read(i)
            panel = query_panel(image, entropy.astype(np.float32), self.grid, pool.cells[i], new[i],
                                entropy_max=max_entropy)
            atomic_write_png(folder / f"{flat_name(self.pool_src.ids[i])}.png", panel)
            self.logger.image(f"{name}/query_{self.pool_src.ids[i]}", panel, index)

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
        model = fresh_model(self.cfg, stage, self.pool_src.num_classes, teacher_state)
        labeled_view, pseudo_view = self.views(pool, stage_dir / "pseudo" if pseudo is not None else None,
                                               self.human_labels(index + 1))
        extra = {"pool": {"labeled_pixel_pct": self.labeled_pct(pool),
                          "labeled_valid_pixel_pct": 100.0 * pool.labeled_valid_pixel_fraction(self.valid_counts),
                          "history": pool.history},
                 "pool_sha256_per_rank": self._check_pools_agree(pool, name),
                 **self.query_stats.get(index, {})}  # query stages: queried / pool class pixels
        record = train_and_evaluate(cfg=self.cfg, ctx=self.ctx, run=self.run, logger=self.logger, index=index,
                                    name=name, stage=stage, model=model, labeled_view=labeled_view,
                                    unlabeled_view=pseudo_view, eval_src=self.eval_src, amp=self.amp,
                                    labeled_pct=self.labeled_pct(pool), extra_metrics=extra,
                                    extra_wall_s=pseudo["seconds"] if pseudo else 0.0)
        record = with_query_stats(record, extra)  # as read back from metrics.json after a restart
        self.records.append(record)
        self.write_summary(finished=False)
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

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
    init_from, output dir), then create it. Bad input: one `error:` line and exit code 2.
    Returns None after a --dry-run, which only prints what the run would do."""
    from engine.run import fail
    try:
        exp = Experiment(cfg, ctx, dry_run=args.dry_run, overwrite=args.overwrite, overrides=args.overrides,
                         partial_import=getattr(args, "import_partial", False))
        if args.dry_run:
            print(exp.describe())
            return None
        exp.start()  # decodes every image and label once, then creates the run directory
    except (ValueError, FileNotFoundError, OSError) as err:
        fail(str(err))
    return exp


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


def _save_pass(path: Path, out: dict, n: int, grid_shape) -> None:
    scores = np.zeros((n,) + tuple(grid_shape), dtype=np.float32)
    has = np.zeros(n, dtype=bool)
    for i, s in out["scores"].items():
        scores[i], has[i] = s, True
    vis_ids = np.array(sorted(out["entropy"]), dtype=np.int64)
    vis = np.stack([out["entropy"][i] for i in vis_ids]) if len(vis_ids) else np.zeros((0, 1, 1), np.float16)
    atomic_write_npz(path, scores=scores, has_scores=has, vis_ids=vis_ids, vis=vis, seconds=out["seconds"])


def _load_pass(path: Path) -> dict:
    d = np.load(path, allow_pickle=False)
    return {"scores": d["scores"], "has_scores": d["has_scores"], "seconds": float(d["seconds"]),
            "entropy": {int(i): e for i, e in zip(d["vis_ids"], d["vis"])}}
