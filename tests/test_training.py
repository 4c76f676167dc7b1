"""Loss and optimisation on real (synthetic) receipts: finite, and falling on an overfit."""

import numpy as np
import pytest
import torch

from ocr.config import compose_config
from ocr.data.dataset import collate_receipts
from ocr.factory import build_module
from ocr.testing import receipt_item, two_receipts


def test_loss_is_finite_and_falls_when_overfitting_two_receipts():
    torch.manual_seed(0)
    cfg = compose_config("train", ["models.decoder.inner_channels=64"])
    module = build_module(cfg)
    batch = two_receipts()
    assert batch["shrink_map"].sum() > 1000  # the words are big enough to be targets
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    module.train()
    history = []
    for _ in range(30):
        losses = module.loss(module(batch["image"], with_threshold=True), batch)
        assert all(torch.isfinite(v) for v in losses.values())
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], np.mean([h["loss"] for h in history[-3:]])
    assert last < 0.7 * first["loss"], [round(h["loss"], 3) for h in history]
    assert np.mean([h["loss_prob"] for h in history[-3:]]) < first["loss_prob"]
    assert np.mean([h["loss_binary"] for h in history[-3:]]) < first["loss_binary"]


def test_loss_is_safe_under_bf16_autocast():
    cfg = compose_config("train", ["models.decoder.inner_channels=64"])
    module = build_module(cfg)
    batch = two_receipts(128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = module(batch["image"], with_threshold=True)
    losses = module.loss(outputs, batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())


def test_hard_negative_mining_ratio():
    from ocr.models.loss import balanced_bce_with_logits

    target = torch.zeros(1, 10, 10)
    target[0, 0, :2] = 1  # 2 positives -> at most 6 negatives count
    mask = torch.ones_like(target)
    logits = torch.full_like(target, -5.0)
    logits[0, 5, :6] = 5.0  # the 6 hardest negatives
    logits[0, 0, :2] = 5.0
    loss = balanced_bce_with_logits(logits, target, mask, negative_ratio=3.0, eps=1e-6)
    bce_pos = torch.nn.functional.softplus(torch.tensor(-5.0))
    bce_hard = torch.nn.functional.softplus(torch.tensor(5.0))
    expected = (2 * bce_pos + 6 * bce_hard) / 8
    assert torch.isclose(loss, expected, atol=1e-5)


def test_test_time_augmentation_averages_probabilities_over_scales():
    torch.manual_seed(0)
    cfg = compose_config("train", ["models.decoder.inner_channels=32"])
    module = build_module(cfg).eval()
    images = torch.randint(0, 255, (2, 3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        plain = module.prob_logits(images)
        module.tta_scales = [1.0]
        torch.testing.assert_close(module.prob_logits(images), plain)  # one scale: the plain pass
        module.tta_scales = [1.0, 2.0]
        both = module.prob_logits(images)
        # by hand: the network at 2x (192 x 256), resized back, averaged in probability space
        larger = module(torch.nn.functional.interpolate(images.float(), size=(192, 256), mode="bilinear"))["prob_logits"]
        larger = torch.nn.functional.interpolate(larger, size=(96, 128), mode="bilinear")
        expected = (torch.sigmoid(plain) + torch.sigmoid(larger)) / 2
    assert both.shape == plain.shape == (2, 1, 96, 128)
    torch.testing.assert_close(torch.sigmoid(both), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(both, plain)


def test_gap_negatives_weigh_more_in_the_probability_loss():
    from ocr.models.loss import DBLoss

    target = torch.zeros(1, 10, 10)
    target[0, :, :5] = 1
    gap = torch.zeros_like(target)
    gap[0, :, 5] = 1  # the column next to the text
    logits = torch.where(target > 0, 4.0, -4.0)
    logits[0, :, 5] = 1.0  # the detector runs the text into the gap
    batch = {"shrink_map": target, "shrink_mask": torch.ones_like(target), "gap_mask": gap}
    outputs = {"prob_logits": logits[:, None]}
    plain = DBLoss()(outputs, batch)["loss_prob"]
    weighted = DBLoss(gap_negative_weight=5.0)(outputs, batch)["loss_prob"]
    # 50 positives, 50 negatives: the gap column's 10 pixels count 5x in the negatives' sum
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    easy_pos, easy_neg, hard_neg = (float(bce(torch.tensor(v), torch.tensor(t))) for v, t in ((4.0, 1.0), (-4.0, 0.0), (1.0, 0.0)))
    assert float(plain) == pytest.approx((50 * easy_pos + 40 * easy_neg + 10 * hard_neg) / 100, rel=1e-4)
    assert float(weighted) == pytest.approx((50 * easy_pos + 40 * easy_neg + 50 * hard_neg) / 100, rel=1e-4)
    with pytest.raises(KeyError, match="word_gap_max"):
        DBLoss(gap_negative_weight=5.0)(outputs, {k: v for k, v in batch.items() if k != "gap_mask"})


def test_dice_on_the_probability_map_scores_overlap_and_rejects_the_gap_weight():
    from ocr.models.loss import DBLoss

    target = torch.zeros(1, 10, 10)
    target[0, :, :5] = 1
    mask = torch.ones_like(target)
    logits = torch.where(target > 0, 20.0, -20.0)
    logits[0, :, 5] = 20.0  # one wrong column: 60 pixels drawn, 50 of them text
    outputs = {"prob_logits": logits[:, None]}
    loss = DBLoss(prob_map_loss="dice")(outputs, {"shrink_map": target, "shrink_mask": mask})
    assert float(loss["loss_prob"]) == pytest.approx(1 - 2 * 50 / (60 + 50), abs=1e-5)
    assert float(loss["loss"]) == pytest.approx(5 * float(loss["loss_prob"]), rel=1e-6)
    # masked-out pixels do not count: hiding the wrong column gives a perfect score
    mask[0, :, 5] = 0
    assert float(DBLoss(prob_map_loss="dice")(outputs, {"shrink_map": target, "shrink_mask": mask})["loss_prob"]) == pytest.approx(0, abs=1e-5)
    with pytest.raises(ValueError, match="gap_negative_weight"):
        DBLoss(prob_map_loss="dice", gap_negative_weight=2.0)
    with pytest.raises(ValueError, match="'bce' or 'dice'"):
        DBLoss(prob_map_loss="focal")


def test_an_image_gets_the_same_predictions_whatever_batch_it_comes_in():
    torch.manual_seed(0)
    module = build_module(compose_config("train", ["models.decoder.inner_channels=64"])).eval()
    small, big = receipt_item(1, 256), receipt_item(2, 512)
    seen: list[np.ndarray] = []
    decode = module.postprocess
    module.postprocess = lambda probabilities, **kwargs: (seen.append(probabilities.copy()), decode(probabilities, **kwargs))[1]
    with torch.no_grad():
        alone = module.predict_step(collate_receipts([small]), 0)
        probabilities_alone = seen.pop()
        batched = collate_receipts([small, big, small])
        together = module.predict_step(batched, 0)
        # the padded batch itself would change the small page's predictions near its edges
        height, width = probabilities_alone.shape
        padded = torch.sigmoid(module.prob_logits(batched["image"])[0, 0, :height, :width]).numpy()
    assert batched["image"].shape[-2:] != collate_receipts([small])["image"].shape[-2:]
    assert not np.allclose(padded, probabilities_alone, atol=1e-4)
    # each small page decodes what it would alone (equal but for float rounding: the CPU kernels
    # for a batch of 2 sum in another order)
    small_maps = [p for p in seen if p.shape == (height, width)]
    assert len(small_maps) == 2
    for probabilities in small_maps:
        np.testing.assert_allclose(probabilities, probabilities_alone, atol=1e-6)
    # both went through the network together, as one size group, before the big page
    assert [p.shape for p in seen] == [(height, width)] * 2 + [tuple(big["image"].shape[1:])]
    assert [found["name"] for found in together] == ["r1", "r2", "r1"]
    for found in (together[0], together[2]):
        np.testing.assert_allclose(found["scores"], alone[0]["scores"], atol=1e-6)
        assert [p.tolist() for p in found["polygons"]] == [p.tolist() for p in alone[0]["polygons"]]


def test_validation_loss_of_a_mixed_batch_weighs_each_size_group_by_its_images():
    torch.manual_seed(0)
    module = build_module(compose_config("train", ["models.decoder.inner_channels=64"])).eval()
    small, big = receipt_item(1, 256), receipt_item(2, 512)
    with torch.no_grad():
        _, small_loss = module.detect(collate_receipts([small]), with_loss=True)
        _, big_loss = module.detect(collate_receipts([big]), with_loss=True)
        _, mixed_loss = module.detect(collate_receipts([small, big, small]), with_loss=True)
    for key in ("loss", "loss_prob", "loss_thresh", "loss_binary"):
        expected = (2 * small_loss[key] + big_loss[key]) / 3
        torch.testing.assert_close(mixed_loss[key], expected, rtol=1e-5, atol=1e-6)


def test_warmup_cosine_decays_to_its_end_after_total_steps_change_and_keeps_it_in_checkpoints():
    from ocr.optim import warmup_cosine

    parameter = torch.nn.Parameter(torch.zeros(1))
    scheduler = warmup_cosine(torch.optim.SGD([parameter], lr=1.0), total_steps=100, warmup_steps=10, min_lr_ratio=0.01)
    factor = scheduler.lr_lambdas[0]
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.505)  # half-way through the decay
    factor.total_steps = 40  # re-planned shorter: the same shape over 40 steps
    assert factor(25) == pytest.approx(0.505) and factor(40) == pytest.approx(0.01)
    restored = warmup_cosine(torch.optim.SGD([parameter], lr=1.0), total_steps=100, warmup_steps=10)
    restored.load_state_dict(scheduler.state_dict())
    assert restored.lr_lambdas[0].total_steps == 40


def test_warmup_cosine_holds_a_group_at_zero_until_its_start_step_then_warms_it_up_on_the_same_cosine():
    from ocr.optim import warmup_cosine

    head, encoder = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [head]}, {"params": [encoder], "lr": 0.1}], lr=1.0)
    scheduler = warmup_cosine(optimizer, total_steps=100, warmup_steps=10, min_lr_ratio=0.01, start_steps=[0, 30])
    head_factor, encoder_factor = scheduler.lr_lambdas
    assert [encoder_factor(step) for step in (0, 9, 29)] == [0.0, 0.0, 0.0]
    assert encoder_factor(30) == pytest.approx(0.1 * head_factor(30))  # a warm-up of its own, from step 30
    assert encoder_factor(34) == pytest.approx(0.5 * head_factor(34))
    assert encoder_factor(39) == pytest.approx(head_factor(39)) and encoder_factor(70) == pytest.approx(head_factor(70))
    lrs = []
    for _ in range(40):
        lrs.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"]))
        optimizer.step()
        scheduler.step()
    assert lrs[29] == (pytest.approx(head_factor(29)), 0.0) and lrs[39][1] == pytest.approx(0.1 * lrs[39][0])
    with pytest.raises(ValueError, match="start_steps has 1 entries for 2 parameter groups"):
        warmup_cosine(optimizer, total_steps=100, start_steps=[0])
    # start steps travel with the scheduler's state, as total_steps does
    restored = warmup_cosine(optimizer, total_steps=100, warmup_steps=10, start_steps=[0, 0])
    restored.load_state_dict(scheduler.state_dict())
    assert restored.lr_lambdas[1].start_step == 30


