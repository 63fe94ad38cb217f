"""Robustness evaluation of trained classifiers (AutoAttack)."""
