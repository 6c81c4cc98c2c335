"""era_adapters.reports: results.md with query counts and the main metrics, and a plot that tells adapters apart."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from era_adapters.reports import markdown_table, ndcg_figure

METRICS = ("ndcg@1", "ndcg@5", "ndcg@10", "ndcg@100", "recall@10", "recall@100", "mrr@10", "map@100")


def system(kind: str, ndcg: float, p_value: float | None = None, **info) -> dict:
    macro = {metric: ndcg for metric in METRICS}
    result = {"system": {"kind": kind, **info}, "macro": macro,
              "tasks": {"mine": {**macro, "n_queries": 60}}}
    if p_value is not None:
        test = {"mean_diff": ndcg - 0.9008, "p_value": p_value}
        result["vs_doc2doc"] = result["tasks"]["mine"]["vs_doc2doc"] = test
    return result


def issue_report() -> dict:
    """The issue's numbers: doc2doc 0.9008, linear ERA 0.8875, fusion 0.8950, re-index 0.9187, query2doc 0.04."""
    labels = {"train_queries": 40, "train_pairs": 40, "validation_queries": 0, "test_queries": 60}
    return {
        "tasks": {"mine": {"test_qids": [f"q{i}" for i in range(60)]}},
        "results": {
            "doc2doc": system("baseline", 0.9008),
            "query2query": system("baseline", 0.9187, 0.2),
            "query2doc": system("baseline", 0.04, 0.0001),
            "era-both": system("adapter", 0.8875, 0.3, mode="both", labels_used=labels),
            "fusion-both": system("adapter", 0.8950, 0.6, mode="both", labels_used=labels),
        },
    }


def test_results_md_has_query_counts_main_metrics_and_says_who_is_below_the_index():
    text = markdown_table(issue_report())
    assert "| system | mine (60 queries) | macro ndcg@10 |" in text
    assert "| system | test queries | nDCG@10 | Recall@100 | MRR@10 | MAP@100 |" in text
    assert "| era-both | 60 | 0.8875 | 0.8875 | 0.8875 | 0.8875 |" in text
    assert "**era-both is below doc2doc** (the index as it is): macro nDCG@10 0.8875 vs 0.9008 (pooled p=0.3)" in text
    assert "**fusion-both is below doc2doc**" in text and "query2query is below" not in text


def test_the_plot_marks_each_adapter_and_scales_to_the_numbers_that_matter():
    figure = ndcg_figure(issue_report())
    axis = figure.axes[0]
    handles, labels = axis.get_legend_handles_labels()
    # two adapters of the same mode and label count: two marks, two legend entries, two markers
    assert "era-both: 0.8875" in labels and "fusion-both: 0.8950" in labels
    marks = [collection for collection in axis.collections if len(collection.get_offsets())]
    assert len(marks) == 2
    first, second = (mark.get_paths()[0].vertices for mark in marks)
    assert first.shape != second.shape or not np.allclose(first, second)  # different marker shapes
    assert not np.allclose(marks[0].get_facecolor(), marks[1].get_facecolor())  # and colours
    assert sorted(annotation.get_text() for annotation in axis.texts) == ["era-both", "fusion-both"]
    # the axis spans 0.8875 .. 0.9187 (not 0 .. 1): query2doc at 0.04 is named, not drawn
    low, high = axis.get_ylim()
    assert 0.85 < low < 0.8875 and 0.9187 < high < 0.95
    assert "query2doc: 0.0400 (off the axis)" in labels and "doc2doc: 0.9008" in labels
    plt.close(figure)
