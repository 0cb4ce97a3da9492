"""Retention: the per-purpose ledger generated from the policy, and its application (archive, erase, anonymise)."""
