"""The command line: a thin layer that parses options into configs and calls the library."""
