"""Experiment configuration: one frozen dataclass, and the absl flags that fill it.

Every experiment script defines the same flags (:func:`define_flags`) and builds a
:class:`Config` from them (:func:`config_from_flags`); flagfiles in
``experiments/flags/`` choose sizes. Bad values fail here, before any work starts.

The library's own settings objects stay free of :class:`Config` (an ablation builds them
by hand); :func:`build_bank` and :func:`bouncegrad_config` derive them from a run's config.
"""

from __future__ import annotations

import dataclasses
import math

import optax

from nri_modular import bouncegrad, data, distributed, gnn, structure_priors
from nri_modular.data import own
from nri_modular.modules import ModuleBank
from nri_modular.search_config import SearchConfig
from nri_modular.structure import EXACT_KINDS, MAX_EXACT_SETTINGS, MOVE_KINDS

SYSTEMS = data.SYSTEMS  # the one list: nri_modular.data.datasets
_BG = bouncegrad.BounceGradConfig()  # the one source of the training defaults
_SEARCH = SearchConfig()  # ... and of the meta-test ones


@dataclasses.dataclass(frozen=True)
class Config:
    """All settings of a meta-training + meta-test run.

    Defaults come from one place: the library's own settings (:class:`BounceGradConfig`
    for training, :class:`nri_modular.search_config.SearchConfig` for meta-test), which are the
    paper's choices where it makes one (no uniform moves mixed in, MSE); the flagfiles in
    ``experiments/flags/`` choose ours (the CPU demo's, the hour's, the paper's sizes).
    """

    # Data.
    system: str = "springs"  # a simulated system, generated into data_dir ("" with dataset)
    dataset: str = ""  # one's own dataset NAME in data_dir (nri_modular/data/own.py)
    data_dir: str = "data"
    num_particles: int = 5
    num_train: int = 2000
    num_valid: int = 100
    num_test: int = 1000
    data_seed: int = 42
    regenerate_data: bool = False  # regenerate our own dataset in data_dir if it differs
    state_dim: int = 4  # channels per object and frame: (x, y, vx, vy); own data: 2D or F
    no_relation: int = -1  # own labelled data: the code of "no relation" (AUROC); -1: none
    # Model.
    num_modules: int = 2
    edge_hidden: tuple[int, ...] = (64, 64, 64)
    node_hidden: tuple[int, ...] = (64, 64, 64)
    module_init_spread: float = 0.0
    # BounceGrad.
    seed: int = 0
    batch_size: int = 50
    num_epochs: int = 100
    learning_rate: float = 1e-3
    final_learning_rate: float = 0.0  # > 0: cosine decay to it over the run (module_optimizer)
    p: int = _BG.p
    loss: str = _BG.loss  # or "huber" (bouncegrad.huber_rollout_loss)
    huber_delta: float = _BG.huber_delta
    sa_steps: int = _BG.sa_steps
    refresh_energy: bool = _BG.refresh_energy
    initial_temperature: float = bouncegrad.INITIAL_TEMPERATURE  # ~exp(-9.8), the paper's code
    temperature_decay_steps: float = _BG.temperature_decay_steps
    proposal: str = _BG.proposal
    uniform_mix: float = _BG.uniform_mix
    exact_stride: int = _BG.exact_stride
    proposal_hidden: int = 64
    proposal_learning_rate: float = 1e-3
    # Structure priors (nri_modular/structure_priors.py; both off by default).
    symmetric_structure: bool = False  # edges j->i and i->j share a module
    node_types: int = 0  # T latent node types; module = same/different type (0 = off)
    # Meta-test.
    test_proposal: str = _SEARCH.proposal
    test_uniform_mix: float = _SEARCH.uniform_mix
    test_sa_steps: int = _SEARCH.num_steps
    test_t_start: float = _SEARCH.t_start
    test_t_end: float = _SEARCH.t_end
    test_batch_size: int = _SEARCH.batch_size
    obs_frames: int = 49
    horizon: int = 20
    # Engineering.
    block_rows: int = _BG.block_rows
    edge_compute: str = _BG.edge_compute
    log_every: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 3
    tensorboard: bool = False  # also write TensorBoard events (pip install '.[tensorboard]')
    # Scaling (see nri_modular/distributed.py): mesh and multi-host start-up.
    model_axis_size: int = 1
    task_shards: int = 1  # V: virtual shards of the tasks (a multiple of the data-axis size)
    coordinator_address: str = ""
    num_processes: int = 0  # 0: single process, or detected (SLURM / TPU)
    process_id: int = -1  # -1: detected

    @property
    def uses_proposal_network(self) -> bool:
        """The learned proposal is trained when training or meta-test search uses it."""
        return "blocked_gibbs" in (self.proposal, self.test_proposal)

    def __post_init__(self):
        if self.dataset:
            _check(
                self.system == "",
                f"--dataset={self.dataset} (one's own data) and --system={self.system} (a "
                "simulated one) exclude each other: leave --system empty",
            )
            own.check_name(self.dataset)
        else:
            _check(
                self.system in SYSTEMS,
                f"unknown system {self.system!r}; expected one of {SYSTEMS}, or --dataset=NAME "
                "for one's own data",
            )
            _check(
                self.state_dim == 4,
                f"simulated systems have 4 state channels, got state_dim={self.state_dim}",
            )
        _check(self.state_dim >= 1, f"state_dim must be positive, got {self.state_dim}")
        _check(self.no_relation >= -1, f"no_relation must be >= -1, got {self.no_relation}")
        _check(
            self.proposal in MOVE_KINDS,
            f"unknown proposal {self.proposal!r}; expected one of {MOVE_KINDS}",
        )
        _check(
            self.test_proposal in MOVE_KINDS,
            f"unknown test_proposal {self.test_proposal!r}; expected one of {MOVE_KINDS}",
        )
        _check(
            self.edge_compute in gnn.EDGE_COMPUTE_KINDS,
            f"unknown edge_compute {self.edge_compute!r}; expected one of {gnn.EDGE_COMPUTE_KINDS}",
        )
        for name in (
            "num_particles",
            "num_train",
            "num_test",
            "num_modules",
            "batch_size",
            "num_epochs",
            "p",
            "test_sa_steps",
            "test_batch_size",
            "obs_frames",
            "block_rows",
            "exact_stride",
            "proposal_hidden",
            "log_every",
            "checkpoint_every",
            "keep_checkpoints",
            "model_axis_size",
            "task_shards",
        ):
            value = getattr(self, name)
            _check(value > 0, f"{name} must be positive, got {value}")
        _check(
            self.num_valid > 0,
            f"num_valid must be positive (the valid split, on which settings are chosen), "
            f"got {self.num_valid}",
        )
        _check(self.sa_steps >= 0, f"sa_steps must be >= 0, got {self.sa_steps}")
        _check(self.horizon >= 0, f"horizon must be >= 0 (0: structures only), got {self.horizon}")
        _check(self.num_particles >= 2, f"num_particles must be >= 2, got {self.num_particles}")
        # K = 1: one module for every pair (no structure to infer), the baseline of choosing K.
        _check(self.num_modules >= 1, f"num_modules must be >= 1, got {self.num_modules}")
        _check(
            self.num_modules > 1 or not self.uses_proposal_network,
            "num_modules=1 has no structure to propose: use --proposal / --test_proposal "
            "exact_local or uniform",
        )
        structure_priors.check_prior(
            self.num_modules, self.num_particles, self.symmetric_structure, self.node_types
        )
        for name in ("proposal", "test_proposal"):  # exact moves enumerate K^(n-1) settings
            settings = self.num_modules ** (self.num_particles - 1)
            _check(
                getattr(self, name) not in EXACT_KINDS or settings <= MAX_EXACT_SETTINGS,
                f"{name}={getattr(self, name)} enumerates K^(n-1) = {self.num_modules}^"
                f"{self.num_particles - 1} = {settings} settings of each node's incoming edges; "
                f"at most {MAX_EXACT_SETTINGS} are allowed: use fewer particles or modules, or "
                f"--{name}=blocked_gibbs / uniform",
            )
        _check(
            self.batch_size <= self.num_train,
            f"batch_size {self.batch_size} exceeds num_train {self.num_train}",
        )
        for name in ("num_train", "batch_size", "test_batch_size"):
            value = getattr(self, name)
            _check(
                value % self.task_shards == 0,
                f"{name}={value} is not divisible by task_shards={self.task_shards} (every "
                "batch, of training or of test tasks, is split into task_shards equal slices)",
            )
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            _check(
                not isinstance(value, float) or math.isfinite(value),
                f"{field.name} must be finite, got {value}",
            )
        for name in ("learning_rate", "proposal_learning_rate"):
            value = getattr(self, name)
            _check(value > 0, f"{name} must be positive, got {value}")
        _check(
            self.loss in bouncegrad.LOSS_KINDS,
            f"unknown loss {self.loss!r}; expected one of {bouncegrad.LOSS_KINDS}",
        )
        _check(self.huber_delta > 0, f"huber_delta must be positive, got {self.huber_delta}")
        _check(
            0.0 <= self.final_learning_rate <= self.learning_rate,
            f"final_learning_rate must be in [0, learning_rate={self.learning_rate}] "
            f"(0: constant), got {self.final_learning_rate}",
        )
        for name in (
            "initial_temperature",
            "test_t_start",
            "test_t_end",
            "temperature_decay_steps",
        ):
            value = getattr(self, name)
            _check(value > 0, f"{name} must be positive, got {value}")
        _check(
            0.0 <= self.module_init_spread < 1.0,
            f"module_init_spread must be in [0, 1), got {self.module_init_spread}",
        )
        for name in ("uniform_mix", "test_uniform_mix"):
            value = getattr(self, name)
            _check(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")
        distributed.check_distributed_flags(
            self.coordinator_address, self.num_processes, self.process_id
        )
        _check(
            all(w > 0 for w in (*self.edge_hidden, *self.node_hidden))
            and self.edge_hidden
            and self.node_hidden,
            f"hidden sizes must be non-empty positive, got {self.edge_hidden} {self.node_hidden}",
        )


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"layer sizes must be comma-separated integers, got {text!r}") from None
    if not sizes:
        raise ValueError(f"layer sizes must be non-empty, got {text!r}")
    return sizes


