"""Pseudonymisation: keys (HKDF), tokens (HMAC in DuckDB SQL), generalisation, k-anonymity, publication."""
