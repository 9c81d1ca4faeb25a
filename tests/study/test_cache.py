"""Step outputs on disk and the baseline placeholder."""

from pathlib import Path

from deepshrink.study import cache as runner


def test_baseline_placeholder_hashes_as_the_baseline_key(tmp_path: Path) -> None:
    run, hashed = runner.substitute("distill:student=input,teacher={baseline}", tmp_path / "b.safetensors", "k1")
    assert run == f"distill:student=input,teacher={tmp_path / 'b.safetensors'}"
    # The path is where the cache happens to be; the key is what the teacher is.
    assert hashed == "distill:student=input,teacher=baseline:k1"
