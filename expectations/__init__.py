"""Data contracts: Great Expectations suites as code and the runner that reports on them."""
