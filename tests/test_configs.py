from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ocr.config import CONFIG_DIR, compose_config
from ocr.data.transforms import PolygonAugment
from ocr.factory import build_datamodule, build_model, build_module
from ocr.models.decoder import FPNDecoder
from ocr.testing import config_leaves, rect

PRESETS = sorted(p.stem for p in Path(CONFIG_DIR, "preset").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", ["train", "test", "predict"])
def test_every_preset_composes_and_builds(name, preset, tiny_detector_onnx, tiny_backbone_onnx):
    overrides = [f"preset={preset}"] + (["checkpoint_path=x.ckpt"] if name != "train" else [])
    cfg = compose_config(name, overrides)
    if cfg.models.encoder._target_.endswith("PPOCRBackbone"):  # PP-OCR's backbone (sroie_ppocr_backbone): a stand-in
        overrides += [f"models.encoder.onnx_path={tiny_backbone_onnx}", "models.encoder.feature_names=[f4,f8,f16,f32]"]
    else:  # no ImageNet download in tests (presets for GPU users ask for pretrained weights)
        overrides += ["models.encoder.pretrained=false"]
    cfg = compose_config(name, overrides)
    if cfg.models.network is not None:  # nor PP-OCR's detector (preset sroie_ppocr): a stand-in
        cfg = compose_config(name, overrides + [f"models.network.onnx_path={tiny_detector_onnx}"])
        assert type(build_model(cfg.models)).__name__ == cfg.models.network._target_.rsplit(".", 1)[1]
    assert cfg.image_size > 0 and cfg.models.encoder.model_name
    module = build_module(cfg)
    datamodule = build_datamodule(cfg)
    assert datamodule.eval_resize.image_size == cfg.image_size
    assert module.postprocess.thresh == cfg.models.postprocess.thresh


def test_the_configured_metrics_reach_the_module():
    # the evaluator is falsy while empty (len 0): it must still be the configured one
    module = build_module(compose_config("train", ["preset=sroie", "metrics.iou_threshold=0.7"]))
    assert module.evaluator.use_text_lengths is True and module.evaluator.iou_threshold == 0.7
    assert build_module(compose_config("train", ["preset=example"])).evaluator.use_text_lengths is False


def test_image_size_drives_every_resize_and_crop():
    cfg = compose_config("train", ["image_size=1024"])
    datamodule = build_datamodule(cfg)
    steps = datamodule.train_augment.pipeline.transforms
    assert datamodule.eval_resize.image_size == 1024
    assert steps[0].image_size == 1024
    crop = [t for t in steps if type(t).__name__ == "TextAwareRandomCrop"][0]
    assert crop.height == crop.width == cfg.crop_size and cfg.crop_size % 32 == 0 and cfg.crop_size > 384


@pytest.mark.parametrize("backbone", ["resnet50", "convnext_tiny", "mobilenetv3_large_100", "efficientnet_b0"])
def test_backbone_swap_needs_no_other_override(backbone):
    cfg = compose_config("train", [f"models.encoder.model_name={backbone}"])
    model = build_model(cfg.models).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 64, 96), with_threshold=True)
    assert out["prob_logits"].shape == (1, 1, 64, 96)
    assert out["binary_logits"].shape == (1, 1, 64, 96)
    assert model.encoder.strides == [4, 8, 16, 32]


def test_asf_decoder_switch():
    cfg = compose_config("train", ["models.decoder.use_asf=true"])
    model = build_model(cfg.models)
    assert model.decoder.asf is not None
    assert model(torch.zeros(1, 3, 64, 64))["prob_logits"].shape == (1, 1, 64, 64)


