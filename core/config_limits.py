"""Values the schema's types accept but the code cannot run: refused when the config is loaded,
naming the key and the file it came from, before any data is read or any folder is made."""
from __future__ import annotations

SEED_LIMIT = 2**32  # seeds feed numpy (< 2**32) and per-stage seeds seed * 1000 + index (< 2**63)
# A 1x1 crop fails in the augmentations' flip; below 8 pixels a side the backbone at output
# stride 16 (or 8) has not one whole feature cell to work on.
MIN_CROP = 8


def check_ranges(cfg: dict, fail) -> None:
    """`fail(key, message)` raises the ConfigError."""
    if not 0 <= cfg["seed"] < SEED_LIMIT:
        fail("seed", f"must be in 0..{SEED_LIMIT - 1}, got {cfg['seed']}")
    probabilities = [("aug", "blur_p"), ("aug", "jitter_p"), ("aug", "grayscale_p"), ("aug", "cutout_p"),
                     ("loss", "strong_threshold"), ("model", "dropout"), ("model", "stochastic_depth")]
    for section, key in probabilities:
        if not 0 <= cfg[section][key] <= 1:
            fail(f"{section}.{key}", f"a probability must be in [0, 1], got {cfg[section][key]}")
    lo, hi = cfg["aug"]["cutout_frac"]
    if not 0 <= lo <= hi <= 1:
        fail("aug.cutout_frac", f"need 0 <= min <= max <= 1, got {[lo, hi]}")
    if min(cfg["aug"]["jitter"]) < 0 or cfg["aug"]["jitter"][3] > 0.5:
        fail("aug.jitter", f"[brightness, contrast, saturation, hue] must be >= 0 with hue <= 0.5, "
                           f"got {cfg['aug']['jitter']}")
    if cfg["loss"]["temperature"] <= 0:
        fail("loss.temperature", f"must be positive (it divides the similarities), got {cfg['loss']['temperature']}")
    non_negative = [("optim", "lr"), ("optim", "weight_decay"), ("optim", "head_lr_mult"), ("optim", "poly_power"),
                    ("optim", "grad_clip"), ("loss", "reco_weight"), ("loss", "unlabeled_weight")]
    for section, key in non_negative:
        if cfg[section][key] < 0:
            fail(f"{section}.{key}", f"must not be negative, got {cfg[section][key]}")
    if not 0 <= cfg["optim"]["momentum"] < 1:
        fail("optim.momentum", f"must be in [0, 1), got {cfg['optim']['momentum']}")
    if min(cfg["data"]["crop_size"]) < MIN_CROP:
        fail("data.crop_size", f"must be at least {MIN_CROP}x{MIN_CROP}, got {cfg['data']['crop_size']}")
    if cfg["data"]["resize"] is not None and min(cfg["data"]["resize"]) < 1:
        fail("data.resize", f"must be positive, got {cfg['data']['resize']}")
    for key in ("window", "stride"):
        if min(cfg["eval"][key]) < 1:
            fail(f"eval.{key}", f"a sliding window needs positive sizes, got {cfg['eval'][key]}")
    if cfg["runtime"]["dist_timeout_minutes"] <= 0:
        fail("runtime.dist_timeout_minutes", f"must be positive, got {cfg['runtime']['dist_timeout_minutes']}")
    if cfg["query"]["vis_images"] < 0:
        fail("query.vis_images", f"must not be negative, got {cfg['query']['vis_images']}")
    for name, stage in cfg["stages"].items():
        if stage["eval_every"] < 0:
            fail(f"stages.{name}.eval_every", f"must not be negative, got {stage['eval_every']}")