def define_flags(flags_module, system_default: str = "springs") -> None:
    """Defines one absl flag per :class:`Config` field (plus ``--workdir``)."""
    flags = flags_module
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
    defaults = Config()  # the defaults of every field, but --system's
    for field in dataclasses.fields(Config):
        value = getattr(defaults, field.name)
        help_text = f"Config.{field.name}"
        if field.name == "system":
            flags.DEFINE_enum(
                "system",
                system_default,
                ["", *SYSTEMS],
                "Simulated system, generated into --data_dir ('' with --dataset).",
            )
        elif field.name == "dataset":
            flags.DEFINE_string(
                "dataset", value, "One's own dataset NAME in --data_dir (nri_modular/data/own.py)."
            )
        elif field.name in ("proposal", "test_proposal"):
            flags.DEFINE_enum(field.name, value, list(MOVE_KINDS), "Annealing move kind.")
        elif field.name == "edge_compute":
            flags.DEFINE_enum(
                "edge_compute", value, list(gnn.EDGE_COMPUTE_KINDS), "Edge module dispatch."
            )
        elif isinstance(value, bool):
            flags.DEFINE_bool(field.name, value, help_text)
        elif isinstance(value, int):
            flags.DEFINE_integer(field.name, value, help_text)
        elif isinstance(value, float):
            flags.DEFINE_float(field.name, value, help_text)
        elif isinstance(value, tuple):
            flags.DEFINE_string(field.name, ",".join(map(str, value)), help_text + " (comma list)")
        else:
            flags.DEFINE_string(field.name, value, help_text)


