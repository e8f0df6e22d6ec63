"""Meta-train modular NRI on the charged-particles system and meta-test it (Kipf et al.'s protocol).

  python experiments/charged.py --flagfile=experiments/flags/charged_demo.flags

Generates the dataset into --data_dir if missing, trains with BounceGrad (resuming from
the latest checkpoint in --workdir), and prints edge accuracy and k-step MSE. Every flag
is a field of `nri_modular.Config` (see --helpfull).
"""

from nri_modular import experiment

if __name__ == "__main__":
    experiment.run("charged")