def test_optimizer_steps_per_epoch_count_accumulation_and_say_none_for_endless_data():
    from types import SimpleNamespace

    from ocr.optim import optimizer_steps_per_epoch

    assert optimizer_steps_per_epoch(SimpleNamespace(num_training_batches=7, accumulate_grad_batches=2)) == 4
    assert optimizer_steps_per_epoch(SimpleNamespace(num_training_batches=float("inf"), accumulate_grad_batches=1)) is None


def test_encoder_frozen_epochs_without_a_schedule_that_can_hold_it_says_so():
    from functools import partial

    module = build_module(compose_config("train", ["lightning_module.encoder_frozen_epochs=2"]))
    module.scheduler_factory = None
    with pytest.raises(ValueError, match="encoder_frozen_epochs needs a learning-rate schedule"):
        module.configure_optimizers()
    module.scheduler_factory = partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0)
    with pytest.raises(ValueError, match="encoder_frozen_epochs needs a schedule that takes start_steps"):
        module.configure_optimizers()


def test_encoder_frozen_epochs_keep_the_encoder_still_in_a_real_fit_then_let_it_learn(tmp_path):
    import lightning as L

    cfg = compose_config(
        "train",
        ["lightning_module.encoder_frozen_epochs=1", "models.scheduler.warmup_steps=1", "models.decoder.inner_channels=32"],
    )
    module = build_module(cfg)
    snapshot = lambda part: {name: p.detach().clone() for name, p in part.named_parameters()}  # noqa: E731
    states = [(snapshot(module.model.encoder), snapshot(module.model.decoder))]
    encoder_lrs = []

    class Snapshots(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            encoder_lrs.append(trainer.optimizers[0].param_groups[1]["lr"])

        def on_train_epoch_end(self, trainer, pl_module):
            states.append((snapshot(pl_module.model.encoder), snapshot(pl_module.model.decoder)))

    batches = torch.utils.data.DataLoader([two_receipts(128)] * 2, batch_size=None, collate_fn=lambda batch: batch)
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, limit_val_batches=0, logger=False, callbacks=[Snapshots()],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, train_dataloaders=batches)
    assert trainer.global_step == 4 and encoder_lrs[:2] == [0.0, 0.0] and encoder_lrs[2] > 0
    changed = lambda before, after: any(not torch.equal(before[k], after[k]) for k in before)  # noqa: E731
    (encoder_0, decoder_0), (encoder_1, decoder_1), (encoder_2, _) = states
    assert not changed(encoder_0, encoder_1) and changed(decoder_0, decoder_1)  # epoch 1: only the head learns
    assert changed(encoder_1, encoder_2)  # epoch 2: the encoder too