def config_from_flags(flag_values) -> Config:
    """Builds a validated :class:`Config` from parsed absl flag values."""
    kwargs = {}
    for field in dataclasses.fields(Config):
        value = getattr(flag_values, field.name)
        if isinstance(getattr(Config, field.name, None), tuple) or field.name in (
            "edge_hidden",
            "node_hidden",
        ):
            value = _parse_sizes(value)
        kwargs[field.name] = value
    return Config(**kwargs)


def build_bank(config: Config) -> ModuleBank:
    """The module bank the config describes."""
    return ModuleBank(
        config.num_modules,
        config.edge_hidden,
        config.node_hidden,
        state_dim=config.state_dim,
        init_spread=config.module_init_spread,
    )


def module_optimizer(config: Config) -> optax.GradientTransformation:
    """Adam on the module weights, at a constant or cosine-decayed step size.

    ``final_learning_rate=0`` (the default): constant ``learning_rate``. Otherwise the step
    size decays from ``learning_rate`` to ``final_learning_rate`` along a cosine over the
    run's ``num_epochs * (num_train // batch_size)`` steps.
    """
    if config.final_learning_rate == 0:
        return optax.adam(config.learning_rate)
    steps = config.num_epochs * (config.num_train // config.batch_size)
    alpha = config.final_learning_rate / config.learning_rate
    return optax.adam(optax.cosine_decay_schedule(config.learning_rate, steps, alpha=alpha))


def bouncegrad_config(config: Config) -> bouncegrad.BounceGradConfig:
    """The static BounceGrad settings of a run."""
    return bouncegrad.BounceGradConfig(
        p=config.p,
        sa_steps=config.sa_steps,
        refresh_energy=config.refresh_energy,
        temperature_decay_steps=config.temperature_decay_steps,
        proposal=config.proposal,
        uniform_mix=config.uniform_mix,
        exact_stride=config.exact_stride,
        loss=config.loss,
        huber_delta=config.huber_delta,
        block_rows=config.block_rows,
        edge_compute=config.edge_compute,
        task_shards=config.task_shards,
        symmetric_structure=config.symmetric_structure,
        node_types=config.node_types,
    )
