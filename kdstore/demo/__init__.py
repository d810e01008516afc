"""`kdstore demo`: the whole method end to end on the embedded digits data (digits.py): a teacher
trained, cached, every variant trained from the store, the report. Above the report, below the CLI."""
