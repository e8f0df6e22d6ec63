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
import re

import optax

from nri_modular import bouncegrad, data, distributed, gnn, structure_priors
from nri_modular.data import own
from nri_modular.modules import ModuleBank
from nri_modular.search_config import SearchConfig
from nri_modular.structure import EXACT_KINDS, MAX_EXACT_SETTINGS, MOVE_KINDS

SYSTEMS = data.SYSTEMS  # the one list: nri_modular.data.datasets
_BG = bouncegrad.BounceGradConfig()  # the one source of the training defaults
_SEARCH = SearchConfig()  # ... and of the meta-test ones

# The groups of Config's fields, in their order in the class; each field's group and its
# one-line help (what it does, units, the paper's value where it has one) are its metadata,
# which --helpfull shows as "[group] help".
GROUPS = ("data", "model", "training", "priors", "search", "engineering", "scaling")


def _grouped(group: str):
    """The field maker of one group: ``name: type = _data(default, "help")``."""

    def make(default, help_text: str):
        return dataclasses.field(default=default, metadata={"group": group, "help": help_text})

    return make


_data, _model, _training, _priors, _search, _engineering, _scaling = map(_grouped, GROUPS)


@dataclasses.dataclass(frozen=True)
class Config:
    """All settings of a meta-training + meta-test run.

    Defaults come from one place: the library's own settings (:class:`BounceGradConfig`
    for training, :class:`nri_modular.search_config.SearchConfig` for meta-test), which are the
    paper's choices where it makes one (no uniform moves mixed in, MSE); the flagfiles in
    ``experiments/flags/`` choose ours (the CPU demo's, the hour's, the paper's sizes).

    The fields come in the groups of :data:`GROUPS` (data, model, BounceGrad training,
    structure priors, meta-test search, engineering, scaling); each carries its group and a
    one-line help in its metadata, which is its flag's ``--helpfull`` text.
    """

    # --- Data: which systems, how many, where. ------------------------------------------------
    system: str = _data(
        "springs",
        "Simulated system (NRI benchmark, Kipf et al. 2018), generated into --data_dir if "
        "missing; '' when --dataset names one's own data.",
    )
    dataset: str = _data(
        "",
        "One's own dataset NAME in --data_dir (loc_/feat_{split}_NAME.npy, optional "
        "edges_...; docs/own_data.md); excludes --system.",
    )
    data_dir: str = _data(
        "data",
        "Folder of the datasets: simulated ones are generated and cached here, one's own are "
        "read from here.",
    )
    num_particles: int = _data(
        5, "n, objects per system (>= 2); one's own data: read from the files."
    )
    num_train: int = _data(
        2000,
        "Meta-training tasks (one simulated system each; the paper: 50,000). One's own data: "
        "the first ones, all if left out.",
    )
    num_valid: int = _data(
        100,
        "Validation systems, on which settings are chosen (the paper: 10,000). One's own "
        "data: the first ones, all if left out.",
    )
    num_test: int = _data(
        1000,
        "Meta-test systems (the paper: 10,000). One's own data: the first ones, all if left out.",
    )
    data_seed: int = _data(
        42,
        "Seed of the simulated data; each split has its own stream, so the test split does not "
        "depend on the other splits' sizes.",
    )
    regenerate_data: bool = _data(
        False,
        "Replace a dataset we generated in --data_dir when it differs from the one asked "
        "for (never files we did not write); otherwise such a difference is an error.",
    )
    state_dim: int = _data(
        4,
        "Channels per object and frame: 4 for simulated systems (x, y, vx, vy); one's own "
        "data: 2D (positions, velocities) or F features, read from the files.",
    )
    no_relation: int = _data(
        -1,
        "One's own labelled data: the edge-label code meaning 'no relation' (edge-existence "
        "scores, AUROC); -1: none.",
    )

    # --- Model: the module bank (K edge modules + one node module). ---------------------------
    num_modules: int = _model(
        2,
        "K, edge modules the structure chooses among for each directed edge (relation "
        "types); 1: one module for every pair, no structure to infer.",
    )
    edge_hidden: tuple[int, ...] = _model(
        (64, 64, 64),
        "Layer widths of each edge module's ReLU MLP; the last is the message size (the "
        "paper: 256,256,256).",
    )
    node_hidden: tuple[int, ...] = _model(
        (64, 64, 64),
        "Hidden widths of the node module's ReLU MLP, which maps state + summed messages to "
        "a state delta (the paper: 256,256,256).",
    )
    module_init_spread: float = _model(
        0.0,
        "Symmetry breaking at init, in [0, 1): module k's output layer starts scaled by "
        "1 - spread * k / (K - 1); 0: identically distributed modules (the paper's).",
    )

    # --- BounceGrad training: optimisation. ---------------------------------------------------
    seed: int = _training(
        0,
        "Seed of the run: initialisation, task order and annealing in training, and the "
        "meta-test search.",
    )
    batch_size: int = _training(
        50, "Training tasks per BounceGrad step (annealed, then one Adam step on their loss)."
    )
    num_epochs: int = _training(
        100,
        "Passes over the training tasks; the run is num_epochs * (num_train // batch_size) steps.",
    )
    learning_rate: float = _training(
        1e-3,
        "Adam step size of the modules (the start of the cosine decay when "
        "--final_learning_rate > 0).",
    )
    final_learning_rate: float = _training(
        0.0,
        "> 0: the modules' step size decays along a cosine from --learning_rate to this over "
        "the run; 0: constant (the paper's).",
    )
    p: int = _training(
        _BG.p,
        "Rollout length of the loss and of the annealing energy, in frames: the model "
        "predicts p steps ahead, truth re-fed every p frames.",
    )
    loss: str = _training(
        _BG.loss,
        "Training loss per predicted coordinate, also training's annealing energy: mse (the "
        "paper's) or huber (rare large errors weigh less).",
    )
    huber_delta: float = _training(
        _BG.huber_delta,
        "With --loss=huber, in normalised units: an error e costs e^2 if |e| <= delta, else "
        "2 * delta * |e| - delta^2.",
    )
    # --- BounceGrad training: simulated annealing over the structures. ------------------------
    sa_steps: int = _training(
        _BG.sa_steps,
        "Annealing proposals per task per BounceGrad step (0: structures are not searched).",
    )
    refresh_energy: bool = _training(
        _BG.refresh_energy,
        "Re-evaluate a task's current structure with the current weights before annealing "
        "(exact Metropolis); false: use the energy stored at its last visit (one pass fewer).",
    )
    initial_temperature: float = _training(
        bouncegrad.INITIAL_TEMPERATURE,
        "Annealing temperature at step 0, then adapted (x or / 1.1 per step) toward the "
        "target rate of accepted worse moves; the paper's code: exp(-9.8) ~ 5.5e-5.",
    )
    temperature_decay_steps: float = _training(
        _BG.temperature_decay_steps,
        "Decay of the target rate of accepted worse moves, exp(-1 - 5 * step / this), in "
        "steps (the paper's code's schedule).",
    )
    proposal: str = _training(
        _BG.proposal,
        "Annealing move in training: uniform (one edge to another module), blocked_gibbs "
        "(learned proposal network, the paper's), exact_local / exact_sweep (ours).",
    )
    uniform_mix: float = _training(
        _BG.uniform_mix,
        "Probability of a uniform move instead of a blocked_gibbs / exact one (the paper: "
        "0, none).",
    )
    exact_stride: int = _training(
        _BG.exact_stride,
        "Exact moves score a node's K^(n-1) settings on every exact_stride-th transition (1: all).",
    )
    anneal_frames: int = _training(
        _BG.anneal_frames,
        "The paper's per-task split of frames: > 0 anneals on each task's first anneal_frames "
        "frames and takes the gradient on the rest (each part > p frames); 0: both see all.",
    )
    proposal_hidden: int = _training(
        64,
        "Width of the learned proposal network (Kipf et al.'s NRI encoder; the paper: 256), "
        "built when a --proposal / --test_proposal is blocked_gibbs.",
    )
    proposal_learning_rate: float = _training(
        1e-3,
        "Adam step size of the proposal network, trained in each BounceGrad step by "
        "cross-entropy toward the annealing's current structures.",
    )

    # --- Structure priors (nri_modular/structure_priors.py): not the paper's, off. ------------
    symmetric_structure: bool = _priors(
        False, "Prior: edges j->i and i->j share one module (symmetric relations); not the paper's."
    )
    node_types: int = _priors(
        0,
        "Prior: T >= 2 latent node types, an edge's module is same / different type (K = 2); "
        "0: off. Not the paper's (hard-codes structure).",
    )

    # --- Meta-test: structure search on each test system, then prediction. --------------------
    test_proposal: str = _search(
        _SEARCH.proposal,
        "Annealing move at meta-test (kinds of --proposal); starts from the exact one-step "
        "optimum (exact kinds), else the network's argmax, else at random.",
    )
    test_uniform_mix: float = _search(
        _SEARCH.uniform_mix,
        "Probability of a uniform move instead of a blocked_gibbs / exact one at meta-test "
        "(the paper: 0, none).",
    )
    test_sa_steps: int = _search(
        _SEARCH.num_steps, "Annealing steps per test system, the modules' weights fixed."
    )
    test_t_start: float = _search(
        _SEARCH.t_start,
        "Meta-test temperature at the first step (geometric schedule to --test_t_end).",
    )
    test_t_end: float = _search(
        _SEARCH.t_end,
        "Meta-test temperature at the last step (geometric schedule from --test_t_start).",
    )
    test_batch_size: int = _search(
        _SEARCH.batch_size,
        "Test systems searched and predicted together (a static shape; the last batch is "
        "padded): bounds the memory.",
    )
    obs_frames: int = _search(
        49,
        "Frames of each test system the structure is searched on (Kipf et al.'s protocol: "
        "49); prediction starts at this frame.",
    )
    horizon: int = _search(
        20,
        "Open-loop prediction steps scored after the observed frames (MSE per step); 0: "
        "score the structures only.",
    )

    # --- Engineering: speed knobs (the same function), logging, checkpoints. ------------------
    block_rows: int = _engineering(
        _BG.block_rows,
        "Rows per block of the blocked edge computation (edges grouped by module into "
        "fixed-size matmuls).",
    )
    edge_compute: str = _engineering(
        _BG.edge_compute,
        "blocked: each edge computed only by its chosen module (~1x FLOPs); all: every "
        "module on every edge (Kx, for comparison). Same function.",
    )
    log_every: int = _engineering(20, "Training steps between progress lines and metrics.")
    checkpoint_every: int = _engineering(
        200, "Training steps between checkpoints in --workdir (a rerun resumes from the last)."
    )
    keep_checkpoints: int = _engineering(3, "Checkpoints kept in --workdir (older ones deleted).")
    tensorboard: bool = _engineering(
        False, "Also write TensorBoard events to --workdir (pip install '.[tensorboard]')."
    )

    # --- Scaling (nri_modular/distributed.py): device mesh and multi-host start-up. -----------
    model_axis_size: int = _scaling(
        1,
        "Devices per 'model' group of the (data, model) mesh; must divide the device count "
        "(reserved: > 1 computes each task shard redundantly).",
    )
    task_shards: int = _scaling(
        1,
        "V virtual shards of the training tasks; a multiple of the data-axis size keeps "
        "each device on its own tasks. Divides num_train and the batch sizes.",
    )
    coordinator_address: str = _scaling(
        "",
        "host:port of process 0 for a multi-host start; '': detected (SLURM / TPU) or a "
        "single process.",
    )
    num_processes: int = _scaling(
        0, "Processes in all, with --coordinator_address; 0: single, or detected (SLURM / TPU)."
    )
    process_id: int = _scaling(
        -1, "This process's index in [0, num_processes), with --coordinator_address; -1: detected."
    )

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
        _check(
            self.anneal_frames == 0 or self.anneal_frames > self.p,
            f"anneal_frames must be 0 (no split) or more than p={self.p}, got {self.anneal_frames}",
        )
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


