"""The code's shape: configuration and the command line load without TensorFlow or TFX, every
training and gate option is declared once (the same on `lvseg run` and `lvseg kubeflow
compile`), and no module imports, directly or through others, a module that imports it back."""
import argparse
import ast
import collections
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

PACKAGES = ("dataset", "trainer", "components", "pipeline", "report", "serving", "monitoring",
            "kubeflow", "lvseg", "benchmarks")
# Read by the command line's parsers and the runners before any component runs.
CONFIGURATION_MODULES = ("pipeline.configs", "pipeline.settings", "pipeline.options",
                         "trainer.config", "serving.config", "kubeflow.config", "lvseg.cli")
HEAVY = ("tensorflow", "tfx", "tensorflow_transform", "tensorflow_model_analysis", "apache_beam")


def test_configuration_and_the_command_line_load_without_tensorflow_or_tfx():
    """In a fresh interpreter, as `lvseg --help` starts."""
    script = (
        "import json, sys\n"
        f"for name in {CONFIGURATION_MODULES!r}:\n"
        "    __import__(name)\n"
        "from lvseg import cli\n"
        "cli.build_parser()\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")
    process = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    assert json.loads(process.stdout.strip().splitlines()[-1]) == []


def test_help_prints_no_tensorflow_start_up_lines():
    for command in (["--help"], ["serve", "--help"], ["predict", "--help"],
                    ["kubeflow", "compile", "--help"]):
        process = subprocess.run([sys.executable, "-m", "lvseg", *command], cwd=REPO_ROOT,
                                 capture_output=True, text=True, timeout=120)
        assert process.returncode == 0, process.stderr
        assert process.stderr == "", (command, process.stderr)
        assert "usage: lvseg" in process.stdout


def _options(parser: argparse.ArgumentParser):
    return {option: action for action in parser._actions for option in action.option_strings}


def _subparser(parser, *path):
    for name in path:
        [choices] = [a.choices for a in parser._actions
                     if isinstance(a, argparse._SubParsersAction)]
        parser = choices[name]
    return parser


def test_every_training_and_gate_option_of_run_is_on_kubeflow_compile_with_its_default():
    from lvseg import cli
    from pipeline import options

    root = cli.build_parser()
    run = _options(_subparser(root, "run"))
    compile_ = _options(_subparser(root, "kubeflow", "compile"))
    declared = [o.flag for o in options.TRAINING_OPTIONS + options.FLAG_OPTIONS]
    declared += ["--no-" + o.flag[2:] for o in options.FLAG_OPTIONS]
    declared += ["--normalization", "--min-dice", "--max-dice-drop", "--max-slice-dice-drop",
                 "--no-slice-gate", "--schema", "--infer-schema", "--no-cache"]
    for flag in declared:
        assert flag in run and flag in compile_, flag
        if flag != "--schema":  # a path on this machine, or in the image
            assert run[flag].default == compile_[flag].default, flag
            assert run[flag].choices == compile_[flag].choices, flag
    # and every TrainingConfig field has its option
    import dataclasses
    from trainer.config import TrainingConfig
    fields = {f.name for f in dataclasses.fields(TrainingConfig)}
    settable = {o.field for o in options.TRAINING_OPTIONS + options.FLAG_OPTIONS}
    internal = {"augment", "unet_base_filters", "shuffle_buffer"}
    assert fields - internal <= settable, fields - internal - settable


def test_a_dicom_run_takes_the_dicom_defaults_and_a_given_option_wins():
    from lvseg import cli
    from pipeline import configs, options

    parse = _subparser(cli.build_parser(), "run").parse_args
    steps, training = options.training_settings(parse([]), dicom=False)
    assert steps == configs.DEFAULT_TRAIN_STEPS
    assert training["ensemble_size"] == configs.DEFAULT_TRAINING.ensemble_size
    steps, training = options.training_settings(parse([]), dicom=True)
    dicom = configs.dicom_run_defaults()
    assert steps == dicom["train_steps"]
    assert {k: training[k] for k in dicom if k != "train_steps"} == {
        k: v for k, v in dicom.items() if k != "train_steps"}
    _, training = options.training_settings(parse(["--ensemble-size", "3", "--average-last", "0",
                                                   "--no-test-time-flips"]), dicom=True)
    assert (training["ensemble_size"], training["average_last"],
            training["test_time_flips"]) == (3, 0.0, False)
    # and the command line that reproduces them (benchmarks start `lvseg run` with it)
    again = options.training_settings(parse(options.command_line(steps, training)))
    assert again == (steps, training)


def _module_imports():
    """module -> project modules it imports, at the top or inside functions."""
    modules = {}
    for package in PACKAGES:
        for folder, _, names in os.walk(os.path.join(REPO_ROOT, package)):
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    module = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
                    modules[module.removesuffix(".__init__")] = path
    edges = collections.defaultdict(set)
    for module, path in modules.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            edges[module] |= {name for name in names if name in modules and name != module}
    return modules, edges


def _cycles(modules, edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
    for module in sorted(modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles():
    modules, edges = _module_imports()
    assert len(modules) > 80
    assert _cycles(modules, edges) == []


@pytest.mark.parametrize("module", CONFIGURATION_MODULES[:-1])
def test_configuration_modules_import_only_configuration_and_the_record_format(module):
    _, edges = _module_imports()
    allowed = set(CONFIGURATION_MODULES) | {"dataset.records", "pipeline", "trainer", "dataset",
                                            "serving", "kubeflow", "trainer.tf_env"}
    assert edges[module] <= allowed, edges[module] - allowed
