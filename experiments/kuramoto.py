"""Meta-train modular NRI on Kuramoto oscillators and meta-test it (NRI's benchmark grid).

  python experiments/kuramoto.py --flagfile=experiments/flags/kuramoto5_cpu.flags

Generates the dataset (nri_modular.data.kuramoto: NRI's Kuramoto layout, directed couplings
k_ij, j drives i) into --data_dir if missing, trains with BounceGrad (resuming from the latest
checkpoint in --workdir), and prints edge accuracy and k-step MSE. Every flag is a field of
`nri_modular.Config` (see --helpfull).
"""

from nri_modular import experiment

if __name__ == "__main__":
    experiment.run("kuramoto")
