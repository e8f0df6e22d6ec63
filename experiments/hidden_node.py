"""Infer an unobserved springs particle from its pull on the others (paper section 5.2).

  python experiments/hidden_node.py --flagfile=experiments/flags/hidden_node_demo.flags

Trains (or loads from <workdir>/model) a springs model with the TRUE edges, hides one particle
in each test system, infers its initial state (sampling + gradient descent; its later
states are the model's rollout), and prints the hidden particle's MSE next to the
paper's 1.09e-3, plus the accuracy of the test "is a particle hidden?". Writes
<workdir>/results.json and <workdir>/hidden_node.png (Figure 4 style).
"""

import dataclasses
import importlib.util

from absl import app, flags, logging

from nri_modular import cli, reporting
from nri_modular import hidden_node_experiment as experiment

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/hidden_node_demo", "Model, results and figure.")
_DEFAULTS = experiment.ExperimentConfig()
for _field in dataclasses.fields(experiment.ExperimentConfig):
    _value = getattr(_DEFAULTS, _field.name)
    if _field.name == "hidden":
        flags.DEFINE_enum("hidden", _value, list(experiment.HIDDEN_CHOICES), "Which particle.")
    elif _field.name == "existence_baseline":
        flags.DEFINE_enum(
            _field.name, _value, list(experiment.EXISTENCE_BASELINES), "Loss without latent."
        )
    elif isinstance(_value, tuple):
        flags.DEFINE_list(_field.name, [str(v) for v in _value], "comma list")
    elif isinstance(_value, int):
        flags.DEFINE_integer(_field.name, _value, f"ExperimentConfig.{_field.name}")
    elif isinstance(_value, float):
        flags.DEFINE_float(_field.name, _value, f"ExperimentConfig.{_field.name}")
    else:
        flags.DEFINE_string(_field.name, _value, f"ExperimentConfig.{_field.name}")


def main(argv):
    cli.start(argv)  # no Orbax INFO lines when the model is saved
    if importlib.util.find_spec("matplotlib") is None:
        raise app.UsageError(
            "this experiment ends by drawing hidden_node.png and needs matplotlib: "
            'pip install -e ".[plots]"'
        )
    kwargs = {}
    for field in dataclasses.fields(experiment.ExperimentConfig):
        value = getattr(FLAGS, field.name)
        if isinstance(getattr(_DEFAULTS, field.name), tuple):
            value = tuple(int(v) for v in value)
        kwargs[field.name] = value
    config = experiment.ExperimentConfig(**kwargs)
    results = experiment.run_experiment(config, FLAGS.workdir, log=logging.info)
    print(reporting.format_hidden_node_results(results))


if __name__ == "__main__":
    from nri_modular import cli

    cli.run_main(main)
