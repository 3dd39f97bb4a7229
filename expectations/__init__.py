"""Data contracts: Great Expectations suites as code and the runner that reports on them."""

from expectations.drift import compare_profiles, profile_data
from expectations.report import CheckResult, DataValidationError, ValidationReport
from expectations.runner import validate_recipe_data

__all__ = [
    "CheckResult",
    "DataValidationError",
    "ValidationReport",
    "compare_profiles",
    "profile_data",
    "validate_recipe_data",
]
