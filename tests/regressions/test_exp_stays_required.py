"""Dropping 'exp' from the required claims would make tokens immortal: refused at start-up."""

from __future__ import annotations

import pytest

from flask_apiguard import ApiGuardConfigError
from flask_apiguard.config import load_config


@pytest.mark.parametrize("claims", [[], "", ["sub"]])
def test_required_claims_without_exp_are_refused(claims: object) -> None:
    with pytest.raises(ApiGuardConfigError, match=r"APIGUARD_JWT_REQUIRED_CLAIMS.*'exp'"):
        load_config({"APIGUARD_JWT_REQUIRED_CLAIMS": claims})


def test_max_age_may_stand_in_for_exp() -> None:
    config = load_config({"APIGUARD_JWT_REQUIRED_CLAIMS": ["sub"], "APIGUARD_JWT_MAX_AGE": 600})
    assert "iat" in config.jwt_required_claims and "exp" not in config.jwt_required_claims