def test_encoder_lr_scale_gives_the_encoder_its_fraction_of_the_learning_rate():
    module = build_module(compose_config("train", ["lightning_module.encoder_lr_scale=0.1", "models.optimizer.lr=0.002"]))
    optimizer = module.optimizer_factory(params=module.parameter_groups())
    head_group, encoder_group = optimizer.param_groups
    assert head_group["lr"] == pytest.approx(0.002) and encoder_group["lr"] == pytest.approx(0.0002)
    encoder_ids = {id(p) for p in module.model.encoder.parameters()}
    assert {id(p) for p in encoder_group["params"]} == encoder_ids
    assert not encoder_ids & {id(p) for p in head_group["params"]}
    assert len(head_group["params"]) + len(encoder_group["params"]) == len(list(module.parameters()))
    # the scheduler keeps the ratio: LambdaLR scales each group's own base rate
    scheduler = module.scheduler_factory(optimizer=optimizer, total_steps=100)
    for _ in range(60):
        optimizer.step()
        scheduler.step()
    assert encoder_group["lr"] == pytest.approx(0.1 * head_group["lr"])
    # the default: one group at the optimizer's rate
    default = build_module(compose_config("train", []))
    assert len(default.optimizer_factory(params=default.parameter_groups()).param_groups) == 1


