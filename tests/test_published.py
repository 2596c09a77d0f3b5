"""Published weights: each source architecture built here independently (torchvision's own
ResNets; TRADES' and RobustBench's WideResNet and RobustBench's PreAct ResNet-18 rebuilt from
their published structure, module names included), with BatchNorm statistics randomized; the
loaded project model must give the source's logits on the same images."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.errors import CheckpointError, ConfigError
from trainables.published import IMAGENET_MEAN, IMAGENET_STD, load_published, split_format


# ------------------------------------------------------------------ the sources' layouts
class SourceWideBlock(nn.Module):
    """TRADES' BasicBlock: bn1 relu1 conv1 bn2 relu2 conv2, convShortcut where channels change,
    the shortcut taking the pre-activated input then."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.equal = cin == cout
        self.convShortcut = None if self.equal else nn.Conv2d(cin, cout, 1, stride, 0, bias=False)

    def forward(self, x):
        pre = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(pre))))
        return out + (x if self.equal else self.convShortcut(pre))


class SourceNetworkBlock(nn.Module):
    def __init__(self, n, cin, cout, stride):
        super().__init__()
        self.layer = nn.Sequential(
            *[SourceWideBlock(cin if i == 0 else cout, cout, stride if i == 0 else 1) for i in range(n)]
        )

    def forward(self, x):
        return self.layer(x)


class SourceWRN(nn.Module):
    """TRADES' WideResNet (sub_block1 built and saved, never used), or RobustBench's (without it;
    ``mu``/``sigma`` buffers where the zoo entry normalizes)."""

    def __init__(self, depth, width, num_classes=10, sub_block1=True, norm=None):
        super().__init__()
        n, ch = (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = SourceNetworkBlock(n, ch[0], ch[1], 1)
        if sub_block1:
            self.sub_block1 = SourceNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = SourceNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = SourceNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1, self.relu = nn.BatchNorm2d(ch[3]), nn.ReLU()
        self.fc = nn.Linear(ch[3], num_classes)
        self.norm = norm is not None
        if norm:
            self.register_buffer("mu", torch.tensor(norm[0]).view(1, 3, 1, 1))
            self.register_buffer("sigma", torch.tensor(norm[1]).view(1, 3, 1, 1))

    def forward(self, x):
        if self.norm:
            x = (x - self.mu) / self.sigma
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(F.avg_pool2d(self.relu(self.bn1(out)), 8).flatten(1))


class SourcePreActBlock(nn.Module):
    """RobustBench's PreActBlock (the shortcut takes the block's input) or PreActBlockV2 (its
    pre-activated input); the shortcut a Sequential holding one conv."""

    def __init__(self, cin, cout, stride, v2):
        super().__init__()
        self.v2 = v2
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        out = F.relu(self.bn1(x))
        sc = self.shortcut(out if self.v2 else x) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(out)))) + sc


class SourcePreAct18(nn.Module):
    """RobustBench's PreActResNet(block, [2, 2, 2, 2], bn_before_fc=True)."""

    def __init__(self, v2=False, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        cin = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            blocks = []
            for j in range(2):
                blocks.append(SourcePreActBlock(cin, planes, (1 if i == 0 else 2) if j == 0 else 1, v2))
                cin = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(512)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(F.avg_pool2d(F.relu(self.bn(out)), 4).flatten(1))


def randomized(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics (a freshly built net has mean 0, var 1: a layout
    error in the running statistics would not show)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.eval()


def images(n=4, size=32, seed=1):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def same_logits(source, loaded, x, source_input=None):
    with torch.no_grad():
        want = source(x if source_input is None else source_input)
        got = loaded(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert want.std() > 0.01  # logits that differ between images and classes: a real comparison


# ------------------------------------------------------------------ the tests
def test_trades_wrn_loads_with_the_sources_logits_dropping_sub_block1(tmp_path):
    src = randomized(SourceWRN(10, 2))
    path = tmp_path / "model-wideres-epoch76.pt"
    torch.save(src.state_dict(), path)  # TRADES saves a plain state dict, sub_block1 included
    net = load_published(str(path), "trades_wrn", "wrn", {"depth": 10, "width": 2})
    assert not isinstance(net, nn.Sequential)  # TRADES takes [0, 1] inputs as they are
    same_logits(src, net, images())


def test_robustbench_wrn_with_its_wrappers_and_normalization(tmp_path):
    norm = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))
    src = randomized(SourceWRN(10, 2, num_classes=100, sub_block1=False, norm=norm), seed=3)
    path = tmp_path / "Zoo2021Entry.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, path)
    net = load_published(str(path), "robustbench", "wrn", {"depth": 10, "width": 2})
    assert isinstance(net, nn.Sequential)  # its mu/sigma became the model's first layer
    same_logits(src, net, images())


@pytest.mark.parametrize("v2", [False, True], ids=["PreActBlock", "PreActBlockV2"])
def test_robustbench_preact_resnet18(tmp_path, v2):
    src = randomized(SourcePreAct18(v2=v2), seed=4)
    path = tmp_path / "preact.pt"
    torch.save(src.state_dict(), path)
    net = load_published(str(path), "robustbench", "preact_resnet18", {"shortcut": "preact" if v2 else "input"})
    same_logits(src, net, images())
    if v2:  # the same weights with the other shortcut: another function, which the test sees
        other = load_published(str(path), "robustbench", "preact_resnet18")
        with torch.no_grad():
            assert not torch.allclose(other(images()), src(images()), atol=1e-3)


@pytest.mark.parametrize("arch", ["resnet50", "resnet152"])
def test_torchvision_resnets_normalize_as_their_first_layer(tmp_path, arch):
    import torchvision

    src = randomized(getattr(torchvision.models, arch)(weights=None), seed=5)
    path = tmp_path / f"{arch}.pth"
    torch.save(src.state_dict(), path)
    net = load_published(str(path), "torchvision", arch)
    x = images(2, 64)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    same_logits(src, net, x, source_input=(x - mean) / std)  # the caller normalizes for torchvision


def test_a_file_that_does_not_fit_names_format_model_and_keys(tmp_path):
    path = tmp_path / "wrn.pt"
    torch.save(randomized(SourceWRN(10, 2)).state_dict(), path)
    with pytest.raises(CheckpointError) as e:
        load_published(str(path), "trades_wrn", "wrn", {"depth": 10, "width": 4})
    msg = str(e.value)
    assert msg.startswith(f"{path}: format trades_wrn does not fit model wrn: ") and "shape" in msg
    assert msg.count("(shape") <= 3 and "more" in msg
    with pytest.raises(ConfigError, match="format trades_wrn holds wrn weights, not model resnet50"):
        load_published(str(path), "trades_wrn", "resnet50")
    with pytest.raises(ConfigError, match="unknown 'madry_tf'"):
        load_published(str(path), "madry_tf", "wrn")
    (tmp_path / "notes.txt").write_text("not a tensor file")
    with pytest.raises(CheckpointError, match="notes.txt: truncated or not a torch checkpoint"):
        load_published(str(tmp_path / "notes.txt"), "trades_wrn", "wrn")


class Payload:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_a_published_file_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="refused: holds objects other than tensors"):
        load_published(str(path), "robustbench", "wrn")
    assert pickle.dumps(Payload())  # the payload itself pickles: the refusal is weights_only's


