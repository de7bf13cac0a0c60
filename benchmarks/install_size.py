"""Packages and installed size of the running venv, and how much of it lies beyond torch's own closure (torch,
torchvision, their requirements and their CUDA libraries). Sizes are the packages' RECORDed file sizes.

    python3 -m venv /tmp/v && /tmp/v/bin/pip install torch torchvision && /tmp/v/bin/pip install '.[all]'
    /tmp/v/bin/python benchmarks/install_size.py        # and again in a venv with a plain `pip install .`
"""

from __future__ import annotations

import importlib.metadata as md
import re


def requirements(dist: md.Distribution) -> list[str]:
    """The distribution's unconditional requirements (no extras), as normalised names."""
    names = []
    for req in dist.requires or []:
        if "extra ==" not in req:
            names.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def size(dist: md.Distribution) -> int:
    return sum(f.size or 0 for f in dist.files or [])


def main() -> None:
    dists = {d.metadata["Name"].lower().replace("_", "-"): d for d in md.distributions()}
    closure: set[str] = set()
    todo = ["torch", "torchvision"]
    while todo:
        name = todo.pop()
        if name in dists and name not in closure:
            closure.add(name)
            todo += requirements(dists[name])
    # torch's CUDA wheels are required under other names (platform markers, -cuXX suffixes)
    closure |= {n for n in dists if n.startswith(("nvidia-", "triton", "cuda-"))}
    total = sum(size(d) for d in dists.values())
    beyond = sum(size(d) for n, d in dists.items() if n not in closure)
    print(
        f"{len(dists)} packages, {total / 2**30:.1f} GiB; beyond torch's closure ({len(closure)} packages): "
        f"{len(dists) - len(closure)} packages, {beyond / 2**20:.0f} MiB"
    )


if __name__ == "__main__":
    main()
