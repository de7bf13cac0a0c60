"""The lean install: pyproject's core holds what train|eval|predict|report import, the optional packages sit in extras
that `all` (and so `dev`, which `make install` installs) gathers, and tl_cli/extras.py names extras that exist."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys

import pytest

from tests.conftest import REPO
from tl_cli.extras import FEATURES

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

# Distributions only an extra may bring: one command or option needs each.
OPTIONAL = {
    "onnx", "onnxruntime", "tensorboard", "hydra-optuna-sweeper", "optuna", "sqlalchemy", "alembic",
    "hydra-joblib-launcher", "hydra-submitit-launcher", "submitit", "mlflow-skinny", "wandb", "datasets", "webdataset",
    "grad-cam",
}  # fmt: skip
# Third-party modules tl_cli or benchmarks import only on an optional path, and the extra that declares them.
OPTIONAL_IMPORTS = {
    "onnx": "export", "onnxruntime": "export", "skimage": "dev", "datasets": "hf", "webdataset": "webdataset",
    "pytorch_grad_cam": "explain",
}  # fmt: skip


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement string ('PyYAML>=5.4' -> 'pyyaml')."""
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]).lower()


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _extras() -> dict[str, set[str]]:
    return {extra: {_name(r) for r in reqs} for extra, reqs in _project()["optional-dependencies"].items()}


def _self_extras(requirements: list[str]) -> set[str]:
    """The extras a `tlcli[a,b]` requirement pulls in."""
    found = set()
    for requirement in requirements:
        if _name(requirement) == "tlcli":
            found |= {e.strip() for e in requirement.split("[", 1)[1].split("]", 1)[0].split(",")}
    return found


def test_core_dependencies_leave_out_the_optional_packages() -> None:
    core = {_name(r) for r in _project()["dependencies"]}
    assert not core & OPTIONAL, core & OPTIONAL
    assert not any(_name(r) == "torch" and "==" in r for r in _project()["dependencies"]), "no exact torch pin"


def test_all_gathers_every_extra_and_dev_includes_all() -> None:
    extras = _project()["optional-dependencies"]
    features = set(extras) - {"all", "dev"}
    assert features >= {"export", "optuna", "launchers", "tensorboard", "trackers", "hf", "webdataset"}, features
    assert _self_extras(extras["all"]) == features
    assert "all" in _self_extras(extras["dev"])
    optional_declared = set().union(*(_extras()[e] for e in features))
    assert optional_declared >= OPTIONAL - {"optuna", "submitit"}  # those two come with their Hydra plugins


def test_every_missing_extra_message_names_a_declared_extra() -> None:
    extras = _extras()
    for feature in FEATURES:
        assert feature.extra in extras, feature
        named = {_name(p) for p in feature.packages.split(" and ")}
        assert named <= extras[feature.extra], (feature, extras[feature.extra])
        assert feature.message().endswith(f"pip install 'tlcli[{feature.extra}]'")


def _third_party_imports() -> set[str]:
    """Top-level modules that tl_cli/, benchmarks/ and study/ import (anywhere in a file), stdlib and own code
    left out."""
    found = set()
    for folder in ("tl_cli", "benchmarks", "study"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"tl_cli", "benchmarks", "study", "tests", "__future__"}


def test_direct_imports_are_declared_not_transitive() -> None:
    core = {_name(r) for r in _project()["dependencies"]}
    extras = _extras()
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(_third_party_imports()):
        names = {_name(d) for d in distributions.get(module, [module])}
        declared = extras[OPTIONAL_IMPORTS[module]] if module in OPTIONAL_IMPORTS else core
        if not names & declared:
            undeclared[module] = sorted(names)
    assert not undeclared, f"imported directly but not declared in pyproject's dependencies: {undeclared}"


def test_require_names_the_extra_for_a_missing_or_broken_module(tmp_path, monkeypatch) -> None:
    from hydra.errors import MissingConfigException

    from tl_cli.errors import describe
    from tl_cli.extras import Feature, MissingExtra, require

    (tmp_path / "tlcli_broken_stub").mkdir()
    (tmp_path / "tlcli_broken_stub" / "__init__.py").write_text("raise ImportError('libfoo.so: cannot open')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(MissingExtra, match=r"^x=y needs pkg; pip install 'tlcli\[e\]'$"):
        require(Feature("x=y", "pkg", "e", ("json", "tlcli_absent_module")))
    with pytest.raises(MissingExtra, match=r"tlcli\[e\]' \(tlcli_broken_stub fails to import: libfoo.so"):
        require(Feature("x=y", "pkg", "e", ("tlcli_broken_stub",)))
    missing = MissingConfigException("Could not find 'hydra/launcher/joblib'", "hydra/launcher/joblib", ["basic"])
    assert describe(missing) == ("hydra/launcher=joblib needs hydra-joblib-launcher; pip install 'tlcli[launchers]'", 2)
    assert describe(ModuleNotFoundError("No module named 'optuna'", name="optuna"))[0].endswith("'tlcli[optuna]'")