def test_format_prefixes():
    assert split_format("trades_wrn:/m/model.pt") == ("trades_wrn", "/m/model.pt")
    assert split_format("/runs/checkpoint.pt") == (None, "/runs/checkpoint.pt")
    assert split_format("s3://bucket/ckpt.pt") == (None, "s3://bucket/ckpt.pt")
    with pytest.raises(ConfigError, match="unknown checkpoint format 'tf'"):
        split_format("tf:/m/model.ckpt")


# ------------------------------------------------------------------ published weights in studies
def dry(*argv):
    """The dry run's JSON of a command line, as the sweep prints it."""
    import json

    from orchestrator.dryrun import dry_run
    from orchestrator.launch import check_plan
    from orchestrator.sweep import parse_args

    return json.loads(json.dumps(dry_run(check_plan(parse_args([*argv, "--dry-run", "--json"]))), default=str))


def test_imagenet_starts_from_torchvisions_resnet152_when_given(tmp_path):
    """--published natural=torchvision:FILE: the natural stage evaluates that model (nothing
    trained), SPROUT's reference resolves to the file, the origin deviation goes and the estimate
    loses the 90 natural epochs."""
    import torchvision

    path = tmp_path / "resnet152-f82ba261.pth"
    torch.save(torchvision.models.resnet152(weights=None).state_dict(), path)
    args = ["--study", "imagenet", "--skip-data-check"]
    trained, published = dry(*args), dry(*args, "--published", f"natural=torchvision:{path}")
    natural = published["stages"][0]
    assert natural["search"].startswith("evaluation") and natural["trials"][0]["evaluated"]
    assert natural["trials"][0]["config"]["init_checkpoint"] == f"torchvision:{path}"
    assert natural["trials"][0]["config"]["model_args"]["normalize"] is True
    gpu_h = lambda d: next(v for k, v in d["estimate"].items() if k.startswith("total_"))  # noqa: E731
    assert gpu_h(published) < 0.7 * gpu_h(trained)
    said = lambda d: {f["key"] for f in d["settings"]["findings"]}  # noqa: E731
    assert "origin" in said(trained) and "origin" not in said(published)


def test_compare_takes_trades_published_wrn_as_its_trades_row(tmp_path):
    path = tmp_path / "model-wideres-epoch76.pt"
    torch.save(SourceWRN(34, 10).state_dict(), path)
    d = dry("--study", "compare", "--published", f"main-wrn/trades=trades_wrn:{path}")
    names = [s["name"] for s in d["stages"]]
    assert names == ["source", "main-vgg16", "main-wrn", "main-wrn-published"]
    cases = [t["searched"].get("case") for t in d["stages"][2]["trials"]]
    assert "trades" not in cases and "pgd_at" in cases
    (row,) = d["stages"][3]["trials"]
    assert row["config"]["method"] == "trades" and row["config"]["model"] == "wrn"
    assert d["stages"][3]["certify"]["protocol"] == "paper"  # the stage's own protocol
    origin = [f for f in d["settings"]["findings"] if f["key"] == "origin"]
    assert len(origin) == 1 and "Madry" in origin[0]["deviation"]  # PGD-AT's is still trained, and says why


def test_published_weights_are_refused_where_they_cannot_go(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(SourceWRN(10, 1).state_dict(), path)
    for argv, message in (
        (["--study", "compare", "--published", f"main-wrn/pgd=trades_wrn:{path}"], "stage main-wrn has no case 'pgd'"),
        (["--study", "compare", "--published", f"nowhere=trades_wrn:{path}"], "no stage 'nowhere'"),
        (["--study", "compare", "--published", f"main-wrn/trades={path}"], "expected FORMAT:FILE"),
        (["--study", "compare", "--published", f"main-wrn/trades=trades_wrn:{path}"], "does not fit model wrn"),
        (
            ["--study", "imagenet", "--smoke-test", "--published", f"natural=torchvision:{path}"],
            "not with --smoke-test",
        ),
    ):
        with pytest.raises((ConfigError, CheckpointError), match=message):
            dry(*argv)
