"""A shard's results: what every attack did to each of a run of consecutive images, and the
union of shards, from which the metrics are computed (so a sharded evaluation equals an
unsharded one)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Shard:
    """What one shard of an evaluation measured: per image (``per_image[name]`` covers the
    shard's images from its first, as far as that attack's images reach), and in sums, maxima
    and seconds. Plain data: it goes to JSON and back (``to_json``/``from_json``)."""

    start: int  # the protocol image index of the shard's first image
    n: int  # images in the shard
    per_image: dict[str, torch.Tensor] = field(default_factory=dict)  # bool or float, (m,) with m <= n
    counts: dict[str, float] = field(default_factory=dict)  # additive over shards
    maxima: dict[str, float] = field(default_factory=dict)  # bound violations: the largest over shards
    seconds: dict[str, float] = field(default_factory=dict)  # additive over shards
    notes: dict[str, list] = field(default_factory=dict)  # lists, concatenated over shards
    adversarial: dict[str, torch.Tensor] = field(default_factory=dict)  # kept AutoAttack inputs (not JSON)

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "n": self.n,
            "counts": self.counts,
            "maxima": self.maxima,
            "seconds": self.seconds,
            "notes": self.notes,
            "per_image": {
                k: {"dtype": "bool" if v.dtype == torch.bool else "float", "values": v.tolist()}
                for k, v in self.per_image.items()
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Shard:
        per_image = {
            k: torch.tensor(v["values"], dtype=torch.bool if v["dtype"] == "bool" else torch.float64)
            for k, v in d["per_image"].items()
        }
        return cls(
            int(d["start"]),
            int(d["n"]),
            per_image,
            dict(d["counts"]),
            dict(d["maxima"]),
            dict(d["seconds"]),
            {k: list(v) for k, v in d["notes"].items()},
        )


def union(shards: list[Shard]) -> Shard:
    """The shards of one evaluation joined in image order; they must tile its images."""
    shards = sorted(shards, key=lambda s: s.start)
    at = 0
    for s in shards:
        if s.start != at:
            raise ValueError(f"shards do not tile the images: one starts at {s.start}, expected {at}")
        at += s.n
    out = Shard(0, at)
    for name in dict.fromkeys(k for s in shards for k in s.per_image):
        parts, covered = [], 0
        for s in shards:  # an attack on the first m images: its values stop at the first shard that is short
            part = s.per_image.get(name)
            if part is None or covered < s.start:
                break
            parts.append(part)
            covered = s.start + len(part)
        out.per_image[name] = torch.cat(parts)
    for s in shards:
        for k, v in s.counts.items():
            out.counts[k] = out.counts.get(k, 0) + v
        for k, v in s.seconds.items():
            out.seconds[k] = out.seconds.get(k, 0.0) + v
        for k, v in s.maxima.items():
            out.maxima[k] = max(out.maxima.get(k, 0.0), v)
        for k, v in s.notes.items():
            out.notes.setdefault(k, []).extend(v)
        for k, v in s.adversarial.items():
            out.adversarial[k] = torch.cat([out.adversarial[k], v]) if k in out.adversarial else v
    return out
