"""Per-task code: post-processing and scoring, written once and used by export and the service."""
