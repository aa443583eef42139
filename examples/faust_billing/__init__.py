"""Billing as a guarded Faust agent (see README.md here)."""
