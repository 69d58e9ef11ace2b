"""Human A/B evaluation: studies of generation settings rated blind by people (see docs/evaluation.md)."""
