"""Meta-train modular NRI on one's own trajectories (or a simulated system) and meta-test it.

  python experiments/train.py [--flagfile=...] --data_dir=DIR --dataset=NAME

(--flagfile first: the flags after it override its values, e.g. own_demo.flags' dataset.)

DIR holds loc_{train,valid,test}_NAME.npy [sims, frames, D, n] (vel_... optional) or
feat_{split}_NAME.npy [sims, n, frames, F], and optionally edges_{split}_NAME.npy [sims, n, n]
integer relation codes (see nri_modular/data/own.py). The number of objects, D or F and the
simulation counts are read from the files; nothing is generated or written into DIR.
Without labels, what is reported is the prediction error, the structures' module usage and
(with experiments/evaluate.py) the inferred structures and per-edge scores; with labels,
edge accuracy too. --system=springs|charged|kuramoto runs a simulated system instead
(springs.py / charged.py / kuramoto.py are its usual entry points). Every flag is a field of
`nri_modular.Config` (see --helpfull).
"""

from nri_modular import experiment

if __name__ == "__main__":
    experiment.run("")
