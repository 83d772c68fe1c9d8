"""The one vocabulary: what is known of a model x recipe (``Measurements``) and the metric table (``METRICS``)."""

from .measurements import Measurements
from .table import (BASELINE_METRIC, BASELINE_METRICS, BY_DEVICE, METRIC, METRICS, QUALITY_KEYS, TEXT_FIELDS, BaselineRule, Metric,
                    delta_perplexity, flat, marker_metrics)

__all__ = ["BASELINE_METRIC", "BASELINE_METRICS", "BY_DEVICE", "METRIC", "METRICS", "QUALITY_KEYS", "TEXT_FIELDS", "BaselineRule",
           "Measurements", "Metric", "delta_perplexity", "flat", "marker_metrics"]
