"""The benchmarks' own tools (settings parsing, the rule's replay on recorded curves)."""

import pytest

from benchmarks.quality import ablation, field_type


def test_settings_typed_by_declaration():
    kinds = {k: field_type(k) for k in ("seed", "fit.lr", "validation.fallback_steps", "validation.shape")}
    assert kinds == {"seed": int, "fit.lr": float, "validation.fallback_steps": int, "validation.shape": str}
    assert ablation("fit.lr=0.03") == {"fit.lr": 0.03}
    for bad in ("fit.nope", "nope", "nosection.steps"):
        with pytest.raises(ValueError, match="unknown"):
            field_type(bad)
