"""Score several checkpoints of one network together on a folder of images + annotation JSON, as
``benchmarks.accuracy`` scores one; prints the same Markdown tables.

    python -m benchmarks.ensemble checkpoints=outputs/a/checkpoints/best.ckpt,outputs/b/checkpoints/best.ckpt \\
        images=../shared/data/sroie_dev/val/images annotations=../shared/data/sroie_dev/val/val.json \\
        average=weights

``average=weights`` averages the checkpoints' weights into one network (a "model soup": runs
fine-tuned from the same pretrained backbone stay close enough for their mean to work), which
costs nothing at inference. ``average=maps`` runs every network and averages their probability
maps before the post-processing (an ensemble: N times the inference). The first checkpoint gives
the architecture, the inference settings and the post-processing; for ``weights`` the others must
hold the same network, for ``maps`` they must infer at the same size. Any other argument is a
Hydra override of the run config, as for ``benchmarks.accuracy``.

Only runs that started from the same weights can be averaged by ``weights``: layers trained from
random weights under another seed end up unrelated (the recipe's two seeds, averaged, find no word at
all), and the command warns, naming those layers, when a checkpoint's weights are that far from the
first's (``unrelated_weights``).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

from benchmarks import accuracy
from benchmarks.accuracy import describe, evaluate, load, network_outputs, print_breakdowns, print_table, record

AVERAGES = ("weights", "maps")
# Cosine between two checkpoints' copies of one weight tensor below which they count as unrelated.
# Measured on the recipe's checkpoints: two seeds' FPN and head tensors -0.02 to 0.23; two runs of
# the same seed with different augmentation 0.46 to 0.999; the pretrained backbone 0.986 or more.
UNRELATED_COSINE = 0.3


def parse(argv: list[str]) -> tuple[list[str], dict[str, str], list[str]]:
    defaults = {"checkpoints": None, "images": None, "annotations": None, "average": None, "device": "auto"}
    own, overrides = accuracy.parse(argv, __doc__, defaults)
    if own["average"] not in AVERAGES:
        raise SystemExit(f"average={own['average']}: expected one of {', '.join(AVERAGES)}")
    checkpoints = [path for path in own["checkpoints"].split(",") if path]
    if len(checkpoints) < 2:
        raise SystemExit(f"checkpoints={own['checkpoints']}: name two or more, comma-separated")
    return checkpoints, own, overrides


def average_state_dicts(state_dicts: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of floating-point tensors (weights, batch-norm statistics); integer
    ones (batch-norm step counts) are the first's. Raises ValueError naming the file whose
    network differs from the first's."""
    first = state_dicts[0]
    for name, other in zip(names[1:], state_dicts[1:]):
        if other.keys() != first.keys() or any(other[k].shape != v.shape for k, v in first.items()):
            raise ValueError(f"{name}: not the same network as {names[0]} (parameter names or shapes differ)")
    def mean(key: str, tensor: torch.Tensor) -> torch.Tensor:
        return torch.stack([sd[key].float() for sd in state_dicts]).mean(0).to(tensor.dtype)

    return {key: mean(key, tensor) if tensor.is_floating_point() else tensor for key, tensor in first.items()}


def unrelated_weights(first: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> list[str]:
    """The weight tensors (two or more dimensions: convolutions, linear layers) whose values in
    ``other`` are nearly orthogonal to ``first``'s (cosine below ``UNRELATED_COSINE``): the signature
    of layers that started from different random weights, whose mean is not a trained layer."""
    unrelated = []
    for key, tensor in first.items():
        if tensor.is_floating_point() and tensor.dim() >= 2 and key in other and other[key].shape == tensor.shape:
            cosine = torch.nn.functional.cosine_similarity(tensor.float().flatten(), other[key].float().flatten(), dim=0)
            if cosine.item() < UNRELATED_COSINE:
                unrelated.append(key)
    return unrelated


def averaged_map_records(loaded: list[tuple[Any, Any, Any]], names: list[str]) -> list[tuple[str, Any, Any, Any, Any]]:
    """Every network's probability map per image, averaged, then the first's post-processing.
    Raises ValueError naming the checkpoint whose map has another size than the first's (it
    infers at another size)."""
    _, first, _ = loaded[0]
    records = []
    for outputs in zip(*(network_outputs(*entry) for entry in loaded)):
        batch = outputs[0][0]
        for name, (_, logits, _) in zip(names[1:], outputs[1:]):
            if logits.shape != outputs[0][1].shape:
                raise ValueError(f"{name}: its map of {batch['name'][0]} is {tuple(logits.shape)}, the first checkpoint's "
                                 f"{tuple(outputs[0][1].shape)}; the networks must infer at the same size")
        probability = torch.stack([torch.sigmoid(logits.float()) for _, logits, _ in outputs]).mean(0)
        # decode() takes logits, as the network gives them
        found = first.decode(torch.logit(probability.clamp(1e-6, 1 - 1e-6)), batch)[0]
        records.append(record(batch, found))
    return records


def main(argv: list[str]) -> dict[str, float]:
    checkpoints, own, overrides = parse(argv)
    loaded = [load({**own, "checkpoint_path": path}, overrides) for path in checkpoints]
    cfg, first, dataset = loaded[0]
    if own["average"] == "weights":
        state_dicts = [module.state_dict() for _, module, _ in loaded]
        for name, other in zip(checkpoints[1:], state_dicts[1:]):
            unrelated = unrelated_weights(state_dicts[0], other)
            if unrelated:
                print(f"warning: {name}: {len(unrelated)} weight tensors are unrelated to {checkpoints[0]}'s "
                      f"(cosine below {UNRELATED_COSINE}; first {unrelated[0]}): the runs started from different "
                      "random weights (another seed?), so their average is not a trained network; "
                      "average=maps ensembles them instead", file=sys.stderr)
        first.load_state_dict(average_state_dicts(state_dicts, checkpoints))
        records = [record(batch, first.decode(logits, batch)[0]) for batch, logits, _ in network_outputs(cfg, first, dataset)]
    else:
        records = averaged_map_records(loaded, checkpoints)
    result = evaluate(records)
    print(f"\n{len(dataset)} images from {own['images']}; {len(checkpoints)} checkpoints, {own['average']} averaged: "
          f"{', '.join(checkpoints)}; eval resize {cfg.datasets.eval_resize.mode} {cfg.image_size}; "
          f"{describe(first.mean.device)}, {cfg.trainer.precision}")
    print_table(result)
    print_breakdowns(records)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