def help_problems(cls) -> list[str]:
    """What is wrong with the help metadata of a dataclass's fields (empty: nothing).

    Every field needs a group of :data:`GROUPS`, the groups in that order (as the section
    comments of :class:`Config`), and a one-line help text that says more than its name.
    """
    problems = []
    order = 0
    for field in dataclasses.fields(cls):
        group = field.metadata.get("group")
        text = str(field.metadata.get("help", "")).strip()
        if group not in GROUPS:
            problems.append(f"{field.name}: group {group!r} is not one of {GROUPS}")
        elif GROUPS.index(group) < order:
            problems.append(f"{field.name}: a {group!r} field after the {GROUPS[order]!r} ones")
        else:
            order = GROUPS.index(group)
        bare = re.sub(r"[^a-z0-9]", "", text.lower())
        name = re.sub(r"[^a-z0-9]", "", field.name.lower())
        if bare in ("", name, "config" + name):
            problems.append(f"{field.name}: no help text (got {text!r})")
        elif "\n" in text:
            problems.append(f"{field.name}: help text is not one line")
    return problems


def flag_help(field: dataclasses.Field) -> str:
    """The ``--helpfull`` text of a :class:`Config` field's flag: ``"[group] help"``."""
    return f"[{field.metadata['group']}] {field.metadata['help']}"


