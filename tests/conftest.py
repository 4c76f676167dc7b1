import os

# No network in tests: fail fast instead of retrying downloads; never talk to W&B cloud.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import ocr  # noqa: E402,F401  (torchvision workaround before anything imports timm/lightning)
