"""The model report: export draws it for every task, `bertserve report` re-draws it or builds it for
a training directory, the curves warn of over-fitting, and the service serves the page."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from bertserve.report import REPORT_HTML, REPORT_JSON, Report, training_warnings
from tests.conftest import write_jsonl

PUBLISHED = ["published_single", "published_pairs", "published_similarity", "published_ner", "published_qa",
             "published_rerank"]
SECTIONS = ("Training", "Quality on held-out data", "Parity: ONNX variants against PyTorch", "Latency")


def figures(page: str) -> list[int]:
    """The number of data points drawn in each figure of the page."""
    return [int(n) for n in re.findall(r'<figure class="plot" data-points="(\d+)"', page)]


def section_html(page: str, title: str) -> str:
    start = page.index(f"<h2>{title}")
    end = page.find("<section", start)
    return page[start: end if end > 0 else len(page)]


@pytest.mark.parametrize("fixture", PUBLISHED)
def test_export_draws_a_report_with_every_section_and_nonempty_plots(fixture, request):
    published = request.getfixturevalue(fixture)
    artifact = Path(published["artifact"])
    page = (artifact / REPORT_HTML).read_text()
    report = Report.from_dict(json.loads((artifact / REPORT_JSON).read_text()))
    titles = [s.title for s in report.sections]
    assert [t.split(" (")[0] for t in titles] == list(SECTIONS), titles
    for title in titles:
        html = section_html(page, title.split(" (")[0])
        drawn = figures(html)
        assert drawn and all(n > 0 for n in drawn), (title, drawn)
        assert "<svg" in html
    # parity lists each variant with its gate decision, and compares every variant's answers with PyTorch's
    parity = section_html(page, SECTIONS[2])
    assert "onnx" not in parity.lower() or "int8" in parity
    for variant in ("pytorch", "fp32", "int8"):
        assert f"<td>{variant}</td>" in parity
    assert "answers differently from PyTorch" in parity
    assert "scores" not in report.sections[0].notes  # the training note is prose, not a dump
    assert "Best checkpoint: step" in " ".join(report.sections[0].notes)
    # the training log travels with the report, so a later bertserve re-draws its curves and warnings
    assert report.history and report.redrawn().sections[0].blocks
    # self-contained: no script, nothing fetched
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    # the files are part of the artifact: checksummed like the model
    card = json.loads((artifact / "bertserve.json").read_text())
    assert {REPORT_HTML, REPORT_JSON} <= set(card["files"])


def test_classifier_report_shows_confusion_matrix_per_label_scores_and_mistakes(published_single):
    page = (Path(published_single["artifact"]) / REPORT_HTML).read_text()
    quality = section_html(page, "Quality on held-out data")
    assert "Confusion matrix" in quality and "Per label" in quality and "Most confident mistakes" in quality
    assert "<td>positive</td>" in quality and "<td>negative</td>" in quality
    latency = section_html(page, "Latency")
    assert "Milliseconds per example" in latency and "<td>int8</td>" in latency


def test_report_command_redraws_a_published_model_by_tag(published_ner, tmp_path):
    from bertserve_cli import main

    assert main(["report", published_ner["tag"], "--output", str(tmp_path / "r")]) == 0
    page = (tmp_path / "r" / REPORT_HTML).read_text()
    assert "Entity F1 per type" in page and "Texts with the most entity errors" in page
    assert (tmp_path / "r" / REPORT_JSON).is_file()


def test_report_command_on_a_training_directory(trained_qa, tmp_path, capsys):
    from bertserve_cli import main

    assert main(["report", str(trained_qa), "--output", str(tmp_path / "r")]) == 0
    out = json.loads(capsys.readouterr().out)
    page = Path(out["report"]).read_text()
    assert "Exact match and F1 by the gold answer" in page and "by the context" in page
    assert "Not exported yet" in section_html(page, SECTIONS[2])
    assert all(n > 0 for n in figures(section_html(page, "Quality on held-out data")))


def test_report_command_refuses_what_is_not_a_model(tmp_path, capsys):
    from bertserve_cli import main

    assert main(["report", str(tmp_path)]) == 2
    assert "not a bertserve model directory" in capsys.readouterr().err


def test_multi_label_and_regression_reports(tiny_base, tmp_path):
    """Threshold curves per label (multi-label), predicted against gold (regression)."""
    from export.report import training_report
    from tests.conftest import multi_label_rows, regression_rows, tiny_config
    from training import run_training

    rng = random.Random(5)
    multi = tmp_path / "multi"
    run_training(tiny_config(tiny_base, write_jsonl(tmp_path / "m.jsonl", multi_label_rows(90, rng)), multi, epochs=6,
                             validation=str(write_jsonl(tmp_path / "mv.jsonl", multi_label_rows(40, rng)))))
    from bertserve.artifact import read_card

    report = training_report(multi, read_card(multi), limit=100)
    quality = report.sections[1]
    curves = next(b for b in quality.blocks if getattr(b, "kind", "") == "line")
    assert "threshold" in curves.title and len(curves.series) == 3 and all(s.y for s in curves.series)
    assert any(getattr(b, "title", "").startswith("Per label") for b in quality.blocks)

    regression = tmp_path / "regression"
    reg_rows = regression_rows()
    run_training(tiny_config(tiny_base, write_jsonl(tmp_path / "r.jsonl", reg_rows), regression, epochs=3,
                             validation=str(write_jsonl(tmp_path / "rv.jsonl", reg_rows[:20]))))
    report = training_report(regression, read_card(regression), limit=100)
    scatter = next(b for b in report.sections[1].blocks if getattr(b, "kind", "") == "scatter")
    assert scatter.diagonal and len(scatter.series[0].x) == 20


def test_overtrained_model_gets_the_overfitting_warning_and_a_normal_one_does_not(tiny_base, trained_single, tmp_path):
    """Labels that are noise, many epochs at a high learning rate: the training loss falls while the
    validation loss climbs. The session's sentiment model, trained on learnable data, is clean."""
    from tests.conftest import FILLER, tiny_config
    from training import run_training

    rng = random.Random(3)

    def noise(n: int) -> list[dict]:
        return [{"text": " ".join(rng.sample(FILLER, 6)), "label": rng.choice(["a", "b"])} for _ in range(n)]

    output = tmp_path / "overfit"
    run_training(tiny_config(tiny_base, write_jsonl(tmp_path / "t.jsonl", noise(48)), output, epochs=40,
                             learning_rate=1e-3, early_stopping_patience=1000, checkpoint_steps=3,
                             validation=str(write_jsonl(tmp_path / "v.jsonl", noise(40)))))
    history = json.loads((output / "training_history.json").read_text())
    warnings = training_warnings(history)
    assert any(w.startswith("Over-fitting") for w in warnings), (warnings, [
        (e["step"], e["eval_loss"]) for e in history["log"] if "eval_loss" in e])

    normal = json.loads((trained_single / "training_history.json").read_text())
    assert not [w for w in training_warnings(normal) if w.startswith("Over-fitting")]


