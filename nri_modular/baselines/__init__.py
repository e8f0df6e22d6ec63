"""Every method of the paper's Tables 1-2 behind one interface (:class:`base.Method`).

``METHODS`` maps each name to its class; :func:`make_method` builds one;
:func:`base.evaluate_method` scores any of them the same way. Names and rows:

============== =========================================================== ============
name           method                                                      rows
============== =========================================================== ============
static         s[t+1] = s[t]                                               Table 1
lstm_single    one LSTM per particle trajectory (Kipf et al. 2018)         Table 1
lstm_joint     one LSTM over all particles' states                         Table 1
nri_full_graph one edge module on every edge                               Table 1
nri_vae        NRI: encoder = proposal network, decoder = module bank      Tables 1, 2
modular        ours: BounceGrad + annealed structures                      Tables 1, 2
nri_true_graph the module bank on the true relations                       Table 1
corr_data      classifier on the correlation of raw trajectories           Table 2
corr_lstm      classifier on the correlation of LSTM hidden states         Table 2
supervised     the encoder trained on the true relations                   Table 2
============== =========================================================== ============
"""

from __future__ import annotations

from nri_modular.baselines.base import BaselineSettings, Method, evaluate_method
from nri_modular.baselines.correlation import CorrDataMethod, CorrLSTMMethod
from nri_modular.baselines.modular import ModularMethod
from nri_modular.baselines.nri import (
    NRIFullGraphMethod,
    NRITrueGraphMethod,
    NRIVAEMethod,
    SupervisedMethod,
)
from nri_modular.baselines.recurrent import LSTMJointMethod, LSTMSingleMethod, StaticMethod

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        StaticMethod,
        LSTMSingleMethod,
        LSTMJointMethod,
        NRIFullGraphMethod,
        NRIVAEMethod,
        ModularMethod,
        NRITrueGraphMethod,
        CorrDataMethod,
        CorrLSTMMethod,
        SupervisedMethod,
    )
}


def make_method(name: str, config, settings: BaselineSettings) -> Method:
    """The method registered as ``name``, for ``config``'s data and sizes.

    Raises:
      ValueError: unknown name (the message lists the known ones).
    """
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; expected one of {tuple(METHODS)}")
    return METHODS[name](config, settings)


__all__ = ["METHODS", "BaselineSettings", "Method", "evaluate_method", "make_method"]
