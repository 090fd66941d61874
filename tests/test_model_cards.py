"""Claims in the model cards that their own measured tables can check."""

from __future__ import annotations

import re
from pathlib import Path

METRICS = ("PESQ", "STOI", "SI-SDR")
# The row of the enhancer card's Measured table that `edgefx enhance` reproduces.
SHIPPED_ROW = "edgefx enhance-speech version 7, state primed on the first 4 s"


def table_rows(card: str) -> dict[str, list[str]]:
    """Map the first cell of each Markdown table row to the row's other cells."""
    rows = {}
    for line in card.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_enhancer_version_line_matches_table(repo_root: Path) -> None:
    card = (repo_root / "models" / "enhance-speech.md").read_text(encoding="utf-8")
    rows = table_rows(card)
    version = rows["version"][0]
    claim = re.fullmatch(
        r"\d+ \(above RNNoise on (?P<above>.+?)(?:, below it on (?P<below>.+?))? "
        r"overall, see Measured\)",
        version,
    )
    assert claim, version

    above = set(re.split(r", | and ", claim["above"]))
    below = set(re.split(r", | and ", claim["below"] or "")) - {""}
    assert above | below == set(METRICS)
    for index, metric in enumerate(METRICS):
        ours = float(rows[SHIPPED_ROW][index])
        rnnoise = float(rows["RNNoise"][index])
        expected = above if ours > rnnoise else below
        assert metric in expected, f"{metric}: {ours} against RNNoise's {rnnoise}"