def test_encoder_lr_decay_gives_each_feature_level_of_the_encoder_its_rate():
    from types import SimpleNamespace

    overrides = ["lightning_module.encoder_lr_scale=0.2", "lightning_module.encoder_lr_decay=0.5", "models.optimizer.lr=0.002"]
    module = build_module(compose_config("train", overrides))
    module.train()
    encoder = module.model.encoder
    before = {k: v.clone() for k, v in module.state_dict().items()}
    groups = module.parameter_groups()
    # the decoder and head at the optimizer's rate, then the encoder's four levels, finest first
    assert "lr" not in groups[0] and [g["lr"] for g in groups[1:]] == pytest.approx([0.00005, 0.0001, 0.0002, 0.0004])
    ids = [{id(p) for p in g["params"]} for g in groups[1:]]
    assert set().union(*ids) == {id(p) for p in encoder.parameters()} and sum(map(len, ids)) == len(list(encoder.parameters()))
    assert not set().union(*ids) & {id(p) for p in groups[0]["params"]}
    named = {id(p): name for name, p in encoder.model.named_parameters()}
    levels = [{named[i].split(".")[0] for i in level} for level in ids]
    # ResNet18: stride 4 is the stem and layer1, then one stage per level
    assert levels == [{"conv1", "bn1", "layer1"}, {"layer2"}, {"layer3"}, {"layer4"}]
    # one forward pass found them: no weight, statistic or gradient changed, and training mode kept
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert all(p.grad is None for p in module.parameters()) and all(m.training for m in module.modules())
    # frozen epochs hold every encoder group
    frozen = build_module(compose_config("train", [*overrides, "lightning_module.encoder_frozen_epochs=2"]))
    frozen._trainer = SimpleNamespace(estimated_stepping_batches=100, num_training_batches=10, accumulate_grad_batches=1)
    scheduler = frozen.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert [f.start_step for f in scheduler.lr_lambdas] == [0, 20, 20, 20, 20]


def test_encoder_lr_scale_without_an_encoder_says_what_is_missing(tmp_path):
    import torch.nn as nn

    from ocr.lightning_module import DBNetModule
    from ocr.models.loss import DBLoss
    from ocr.models.postprocess import DBPostProcessor

    module = DBNetModule(nn.Conv2d(3, 1, 3), DBLoss(), DBPostProcessor(), optimizer=torch.optim.SGD, encoder_lr_scale=0.1)
    with pytest.raises(ValueError, match="encoder_lr_scale=0.1 needs a network with an encoder"):
        module.parameter_groups()
    frozen = DBNetModule(nn.Conv2d(3, 1, 3), DBLoss(), DBPostProcessor(), optimizer=torch.optim.SGD, encoder_frozen_epochs=2)
    with pytest.raises(ValueError, match="encoder_frozen_epochs=2 needs a network with an encoder"):
        frozen.parameter_groups()


def test_compile_switch_compiles_the_network_for_fit_only():
    cfg = compose_config("train", ["lightning_module.compile=true", "models.decoder.inner_channels=64"])
    module = build_module(cfg)
    keys = set(module.state_dict())
    module.setup("test")
    assert module.model._compiled_call_impl is None  # evaluation runs the plain network
    module.setup("fit")
    assert module.model._compiled_call_impl is not None and set(module.state_dict()) == keys  # checkpoints unchanged
