"""SavedModel export for TF Serving: in-graph tokenization, per-task signatures, warmup
requests, an op allow-list check, and versioned atomic writes."""

from tfbert.export.saved_model import describe_signatures, export_saved_model

__all__ = ["describe_signatures", "export_saved_model"]
