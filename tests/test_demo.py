"""``splatcast demo`` runs the whole path in one command, on its built-in sequence or a directory."""

from __future__ import annotations

import torch

from splatcast.cli import main
from splatcast.demo import synthetic_frames


def test_synthetic_sequence_is_deterministic_and_moves():
    a, b = list(synthetic_frames(3, num_gaussians=500)), list(synthetic_frames(3, num_gaussians=500))
    assert all(torch.equal(x.means, y.means) and torch.equal(x.sh0, y.sh0) for x, y in zip(a, b))
    assert a[0].sh_degree == 0 and a[0].num_gaussians == 500
    step = (a[1].means - a[0].means).norm(dim=1)
    assert 0 < step.mean() < 0.05  # a smooth motion: small steps, tracked Gaussians


def test_demo_built_in_and_from_a_directory(tmp_path, capsys):
    assert main(["demo", "--frames", "4", "--gaussians", "3000", "--gop", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line[:5].strip().isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2", "3"] and rows[0][1] == rows[2][1] == "keyframe"  # gop 2
    assert "4 frames (" in out and "streamed and decoded" in out

    assert main(["demo", "--generate", str(tmp_path), "--frames", "3", "--gaussians", "2000"]) == 0
    capsys.readouterr()
    assert main(["demo", "--input", str(tmp_path), "--frames", "2"]) == 0
    assert "2 frames (" in capsys.readouterr().out
