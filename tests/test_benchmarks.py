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


def test_warm_start_benchmark_runs(tmp_path, monkeypatch):
    """The warm-chain benchmark end to end on a tiny volume (it runs whole CLI pipelines): one
    row per configuration, a table; a rerun reuses the rows."""
    import json

    from benchmarks import warm_start

    monkeypatch.setenv("OES_MRI_CACHE", str(tmp_path / "cache"))
    argv = ["warm_start.py", "--slices", "3", "--size", "32", "--coils", "4", "--steps", "6", "--method",
            "random-channels", "--configs", "warm,independent", "--work", str(tmp_path / "w"), "--out",
            str(tmp_path / "o")]
    warm_start.main(argv)
    rows = [json.loads(line) for line in (tmp_path / "o" / "rows.jsonl").read_text().splitlines()]
    assert [r["config"] for r in rows] == ["warm", "independent"] and all(len(r["steps"]) == 3 for r in rows)
    assert list((tmp_path / "o").glob("warm_*_random-channels_cpu.md"))
    warm_start.main(argv)
    assert len((tmp_path / "o" / "rows.jsonl").read_text().splitlines()) == 2
