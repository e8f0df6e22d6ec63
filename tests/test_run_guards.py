"""Guards of a run: settings that cannot work fail when the config is built."""

import re

import pytest
from conftest import flagfile_config


@pytest.mark.parametrize(
    "override, message",
    [
        (
            dict(num_particles=18, proposal="exact_sweep", test_proposal="uniform"),
            "proposal=exact_sweep enumerates K^(n-1) = 2^17 = 131072 settings",
        ),
        (
            dict(num_modules=3, num_particles=12, proposal="uniform"),
            "test_proposal=exact_local enumerates K^(n-1) = 3^11 = 177147 settings",
        ),
    ],
    ids=["exact_sweep_18_particles", "exact_local_test_3_modules"],
)
def test_infeasible_exact_moves_fail_when_the_config_is_built(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        flagfile_config(**override)
    # The largest feasible size builds (2^16 = 65536 settings).
    flagfile_config(num_particles=17, proposal="exact_sweep")
