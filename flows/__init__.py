"""Prefect flows: orchestration only; every task calls one function in models/ or expectations/."""
