"""`kedro compare-architectures`: the same protocol per architecture, one table, the claim checked."""

from __future__ import annotations

import json

from conftest import TINY

from face_pipeline.comparison import compare_architectures


def test_two_architectures_run_the_whole_protocol_into_one_table(demo_party_folders, monkeypatch):
    project = demo_party_folders
    monkeypatch.chdir(project.path)
    params = {
        "comparison": {
            "architectures": ["se_eca_resnet50", "mobilenetv2"],
            "training": {"backbone": TINY["backbone"]},
        },
        "training": {"img_size": 32, "epochs": 2, "embedding_size": 16, "batch_size": 32},
        "aggregation": {"rounds": 1, "local_epochs": 1},
        "evaluation": {"pairs": 600},
    }

    comparison = compare_architectures(project.path, "demo", params)

    rows = comparison["architectures"]
    assert list(rows) == ["se_eca_resnet50", "mobilenetv2"]
    assert rows["mobilenetv2"]["parameters"] > rows["se_eca_resnet50"]["parameters"]  # the tiny SE-ECA
    for row in rows.values():
        assert 0.0 <= row["federated_accuracy"] <= 1.0 and row["wall_seconds"] > 0
    assert comparison["claim"].startswith(("holds", "does not hold"))
    for architecture in rows:
        run = project.path / "data/09_architectures" / architecture
        assert (run / "data/03_primary").resolve() == project.data("03_primary").resolve()
        assert (run / "data/08_reporting/evaluation_report.md").is_file()
    assert not project.data("06_models/federated").exists()  # the project's own models are left alone
    report = project.data("08_reporting/architecture_comparison.md").read_text()
    assert "| se_eca_resnet50 |" in report and "| mobilenetv2 |" in report
    saved = json.loads(project.data("08_reporting/architecture_comparison.json").read_text())
    assert saved["claim"] == comparison["claim"]

    # A second call finds both runs finished with the same parameters and only rewrites the table.
    model = project.path / "data/09_architectures/mobilenetv2/data/06_models/federated/global_model.keras"
    written = model.stat().st_mtime_ns
    again = compare_architectures(project.path, "demo", params)
    assert model.stat().st_mtime_ns == written
    assert again["architectures"] == comparison["architectures"]