def define_flags(flags_module, system_default: str = "springs") -> None:
    """Defines one absl flag per :class:`Config` field (plus ``--workdir``).

    Each flag's help is its field's, tagged with its group (``[data] ...``), so
    ``--helpfull`` says what every setting does and where it belongs.
    """
    problems = help_problems(Config)
    if problems:
        raise ValueError("Config fields without a proper group / help: " + "; ".join(problems))
    flags = flags_module
    flags.DEFINE_string(
        "workdir", None, "[engineering] Directory for checkpoints, metrics and results."
    )
    defaults = Config()  # the defaults of every field, but --system's
    for field in dataclasses.fields(Config):
        value = getattr(defaults, field.name)
        help_text = flag_help(field)
        if field.name == "system":
            flags.DEFINE_enum("system", system_default, ["", *SYSTEMS], help_text)
        elif field.name in ("proposal", "test_proposal"):
            flags.DEFINE_enum(field.name, value, list(MOVE_KINDS), help_text)
        elif field.name == "edge_compute":
            flags.DEFINE_enum("edge_compute", value, list(gnn.EDGE_COMPUTE_KINDS), help_text)
        elif isinstance(value, bool):
            flags.DEFINE_bool(field.name, value, help_text)
        elif isinstance(value, int):
            flags.DEFINE_integer(field.name, value, help_text)
        elif isinstance(value, float):
            flags.DEFINE_float(field.name, value, help_text)
        elif isinstance(value, tuple):
            flags.DEFINE_string(field.name, ",".join(map(str, value)), help_text + " (comma list)")
        else:  # dataset, data_dir, loss, coordinator_address
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
        anneal_frames=config.anneal_frames,
        loss=config.loss,
        huber_delta=config.huber_delta,
        block_rows=config.block_rows,
        edge_compute=config.edge_compute,
        task_shards=config.task_shards,
        symmetric_structure=config.symmetric_structure,
        node_types=config.node_types,
    )
