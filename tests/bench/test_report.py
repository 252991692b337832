"""Publishing a partial run: it replaces only what it measured, and says which run each part came from."""

from __future__ import annotations

from bench.report import merged


def test_a_partial_run_replaces_only_its_sections_and_a_profiling_run_its_profiles() -> None:
    published = {"started": "A", "sections": {"startup": {"v": 1}, "dns": {"v": 2}},
                 "engines": {"docker": {"ok": True}}, "profile": {"old": {"top": ["old"]}},
                 "machine": {"python": "3.11.7"}}
    run = {"started": "B", "sections": {"startup": {"v": 3}}, "engines": {"coracle": {"ok": True}},
           "machine": {"python": "3.11.2"}}

    out = merged(run, published)
    assert out["sections"] == {"startup": {"v": 3}, "dns": {"v": 2}}
    assert out["section_runs"] == {"startup": "B", "dns": "A"}
    assert out["profile"] == {"old": {"top": ["old"]}}  # a run without profiles keeps the published ones
    assert set(out["engines"]) == {"docker", "coracle"}
    assert out["machine"] == {"python": "3.11.2"}  # the machine as the newest run saw it

    out = merged({**run, "profile": {"new": {"top": ["new"]}}}, published)
    assert out["profile"] == {"new": {"top": ["new"]}} and out["profile_run"] == "B"
