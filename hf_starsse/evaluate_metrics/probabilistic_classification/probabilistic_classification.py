"""`evaluate` metric: accuracy, NLL, ECE and Brier of predicted class probabilities (hf_starsse.metrics)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Quality of probabilistic classifiers and ensembles: accuracy, negative log-likelihood, expected calibration error
(equal-width confidence bins, 15 by default) and Brier score, computed from class probabilities (e.g. the mean of an
ensemble's softmax probabilities), not from logits.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): Class probabilities per sample (rows sum to 1).
    references (`list` of `int`): Ground-truth labels.
    num_bins (`int`, *optional*, defaults to 15): ECE bins.
Returns:
    `dict`: `accuracy`, `nll`, `ece`, `brier`.
Examples:
    >>> metric = evaluate.load("hf_starsse/evaluate_metrics/probabilistic_classification")
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8]], references=[0, 0])["accuracy"]
    0.5
"""

_CITATION = """
@inproceedings{sadrtdinov2023stay,
  title={To Stay or Not to Stay in the Pre-train Basin: Insights on Ensembling in Transfer Learning},
  author={Sadrtdinov, Ildus and Pozdeev, Dmitrii and Vetrov, Dmitry and Lobacheva, Ekaterina},
  booktitle={NeurIPS},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ProbabilisticClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, num_bins=15):
        from hf_starsse.metrics import classification_metrics

        return classification_metrics(np.asarray(predictions), np.asarray(references), num_bins=num_bins)
