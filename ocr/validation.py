"""Settings checked before any work: a run with a nonsense value stops at once with an error that
names the key, the value and what is allowed, instead of training or predicting to an empty or
meaningless result."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable

from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from ocr.geometry import NETWORK_MULTIPLE, round_to_multiple

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """One or more settings out of their allowed range (each named with its value)."""


@dataclass(frozen=True)
class Rule:
    key: str
    allowed: str  # what the error says is allowed
    check: Callable[[Any], bool]
    optional: bool = False  # null allowed (the feature is off)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def positive(value: Any) -> bool:
    return _number(value) and value > 0


def in_open_unit(value: Any) -> bool:
    return _number(value) and 0 < value < 1


def in_unit(value: Any) -> bool:
    return _number(value) and 0 <= value <= 1


def non_negative(value: Any) -> bool:
    return _number(value) and value >= 0


RULES = (
    Rule("image_size", "an integer >= 32", lambda v: positive_int(v) and v >= NETWORK_MULTIPLE),
    Rule("crop_size", "an integer >= 32", lambda v: positive_int(v) and v >= NETWORK_MULTIPLE),
    Rule("datasets.batch_size", "an integer >= 1", positive_int),
    Rule("datasets.eval_batch_size", "an integer >= 1", positive_int),
    Rule("datasets.num_workers", "an integer >= 0", lambda v: isinstance(v, int) and v >= 0),
    Rule("datasets.prefetch_across_epochs", "true or false", lambda v: isinstance(v, bool)),
    Rule("datasets.eval_resize.mode", "long_side or short_side", lambda v: v in ("long_side", "short_side")),
    Rule("datasets.eval_resize.long_side_cap", "an integer >= 32, or null", lambda v: positive_int(v) and v >= 32, optional=True),
    Rule(
        "train_resize.scale_range",
        "[low, high] with 0 < low <= high",
        lambda v: isinstance(v, list) and len(v) == 2 and all(positive(x) for x in v) and v[0] <= v[1],
    ),
    Rule("datasets.invalid_polygon", "skip or error", lambda v: v in ("skip", "error")),
    Rule("datasets.bad_image", "skip or error", lambda v: v in ("skip", "error")),
    Rule("datasets.targets.shrink_ratio", "a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    Rule("datasets.targets.thresh_min", "a number in [0, 1]", in_unit),
    Rule("datasets.targets.thresh_max", "a number in [0, 1] above thresh_min", in_unit),
    Rule("datasets.targets.min_text_size", "a number >= 0", non_negative),
    Rule("models.postprocess.thresh", "a number in (0, 1)", in_open_unit),
    Rule("models.postprocess.box_thresh", "a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    Rule("models.postprocess.split_thresh", "a number in (thresh, 1), or null", in_open_unit, optional=True),
    Rule("models.postprocess.box_unclip_ratio", "a number > 0", positive),
    Rule("models.postprocess.polygon_unclip_ratio", "a number > 0", positive),
    Rule("models.postprocess.max_candidates", "an integer >= 1", positive_int),
    Rule("models.postprocess.min_size", "a number >= 0", non_negative),
    Rule("models.optimizer.lr", "a number > 0", positive),
    Rule("metrics.iou_threshold", "a number in (0, 1)", in_open_unit),
    Rule("lightning_module.encoder_lr_scale", "a number >= 0", non_negative),
    Rule("lightning_module.encoder_frozen_epochs", "an integer >= 0", non_negative_int),
    Rule("lightning_module.encoder_lr_decay", "a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    Rule(
        "lightning_module.tta_scales",
        "a list of numbers > 0, or null",
        lambda v: isinstance(v, list) and len(v) > 0 and all(positive(s) for s in v),
        optional=True,
    ),
    Rule("checkpoint.mode", "min or max", lambda v: v in ("min", "max")),
    Rule("checkpoint.save_top_k", "an integer >= -1", lambda v: isinstance(v, int) and v >= -1),
    Rule("checkpoint.every_n_train_steps", "an integer >= 1, or null", positive_int, optional=True),
    Rule("trainer.check_val_every_n_epoch", "an integer >= 1, or null", positive_int, optional=True),
    Rule("time_budget.minutes", "a number > 0, or null", positive, optional=True),
    Rule("time_budget.calibration_steps", "an integer >= 1", positive_int),
    Rule("calibration_count", "an integer >= 1", positive_int),
    Rule("render_worst", "an integer >= 0", non_negative_int),
    Rule("render_max_side", "an integer >= 0 (0: full size)", non_negative_int),
)
# training only: a run that would train nothing, or from nothing
TRAIN_RULES = (
    Rule(
        "trainer.max_epochs",
        "an integer >= 1 (or -1 with trainer.max_steps)",
        lambda v: isinstance(v, int) and (v >= 1 or v == -1),
    ),
)


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, (DictConfig, ListConfig)) else value


def settings_errors(cfg: DictConfig, job: str) -> list[str]:
    """Every setting of ``cfg`` outside its allowed range, as ``key=value: allowed`` lines."""
    errors = []
    for rule in RULES + (TRAIN_RULES if job == "train" else ()):
        value = _plain(OmegaConf.select(cfg, rule.key, default=None))
        if value is None and (rule.optional or OmegaConf.select(cfg, rule.key, default="absent") == "absent"):
            continue
        if not rule.check(value):
            errors.append(f"{rule.key}={value!r}: must be {rule.allowed}")
    targets = cfg.get("datasets", {}).get("targets") or {}
    if all(_number(targets.get(k)) for k in ("thresh_min", "thresh_max")) and targets.thresh_min >= targets.thresh_max:
        errors.append(
            f"datasets.targets.thresh_min={targets.thresh_min} >= thresh_max={targets.thresh_max}: min must be below max"
        )
    post = cfg.get("models", {}).get("postprocess") or {}
    if _number(post.get("split_thresh")) and _number(post.get("thresh")) and not post.thresh < post.split_thresh:
        errors.append(f"models.postprocess.split_thresh={post.split_thresh}: must be above thresh ({post.thresh})")
    frozen, max_epochs = OmegaConf.select(cfg, "lightning_module.encoder_frozen_epochs"), cfg.get("trainer", {}).get("max_epochs")
    if job == "train" and positive_int(frozen) and positive_int(max_epochs) and frozen >= max_epochs:
        errors.append(
            f"lightning_module.encoder_frozen_epochs={frozen}: must be below trainer.max_epochs ({max_epochs}), "
            "or the encoder never trains"
        )
    if job == "train" and cfg.get("resume") and cfg.get("init_from"):
        errors.append(
            f"init_from={cfg.init_from} with resume={cfg.resume}: name one; resume= continues a stopped run "
            "(its optimizer, schedule and epoch), init_from= starts a new run from a checkpoint's weights"
        )
    if job == "train" and cfg.trainer.get("max_epochs") == -1 and not positive_int(cfg.trainer.get("max_steps")):
        errors.append("trainer.max_epochs=-1 trains without end: set trainer.max_steps to a positive number of steps")
    return errors


def validate_settings(cfg: DictConfig, job: str) -> None:
    """Raise SettingsError listing every out-of-range setting of ``job`` (train, test, predict,
    rescore); round a training crop that is not a multiple of the network's 32 to one, with a note."""
    errors = settings_errors(cfg, job)
    if errors:
        raise SettingsError("invalid settings:\n  " + "\n  ".join(errors))
    crop = cfg.get("crop_size")
    if positive_int(crop) and crop % NETWORK_MULTIPLE:
        rounded = round_to_multiple(crop)
        log.warning(
            "crop_size=%d is not a multiple of %d (the FPN halves it five times): using %d", crop, NETWORK_MULTIPLE, rounded
        )
        with open_dict(cfg):
            cfg.crop_size = rounded
    size = cfg.get("image_size")
    if positive_int(size) and size % NETWORK_MULTIPLE:
        log.info("image_size=%d: each page's sides are rounded to multiples of %d for the network", size, NETWORK_MULTIPLE)
