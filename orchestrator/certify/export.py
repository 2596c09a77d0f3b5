"""A certified finalist as a claim in the format the field collects it in: RobustBench's
``model_info`` JSON (``model_info/<dataset>/<threat>/<Name>.json``: accuracies as strings of
percentages, eps as "8/255"), written beside the checkpoint with the AutoAttack log."""

from __future__ import annotations

from typing import Any

ROBUSTBENCH_FILE = "robustbench_model_info.json"
TEST_SIZE = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 50_000}  # RobustBench evaluates all of them
ARCHITECTURES = {"vgg16": "VGG-16", "resnet50": "ResNet-50", "resnet152": "ResNet-152", "small_cnn": "small CNN"}


def architecture(config: dict) -> str:
    """RobustBench's spelling of a model: "WideResNet-34-10", "PreActResNet-18", ..."""
    args = config.get("model_args") or {}
    if config["model"] == "wrn":
        return f"WideResNet-{args.get('depth', 34)}-{args.get('width', 10)}"
    if config["model"] == "preact_resnet18":
        return "PreActResNet-18" if args.get("width", 64) == 64 else f"PreActResNet-18 (width {args['width']})"
    return ARCHITECTURES.get(config["model"], config["model"])


def eps_text(eps: float) -> str:
    """8/255 where eps is k/255 (RobustBench's form), else its decimal ("0.031")."""
    k = round(eps * 255)
    return f"{k}/255" if k and abs(eps - k / 255) < 1e-6 else f"{eps:.3g}"


def robustbench_info(stage: str, trial_id: str, config: dict, result: dict[str, Any], study: str) -> dict[str, Any]:
    """The model_info fields RobustBench's own files use, from a finalist's certification. What
    only its authors can say (link, authors, venue) is left empty to fill in; a certification that
    is not RobustBench's (AutoAttack on fewer than the whole test split, or none) says so in the
    footnote instead of claiming to be one."""
    pct = lambda v: f"{100 * v:.2f}"  # noqa: E731
    dataset, aa_n = config["dataset"], result.get("autoattack_n")
    notes = []
    if "autoattack_acc" not in result:
        notes.append("no AutoAttack in this certification: autoattack_acc is the per-image worst case of PGD only")
    elif aa_n != TEST_SIZE.get(dataset, aa_n):
        notes.append(
            f"AutoAttack (standard) on {aa_n} of the {TEST_SIZE.get(dataset)} test images: not a full RobustBench evaluation"
        )
    robust = result.get("autoattack_acc", result.get("robust_acc_min"))
    return {
        "link": "",
        "name": f"{config['method']} ({study}, stage {stage}, trial {trial_id})",
        "authors": "",
        "additional_data": False,
        "number_forward_passes": 1,
        "dataset": dataset,
        "venue": "",
        "architecture": architecture(config),
        "eps": eps_text(result["eps"]),
        "clean_acc": pct(result["clean_acc"]),
        "reported": pct(robust),
        "autoattack_acc": pct(robust),
        **({"footnote": "; ".join(notes)} if notes else {}),
    }
