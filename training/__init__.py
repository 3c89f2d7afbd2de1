"""Data windows, the budget-exact transformer, its trainer and the HPO engine."""
