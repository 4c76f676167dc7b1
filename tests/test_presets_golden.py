"""Every preset resolves to the same settings as before the configs were restructured.

``tests/golden/presets.json`` holds each preset's resolved leaves as composed before the
restructure (``sroie_fp32cpu``: what ``preset=sroie`` resolved to on a CPU without hardware bf16,
which it replaces). Only the keys below may differ; anything else is a changed recipe. A record
is rewritten only when its recipe changes on purpose, with the figures that justify it in
docs/experiments.md: sroie_ppocr_fast's was added with that preset, sroie_photo's was rewritten
when it moved onto the pretrained backbone (preset=sroie_ppocr_backbone plus its augmentation), and
sroie_ppocr_backbone's training scale range was widened to x0.5-1.5 (two seeds, "Levers under way"),
and it decodes polygons grown back by 1.3 (two seeds; sroie_photo and sroie_ppocr_fast keep rectangles
and inherit only the unused polygon ratio).
"""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from ocr.checkpoints import MOVED_TARGETS, with_current_targets
from ocr.config import CONFIG_DIR, compose_config
from ocr.testing import config_leaves

GOLDEN = json.loads((Path(__file__).parent / "golden" / "presets.json").read_text())
# Machine- or time-dependent: the run name's timestamp and the numerics that follow the hardware
VOLATILE = {"exp_name", "output_dir", "logger.wandb.name", "logger.wandb.save_dir", "trainer.precision",
            "lightning_module.channels_last", "datasets.num_workers", "datasets.prefetch_across_epochs"}
# New keys (their values equal the old behaviour) and keys dropped because they only undid
# another preset's per-machine choice
ADDED_UNDER = ("callbacks.",)  # configs/callbacks/: the callbacks that were built in code, same settings
ADDED = {"lightning_module.compile", "trainer.num_nodes", "datasets.bad_image", "checkpoint.every_n_train_steps", "time_budget.float32_cpu_preset", "models.encoder.channels", "models.encoder.freeze_batch_norm", "models.network.fetch_if_missing", "train_resize.scale_range", "lightning_module.encoder_frozen_epochs", "models.loss.prob_map_loss",
         "models.encoder.bgr_mean", "models.encoder.bgr_std", "models.network.bgr_mean", "models.network.bgr_std", "init_from",
         "lightning_module.encoder_lr_decay", "models.decoder.context_layers"}
REMOVED = {"checkpoint.save_last", "datasets.missing_image"}  # now callbacks.last_checkpoint (null turns it off); datasets.bad_image
REMOVED_IN = {("sroie_ppocr_backbone", "models.encoder.channels")}


def resolved_leaves(preset: str) -> dict:
    cfg = compose_config("train", [f"preset={preset}", "exp_name=golden"])
    return {k: v for k, v in config_leaves(OmegaConf.to_container(cfg, resolve=True)).items() if k not in VOLATILE}


def test_every_preset_has_a_golden_record():
    assert sorted(GOLDEN) == sorted(p.stem for p in (CONFIG_DIR / "preset").glob("*.yaml"))


@pytest.mark.parametrize("preset", sorted(GOLDEN))
def test_preset_resolves_to_its_golden_leaves(preset):
    now = resolved_leaves(preset)
    # classes that moved are compared at their current place
    before = {k: MOVED_TARGETS.get(v, v) if k.endswith("_target_") else with_current_targets(v) for k, v in GOLDEN[preset].items()}
    changed = {k: (before[k], now[k]) for k in before.keys() & now.keys() if json.dumps(before[k], sort_keys=True, default=str) != json.dumps(now[k], sort_keys=True, default=str)}
    assert changed == {}
    assert {k for k in before.keys() - now.keys() if k not in REMOVED and (preset, k) not in REMOVED_IN} == set()
    assert {k for k in now.keys() - before.keys() if not k.startswith(ADDED_UNDER)} <= ADDED