def test_warnings_for_diverging_and_stuck_training():
    def history(losses, metrics):
        log = [{"step": i + 1, "loss": v} for i, v in enumerate(losses)]
        log += [{"step": i + 1, "eval_loss": 0.7, "eval_macro_f1": m} for i, m in enumerate(metrics)]
        return {"metric": "macro_f1", "best_step": 1, "log": log}

    assert any("NaN" in w for w in training_warnings(history([0.7, float("nan")], [0.3, 0.4])))
    assert any("diverging" in w for w in training_warnings(history([0.7, 0.5, 0.3, 2.0], [0.3, 0.4])))
    assert any("majority class" in w for w in training_warnings(history([0.7, 0.6], [0.33, 0.33, 0.33])))
    assert training_warnings(history([0.7, 0.6, 0.5, 0.4], [0.5, 0.6, 0.7])) == []
    cut = {**history([0.7, 0.6], [0.5, 0.6]), "global_step": 20, "max_steps": 1017,
           "stop_reason": "the time budget (--max-minutes 10) ran out"}
    assert any("after 20 of 1017 planned steps" in w for w in training_warnings(cut))


def test_the_service_serves_each_models_report_and_links_it(service_client, published_single):
    info = service_client.get("/info").json()
    name = next(n for n, m in info["models"].items() if m["tag"] == published_single["tag"])
    link = info["models"][name]["report"]
    assert link == f"/models/{name}/report"
    response = service_client.get(link)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert response.content == (Path(published_single["artifact"]) / REPORT_HTML).read_bytes()
    for model in info["models"].values():
        assert service_client.get(model["report"]).status_code == 200


@pytest.mark.parametrize("name", ["nope", "..", "%2e%2e%2fbertserve.json", "a" * 300, "pairs%00"])
def test_report_of_an_unknown_model_is_404_in_the_one_error_shape(service_client, name):
    response = service_client.get(f"/models/{name}/report")
    assert response.status_code == 404, response.text
    body = response.json()
    assert body["error_type"] in ("unknown_model", "not_found") and body["error"]


def test_report_needs_the_api_key_when_one_is_set(service_client, service_instance):
    from pydantic import SecretStr

    name = next(iter(service_client.get("/info").json()["models"]))
    saved = service_instance.settings.api_key
    service_instance.settings.api_key = SecretStr("k")
    try:
        assert service_client.get(f"/models/{name}/report").status_code == 401
        ok = service_client.get(f"/models/{name}/report", headers={"authorization": "Bearer k"})
        assert ok.status_code == 200
    finally:
        service_instance.settings.api_key = saved


def test_overfitting_read_from_the_metric_where_no_validation_loss_is_logged():
    """Sentence-transformers' trainer logs the validation metric only: a metric falling for three
    evaluations while the training loss falls is the same warning."""
    log = [{"step": s, "loss": 1.0 - s / 100} for s in range(10, 90, 10)]
    log += [{"step": s, "eval_validation_spearman": m} for s, m in ((20, 0.8), (40, 0.85), (50, 0.84), (60, 0.83),
                                                                   (70, 0.82))]
    history = {"metric": "validation_spearman", "best_step": 40, "log": log}
    assert any(w.startswith("Over-fitting: the validation validation_spearman fell") for w in training_warnings(history))
