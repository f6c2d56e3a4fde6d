"""``python -m ledger.indexer``: the indexer as a process of its own (see :mod:`.cli`)."""

from ledger.indexer.cli import main

main()
