"""Rights of the person (GDPR art. 15-21): intake, states and deadlines, per-right decisions, access bundles."""
