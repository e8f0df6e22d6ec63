"""The train-and-evaluate entry point of ``experiments/springs.py``, ``charged.py``,
``kuramoto.py`` and ``train.py`` (one's own data): flags -> :class:`Config` -> run."""

from __future__ import annotations

import dataclasses

from absl import flags, logging

from nri_modular import cli
from nri_modular import config as config_lib


def own_data_config(config: config_lib.Config, flag_values) -> config_lib.Config:
    """Fills what one's own dataset's files say into a config built from flags.

    ``num_particles`` and ``state_dim`` come from the files (a ``--num_particles`` that
    disagrees is an error); ``num_train`` / ``num_valid`` / ``num_test`` not given are the
    files' counts (given: the first ones); ``obs_frames`` not given is the training
    frames, less when the test trajectories must keep >= 1 frame to predict; ``horizon``
    not given is what the test frames leave after it, at most 20.
    """
    from nri_modular.data import own

    info = own.inspect(config.data_dir, config.dataset)
    train = info["train"]
    given = lambda name: flag_values[name].present  # noqa: E731
    if given("num_particles") and config.num_particles != train.num_particles:
        raise ValueError(
            f"--num_particles={config.num_particles} but dataset {config.dataset!r} has "
            f"{train.num_particles} objects per system (leave the flag out)"
        )
    fills = {"num_particles": train.num_particles, "state_dim": train.state_dim}
    for split, files in info.items():
        if not given(f"num_{split}"):
            fills[f"num_{split}"] = files.sims
        elif getattr(config, f"num_{split}") > files.sims:
            raise ValueError(
                f"--num_{split}={getattr(config, f'num_{split}')} but dataset "
                f"{config.dataset!r} has {files.sims} {split} simulations"
            )
    test_frames = info["test"].frames
    obs = config.obs_frames if given("obs_frames") else min(train.frames, test_frames - 2)
    fills["obs_frames"] = max(obs, 1)
    if not given("horizon"):
        fills["horizon"] = max(min(20, test_frames - fills["obs_frames"] - 1), 0)
    if not given("batch_size"):
        fills["batch_size"] = min(config.batch_size, fills.get("num_train", config.num_train))
    logging.info(
        "dataset %s in %s: %s layout, %d objects, %d state channels, train/valid/test: "
        "using %s of %s simulations, %s (obs_frames %d, horizon %d)",
        config.dataset,
        config.data_dir,
        train.layout,
        train.num_particles,
        train.state_dim,
        "/".join(str(fills.get(f"num_{s}", getattr(config, f"num_{s}"))) for s in info),
        "/".join(str(f.sims) for f in info.values()),
        ", ".join(f"{s} {'labelled' if f.labelled else 'unlabelled'}" for s, f in info.items()),
        fills["obs_frames"],
        fills.get("horizon", config.horizon),
    )
    return dataclasses.replace(config, **fills)


def run(system: str) -> None:
    """Defines the flags (``--system`` defaulting to ``system``) and runs train + meta-test;
    ``system=""``: ``--dataset=NAME`` (one's own data) or ``--system`` chooses the data."""
    config_lib.define_flags(flags, system_default=system)

    def main(argv):
        # Imported after flag parsing (keeps --help fast).
        from nri_modular import reporting, train

        cli.start(argv)
        if not flags.FLAGS.dataset and not flags.FLAGS.system:
            raise ValueError(
                "which data? --dataset=NAME trains on one's own files in --data_dir "
                "(loc_train_NAME.npy, ...), --system=springs|charged|kuramoto on a simulated "
                "system (generated into --data_dir)"
            )
        config = config_lib.config_from_flags(flags.FLAGS)
        if config.dataset:
            config = own_data_config(config, flags.FLAGS)
        workdir = flags.FLAGS.workdir or f"runs/{config.dataset or config.system}"
        results = train.train_and_evaluate(config, workdir)
        print(reporting.format_run_results(results))

    cli.run_main(main)
