"""The shape of the package: what imports what, what a new method needs,
and library code that leaves the user's global state alone."""

import ast
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from conftest import synthetic_tasks
from torch import Tensor, nn

from piggyback_avalanche import make_strategy, register_strategy
from piggyback_avalanche.app.runner import strategy_settings, train_and_evaluate
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation.model_size import ModelSize
from piggyback_avalanche.methods.piggyback.layers import MaskedConv2d
from piggyback_avalanche.methods.piggyback.masks import get_mask_kind
from piggyback_avalanche.task_aware import TaskAwareModel, TaskAwareStrategy, TaskState, TaskWeightLayer
from piggyback_avalanche.task_aware.task_layers import task_layer_types
from piggyback_avalanche.task_aware.task_module import TaskTensorDict, TensorSpec
from piggyback_avalanche.training import registry

PACKAGE = Path(__file__).resolve().parents[1] / "piggyback_avalanche"
ROOT = PACKAGE.parent


def _imports(path: Path, root: Path = PACKAGE) -> list[str]:
    """The piggyback_avalanche modules a file imports, anywhere in it,
    relative imports resolved against the file's package (``root`` is
    where the package's files lie)."""
    package = ["piggyback_avalanche", *path.relative_to(root).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # from . import x, from ..y import z
                base = package[: len(package) - (node.level - 1)]
                found.append(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
    return [name for name in found if name.startswith("piggyback_avalanche")]


LAYER_IMPORTS = {
    "base": set(),  # checks.py, files.py, _requirements.py, training_defaults.py: used by everyone
    "task_aware": {"base"},
    "methods": {"base", "task_aware"},
    "evaluation": {"base", "task_aware"},
    "benchmarks": {"base", "task_aware"},
    "networks": {"base"},  # backbones by name and pretraining: torch alone
    "training": {"base", "task_aware", "methods", "evaluation"},
    "package": {"base", "task_aware", "methods", "training"},  # the package's __init__.py
    "app": {"base", "task_aware", "methods", "evaluation", "benchmarks", "networks", "training", "package"},
}
"""Each layer of the package and the layers it may import: the library
below the application, the shared machinery below the methods, and no
layer importing one above it (so no circle between layers)."""


def _layer(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts or parts == ["__init__"]:
        return "package"
    return "base" if parts[0] in ("checks", "files", "_requirements", "training_defaults") else parts[0]


def _modules(under: str) -> dict[str, list[str]]:
    return {str(p.relative_to(PACKAGE)): _imports(p) for p in sorted((PACKAGE / under).rglob("*.py"))}


def test_the_library_never_imports_the_application():
    library = {str(p.relative_to(PACKAGE)): _imports(p) for p in PACKAGE.rglob("*.py") if "app" not in p.parts}
    assert len(library) > 30
    offending = {f: [m for m in ms if m.startswith("piggyback_avalanche.app")] for f, ms in library.items()}
    assert not {f: ms for f, ms in offending.items() if ms}


def test_every_layer_imports_only_the_layers_below_it(tmp_path):
    files = {str(p.relative_to(PACKAGE)): p for p in PACKAGE.rglob("*.py")}
    assert {_layer("piggyback_avalanche." + f[:-3].replace("/", ".")) for f in files} == set(LAYER_IMPORTS)
    upward = {}
    for name, path in files.items():
        layer = _layer("piggyback_avalanche." + name[:-3].replace("/", "."))
        bad = [m for m in _imports(path) if _layer(m) not in LAYER_IMPORTS[layer] | {layer}]
        if bad:
            upward[name] = bad
    assert not upward
    # Relative imports count too: a file of evaluation/ importing a method by "..methods" is seen.
    (tmp_path / "evaluation").mkdir()
    sneaky = tmp_path / "evaluation" / "metric.py"
    sneaky.write_text("from ..methods.piggyback import PiggybackModel\nfrom . import figures\n")
    resolved = _imports(sneaky, root=tmp_path)
    assert resolved == ["piggyback_avalanche.methods.piggyback", "piggyback_avalanche.evaluation"]
    assert [_layer(m) for m in resolved] == ["methods", "evaluation"]  # the first breaks the rule


def _module_graph() -> dict[str, set[str]]:
    """Each module of the package and the package's modules it imports
    (type-only imports included: a circle of types is a circle of concepts)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["piggyback_avalanche", *path.relative_to(PACKAGE).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = _imports(path)
    return {name: {m for m in imported if m in modules and m != name} for name, imported in modules.items()}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return circles


def test_no_module_imports_itself_through_others():
    assert not _circles(_module_graph())
    # The check sees a circle through a type-only import, as models and task_scores had.
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_method_package_registers_itself_and_knows_no_other_method():
    methods = sorted(p.name for p in (PACKAGE / "methods").iterdir() if (p / "__init__.py").exists())
    registering = {
        registered.strategy_class.__module__.split(".")[2]
        for name in registry.available_strategies()
        if (registered := registry.registered_strategy(name)).strategy_class is not None
    }
    assert sorted(registering) == methods and len(methods) >= 6
    for method in methods:
        for file, imported in _modules(f"methods/{method}").items():
            others = [
                m
                for m in imported
                if m.startswith("piggyback_avalanche.methods.")
                and not m.startswith(f"piggyback_avalanche.methods.{method}")
            ]
            assert not others, (file, others)


@pytest.mark.parametrize("version", ["2.13.0", "2.5.1", "2.1.0+cu121", "1.13.1"])
def test_an_older_torch_is_refused_at_import_with_the_fix(version):
    from piggyback_avalanche._requirements import check_torch_version

    with pytest.raises(
        ImportError, match=rf"needs torch>=2\.14, but torch {version.replace('+', '.')} is installed.*pip install"
    ):
        check_torch_version(version)


@pytest.mark.parametrize("version", ["2.14.0", "2.14.1+cpu", "2.15.0", "3.0.0", torch.__version__])
def test_current_torch_versions_pass(version):
    from piggyback_avalanche._requirements import check_torch_version

    check_torch_version(version)


def test_a_masked_layer_built_directly_moves_and_matches_one_built_from_a_module():
    torch.manual_seed(0)
    settings = dict(mask_kind=get_mask_kind("binarizer"), threshold=5e-3, mask_init="1s", mask_scale=1e-2)
    state = TaskState()
    direct = MaskedConv2d(2, 3, 3, padding=1, task_state=state, **settings)
    assert not direct.weight.requires_grad  # the shared weight starts frozen
    direct.add_task("0")
    with torch.no_grad():
        direct.scores["0"][0].fill_(-1.0)  # drop the first output channel's weights
    direct.freeze_task("0")
    x = torch.randn(4, 2, 5, 5)
    with state.use("0"):
        before = direct(x)
        moved = direct.to(torch.float64)  # used to fail: no cache on a layer built directly
        after = moved(x.double())
    assert torch.allclose(before.double(), after, atol=1e-6)
    assert torch.equal(before[:, 0], torch.zeros_like(before[:, 0]) + direct.bias[0].float())
    twin = MaskedConv2d.from_module(nn.Conv2d(2, 3, 3, padding=1), task_state=TaskState(), **settings)
    assert type(twin) is MaskedConv2d and twin.padding == (1, 1) and not twin.weight.requires_grad


def test_figures_leave_the_users_matplotlib_backend_and_figures_alone(tmp_path):
    """Metrics and the report draw off screen without switching a notebook
    user's backend or leaving figures open in pyplot."""
    script = f"""
import sys
import matplotlib
matplotlib.use("svg")
from matplotlib import pyplot as plt
sys.path.insert(0, {str(Path(__file__).parent)!r})
import torch
from conftest import synthetic_tasks, tiny_conv_net
from piggyback_avalanche import make_strategy
from piggyback_avalanche.app.report import summarize, write_plots
from piggyback_avalanche.benchmarks.streams import tensor_task_stream
from piggyback_avalanche.evaluation import default_evaluator
stream = tensor_task_stream(synthetic_tasks([[0, 1], [0, 1]]))
strategy = make_strategy("piggyback", tiny_conv_net(), train_epochs=1, evaluator=default_evaluator(interactive=False))
for i, experience in enumerate(stream.train_stream):
    strategy.train(experience)
    strategy.eval(stream.test_stream[: i + 1])
run = {{"accuracy_matrix": [[0.5, None], [0.5, 0.5]], "model_bytes_per_experience": [1.0, 2.0]}}
summary = {{"bytes_per_task": [4000.0, 10.0], "average_accuracy": [0.5, 0.01]}}
written = write_plots({{"piggyback": {{"runs": [run], "summary": summary}}}}, __import__("pathlib").Path({str(tmp_path)!r}))
assert written[-1].name == "accuracy_vs_bytes.png", written
print(matplotlib.get_backend(), len(plt.get_fignums()))
"""
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split()[-2:] == ["svg", "0"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "accuracy_matrix_piggyback.png",
        "accuracy_vs_bytes.png",
        "average_accuracy.png",
        "model_size.png",
    ]


class ScaledLayer(TaskWeightLayer):
    """A method the package does not know: each task learns one scale per
    output unit over the frozen weight."""

    def _init_task_weights(self) -> None:
        shape = (self.weight.shape[0],) + (1,) * (self.weight.dim() - 1)
        self.learning_scales = TaskTensorDict(trainable=True, holds="learning", shape=shape)
        self.frozen_scales = TaskTensorDict(trainable=False, holds="frozen", shape=shape)

    def add_task(self, task: str, *, classes: Sequence[int] = ()) -> None:
        self.learning_scales.add(task, torch.ones(self.learning_scales.shape, dtype=self.weight.dtype))

    def freeze_task(self, task: str) -> None:
        self.frozen_scales.add(task, self.learning_scales.pop(task).detach())

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        return {"scales": [self.learning_scales[t] for t in self.learning_scales.keys()]}  # type: ignore[misc]

    def task_tensor_bytes(self) -> int:
        return self.frozen_scales.nbytes()

    def task_weight(self) -> Tensor:
        task = self.task_state.key()
        scales = self.learning_scales if task in self.learning_scales else self.frozen_scales
        return self.weight * scales[task]


SCALED_LAYER_TYPES = task_layer_types(ScaledLayer, prefix="Scaled", doc="with a scale per output unit and task.")


class ScaledModel(TaskAwareModel):
    layer_types = SCALED_LAYER_TYPES  # type: ignore[assignment]

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__(backbone, task_batchnorm=True, layer_settings={})


class Scaled(TaskAwareStrategy):
    model_type = ScaledModel

    def group_learning_rates(self) -> dict[str, float]:
        return {"scales": 1e-2, "task_parameters": 1e-2, "backbone": 1e-2}


def test_a_new_method_needs_no_edit_in_metrics_task_files_or_the_runner():
    @register_strategy(
        "test_scaled", settings={"train_epochs", "train_mb_size", "evaluator", "plugins", "eval_mb_size"}
    )
    def build(backbone: nn.Module, **config) -> Scaled:
        """A scale per output unit and task."""
        return Scaled(model=ScaledModel(backbone), **config)

    try:
        backbone = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        config = {"train_epochs": 1, "lr": 1e-3, "mask_lr": 1e-3}
        settings = strategy_settings("test_scaled", config, untrained_backbone=True)
        assert settings == {"train_epochs": 1}  # what it does not take is dropped, nothing is added
        stream = tensor_task_stream(synthetic_tasks([[0, 1], [0, 1, 2]], shape=(4,)))
        result = train_and_evaluate("test_scaled", stream, backbone, **settings)
        assert len(result["accuracy"]) == 2 and result["average_forgetting"] == 0.0
        strategy = make_strategy("test_scaled", backbone, train_epochs=1, evaluator=None)
        for experience in stream.train_stream:
            strategy.train(experience)
        size = ModelSize()
        size.update(strategy)
        # Layer 0: 12 weights + 3 biases (60 bytes) once, and 3 scales (12 bytes) per task;
        # heads of 2 and 3 units on 3 features: 6+2 floats + 2 bools, 9+3 floats + 3 bools.
        assert size.result()["bytes"] == 60 + 2 * 12 + (32 + 2) + (48 + 3)
        assert size.result()["bits_per_weight_per_task"] == 8 * 24 / 12 / 2
        model = strategy.model
        assert model.frozen_task_tensor_schema(0) == {
            "backbone.0.frozen_scales.0": TensorSpec(torch.float32, (3, 1)),
            "backbone.2.heads.0.weight": TensorSpec(torch.float32, ("classes", 3)),
            "backbone.2.heads.0.bias": TensorSpec(torch.float32, ("classes",)),
            "backbone.2.heads.0.inactive_units": TensorSpec(torch.bool, ("classes",)),
        }
        assert sorted(model.shared_state_keys()) == ["backbone.0.bias", "backbone.0.weight"]
    finally:
        del registry.REGISTERED_STRATEGIES["test_scaled"]


def test_registration_carries_what_the_runner_needs():
    piggyback = registry.registered_strategy("piggyback")
    assert piggyback.untrained_backbone_setting == "train_backbone_on_first_experience"
    assert strategy_settings("piggyback", {"mask_lr": 1e-3, "prune_ratio": 0.5}, untrained_backbone=True) == {
        "mask_lr": 1e-3,
        "train_backbone_on_first_experience": True,
    }
    assert strategy_settings("packnet", {"mask_lr": 1e-3, "prune_ratio": 0.5}, untrained_backbone=True) == {
        "prune_ratio": 0.5
    }
    assert registry.registered_strategy("joint").trains_on_whole_stream
    assert not registry.registered_strategy("naive").trains_on_whole_stream
    assert strategy_settings("naive", {"lr": 1e-2, "lr_decay_epochs": (2,)}, untrained_backbone=False) == {"lr": 1e-2}
    with pytest.raises(ValueError, match=r"Unknown strategy 'nope'. Available: agem"):
        registry.registered_strategy("nope")


def test_importing_the_package_loads_neither_avalanche_nor_torch_until_a_name_is_used():
    """PEP 562: the package and its light modules import at once; a public
    name imports its own module on first use, and is that module's object."""
    probe = (
        "import sys, piggyback_avalanche, piggyback_avalanche.checks\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'avalanche', 'torch', 'torchvision'})\n"
        "from piggyback_avalanche import Piggyback\n"
        "print(heavy, 'avalanche' in sys.modules, Piggyback.__module__)\n"
    )
    completed = subprocess.run([sys.executable, "-W", "default", "-c", probe], capture_output=True, text=True)
    assert completed.stdout.split("\n")[0] == "[] True piggyback_avalanche.methods.piggyback.strategy", completed.stderr
    assert "QP solver" not in completed.stderr  # Avalanche's GEM import stays silent, whoever imports it first
    import piggyback_avalanche

    for name in piggyback_avalanche.__all__:
        value = getattr(piggyback_avalanche, name)
        module = piggyback_avalanche._EXPORTS[name]
        assert value is getattr(__import__(module, fromlist=[name]), name), name
    assert set(piggyback_avalanche.__all__) <= set(dir(piggyback_avalanche))
    with pytest.raises(AttributeError, match="has no attribute 'PiggyBack'"):
        piggyback_avalanche.PiggyBack  # noqa: B018


def test_the_earlier_backbones_import_keeps_working_with_a_deprecation_warning():
    probe = (
        "import warnings\n"
        "warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n"
        "    import piggyback_avalanche.app.backbones\n"
        "except DeprecationWarning as warning:\n"
        "    print(warning)\n"
    )
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert "moved to piggyback_avalanche.networks.backbones" in completed.stdout, completed.stderr
    with pytest.warns(DeprecationWarning):
        import importlib

        import piggyback_avalanche.app.backbones as moved

        importlib.reload(moved)
    from piggyback_avalanche.networks import backbones

    assert moved.small_cnn is backbones.small_cnn and moved.BACKBONES is backbones.BACKBONES


@pytest.mark.parametrize(
    "version, release", [("2.14.1+cu128", (2, 14)), ("3.0.0", (3, 0)), ("2.15.0a0+git1234", (2, 15)), ("dev", None)]
)
def test_torch_release_reads_major_and_minor(version, release):
    from piggyback_avalanche._requirements import torch_release

    assert torch_release(version) == release


def test_the_api_reference_documents_every_public_library_module():
    documented = set(re.findall(r"\.\. automodule:: (\S+)", (ROOT / "docs" / "reference.md").read_text()))
    public = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if path.name != "__init__.py" and "app" not in parts and not any(p.startswith("_") for p in parts[1:]):
            public.add(".".join(parts))
    assert documented == public
