"""Benchmarks of the Stadjerspas ledger: gas (``bench.gas``), and later the API and the indexer.

Every benchmark starts its own anvil node in a temporary directory (``bench._chain``), deploys a
fresh ledger and cleans up afterwards: nothing touches the network or the project's ``var/`` state
(only the compiler cache under ``var/build`` is shared with the tests).
"""