def test_page_context_lets_the_coarsest_level_reach_across_the_whole_input():
    # without it, a change at one corner of the stride-32 features stays near that corner; with it,
    # every position of the decoder's output sees it, at any input size; a negative count is refused
    cfg = compose_config("train", ["models.decoder.context_layers=1"])
    model = build_model(cfg.models).eval()
    assert len(model.decoder.context.layers) == 1
    in_channels = [16, 24, 56, 80]
    for context_layers, reaches in ((0, False), (1, True)):
        torch.manual_seed(0)
        decoder = FPNDecoder(in_channels, inner_channels=128, context_layers=context_layers).eval()
        for height, width in ((2, 3), (3, 8)):  # stride-32 cells: two page shapes
            features = [torch.randn(1, c, height * 8 // 2**i, width * 8 // 2**i) for i, c in enumerate(in_channels)]
            changed = [f.clone() for f in features]
            changed[-1][..., 0, 0] += 5.0
            with torch.no_grad():
                before, after = decoder(features), decoder(changed)
            assert before.shape == (1, 128, height * 8, width * 8)
            far_corner = (after - before)[..., -1, -1].abs().max().item()
            assert (far_corner > 1e-5) is reaches, (context_layers, height, width, far_corner)
    with pytest.raises(ValueError, match="context_layers"):
        FPNDecoder(in_channels, inner_channels=128, context_layers=-1)


def test_optimizer_is_partial_and_scheduler_gets_total_steps():
    cfg = compose_config("train")
    optimizer = instantiate(cfg.models.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    scheduler = instantiate(cfg.models.scheduler)(optimizer=optimizer, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] < lrs[cfg.models.scheduler.warmup_steps] and lrs[-1] < 0.05 * max(lrs)


def test_checkpoint_inference_settings_apply_unless_named_on_the_command_line(tmp_path):
    from omegaconf import OmegaConf

    from ocr.checkpoints import load_checkpoint_into

    trained = compose_config(
        "train",
        ["preset=sroie", "models.encoder.pretrained=false", "datasets.eval_resize.mode=short_side",
         "models.postprocess.box_thresh=0.7", "lightning_module.tta_scales=[1.0,1.25]"],
    )
    path = tmp_path / "receipts.ckpt"
    torch.save({"state_dict": {}, "ocr_config": OmegaConf.to_container(trained, resolve=True)}, path)

    # `checkpoint_path=` alone: evaluation as the checkpoint was validated, not the example preset's
    plain = [f"checkpoint_path={path}"]
    cfg = compose_config("test", plain)
    assert cfg.image_size == 640 and cfg.datasets.eval_resize.mode == "long_side"
    load_checkpoint_into(cfg, plain)
    resize = instantiate(cfg.datasets.eval_resize)
    assert (cfg.image_size, resize.image_size, resize.mode) == (1600, 1600, "short_side")
    postprocess = instantiate(cfg.models.postprocess)
    assert (postprocess.thresh, postprocess.box_thresh) == (0.35, 0.7)
    assert list(cfg.lightning_module.tta_scales) == [1.0, 1.25]

    # what the command line names wins, the rest still comes from the checkpoint
    named = [*plain, "image_size=800", "models.postprocess.thresh=0.2", "lightning_module.tta_scales=null"]
    cfg = compose_config("test", named)
    load_checkpoint_into(cfg, named)
    resize = instantiate(cfg.datasets.eval_resize)
    assert (cfg.image_size, resize.image_size, resize.mode) == (800, 800, "short_side")
    postprocess = instantiate(cfg.models.postprocess)
    assert (postprocess.thresh, postprocess.box_thresh) == (0.2, 0.7)
    assert cfg.lightning_module.tta_scales is None


def test_receipt_preset_trains_on_single_digits_that_dbnet_defaults_ignore():
    import numpy as np

    from ocr.data.targets import make_db_targets

    digit = np.array([[10, 10], [16, 10], [16, 24], [10, 24]], dtype=np.float64)  # a "1", 6 x 14 px
    line = np.array([[30, 40], [130, 40], [130, 56], [30, 56]], dtype=np.float64)  # a 16 px line

    def kernel(preset):
        cfg = compose_config("train", [f"preset={preset}", "models.encoder.pretrained=false"])
        maps = make_db_targets((80, 160), [digit, line], config=instantiate(cfg.datasets.targets))
        return maps["shrink_map"], maps["shrink_mask"]

    default_map, default_mask = kernel("example")
    receipt_map, receipt_mask = kernel("sroie")
    # DBNet's min_text_size 8 masks the digit out of the loss; the receipt preset trains on it
    assert default_mask[17, 13] == 0 and default_map[10:25, 10:17].sum() == 0
    assert receipt_mask[17, 13] == 1 and receipt_map[17, 13] == 1
    # and keeps the line's kernel thicker: shrunk by 5.1 px a side (0.6) instead of 6.7 (0.4), so
    # 9 rows of pixel centres instead of 5 (each region takes the pixels its outline passes through)
    assert (receipt_map[30:70, 80].sum(), default_map[30:70, 80].sum()) == (9, 5)
    gpu = compose_config("train", ["preset=sroie_gpu", "models.encoder.pretrained=false"])
    # the GPU recipe was measured with the receipt preset's kernels and post-processing
    assert (gpu.datasets.targets.shrink_ratio, gpu.datasets.targets.min_text_size) == (0.6, 4)
    assert (gpu.models.postprocess.thresh, gpu.models.postprocess.box_unclip_ratio) == (0.35, 1.0)
    assert (gpu.crop_size, gpu.models.encoder.model_name, gpu.trainer.max_epochs) == (640, "resnet50", 160)


def test_a_checkpoint_from_before_models_network_rebuilds_its_dbnet(tmp_path):
    from omegaconf import OmegaConf

    from ocr.checkpoints import load_checkpoint_into

    trained = compose_config("train", ["models.encoder.model_name=resnet34"])
    models = OmegaConf.to_container(trained.models, resolve=True)
    stored = {key: models[key] for key in ("encoder", "decoder", "head")}  # no "network" key yet
    path = tmp_path / "old.ckpt"
    torch.save({"ocr_config": {"models": stored}, "state_dict": {}}, path)
    cfg = compose_config("test", [f"checkpoint_path={path}", "preset=sroie_ppocr"])
    assert cfg.models.network is not None
    load_checkpoint_into(cfg, overrides=[])
    assert cfg.models.network is None and cfg.models.encoder.model_name == "resnet34"
    assert type(build_model(cfg.models)).__name__ == "DBNet"


def test_a_checkpoint_of_an_imagenet_backbone_rebuilds_it_without_downloading(tmp_path, monkeypatch):
    # the GPU recipe's ResNet50 trained from ImageNet weights: test, predict, resume and init_from take
    # the weights from the checkpoint, so a machine without internet can load it
    import timm
    from omegaconf import OmegaConf

    from ocr.checkpoints import load_checkpoint_into

    trained = OmegaConf.to_container(compose_config("train", ["preset=sroie_gpu"]), resolve=True)
    assert trained["models"]["encoder"]["pretrained"] is True
    path = tmp_path / "gpu.ckpt"
    torch.save({"ocr_config": trained, "state_dict": {}}, path)
    cfg = compose_config("test", [f"checkpoint_path={path}"])
    load_checkpoint_into(cfg, overrides=[])
    assert cfg.models.encoder.model_name == "resnet50" and cfg.models.encoder.pretrained is False
    real_create = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        assert not pretrained, "the checkpoint's weights follow: nothing to download"
        return real_create(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    assert build_model(cfg.models).encoder.channels == [256, 512, 1024, 2048]


@pytest.mark.parametrize(
    ("cuda", "cuda_bf16", "cpu_flags", "precision", "channels_last", "suggests_fp32cpu"),
    [
        # emulated bf16 is ~10x slower than float32: float32 there, and the cheaper preset suggested
        (False, False, "fpu sse2 avx2 fma", "32-true", False, True),
        (False, False, "fpu avx2 avx512f avx512_bf16", "bf16-mixed", True, False),
        (False, False, "fpu avx2 avx512f amx_tile amx_bf16", "bf16-mixed", True, False),
        (True, True, "fpu avx2", "bf16-mixed", True, False),
        (True, False, "fpu avx2", "16-mixed", True, False),
    ],
)
def test_hardware_changes_numerics_only_and_the_log_suggests_the_cheaper_preset(
    monkeypatch, tmp_path, cuda, cuda_bf16, cpu_flags, precision, channels_last, suggests_fp32cpu
):
    import ocr.config

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {cpu_flags}\n\nprocessor\t: 1\nflags\t\t: {cpu_flags}\n")
    real_open = open
    monkeypatch.setattr(ocr.config, "open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k), raising=False)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: cuda_bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    ocr.config.cpu_has_native_bf16.cache_clear()
    try:
        cfg = compose_config("train", ["preset=example"])
        assert cfg.trainer.precision == precision
        assert cfg.lightning_module.channels_last is channels_last
        assert f"precision {precision}" in ocr.config.hardware_note(cfg)
        # the same network on every machine: each preset names one
        assert build_model(cfg.models).encoder.channels == [64, 128, 256, 512]
        recipe_cfg = compose_config("train", ["preset=sroie"])
        recipe = build_model(recipe_cfg.models)
        assert recipe.encoder.channels == [64, 128, 256, 512] and recipe.decoder.out_channels == 128
        assert recipe_cfg.trainer.check_val_every_n_epoch == 4
        cheaper = compose_config("train", ["preset=sroie_fp32cpu"])
        cheap = build_model(cheaper.models)
        assert cheap.encoder.channels == [32, 64, 128, 256] and cheap.decoder.out_channels == 64
        assert cheaper.trainer.check_val_every_n_epoch == 8
        suggestion = ocr.config.float32_cpu_suggestion(recipe_cfg)
        assert (suggestion is not None and "preset=sroie_fp32cpu" in suggestion) is suggests_fp32cpu
        assert ocr.config.float32_cpu_suggestion(cheaper) is None  # already the cheaper one
        assert ocr.config.float32_cpu_suggestion(cfg) is None  # the example names none
        gpu = compose_config("train", ["preset=sroie_gpu", "models.encoder.pretrained=false"])
        gpu_model = build_model(gpu.models)
        assert gpu_model.encoder.channels == [256, 512, 1024, 2048] and gpu_model.decoder.out_channels == 256
        assert gpu.trainer.check_val_every_n_epoch == 20
    finally:
        ocr.config.cpu_has_native_bf16.cache_clear()  # the real machine's answer for the other tests


def test_encoder_settings_left_null_are_the_models_defaults_and_unknown_ones_are_named():
    from ocr.models.encoder import TimmEncoder

    assert TimmEncoder("resnet18", channels=None).channels == [64, 128, 256, 512]
    assert TimmEncoder("resnet18", channels=[16, 32, 64, 128]).channels == [16, 32, 64, 128]
    with pytest.raises(TypeError, match=r"'mobilenetv3_small_050' does not take the models.encoder settings channels=\[16, 32\]"):
        TimmEncoder("mobilenetv3_small_050", channels=[16, 32])


def test_only_the_cpu_recipe_has_a_time_budget():
    # the recipe's command must end within 100 minutes whatever the CPU (ocr/budget.py)
    for preset in ("sroie", "sroie_ppocr_backbone"):
        assert compose_config("train", [f"preset={preset}"]).time_budget.minutes == 95
    for preset in ("example", "sroie_gpu", "sroie_ppocr"):
        assert compose_config("train", [f"preset={preset}"]).time_budget.minutes is None


def test_the_gpu_recipe_on_the_pretrained_backbone_swaps_only_the_backbone(tiny_backbone_onnx):
    """preset=sroie_gpu_ppocr_backbone is preset=sroie_gpu (sizes, batch, decoder, schedule) with
    PP-OCRv4's backbone and its learning-rate scale: nothing else differs, and the DBNet++ decoder
    trains on the backbone's features."""
    gpu = config_leaves(OmegaConf.to_container(compose_config("train", ["preset=sroie_gpu", "exp_name=x"]), resolve=True))
    swapped = config_leaves(OmegaConf.to_container(compose_config("train", ["preset=sroie_gpu_ppocr_backbone", "exp_name=x"]), resolve=True))
    changed = {k for k in gpu.keys() | swapped.keys() if gpu.get(k, "absent") != swapped.get(k, "absent")}
    assert changed - {"logger.wandb.name", "output_dir"} == {k for k in changed if k.startswith("models.encoder.")} | {"lightning_module.encoder_lr_scale"}
    backbone = compose_config("train", ["preset=sroie_ppocr_backbone"])
    assert swapped["models.encoder._target_"] == backbone.models.encoder._target_
    assert swapped["lightning_module.encoder_lr_scale"] == backbone.lightning_module.encoder_lr_scale == 0.1
    assert swapped["crop_size"] == 640 and swapped["datasets.batch_size"] == 16 and swapped["models.decoder.use_asf"] is True
    cfg = compose_config("train", ["preset=sroie_gpu_ppocr_backbone", f"models.encoder.onnx_path={tiny_backbone_onnx}",
                                   "models.encoder.feature_names=[f4,f8,f16,f32]"])  # fmt: skip
    module = build_module(cfg)
    groups = module.parameter_groups()
    assert groups[1]["lr"] == pytest.approx(cfg.models.optimizer.lr * 0.1) and "lr" not in groups[0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in module.model.encoder.parameters()}
    module.model.train()
    out = module.model(torch.rand(2, 3, 128, 128), with_threshold=True)
    (out["prob_logits"].mean() + out["binary_logits"].mean()).backward()
    assert out["prob_logits"].shape[-2:] == (128, 128)


def test_sroie_photo_geometry_keeps_the_whole_page_and_each_word_on_its_ink():
    """preset=sroie_photo's page perspective and rotation (every draw forced) keep every word in the
    frame (fit_output) and move each polygon with its own black ink, not onto the paper or the
    darker surface around the page."""
    cfg = compose_config("train", ["preset=sroie_photo"])
    geometry = [instantiate(t) for t in cfg.page_augment.geometry]
    assert [type(t).__name__ for t in geometry] == ["Perspective", "Affine"]
    for transform in geometry:
        assert transform.fit_output and transform.p > 0
        transform.p = 1.0
    page = np.full((500, 300, 3), 255, np.uint8)
    polygons = [np.array(rect(x, y, x + 90, y + 18), float) for x in (5, 205) for y in range(5, 480, 40)]
    for x0, y0 in (p[0] for p in polygons):
        page[int(y0) : int(y0) + 19, int(x0) : int(x0) + 91] = 0
    augment = PolygonAugment(geometry, seed=0)
    for _ in range(10):
        image, moved, _ = augment(page, polygons, [False] * len(polygons))
        assert len(moved) == len(polygons)  # no corner word cut off
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        assert (gray == 64).mean() > 0.002  # the surface around the tilted page
        for polygon in moved:
            inside = np.zeros(gray.shape, np.uint8)
            cv2.fillPoly(inside, [np.round(polygon).astype(np.int32)], 1)
            inside = cv2.erode(inside, np.ones((5, 5), np.uint8))  # off the anti-aliased edge
            assert inside.any() and np.median(gray[inside > 0]) < 32  # black ink, not paper (255) or surface (64)


def test_the_augmentation_slots_reach_the_training_pipeline():
    """Both presets build one pipeline: rescale, the geometry slot, the crop, the look slot; the
    photo preset changes only what is in the slots."""
    def steps(preset):
        pipeline = build_datamodule(compose_config("train", [f"preset={preset}"])).train_augment.pipeline
        return [[type(t).__name__ for t in step.transforms] if type(step).__name__ == "Sequential"
                else type(step).__name__ for step in pipeline.transforms]  # fmt: skip

    assert steps("sroie") == ["RandomRescale", ["Affine"], "TextAwareRandomCrop",
                              ["RandomBrightnessContrast", "ColorJitter", "ImageCompression"]]  # fmt: skip
    photo = steps("sroie_photo")
    assert photo[0] == "RandomRescale" and photo[2] == "TextAwareRandomCrop"
    assert photo[1] == ["Perspective", "Affine"]
    assert {"RandomShadow", "OneOf", "GaussNoise"} <= set(photo[3])


def test_a_checkpoint_written_before_the_restructure_still_loads(tmp_path):
    # its config names the post-processor at its old place, the float32-CPU recipe's widths, keys
    # since renamed (checkpoint.save_last, datasets.missing_image) and no callbacks group
    from ocr.checkpoints import load_checkpoint_into

    trained = OmegaConf.to_container(compose_config("train", ["preset=sroie_fp32cpu"]), resolve=True)
    trained["models"]["postprocess"]["_target_"] = "ocr.postprocess.DBPostProcessor"
    trained["models"]["postprocess"]["thresh"] = 0.42
    trained["checkpoint"]["save_last"] = True
    trained["datasets"]["missing_image"] = trained["datasets"].pop("bad_image")
    del trained["callbacks"], trained["models"]["encoder"]["freeze_batch_norm"]
    module = build_module(compose_config("train", ["preset=sroie_fp32cpu"]))
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": module.state_dict(), "ocr_config": trained}, path)
    cfg = compose_config("test", [f"checkpoint_path={path}"])  # the example preset on the command line
    checkpoint = load_checkpoint_into(cfg, overrides=[])
    rebuilt = build_module(cfg)
    rebuilt.load_state_dict(checkpoint["state_dict"])
    assert rebuilt.model.encoder.channels == [32, 64, 128, 256] and rebuilt.model.decoder.out_channels == 64
    assert type(rebuilt.postprocess).__module__ == "ocr.models.postprocess" and rebuilt.postprocess.thresh == 0.42
